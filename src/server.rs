//! Serving: configuration (defaults < config file < env < flags), and
//! [`run`], which serves every gRPC service, health and reflection on a bound
//! listener until `shutdown` completes, then drains in-flight calls.
//!
//! `run` takes a listener so tests bind `127.0.0.1:0`. Must not hold business
//! logic (that is `service`) or wire mapping (that is `api`).

use crate::api::proto::{
    alerts_server::AlertsServer, rules_server::RulesServer, screening_server::ScreeningServer,
    watchlist_server::WatchlistServer, FILE_DESCRIPTOR_SET,
};
use crate::api::services::Api;
use crate::delivery::{self, DeliveryProgress, NatsConfig};
use crate::service::TransferGuard;
use crate::store::Durability;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_RULES: &str = "rules";
pub const DEFAULT_DATA: &str = "data";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// How far a live request's timestamps may be from the server's clock.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How often holds are expired and overdue alerts escalated.
pub const TICK: Duration = Duration::from_millis(250);

/// What `serve` runs with, after defaults, the config file, env and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub rules_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Publish alert events to NATS JetStream too.
    pub nats: Option<NatsConfig>,
    /// Where `/metrics` is served.
    pub metrics_listen: SocketAddr,
    /// `sync`: every change is on disk in DATA_DIR/store before its answer; `none`: memory only.
    pub durability: Durability,
    /// Live `Screen` and `RecordEvent` timestamps further than this from the
    /// server's clock are refused.
    pub max_clock_skew: Duration,
}

/// The config file (TOML). Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub rules: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub nats_url: Option<String>,
    pub nats_stream: Option<String>,
    pub nats_subject_prefix: Option<String>,
    pub metrics_listen: Option<String>,
    pub durability: Option<Durability>,
    /// A duration: `90s`, `5m`.
    pub max_clock_skew: Option<String>,
}

/// What came from flags or `TRANSFER_GUARD_*` env vars (clap merges those two,
/// flags first).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub rules: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub nats_url: Option<String>,
    pub nats_stream: Option<String>,
    pub nats_subject_prefix: Option<String>,
    pub metrics_listen: Option<String>,
    pub durability: Option<Durability>,
    pub max_clock_skew: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("listen address `{0}` is not HOST:PORT")]
    Listen(String),
    #[error("max_clock_skew `{0}` is not a positive duration such as `90s` or `5m`")]
    ClockSkew(String),
}

impl Config {
    pub fn resolve(o: &Overrides) -> Result<Config, ConfigError> {
        let file = match &o.config {
            None => FileConfig::default(),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
                toml::from_str(&text).map_err(|e| {
                    let d = crate::rules::Diagnostic::toml(&shown, &text, &e);
                    ConfigError::Parse { path: d.location(), message: d.message }
                })?
            }
        };
        let listen = o.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let nats = o.nats_url.clone().or(file.nats_url).filter(|u| !u.is_empty()).map(|url| {
            let mut n = NatsConfig::new(url);
            if let Some(s) = o.nats_stream.clone().or(file.nats_stream) {
                n.stream = s;
            }
            if let Some(p) = o.nats_subject_prefix.clone().or(file.nats_subject_prefix) {
                n.subject_prefix = p;
            }
            n
        });
        let metrics_listen =
            o.metrics_listen.clone().or(file.metrics_listen).unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
        let max_clock_skew = match o.max_clock_skew.clone().or(file.max_clock_skew) {
            None => DEFAULT_MAX_CLOCK_SKEW,
            Some(s) => match crate::rules::parse_duration(s.trim()) {
                Some(secs) if secs > 0 => Duration::from_secs(secs as u64),
                _ => return Err(ConfigError::ClockSkew(s)),
            },
        };
        Ok(Config {
            max_clock_skew,
            metrics_listen: metrics_listen.parse().map_err(|_| ConfigError::Listen(metrics_listen.clone()))?,
            nats,
            listen: listen.parse().map_err(|_| ConfigError::Listen(listen.clone()))?,
            rules_dir: o.rules.clone().or(file.rules).unwrap_or_else(|| DEFAULT_RULES.into()),
            data_dir: o.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA.into()),
            durability: o.durability.or(file.durability).unwrap_or_default(),
        })
    }
}

/// Builds the service from the rules folder (compiled and tested).
pub fn open(rules_dir: &Path) -> Result<Arc<TransferGuard>, Vec<String>> {
    TransferGuard::open(rules_dir).map(Arc::new)
}

/// Serves until `shutdown` completes; in-flight calls finish, streams end.
pub async fn run(
    listener: TcpListener,
    guard: Arc<TransferGuard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    run_with(listener, guard, Extras::default(), shutdown).await
}

/// What `serve` may add to the gRPC services.
pub struct Extras {
    /// Publish alert events to NATS JetStream too.
    pub nats: Option<NatsConfig>,
    /// Serve `/metrics` here.
    pub metrics: Option<TcpListener>,
    /// Reload when a file in the rules folder changes, and on SIGHUP.
    pub watch_rules: bool,
    /// How far live requests' timestamps may be from the server's clock.
    pub max_clock_skew: Duration,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras { nats: None, metrics: None, watch_rules: false, max_clock_skew: DEFAULT_MAX_CLOCK_SKEW }
    }
}

