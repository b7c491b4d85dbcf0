//! The operator's commands: run the service, load-test it, inspect or fill its
//! store, verify the audit trail, make token keys and tokens.
//!
//! A hub, not one thing: each command's flags and its few lines of glue to the
//! library (`app`, `server`, `loadgen`, `store`, `audit`, `auth::token`),
//! routed from `cli::run`; no logic of its own beyond printing.

use super::{generated_id, runtime};
use crate::api::identity::Trust;
use crate::app::{attach_store, open_rules};
use crate::config::{Config, Settings};
use crate::rules::parse_duration;
use crate::server;
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Load the store as `serve` does at startup; print what it holds and how long loading took.
    Recover {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
    /// Write synthetic state for N customers (5 known payees each, one in ten with transfers in
    /// the last hour) through the service's own state code, then screen T transfers through the
    /// service (as retries must find them for 48 h), to measure startup on a large store.
    Fill {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        #[arg(long, default_value_t = 0)]
        transfers: u64,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
}

#[derive(Args)]
pub struct BenchArgs {
    /// The server (loopback only in tests and docs).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Callers in flight (closed loop), or the most in flight (open loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to send, e.g. 10s.
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Requests per second (open loop, latency from the intended send time); none = closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Also bench an in-process no-op server of the same shape, the same way, and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Ignore --addr: start the real service in this process (rules from RULES, audit file in a
    /// temp dir), so that it and the no-op baseline are measured the same way.
    #[arg(long, value_name = "RULES")]
    in_process: Option<PathBuf>,
    /// With --in-process: sync keeps state in a store in the temp dir (fsync per group commit),
    /// none in memory only.
    #[arg(long, value_name = "sync|none", default_value = "none")]
    durability: crate::store::Durability,
    /// With --in-process: also bench a durable (sync) service the same way, and print the ratio
    /// durable / in-memory.
    #[arg(long)]
    compare_durability: bool,
    /// The pid of the server at --addr (Linux): also print its CPU time per request, read from
    /// /proc before and after the run. Pin it and the generator to different cores (taskset).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Run no load: serve the no-op baseline (the Screen shape, no work) on --listen until
    /// Ctrl-C, as a process of its own to pin and drive like `serve`.
    #[arg(long)]
    noop_server: bool,
    /// With --noop-server: where to listen.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: String,
    /// While the load runs, probe as an officer and a load balancer on a connection of their
    /// own: health checks every 100 ms, a transfer held, claimed and resolved every 500 ms
    /// (ResolveAlert timed), and with --server-pid the server's memory every second.
    #[arg(long)]
    flood: bool,
    /// With --flood: the server's officers' listener (serve --officer-listen), for the probe's
    /// health checks and ResolveAlerts.
    #[arg(long)]
    officer_addr: Option<String>,
    /// Closed loop: a caller turned away with RESOURCE_EXHAUSTED waits this long (ms) before
    /// its next request, as a client with a retry policy does.
    #[arg(long, default_value_t = 0)]
    backoff_ms: u64,
}

/// Starts the real service in this process on a loopback port; its data (audit
/// file, store) in a temp dir removed when it stops.
async fn start_in_process(rules: &Path, durability: crate::store::Durability) -> anyhow::Result<(String, InProcess)> {
    let dir = tempfile_dir("transfer-guard-bench")?;
    let guard = crate::app::build(&crate::app::Setup::new(rules, &dir, durability))?.guard;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, guard.clone(), async {
        let _ = stopped.await;
    }));
    Ok((addr, InProcess { stop, task, dir, guard }))
}

struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    dir: PathBuf,
    guard: std::sync::Arc<crate::service::TransferGuard>,
}

