//! Serving: [`run`] serves every gRPC service, health and reflection (with
//! metrics, NATS delivery and rule reloads when asked for) on a bound listener
//! until `shutdown` completes, then drains in-flight calls.
//!
//! `run` takes a listener so tests bind `127.0.0.1:0`. Must not hold business
//! logic (that is `service`) or wire mapping (that is `api`).

use crate::api::admission::{Admission, Limits};
use crate::api::identity::{Gate, Trust};
use crate::api::proto::{
    alerts_server::AlertsServer, rules_server::RulesServer, screening_server::ScreeningServer,
    watchlist_server::WatchlistServer, FILE_DESCRIPTOR_SET,
};
use crate::api::services::Api;
use crate::config::DEFAULT_MAX_CLOCK_SKEW;
use crate::delivery::nats::NatsSink;
use crate::delivery::webhook::WebhookSink;
use crate::delivery::{self, AlertSink, DeliveryProgress, NatsConfig, WebhookConfig};
use crate::service::TransferGuard;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// How often holds are expired and overdue alerts escalated.
pub const TICK: Duration = Duration::from_millis(250);

/// Runs the service's timer work ([`TransferGuard::tick`]: hold expiry,
/// escalation, the minute's pruning) every [`TICK`] until dropped, on a
/// thread of its own. Not on the runtime: a prune walks every remembered
/// transfer and customer, and on a runtime worker every request queued behind
/// it would wait for the whole walk; on its own thread the kernel shares the
/// core in slices of a few milliseconds. (Should no thread be had, it runs on
/// the runtime rather than not at all.)
enum Housekeeping {
    /// Dropping the sender stops the thread; dropping this joins it, so the
    /// service (and its store) is let go of when the server stops.
    Thread {
        stop: Option<std::sync::mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Task(tokio::task::JoinHandle<()>),
}

impl Housekeeping {
    fn start(guard: Arc<TransferGuard>) -> Housekeeping {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let on_thread = guard.clone();
        let spawned = std::thread::Builder::new().name("housekeeping".into()).spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                on_thread.tick(on_thread.now());
            }
        });
        match spawned {
            Ok(thread) => Housekeeping::Thread { stop: Some(stop), thread: Some(thread) },
            Err(e) => {
                tracing::warn!(error = %e, "no thread for housekeeping: it runs on the runtime");
                Housekeeping::Task(tokio::spawn(async move {
                    let mut every = tokio::time::interval(TICK);
                    loop {
                        every.tick().await;
                        guard.tick(guard.now());
                    }
                }))
            }
        }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        match self {
            Housekeeping::Thread { stop, thread } => {
                drop(stop.take());
                if let Some(t) = thread.take() {
                    // At most the tick in progress.
                    let _ = t.join();
                }
            }
            Housekeeping::Task(task) => task.abort(),
        }
    }
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
    /// POST alert events to a webhook too.
    pub webhook: Option<WebhookConfig>,
    /// Serve `/metrics` here.
    pub metrics: Option<TcpListener>,
    /// Serve the web board here (`board`).
    pub board: Option<TcpListener>,
    /// Reload when a file in the rules folder changes, and on SIGHUP.
    pub watch_rules: bool,
    /// How far live requests' timestamps may be from the server's clock.
    pub max_clock_skew: Duration,
    /// How callers are identified (open: every caller trusted).
    pub trust: Trust,
    /// Serve TLS (with client certificates when a client CA is set).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Admission control and the explicit limits.
    pub limits: Limits,
    /// Also serve officers, analysts and health checks here, from a runtime
    /// thread of their own: a flood of screens on the main listener then
    /// cannot delay them.
    pub officer_listener: Option<std::net::TcpListener>,
    /// The clustered mode: customers' calls forwarded to their partition's owner.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The clustered mode with TLS: how forwarded calls reach the other nodes.
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            nats: None,
            webhook: None,
            metrics: None,
            board: None,
            watch_rules: false,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            trust: Trust::Open,
            tls: None,
            limits: Limits::default(),
            officer_listener: None,
            cluster: None,
            peer_tls: None,
        }
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
        let _ = tokio::task::spawn_blocking(move || g.reload(&crate::auth::Caller::Service)).await;
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
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    if let Some(config) = extras.nats {
        tracing::info!(url = %config.url, stream = %config.stream, "publishing alerts to NATS JetStream");
        sinks.push(Box::new(NatsSink::new(config)));
    }
    if let Some(config) = extras.webhook {
        match WebhookSink::new(config) {
            Ok(sink) => {
                tracing::info!("posting alerts to the webhook");
                sinks.push(Box::new(sink));
            }
            Err(e) => tracing::error!(error = %e, "no webhook delivery"),
        }
    }
    if let Some(cluster) = &extras.cluster {
        // The other nodes' books follow this node's alerts.
        sinks.push(Box::new(cluster.alert_feed()));
    }
    // Each sink resumes after the last event it acknowledged before a restart.
    let publishers: Vec<_> = sinks
        .into_iter()
        .map(|sink| {
            let progress = Arc::new(DeliveryProgress::default());
            tokio::spawn(delivery::run(guard.clone(), sink, progress, streams_stop.clone()))
        })
        .collect();
    let limits = extras.limits;
    let streams_stop_for_officers = streams_stop.clone();
    let admission = Arc::new(Admission::new(limits.clone()));
    let api = Api {
        guard: guard.clone(),
        shutdown: streams_stop,
        max_clock_skew: extras.max_clock_skew.as_secs() as i64,
        admission: admission.clone(),
        watchers: Arc::default(),
        forward: extras
            .cluster
            .clone()
            .map(|c| Arc::new(crate::api::forward::Forwarder::new(c, extras.peer_tls.clone()))),
    };
    let trust = Arc::new(extras.trust);
    let gate = Gate::new(trust.clone(), guard.clone(), admission);
    let board = extras.board.map(|listener| {
        let forward = api.forward.clone();
        let config = crate::board::BoardConfig { trust, commit_timeout: limits.commit_timeout, forward };
        let served = crate::board::serve(listener, guard.clone(), config, api.shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "the board stopped");
            }
        })
    });

    let health_service = health(true).await;
    let (reflection, reflection_v1alpha) = reflection();

    let ticker = Housekeeping::start(guard.clone());

    let officers = match extras.officer_listener {
        None => None,
        Some(listener) => {
            let (gate, api, tls, stop) = (gate.clone(), api.clone(), extras.tls.clone(), streams_stop_for_officers);
            Some(serve_officers(listener, gate, api, tls, limits.clone(), stop).map_err(|e| {
                tracing::error!(error = %e, "cannot start the officers' listener");
                e
            }))
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight calls");
        let _ = stop_streams.send(true);
    };
    let size = limits.max_message_bytes;
    let served = builder(&limits, extras.tls)?
        .layer(gate)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ScreeningServer::new(api.clone()).max_decoding_message_size(size))
        .add_service(AlertsServer::new(api.clone()).max_decoding_message_size(size))
        .add_service(WatchlistServer::new(api.clone()).max_decoding_message_size(size))
        .add_service(RulesServer::new(api).max_decoding_message_size(size))
        .serve_with_incoming_shutdown(incoming, signal)
        .await;
    drop(ticker);
    if let Some(Ok(officers)) = officers {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || officers.join())).await;
    }
    if let Some(r) = reloader {
        r.abort();
    }
    if let Some(b) = board {
        let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
    }
    if let Some(m) = metrics_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), m).await;
    }
    for p in publishers {
        // Give each sink a moment to deliver what is pending, then stop it.
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    served
}

