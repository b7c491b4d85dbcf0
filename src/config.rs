//! Settings: what `serve` runs with, from (highest first) a flag, a
//! `TRANSFER_GUARD_*` environment variable, the `--config` TOML file, the
//! default. Every setting has all four; [`Config::resolve`] is the one place
//! they are merged.
//!
//! Must not build or run anything (that is `app` and `server`).

use crate::api::admission::{FailMode, Limits};
use crate::cluster::ClusterConfig;
use crate::delivery::{NatsConfig, WebhookConfig};
use crate::service::Approval;
use crate::store::Durability;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_RULES: &str = "rules";
pub const DEFAULT_DATA: &str = "data";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Where the web board is served unless told otherwise (`off` for none).
pub const DEFAULT_BOARD_LISTEN: &str = "127.0.0.1:8080";
/// How long resolved alerts and alert events are kept.
pub const DEFAULT_ALERT_RETENTION: Duration = Duration::from_secs(crate::service::DEFAULT_ALERT_RETENTION_SECS as u64);
/// How far a live request's timestamps may be from the server's clock.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What `serve` runs with, after defaults, the config file, env and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub rules_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Publish alert events to NATS JetStream too.
    pub nats: Option<NatsConfig>,
    /// POST alert events to a webhook too.
    pub webhook: Option<WebhookConfig>,
    /// Where `/metrics` is served.
    pub metrics_listen: SocketAddr,
    /// `sync`: every change is on disk in DATA_DIR/store before its answer; `none`: memory only.
    pub durability: Durability,
    /// Live `Screen` and `RecordEvent` timestamps further than this from the
    /// server's clock are refused.
    pub max_clock_skew: Duration,
    /// Resolved alerts and alert events are forgotten this long after.
    pub alert_retention: Duration,
    /// TLS, client certificates and tokens: who callers are.
    pub security: Security,
    /// Admission control and the explicit limits.
    pub limits: Limits,
    /// Whether a new ruleset needs a second analyst's approval.
    pub approval: Approval,
    /// Officers, analysts and health checks also served here, on a runtime of their own.
    pub officer_listen: Option<SocketAddr>,
    /// The web board (HTTP), or none.
    pub board_listen: Option<SocketAddr>,
    /// The clustered mode (docs/scaling.md), or none: the single node.
    pub cluster: Option<ClusterConfig>,
}

/// The trust settings (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// The server's certificate and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Clients must present a certificate signed by this CA (PEM) naming a
    /// SPIFFE id, unless they carry a token.
    pub client_ca: Option<PathBuf>,
    /// SPIFFE ids must be of this trust domain.
    pub trust_domain: String,
    /// Bearer tokens are checked with this Ed25519 public key (PASERK file).
    pub token_public_key: Option<PathBuf>,
}

impl Security {
    /// True when every call must name a principal.
    pub fn identifies_callers(&self) -> bool {
        self.client_ca.is_some() || self.token_public_key.is_some()
    }
}

/// The SPIFFE trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "transfer-guard.local";

/// Every setting, each optional: as the config file (TOML) gives them, and as
/// the flags and `TRANSFER_GUARD_*` env vars do (clap merges those two, flags
/// first). [`Config::resolve`] puts the two layers over the defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
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
    /// A duration: `30d`.
    pub alert_retention: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// Serve plaintext on an address other than loopback.
    pub insecure_plaintext: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub token_public_key: Option<PathBuf>,
    /// `automatic` or `required` (maker–checker).
    pub approval: Option<Approval>,
    pub max_screens_in_flight: Option<usize>,
    pub screen_queue_wait_ms: Option<u64>,
    pub officer_calls_in_flight: Option<usize>,
    pub commit_timeout_ms: Option<u64>,
    pub fail_mode: Option<FailMode>,
    /// Minor units (fen): with fail_mode floor, amounts from here get HOLD.
    pub fail_floor_minor: Option<i64>,
    pub max_message_bytes: Option<usize>,
    pub streams_per_connection: Option<u32>,
    pub watchers_per_station: Option<usize>,
    /// HOST:PORT for the officers' own listener.
    pub officer_listen: Option<String>,
    /// HOST:PORT for the web board, or `off`.
    pub board_listen: Option<String>,
    /// NATS URL(s) of the cluster: the clustered mode.
    pub cluster: Option<String>,
    /// This node's name in the cluster (default: the host name and port).
    pub node_id: Option<String>,
    /// HOST:PORT other nodes forward calls to (default: the listen address).
    pub advertise: Option<String>,
    /// Partitions of the customers; set when the cluster is created.
    pub partitions: Option<u16>,
    /// A duration: how long a partition's lease lasts unrenewed (`6s`).
    pub lease: Option<String>,
    /// JetStream replicas of the cluster's buckets and journal.
    pub cluster_replicas: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("listen address `{0}` is not HOST:PORT")]
    Listen(String),
    #[error(
        "listen address `{0}` is not loopback and the gRPC API is plaintext with every caller trusted: \
         listen on 127.0.0.1, or say --insecure-plaintext if the network in between is yours"
    )]
    PlaintextOutsideLoopback(String),
    #[error("webhook_url is set but webhook_secret is not: every POST is signed with it")]
    WebhookSecret,
    #[error("{key} `{value}` is not a positive duration such as `90s`, `5m` or `30d`")]
    Duration { key: &'static str, value: String },
    #[error("{0}")]
    Security(&'static str),
    #[error("{key} must be positive")]
    NotPositive { key: &'static str },
    #[error("the clustered mode needs {0}")]
    Cluster(&'static str),
}

impl Settings {
    /// The settings of a config file's text; `shown` names it in errors (file:line:col).
    pub fn from_toml(shown: &str, text: &str) -> Result<Settings, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let d = crate::rules::Diagnostic::toml(shown, text, &e);
            ConfigError::Parse { path: d.location(), message: d.message }
        })
    }
}