impl InProcess {
    /// Stops the server and tears the service down completely (audit and store
    /// writers joined, files removed), so nothing of it runs during the next
    /// measurement.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let guard = self.guard;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::sync::Arc::strong_count(&guard) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let dir = self.dir;
        let _ = tokio::task::spawn_blocking(move || {
            drop(guard);
            let _ = std::fs::remove_dir_all(dir);
        })
        .await;
        // Let the disk and the other core settle.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// A fresh directory under the system temp dir.
fn tempfile_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{t}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

#[derive(Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "TRANSFER_GUARD_LISTEN")]
    listen: Option<String>,
    /// The rules folder.
    #[arg(long, env = "TRANSFER_GUARD_RULES")]
    rules: Option<PathBuf>,
    /// Where data is kept.
    #[arg(long, env = "TRANSFER_GUARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A TOML config file: every flag below as a key, with _ for - (listen, rules, data_dir,
    /// durability, tls_cert, client_ca, approval, fail_mode, ...; docs/security.md lists them).
    #[arg(long, env = "TRANSFER_GUARD_CONFIG")]
    config: Option<PathBuf>,
    /// sync (default): answer only once the change is on disk in DATA_DIR/store, and recover it
    /// after a crash; none: keep everything in memory (tests, benchmarks).
    #[arg(long, env = "TRANSFER_GUARD_DURABILITY", value_name = "sync|none")]
    durability: Option<crate::store::Durability>,
    /// The web board for officers and analysts (HTTP; default 127.0.0.1:8080; `off` for none).
    /// Plain HTTP: off loopback only with --insecure-plaintext, behind a TLS proxy of yours.
    #[arg(long, env = "TRANSFER_GUARD_BOARD_LISTEN")]
    board_listen: Option<String>,
    /// Log format.
    #[arg(long, env = "TRANSFER_GUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Prometheus metrics listen address (GET /metrics).
    #[arg(long, env = "TRANSFER_GUARD_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Also publish alert events to this NATS server's JetStream, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "TRANSFER_GUARD_NATS_URL")]
    nats_url: Option<String>,
    /// The JetStream stream (created if missing). Default TRANSFER_GUARD_ALERTS.
    #[arg(long, env = "TRANSFER_GUARD_NATS_STREAM")]
    nats_stream: Option<String>,
    /// Subject prefix; station S gets PREFIX.S. Default transferguard.alerts.
    #[arg(long, env = "TRANSFER_GUARD_NATS_SUBJECT_PREFIX")]
    nats_subject_prefix: Option<String>,
    /// How far a live Screen's or RecordEvent's timestamps may be from this server's clock
    /// (default 5m); further off is INVALID_ARGUMENT. DryRun, backtest and simulate replay any time.
    #[arg(long, env = "TRANSFER_GUARD_MAX_CLOCK_SKEW")]
    max_clock_skew: Option<String>,
    /// How long resolved alerts and alert events are kept, in memory and in the store
    /// (default 30d); open alerts stay whatever their age.
    #[arg(long, env = "TRANSFER_GUARD_ALERT_RETENTION")]
    alert_retention: Option<String>,
    /// Also POST every alert event (proto3 JSON) to this http:// URL, retried until it answers 2xx.
    #[arg(long, env = "TRANSFER_GUARD_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The secret webhook POSTs are signed with (HMAC-SHA256); required with --webhook-url.
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(long, env = "TRANSFER_GUARD_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Serve plaintext gRPC on an address other than loopback (without --tls-cert every caller
    /// is trusted unless --token-public-key is set): only on a network that is yours.
    #[arg(long, env = "TRANSFER_GUARD_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// The server's TLS certificate (PEM); with --tls-key, gRPC is served over TLS.
    #[arg(long, env = "TRANSFER_GUARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The server's TLS private key (PEM).
    #[arg(long, env = "TRANSFER_GUARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Clients present a certificate signed by this CA (PEM) whose URI SAN is their SPIFFE id
    /// (spiffe://TRUST_DOMAIN/ROLE/...), or a bearer token; roles are enforced (docs/security.md).
    #[arg(long, env = "TRANSFER_GUARD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// The SPIFFE trust domain client certificates must belong to (default transfer-guard.local).
    #[arg(long, env = "TRANSFER_GUARD_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Accept bearer tokens signed by this Ed25519 key (PASERK file from `token keygen`);
    /// roles are enforced.
    #[arg(long, env = "TRANSFER_GUARD_TOKEN_PUBLIC_KEY")]
    token_public_key: Option<PathBuf>,
    /// required: a new ruleset goes live only when a second analyst approves it
    /// (`rules propose`, `rules approve`); automatic (default): when it passes its tests.
    #[arg(long, env = "TRANSFER_GUARD_APPROVAL", value_name = "automatic|required")]
    approval: Option<crate::service::Approval>,
    /// Screens and customer events worked on at once (default 32 per core).
    #[arg(long, env = "TRANSFER_GUARD_MAX_SCREENS_IN_FLIGHT")]
    max_screens_in_flight: Option<usize>,
    /// How long a screen waits for a slot before RESOURCE_EXHAUSTED (default 2 ms).
    #[arg(long, env = "TRANSFER_GUARD_SCREEN_QUEUE_WAIT_MS")]
    screen_queue_wait_ms: Option<u64>,
    /// Officers' calls in flight at once, a budget apart from the screens' (default 64).
    #[arg(long, env = "TRANSFER_GUARD_OFFICER_CALLS_IN_FLIGHT")]
    officer_calls_in_flight: Option<usize>,
    /// How long a call waits for the store to commit before the fail mode (default 1000 ms).
    #[arg(long, env = "TRANSFER_GUARD_COMMIT_TIMEOUT_MS")]
    commit_timeout_ms: Option<u64>,
    /// What screens get while the store cannot commit: floor (default: hold from
    /// --fail-floor-minor, warn below), hold, warn or unavailable.
    #[arg(long, env = "TRANSFER_GUARD_FAIL_MODE", value_name = "floor|hold|warn|unavailable")]
    fail_mode: Option<crate::api::admission::FailMode>,
    /// With fail mode floor: amounts from here (minor units, default 500000 = 5,000 CNY) get HOLD.
    #[arg(long, env = "TRANSFER_GUARD_FAIL_FLOOR_MINOR")]
    fail_floor_minor: Option<i64>,
    /// The largest request message accepted, in bytes (default 65536).
    #[arg(long, env = "TRANSFER_GUARD_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// HTTP/2 streams one connection may have open (default 256).
    #[arg(long, env = "TRANSFER_GUARD_STREAMS_PER_CONNECTION")]
    streams_per_connection: Option<u32>,
    /// Also serve officers, analysts and health checks on this address, from a runtime thread
    /// of their own, so that a flood of screens cannot delay them (default: the main listener only).
    #[arg(long, env = "TRANSFER_GUARD_OFFICER_LISTEN")]
    officer_listen: Option<String>,
    /// WatchAlerts streams open at once per station (default 64).
    #[arg(long, env = "TRANSFER_GUARD_WATCHERS_PER_STATION")]
    watchers_per_station: Option<usize>,
    /// Join a cluster on these NATS JetStream servers (docs/scaling.md); without it, one node.
    #[arg(long, env = "TRANSFER_GUARD_CLUSTER")]
    cluster: Option<String>,
    /// This node's name in the cluster: unique, and the same across its restarts.
    #[arg(long, env = "TRANSFER_GUARD_NODE_ID")]
    node_id: Option<String>,
    /// HOST:PORT the other nodes forward calls to (default: --listen).
    #[arg(long, env = "TRANSFER_GUARD_ADVERTISE")]
    advertise: Option<String>,
    /// Partitions of the customers, fixed when the cluster is created (default 256).
    #[arg(long, env = "TRANSFER_GUARD_PARTITIONS")]
    partitions: Option<u16>,
    /// How long a partition's lease lasts unrenewed (default 6s).
    #[arg(long, env = "TRANSFER_GUARD_LEASE")]
    lease: Option<String>,
    /// JetStream replicas of the cluster's buckets and journal (default 1; 3 on a 3-server NATS cluster).
    #[arg(long, env = "TRANSFER_GUARD_CLUSTER_REPLICAS")]
    cluster_replicas: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub(super) async fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    if args.noop_server {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        outln!("no-op baseline serving on {} (pid {}); Ctrl-C stops it", listener.local_addr()?, std::process::id());
        crate::loadgen::serve_noop(listener, server::shutdown_signal()).await?;
        return Ok(0);
    }
    let duration = parse_duration(&args.duration)
        .filter(|d| *d > 0)
        .with_context(|| format!("--duration: `{}` is not e.g. 10s", args.duration))?;
    if args.compare_durability && args.in_process.is_none() {
        bail!("--compare-durability needs --in-process RULES");
    }
    let mut stop_in_process = None;
    let addr = match &args.in_process {
        None => args.addr.clone(),
        Some(rules) => {
            let (addr, running) = start_in_process(rules, args.durability).await?;
            stop_in_process = Some(running);
            addr
        }
    };
    let mut config = crate::loadgen::LoadConfig {
        addr: addr.clone(),
        concurrency: args.concurrency,
        duration: std::time::Duration::from_secs(duration as u64),
        rate: args.rate,
        connections: args.connections,
        backoff: std::time::Duration::from_millis(args.backoff_ms),
    };
    let mode = match args.rate {
        Some(r) => format!("open loop at {r:.0} req/s, at most {} in flight", args.concurrency),
        None => format!("closed loop, {} callers", args.concurrency),
    };
    outln!("{mode}, {} connections, {}", args.connections, args.duration);
    let run_id = generated_id("bench");
    let cpu_before = args.server_pid.and_then(crate::loadgen::process_cpu);
    let probe = args.flood.then(|| {
        let (addr, duration, run, pid) = (addr.clone(), config.duration, run_id.clone(), args.server_pid);
        let officer_addr = args.officer_addr.clone();
        tokio::spawn(async move { crate::loadgen::probe(&addr, officer_addr.as_deref(), duration, &run, pid).await })
    });
    let target = crate::loadgen::run(&config, &run_id).await.with_context(|| format!("connect to {addr}"))?;
    if let Some(probe) = probe {
        let report = probe.await.context("the probe stopped")?.with_context(|| format!("probe {addr}"))?;
        outln!("{}", report.summary());
    }
    if let (Some(pid), Some(before)) = (args.server_pid, cpu_before) {
        match crate::loadgen::process_cpu(pid) {
            Some(after) if target.ok > 0 => outln!(
                "server (pid {pid}) CPU: {:.2} s in all, {:.1} µs per request",
                (after - before).as_secs_f64(),
                (after - before).as_secs_f64() * 1e6 / target.ok as f64
            ),
            _ => outln!("server (pid {pid}) CPU: not readable"),
        }
    }
    let label = if stop_in_process.is_some() {
        format!("screening (in-process, durability {:?})", args.durability).to_lowercase()
    } else {
        format!("screening {addr}")
    };
    outln!("{label}: {}", target.summary());
    if let Some(running) = stop_in_process.take() {
        running.stop().await;
    }
    let [_, allow, warn, hold, block] = target.actions;
    outln!("  actions: ALLOW {allow}, WARN {warn}, HOLD {hold}, BLOCK {block}");
    if let (true, Some(rules)) = (args.compare_durability, &args.in_process) {
        let other = match args.durability {
            crate::store::Durability::None => crate::store::Durability::Sync,
            crate::store::Durability::Sync => crate::store::Durability::None,
        };
        let (addr, running) = start_in_process(rules, other).await?;
        let run =
            crate::loadgen::run(&crate::loadgen::LoadConfig { addr, ..config.clone() }, &generated_id("bench")).await?;
        running.stop().await;
        outln!("{}: {}", format!("screening (in-process, durability {other:?})").to_lowercase(), run.summary());
        let (sync, none) = if other == crate::store::Durability::Sync { (&run, &target) } else { (&target, &run) };
        outln!("ratio durable (sync) / in-memory (none) throughput: {:.2}", sync.throughput() / none.throughput());
    }
    if args.baseline {
        let (addr, stop) = crate::loadgen::start_noop().await?;
        config.addr = addr;
        let noop = crate::loadgen::run(&config, &run_id).await?;
        let _ = stop.send(());
        outln!("no-op baseline (in-process): {}", noop.summary());
        outln!("ratio screening / no-op throughput: {:.2}", target.throughput() / noop.throughput());
    }
    Ok(i32::from(target.errors > 0))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRANSFER_GUARD_LOG")
        // Ours at INFO, dependencies (the store's internals, h2, tonic) at WARN
        // unless asked for with TRANSFER_GUARD_LOG.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,transfer_guard=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    init_logs(args.log_format);
    let flags = Settings {
        listen: args.listen,
        rules: args.rules,
        data_dir: args.data_dir,
        nats_url: args.nats_url,
        nats_stream: args.nats_stream,
        nats_subject_prefix: args.nats_subject_prefix,
        metrics_listen: args.metrics_listen,
        durability: args.durability,
        max_clock_skew: args.max_clock_skew,
        alert_retention: args.alert_retention,
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        insecure_plaintext: args.insecure_plaintext.then_some(true),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        trust_domain: args.trust_domain,
        token_public_key: args.token_public_key,
        approval: args.approval,
        max_screens_in_flight: args.max_screens_in_flight,
        screen_queue_wait_ms: args.screen_queue_wait_ms,
        officer_calls_in_flight: args.officer_calls_in_flight,
        commit_timeout_ms: args.commit_timeout_ms,
        fail_mode: args.fail_mode,
        fail_floor_minor: args.fail_floor_minor,
        max_message_bytes: args.max_message_bytes,
        streams_per_connection: args.streams_per_connection,
        watchers_per_station: args.watchers_per_station,
        officer_listen: args.officer_listen,
        board_listen: args.board_listen,
        cluster: args.cluster,
        node_id: args.node_id,
        advertise: args.advertise,
        partitions: args.partitions,
        lease: args.lease,
        cluster_replicas: args.cluster_replicas,
    };
    let config = Config::resolve(&flags, args.config.as_deref())?;
    if config.durability == crate::store::Durability::None {
        tracing::warn!("durability none: nothing is kept across a restart");
    }
    let setup = crate::app::Setup {
        alert_retention_secs: config.alert_retention.as_secs() as i64,
        approval: config.approval,
        ..crate::app::Setup::new(&config.rules_dir, &config.data_dir, config.durability)
    };
    let app = crate::app::build(&setup)?;
    let guard = app.guard;
    runtime()?.block_on(async move {
        let cluster = match (&config.cluster, &app.store) {
            (Some(c), Some(store)) => Some(
                crate::cluster::Cluster::join(c.clone(), guard.clone(), store)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?,
            ),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let ruleset = guard.ruleset();
        tracing::info!(
            listen = %listener.local_addr()?,
            rules = %config.rules_dir.display(),
            version = %ruleset.version,
            rules_count = ruleset.rules.len(),
            "transfer-guard serving"
        );
        let (trust, tls) = crate::app::trust(&config.security)?;
        match (&tls, &trust) {
            (None, Trust::Open) => tracing::warn!(
                listen = %config.listen,
                "plaintext gRPC with every caller trusted (no TLS, no roles){}",
                if config.listen.ip().is_loopback() { ": loopback only" } else { ": --insecure-plaintext" }
            ),
            (Some(_), Trust::Open) => tracing::warn!("TLS without client identities: every caller trusted"),
            (None, Trust::Enforced { .. }) => {
                tracing::warn!("bearer tokens over plaintext: anyone on the path can read and replay them")
            }
            (Some(_), Trust::Enforced { .. }) => tracing::info!(
                trust_domain = %config.security.trust_domain,
                client_certificates = config.security.client_ca.is_some(),
                tokens = config.security.token_public_key.is_some(),
                "TLS with callers identified; roles enforced"
            ),
        }
        if config.approval == crate::service::Approval::Required {
            tracing::info!("maker-checker: a new ruleset goes live only when a second analyst approves it");
        }
        let metrics = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("listen for metrics on {}", config.metrics_listen))?;
        tracing::info!(metrics = %metrics.local_addr()?, "metrics at /metrics");
        let board = match config.board_listen {
            None => None,
            // People sign in to the board with tokens; certificates are for systems.
            Some(_) if matches!(trust, Trust::Enforced { tokens: None, .. }) => {
                tracing::warn!("no board: callers are identified but no --token-public-key lets people sign in");
                None
            }
            // The board is for people: if its port is taken, screening still starts.
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(board = %format!("http://{}/", l.local_addr()?), "the board for officers and analysts");
                    Some(l)
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "no board: cannot listen there (set --board-listen, or off)");
                    None
                }
            },
        };
        let extras = server::Extras {
            cluster,
            peer_tls: crate::app::peer_tls(&config.security)?,
            board,
            nats: config.nats.clone(),
            webhook: config.webhook.clone(),
            metrics: Some(metrics),
            watch_rules: true,
            max_clock_skew: config.max_clock_skew,
            trust,
            tls,
            limits: config.limits.clone(),
            officer_listener: match config.officer_listen {
                None => None,
                Some(addr) => {
                    let l =
                        std::net::TcpListener::bind(addr).with_context(|| format!("listen for officers on {addr}"))?;
                    tracing::info!(officers = %l.local_addr()?, "officers, analysts and health also served here");
                    Some(l)
                }
            },
        };
        server::run_with(listener, guard, extras, server::shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(0)
    })
}