/// A server with the limits that apply to every listener, over TLS when configured.
fn builder(limits: &Limits, tls: Option<tonic::transport::ServerTlsConfig>) -> Result<Server, tonic::transport::Error> {
    let server = Server::builder().max_concurrent_streams(limits.streams_per_connection);
    match tls {
        Some(tls) => server.tls_config(tls),
        None => Ok(server),
    }
}

/// The health service, SERVING for the services a listener serves (Screening
/// only on the main one).
async fn health(
    with_screening: bool,
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (health, health_service) = tonic_health::server::health_reporter();
    if with_screening {
        health.set_serving::<ScreeningServer<Api>>().await;
    }
    health.set_serving::<AlertsServer<Api>>().await;
    health.set_serving::<WatchlistServer<Api>>().await;
    health.set_serving::<RulesServer<Api>>().await;
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health_service
}

/// Both reflection versions: grpcurl speaks v1, several clients (Python's
/// grpcio-reflection among them) only v1alpha.
fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let configure = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    (
        configure().build_v1().expect("the embedded descriptor set is valid"),
        configure().build_v1alpha().expect("the embedded descriptor set is valid"),
    )
}

/// Serves the officers' side (alerts, watchlist, rules, health, reflection)
/// on `listener` from a thread with a runtime of its own, until `stop`.
fn serve_officers(
    listener: std::net::TcpListener,
    gate: Gate,
    api: Api,
    tls: Option<tonic::transport::ServerTlsConfig>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("officer-api".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "no runtime for the officers' listener"),
        };
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "the officers' listener"),
            };
            let server = match builder(&limits, tls) {
                Ok(b) => b,
                Err(e) => return tracing::error!(error = %e, "TLS on the officers' listener"),
            };
            let size = limits.max_message_bytes;
            let (reflection, reflection_v1alpha) = reflection();
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let served = server
                .layer(gate)
                .add_service(health(false).await)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(AlertsServer::new(api.clone()).max_decoding_message_size(size))
                .add_service(WatchlistServer::new(api.clone()).max_decoding_message_size(size))
                .add_service(RulesServer::new(api).max_decoding_message_size(size))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the officers' listener stopped");
            }
        })
    })
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