impl Config {
    /// `flags` over the file at `config` (if any) over the defaults.
    pub fn resolve(o: &Settings, config: Option<&Path>) -> Result<Config, ConfigError> {
        let file = match config {
            None => Settings::default(),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
                Settings::from_toml(&shown, &text)?
            }
        };
        Config::merge(o, file)
    }

    /// `flags` over the settings of a config file over the defaults.
    pub fn merge(o: &Settings, file: Settings) -> Result<Config, ConfigError> {
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
        let duration = |key: &'static str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(s) => match crate::rules::parse_duration(s.trim()) {
                Some(secs) if secs > 0 => Ok(Duration::from_secs(secs as u64)),
                _ => Err(ConfigError::Duration { key, value: s }),
            },
        };
        let max_clock_skew =
            duration("max_clock_skew", o.max_clock_skew.clone().or(file.max_clock_skew), DEFAULT_MAX_CLOCK_SKEW)?;
        let alert_retention =
            duration("alert_retention", o.alert_retention.clone().or(file.alert_retention), DEFAULT_ALERT_RETENTION)?;
        let webhook = match o.webhook_url.clone().or(file.webhook_url).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => match o.webhook_secret.clone().or(file.webhook_secret).filter(|s| !s.is_empty()) {
                Some(secret) => Some(WebhookConfig { url, secret }),
                None => return Err(ConfigError::WebhookSecret),
            },
        };
        let listen_addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Listen(listen.clone()))?;
        let security = Security {
            tls: match (o.tls_cert.clone().or(file.tls_cert), o.tls_key.clone().or(file.tls_key)) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(ConfigError::Security("tls_cert and tls_key go together")),
            },
            client_ca: o.client_ca.clone().or(file.client_ca),
            trust_domain: o.trust_domain.clone().or(file.trust_domain).unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into()),
            token_public_key: o.token_public_key.clone().or(file.token_public_key),
        };
        if security.client_ca.is_some() && security.tls.is_none() {
            return Err(ConfigError::Security(
                "client_ca needs tls_cert and tls_key: client certificates come over TLS",
            ));
        }
        let insecure = o.insecure_plaintext.or(file.insecure_plaintext).unwrap_or(false);
        if !listen_addr.ip().is_loopback() && security.tls.is_none() && !insecure {
            return Err(ConfigError::PlaintextOutsideLoopback(listen));
        }
        let officer_listen = match o.officer_listen.clone().or(file.officer_listen).filter(|a| !a.is_empty()) {
            None => None,
            Some(a) => {
                let addr: SocketAddr = a.parse().map_err(|_| ConfigError::Listen(a.clone()))?;
                if !addr.ip().is_loopback() && security.tls.is_none() && !insecure {
                    return Err(ConfigError::PlaintextOutsideLoopback(a));
                }
                Some(addr)
            }
        };
        let board_listen = match o.board_listen.clone().or(file.board_listen) {
            Some(a) if a.is_empty() || a == "off" => None,
            a => {
                let a = a.unwrap_or_else(|| DEFAULT_BOARD_LISTEN.into());
                let addr: SocketAddr = a.parse().map_err(|_| ConfigError::Listen(a.clone()))?;
                // The board is plain HTTP: off loopback, behind a TLS proxy of the operator's.
                if !addr.ip().is_loopback() && !insecure {
                    return Err(ConfigError::PlaintextOutsideLoopback(a));
                }
                Some(addr)
            }
        };
        let approval = o.approval.or(file.approval).unwrap_or_default();
        if approval == Approval::Required && !security.identifies_callers() {
            return Err(ConfigError::Security(
                "approval = required needs identified callers (client_ca or token_public_key): \
                 the approver must be known to be someone other than the proposer",
            ));
        }
        let d = Limits::default();
        let positive = |key: &'static str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(ConfigError::NotPositive { key }),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let limits = Limits {
            screens_in_flight: positive(
                "max_screens_in_flight",
                o.max_screens_in_flight.or(file.max_screens_in_flight),
                d.screens_in_flight,
            )?,
            screen_queue_wait: o
                .screen_queue_wait_ms
                .or(file.screen_queue_wait_ms)
                .map_or(d.screen_queue_wait, Duration::from_millis),
            officer_calls_in_flight: positive(
                "officer_calls_in_flight",
                o.officer_calls_in_flight.or(file.officer_calls_in_flight),
                d.officer_calls_in_flight,
            )?,
            commit_timeout: Duration::from_millis(positive(
                "commit_timeout_ms",
                o.commit_timeout_ms.or(file.commit_timeout_ms).map(|n| n as usize),
                d.commit_timeout.as_millis() as usize,
            )? as u64),
            fail_mode: o.fail_mode.or(file.fail_mode).unwrap_or(d.fail_mode),
            fail_floor: o.fail_floor_minor.or(file.fail_floor_minor).unwrap_or(d.fail_floor).max(0),
            max_message_bytes: positive(
                "max_message_bytes",
                o.max_message_bytes.or(file.max_message_bytes),
                d.max_message_bytes,
            )?,
            streams_per_connection: positive(
                "streams_per_connection",
                o.streams_per_connection.or(file.streams_per_connection).map(|n| n as usize),
                d.streams_per_connection as usize,
            )? as u32,
            watchers_per_station: positive(
                "watchers_per_station",
                o.watchers_per_station.or(file.watchers_per_station),
                d.watchers_per_station,
            )?,
        };
        let cluster = match o.cluster.clone().or(file.cluster).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let durability = o.durability.or(file.durability).unwrap_or_default();
                if security.tls.is_some() && security.client_ca.is_none() {
                    return Err(ConfigError::Cluster(
                        "client_ca with TLS: the CA the other nodes' certificates are verified against when forwarding",
                    ));
                }
                if durability == Durability::None {
                    return Err(ConfigError::Cluster("durability sync: its journal is where the store writes"));
                }
                let node_id = o.node_id.clone().or(file.node_id).filter(|n| !n.is_empty()).ok_or(
                    ConfigError::Cluster("node_id (--node-id): a name unique in the cluster, kept across restarts"),
                )?;
                if !node_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(ConfigError::Cluster("a node_id of letters, digits, '-' and '_'"));
                }
                let advertise = o.advertise.clone().or(file.advertise).unwrap_or_else(|| listen_addr.to_string());
                let mut c = ClusterConfig::new(&url, &node_id, &advertise);
                if let Some(p) = o.partitions.or(file.partitions) {
                    c.partitions = p.max(1);
                }
                c.lease = duration("lease", o.lease.clone().or(file.lease), c.lease)?;
                c.replicas = positive("cluster_replicas", o.cluster_replicas.or(file.cluster_replicas), 1)?;
                Some(c)
            }
        };
        Ok(Config {
            cluster,
            officer_listen,
            board_listen,
            security,
            limits,
            approval,
            webhook,
            max_clock_skew,
            alert_retention,
            metrics_listen: metrics_listen.parse().map_err(|_| ConfigError::Listen(metrics_listen.clone()))?,
            nats,
            listen: listen_addr,
            rules_dir: o.rules.clone().or(file.rules).unwrap_or_else(|| DEFAULT_RULES.into()),
            data_dir: o.data_dir.clone().or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA.into()),
            durability: o.durability.or(file.durability).unwrap_or_default(),
        })
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
        let o = Settings { rules: Some("mine".into()), ..Settings::default() };
        let c = Config::resolve(&o, Some(&file)).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.rules_dir, PathBuf::from("mine"));
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert_eq!(Config::resolve(&Settings::default(), None).unwrap().listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.durability, Durability::Sync, "durable unless told otherwise");
        std::fs::write(&file, "durability = \"none\"\n").unwrap();
        let o = Settings::default();
        assert_eq!(Config::resolve(&o, Some(&file)).unwrap().durability, Durability::None);
        let o = Settings { durability: Some(Durability::Sync), ..o };
        assert_eq!(Config::resolve(&o, Some(&file)).unwrap().durability, Durability::Sync);

        std::fs::write(&file, "listen = 5\n").unwrap();
        let e = Config::resolve(&Settings::default(), Some(&file)).unwrap_err();
        assert!(e.to_string().contains("tg.toml:1:10"), "{e}");

        assert_eq!(Config::resolve(&Settings::default(), None).unwrap().max_clock_skew, DEFAULT_MAX_CLOCK_SKEW);
        std::fs::write(&file, "max_clock_skew = \"2m\"\n").unwrap();
        let o = Settings::default();
        assert_eq!(Config::resolve(&o, Some(&file)).unwrap().max_clock_skew, Duration::from_secs(120));
        let o = Settings { max_clock_skew: Some("90s".into()), ..o };
        assert_eq!(Config::resolve(&o, Some(&file)).unwrap().max_clock_skew, Duration::from_secs(90));
        let o = Settings { max_clock_skew: Some("soon".into()), ..o };
        assert!(Config::resolve(&o, Some(&file)).unwrap_err().to_string().contains("max_clock_skew `soon`"));

        // Plaintext stays on loopback unless the operator says otherwise.
        let open = Settings { listen: Some("0.0.0.0:50051".into()), ..Settings::default() };
        let e = Config::resolve(&open, None).unwrap_err();
        assert!(e.to_string().contains("not loopback"), "{e}");
        let said = Settings { insecure_plaintext: Some(true), ..open };
        assert_eq!(Config::resolve(&said, None).unwrap().listen.to_string(), "0.0.0.0:50051");
        let v6 = Settings { listen: Some("[::1]:50051".into()), ..Settings::default() };
        assert!(Config::resolve(&v6, None).is_ok());
    }

    #[test]
    fn the_board_is_on_loopback_unless_said_or_off() {
        let d = Settings::default;
        assert_eq!(Config::resolve(&d(), None).unwrap().board_listen.unwrap().to_string(), DEFAULT_BOARD_LISTEN);
        assert_eq!(
            Config::resolve(&Settings { board_listen: Some("off".into()), ..d() }, None).unwrap().board_listen,
            None
        );
        let wide = Settings { board_listen: Some("0.0.0.0:8080".into()), ..d() };
        assert!(Config::resolve(&wide, None).unwrap_err().to_string().contains("not loopback"));
        let said = Settings { insecure_plaintext: Some(true), ..wide };
        assert!(Config::resolve(&said, None).unwrap().board_listen.is_some());
        let bad = Settings { board_listen: Some("eight-oh-eight-oh".into()), ..d() };
        assert!(Config::resolve(&bad, None).unwrap_err().to_string().contains("eight-oh-eight-oh"));
    }

    #[test]
    fn trust_and_limit_settings_are_checked_together() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tg.toml");
        let d = Settings::default;
        let e = Config::resolve(&Settings { client_ca: Some("ca.pem".into()), ..d() }, None).unwrap_err();
        assert!(e.to_string().contains("client_ca needs tls_cert"), "{e}");
        let e = Config::resolve(&Settings { tls_cert: Some("c.pem".into()), ..d() }, None).unwrap_err();
        assert!(e.to_string().contains("go together"), "{e}");
        let e = Config::resolve(&Settings { approval: Some(Approval::Required), ..d() }, None).unwrap_err();
        assert!(e.to_string().contains("identified callers"), "{e}");
        let tokens = Settings { token_public_key: Some("k.paserk".into()), approval: Some(Approval::Required), ..d() };
        let c = Config::resolve(&tokens, None).unwrap();
        assert!(c.security.identifies_callers() && c.approval == Approval::Required);
        assert_eq!(c.security.trust_domain, DEFAULT_TRUST_DOMAIN);
        let e = Config::resolve(&Settings { max_screens_in_flight: Some(0), ..d() }, None).unwrap_err();
        assert!(e.to_string().contains("max_screens_in_flight must be positive"), "{e}");
        // TLS lets the server leave loopback; so does the officers' listener only with it.
        let tls = Settings {
            listen: Some("0.0.0.0:50051".into()),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            officer_listen: Some("0.0.0.0:50053".into()),
            ..d()
        };
        assert_eq!(Config::resolve(&tls, None).unwrap().officer_listen.unwrap().port(), 50053);
        let e = Config::resolve(&Settings { officer_listen: Some("0.0.0.0:50053".into()), ..d() }, None).unwrap_err();
        assert!(e.to_string().contains("not loopback"), "{e}");

        std::fs::write(
            &file,
            "approval = \"required\"\ntoken_public_key = \"k\"\nfail_mode = \"unavailable\"\ncommit_timeout_ms = 250\nfail_floor_minor = 100\n",
        )
        .unwrap();
        let c = Config::resolve(&d(), Some(&file)).unwrap();
        assert_eq!(c.limits.fail_mode, FailMode::Unavailable);
        assert_eq!(c.limits.commit_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.fail_floor, 100);
        std::fs::write(&file, "fail_mode = \"maybe\"\n").unwrap();
        let e = Config::resolve(&d(), Some(&file)).unwrap_err();
        assert!(e.to_string().contains("tg.toml:1:"), "{e}");
    }
}