/// How long the rules folder must be quiet before a change is reloaded, so an
/// editor's save (write, rename, chmod) gives one reload.
pub const RELOAD_SETTLE: Duration = Duration::from_millis(300);

/// Starts watching the rules folder (before returning, so no change made after
/// the server starts is missed) and SIGHUP; reloads until `stop` turns true.
fn reload_on_change(guard: Arc<TransferGuard>, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    use notify::Watcher;
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
    };
    let watcher = match watcher {
        Ok(mut w) => match w.watch(guard.rules_dir(), notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the rules folder; reload with SIGHUP or ReloadRules");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the rules folder; reload with SIGHUP or ReloadRules");
            None
        }
    };
    #[cfg(unix)]
    {
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading rules");
                    let _ = tx.send(());
                }
            });
        }
    }
    tokio::spawn(reload_loop(guard, watcher, changes, stop))
}

async fn reload_loop(
    guard: Arc<TransferGuard>,
    _watcher: Option<notify::RecommendedWatcher>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            change = changes.recv() => if change.is_none() { return },
            _ = stop.changed() => return,
        }
        // Let the burst of events from one save settle.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_SETTLE) => break,
                more = changes.recv() => if more.is_none() { return },
            }
        }
        let g = guard.clone();
        let _ = tokio::task::spawn_blocking(move || g.reload()).await;
    }
}

/// [`run`], with NATS delivery and the metrics endpoint when asked for.
pub async fn run_with(
    listener: TcpListener,
    guard: Arc<TransferGuard>,
    extras: Extras,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_streams, streams_stop) = watch::channel(false);
    let metrics_server = extras.metrics.map(|listener| {
        let g = guard.clone();
        let mut stop = streams_stop.clone();
        tokio::spawn(crate::telemetry::serve_metrics(
            listener,
            guard.metrics().clone(),
            move || g.refresh_gauges(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let reloader = extras.watch_rules.then(|| reload_on_change(guard.clone(), streams_stop.clone()));
    let publisher = extras.nats.map(|config| {
        tracing::info!(url = %config.url, stream = %config.stream, "publishing alerts to NATS JetStream");
        let progress = Arc::new(DeliveryProgress::default());
        // Resume after the last event NATS acknowledged before a restart.
        progress.published_cursor.store(guard.nats_cursor(), std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(delivery::run(guard.clone(), config, progress, streams_stop.clone()))
    });
    let api =
        Api { guard: guard.clone(), shutdown: streams_stop, max_clock_skew: extras.max_clock_skew.as_secs() as i64 };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ScreeningServer<Api>>().await;
    health.set_serving::<AlertsServer<Api>>().await;
    health.set_serving::<WatchlistServer<Api>>().await;
    health.set_serving::<RulesServer<Api>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;

    // Both reflection versions: grpcurl speaks v1, several clients (Python's
    // grpcio-reflection among them) only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection().build_v1alpha().expect("the embedded descriptor set is valid");
    let reflection = reflection().build_v1().expect("the embedded descriptor set is valid");

    let ticker = {
        let guard = guard.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                guard.tick(guard.now());
            }
        })
    };

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight calls");
        let _ = stop_streams.send(true);
    };
    let served = Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ScreeningServer::new(api.clone()))
        .add_service(AlertsServer::new(api.clone()))
        .add_service(WatchlistServer::new(api.clone()))
        .add_service(RulesServer::new(api))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    ticker.abort();
    if let Some(r) = reloader {
        r.abort();
    }
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    if let Some(p) = publisher {
        // Give the publisher a moment to send what is pending, then stop it.
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    served
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tg.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:6000\"\nrules = \"/etc/tg/rules\"\n").unwrap();
        let o = Overrides { config: Some(file.clone()), rules: Some("mine".into()), ..Overrides::default() };
        let c = Config::resolve(&o).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.rules_dir, PathBuf::from("mine"));
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(Config::resolve(&Overrides::default()).unwrap().listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.durability, Durability::Sync, "durable unless told otherwise");
        std::fs::write(&file, "durability = \"none\"\n").unwrap();
        let o = Overrides { config: Some(file.clone()), ..Overrides::default() };
        assert_eq!(Config::resolve(&o).unwrap().durability, Durability::None);
        let o = Overrides { durability: Some(Durability::Sync), ..o };
        assert_eq!(Config::resolve(&o).unwrap().durability, Durability::Sync);

        std::fs::write(&file, "listen = 5\n").unwrap();
        let e = Config::resolve(&Overrides { config: Some(file.clone()), ..Overrides::default() }).unwrap_err();
        assert!(e.to_string().contains("tg.toml:1:10"), "{e}");

        assert_eq!(Config::resolve(&Overrides::default()).unwrap().max_clock_skew, DEFAULT_MAX_CLOCK_SKEW);
        std::fs::write(&file, "max_clock_skew = \"2m\"\n").unwrap();
        let o = Overrides { config: Some(file), ..Overrides::default() };
        assert_eq!(Config::resolve(&o).unwrap().max_clock_skew, Duration::from_secs(120));
        let o = Overrides { max_clock_skew: Some("90s".into()), ..o };
        assert_eq!(Config::resolve(&o).unwrap().max_clock_skew, Duration::from_secs(90));
        let o = Overrides { max_clock_skew: Some("soon".into()), ..o };
        assert!(Config::resolve(&o).unwrap_err().to_string().contains("max_clock_skew `soon`"));
    }
}