fn store_recover(data_dir: &Path, rules: &Path) -> anyhow::Result<i32> {
    let (guard, store) = attach_store(open_rules(rules)?, data_dir)?;
    let r = guard.recovered();
    outln!(
        "recovered in {:.2} s: {} customers, {} payees, {} watchlist entries, {} transfers ({} held), {} event ids, {} alerts, {} alert events",
        r.seconds, r.customers, r.payees, r.watchlist, r.transfers, r.held, r.event_ids, r.alerts, r.alert_events
    );
    outln!("store on disk: {:.1} MiB", store.disk_bytes() as f64 / (1024.0 * 1024.0));
    Ok(0)
}

fn store_fill(data_dir: &Path, rules: &Path, customers: usize, transfers: u64) -> anyhow::Result<i32> {
    use crate::model::Payee;
    let (guard, store) = attach_store(open_rules(rules)?, data_dir)?;
    let state = guard.state();
    let now = crate::service::wall_clock();
    let started = std::time::Instant::now();
    for c in 0..customers {
        let id = format!("cust-{c:08}");
        for p in 0..5 {
            let payee = Payee { account: format!("6222{c:08}{p:04}"), name: String::new(), bank_code: "icbc".into() };
            state.record_known_payee(&id, &payee, now - 90 * 86_400 + p as i64);
        }
        if c % 10 == 0 {
            for t in 0..2 {
                let payee =
                    Payee { account: format!("6222{c:08}{t:04}"), name: String::new(), bank_code: "icbc".into() };
                state.apply(&crate::state::TransferRecord {
                    customer_id: id.clone(),
                    payee: crate::state::PayeeKey::of(&payee),
                    amount: 100_000,
                    at: now - 3600 + t,
                });
            }
        }
        if c % 50_000 == 49_999 {
            store.flush()?;
        }
    }
    store.flush()?;
    outln!("{customers} customers written in {:.1} s", started.elapsed().as_secs_f64());
    let started = std::time::Instant::now();
    for k in 0..transfers {
        let transfer = crate::model::Transfer::try_from(&crate::loadgen::request("fill", k))
            .map_err(|v| anyhow::anyhow!("generated request invalid: {v:?}"))?;
        guard.screen(&transfer, k, &crate::auth::Caller::Open)?;
        if k % 50_000 == 49_999 {
            store.flush()?;
        }
    }
    store.flush()?;
    if transfers > 0 {
        outln!("{transfers} transfers screened and written in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(0)
}

/// `store`: what a data dir's store holds, or filling one for startup tests.
pub fn store(command: StoreCommand) -> anyhow::Result<i32> {
    match command {
        StoreCommand::Recover { data_dir, rules } => store_recover(&data_dir, &rules),
        StoreCommand::Fill { data_dir, customers, transfers, rules } => {
            store_fill(&data_dir, &rules, customers, transfers)
        }
    }
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit trail's hash chain: prints "intact, N records" and the head hash to anchor
    /// elsewhere, or the first line that does not follow the one before it (exit 1).
    ///
    /// Example: transfer-guard audit verify data
    Verify {
        /// The data dir (the file is DATA_DIR/audit.jsonl).
        #[arg(default_value = "data")]
        data_dir: PathBuf,
    },
}

/// `audit`: the audit trail.
pub fn audit(command: AuditCommand) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Verify { data_dir } => {
            let path = data_dir.join("audit.jsonl");
            match crate::audit::verify(&path).with_context(|| format!("read {}", path.display()))? {
                crate::audit::Verified::Intact { records, head } => {
                    outln!("intact, {records} records (head sha256 {head})");
                    Ok(0)
                }
                crate::audit::Verified::Broken { line, why } => {
                    outln!("broken at line {line} of {}: {why}", path.display());
                    Ok(1)
                }
            }
        }
    }
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an Ed25519 key pair: DIR/token-secret.paserk (keep it with whoever issues tokens,
    /// readable by them only) and DIR/token-public.paserk (give it to the server:
    /// --token-public-key).
    ///
    /// Example: transfer-guard token keygen --out keys
    Keygen {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Issue a token naming a principal, signed with the secret key.
    ///
    /// Example: transfer-guard token issue --key keys/token-secret.paserk --role officer
    ///          --station heshan-zhongshan-ps --subject officer-li --ttl 12h
    Issue {
        /// The secret key file (token keygen).
        #[arg(long, env = "TRANSFER_GUARD_TOKEN_SECRET_KEY")]
        key: PathBuf,
        /// teller, system, officer, analyst or admin.
        #[arg(long)]
        role: String,
        /// The officer's station (officer), or the bank (teller, system).
        #[arg(long, visible_alias = "bank", default_value = "")]
        station: String,
        /// The person's or system's id.
        #[arg(long)]
        subject: String,
        /// How long the token is valid, e.g. 12h.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
}

/// `token`: key pairs and tokens for people.
pub fn token(command: TokenCommand) -> anyhow::Result<i32> {
    use crate::auth::token::{generate_key_pair, TokenSigner};
    use crate::auth::{Principal, Role};
    match command {
        TokenCommand::Keygen { out } => {
            let (secret, public) = generate_key_pair()?;
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            let secret_path = out.join("token-secret.paserk");
            write_private(&secret_path, &secret)?;
            let public_path = out.join("token-public.paserk");
            std::fs::write(&public_path, format!("{public}\n"))
                .with_context(|| format!("write {}", public_path.display()))?;
            outln!("secret key: {} (issue tokens with it; keep it private)", secret_path.display());
            outln!("public key: {} (serve --token-public-key)", public_path.display());
            Ok(0)
        }
        TokenCommand::Issue { key, role, station, subject, ttl } => {
            let role = Role::parse(&role)
                .with_context(|| format!("--role `{role}` is not teller, system, officer, analyst or admin"))?;
            if role.is_scoped() && station.is_empty() {
                bail!("a {role} token needs --station (officer) or --bank (teller, system)");
            }
            let secs =
                parse_duration(&ttl).filter(|s| *s > 0).with_context(|| format!("--ttl `{ttl}` is not e.g. 12h"))?;
            let text = std::fs::read_to_string(&key).with_context(|| format!("read {}", key.display()))?;
            let signer = TokenSigner::from_paserk(&text)?;
            let scope = if role.is_scoped() { station } else { String::new() };
            let who = Principal { role, scope, subject };
            let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
            outln!("{}", signer.issue(&who, until)?);
            eprintln!("token for {who}, valid until {}", crate::cli::rfc3339(until.unix_timestamp()));
            Ok(0)
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("create {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
