//! Subcommands of the one `transfer-guard` binary: the server, the analysts'
//! rule tools, and a gRPC client for every role (teller, officer, analyst).
//! Parses flags with clap and calls the library; `anyhow` lives here and in
//! `main`, nowhere else.

use crate::api::proto as pb;
use crate::app::{attach_store, open_rules};
use crate::config::{Config, Overrides};
use crate::model::{format_minor, parse_major_units};
use crate::rules::{parse_duration, schema, Ruleset};
use crate::ruletest;
use crate::server;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pbjson_types::Timestamp;
use std::io::Read;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(
    name = "transfer-guard",
    version,
    about = "Screens outgoing bank transfers for fraud and alerts the police station that covers the branch",
    after_help = "Examples:\n  transfer-guard serve\n  transfer-guard screen --file seed.json\n  transfer-guard alerts watch --station heshan-zhongshan-ps\n  transfer-guard rules check rules/"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service (defaults: rules from ./rules, data in ./data, gRPC on 127.0.0.1:50051).
    ///
    /// Precedence: flags, then TRANSFER_GUARD_* env vars, then the --config file, then defaults.
    Serve(ServeArgs),
    /// Screen a transfer (teller). From a JSON ScreenRequest (--file, or - for stdin) or flags.
    Screen(Box<ScreenArgs>),
    /// Record a customer event (core banking).
    #[command(subcommand)]
    Event(EventCommand),
    /// A screened transfer's status (teller).
    #[command(subcommand)]
    Transfer(TransferCommand),
    /// The police station's queue (officer).
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// The police watchlist of mule accounts (officer).
    #[command(subcommand)]
    Watchlist(WatchlistCommand),
    /// Analyst tools: offline (check, test, fields) and against a server (show, reload, dry-run).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Write simulated labelled traffic (ordinary life and scams) as JSON lines to stdout.
    ///
    /// Example: transfer-guard simulate --customers 10000 --days 30 --seed 1 > history.jsonl
    Simulate {
        #[arg(long, default_value_t = 10_000)]
        customers: usize,
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Replay a JSON-lines history through a ruleset and a fresh state; report actions, rule hits,
    /// alerts per station and, with labels, precision and recall.
    ///
    /// Example: transfer-guard backtest --rules rules --input history.jsonl --baseline old-rules
    Backtest {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// Another rules folder: list the decisions that change and why.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML report (charts inline; opens offline).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Count only transfers from this local date (YYYY-MM-DD, the ruleset's offset) in the
        /// report; earlier ones just warm up the state.
        #[arg(long)]
        from: Option<String>,
    },
    /// Load-test a server's Screen with realistic requests; print throughput and latency percentiles.
    ///
    /// Example: transfer-guard bench --concurrency 64 --duration 10s --baseline
    Bench(BenchArgs),
    /// The durable store in DATA_DIR/store (the service must not be running on it).
    #[command(subcommand)]
    Store(StoreCommand),
}

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
    #[arg(long, value_enum, default_value_t = crate::store::Durability::None)]
    durability: crate::store::Durability,
    /// With --in-process: also bench a durable (sync) service the same way, and print the ratio
    /// durable / in-memory.
    #[arg(long)]
    compare_durability: bool,
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
    /// A TOML config file (keys: listen, rules, data_dir, durability, metrics_listen, nats_url,
    /// nats_stream, nats_subject_prefix, max_clock_skew, alert_retention, webhook_url, webhook_secret).
    #[arg(long, env = "TRANSFER_GUARD_CONFIG")]
    config: Option<PathBuf>,
    /// sync (default): answer only once the change is on disk in DATA_DIR/store, and recover it
    /// after a crash; none: keep everything in memory (tests, benchmarks).
    #[arg(long, env = "TRANSFER_GUARD_DURABILITY", value_enum)]
    durability: Option<crate::store::Durability>,
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
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub struct Client {
    /// The server.
    #[arg(long, global = true, env = "TRANSFER_GUARD_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Print the answer as proto3 JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args)]
pub struct ScreenArgs {
    #[command(flatten)]
    client: Client,
    /// A ScreenRequest in proto3 JSON (as grpcurl speaks it); `-` reads stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// With --file: move every time in the request by the same amount so that requestedAt
    /// is now (a saved request replayed live; the server refuses times far from its clock).
    #[arg(long, requires = "file")]
    now: bool,
    /// Evaluate without touching state or raising alerts.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    transfer: TransferFlags,
}

#[derive(Args)]
pub struct TransferFlags {
    /// Idempotency key (default: generated).
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long, default_value = "psbc")]
    bank: String,
    #[arg(long, default_value = "psbc-heshan-zhongshan")]
    branch: String,
    #[arg(long, default_value = "teller-01")]
    teller: String,
    /// counter, atm, mobile or online.
    #[arg(long, default_value = "counter")]
    channel: String,
    #[arg(long, default_value = "customer-0001")]
    customer_id: String,
    #[arg(long, default_value = "6210980000000001")]
    account_id: String,
    #[arg(long, default_value = "1968-05-10")]
    birth_date: String,
    #[arg(long, default_value = "2008-01-01")]
    opened_on: String,
    /// Daily limit in yuan.
    #[arg(long, default_value = "50000")]
    daily_limit: String,
    #[arg(long, default_value = "6217000099998888777")]
    payee_account: String,
    #[arg(long, default_value = "陈某某")]
    payee_name: String,
    #[arg(long, default_value = "ccb")]
    payee_bank: String,
    /// Amount in yuan, e.g. 400000 or 1234.50.
    #[arg(long, default_value = "1000")]
    amount: String,
    #[arg(long, default_value = "CNY")]
    currency: String,
    #[arg(long, default_value = "")]
    memo: String,
    /// A teller observation (repeatable): on_phone_with_stranger, agitated, refuses_to_explain,
    /// accompanied_by_stranger, coached, urgent.
    #[arg(long = "observe")]
    observations: Vec<String>,
}

#[derive(Subcommand)]
pub enum EventCommand {
    /// The customer's daily limit changed.
    LimitChanged {
        #[command(flatten)]
        client: Client,
        #[arg(long)]
        customer_id: String,
        /// Old limit in yuan.
        #[arg(long)]
        old: String,
        /// New limit in yuan.
        #[arg(long)]
        new: String,
        /// The new limit is the bank's maximum.
        #[arg(long)]
        maximum: bool,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// The bank executed a screened transfer.
    Executed {
        #[command(flatten)]
        client: Client,
        request_id: String,
        #[arg(long)]
        event_id: Option<String>,
    },
    /// The bank cancelled a screened transfer: it leaves the customer's history.
    Cancelled {
        #[command(flatten)]
        client: Client,
        request_id: String,
        #[arg(long)]
        event_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TransferCommand {
    /// The current status.
    Get {
        #[command(flatten)]
        client: Client,
        request_id: String,
    },
    /// Wait for the officer's decision or the hold's expiry, printing each change.
    Watch {
        #[command(flatten)]
        client: Client,
        request_id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutcomeArg {
    Dissuaded,
    FraudConfirmed,
    FalseAlarm,
    CustomerProceeded,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    Release,
    Block,
}

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Stream a station's alerts; resume with --after CURSOR.
    Watch {
        #[command(flatten)]
        client: Client,
        /// Station id (repeatable).
        #[arg(long = "station", required = true)]
        stations: Vec<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// List alerts, newest first, reading on page by page.
    List {
        #[command(flatten)]
        client: Client,
        #[arg(long = "station")]
        stations: Vec<String>,
        /// At most this many alerts in all (0: every one).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Alerts asked for per call.
        #[arg(long, default_value_t = 200)]
        page_size: u32,
    },
    /// Claim an alert for an officer.
    Claim {
        #[command(flatten)]
        client: Client,
        alert_id: String,
        #[arg(long)]
        officer: String,
    },
    /// Resolve an alert; a held transfer needs --decision.
    Resolve {
        #[command(flatten)]
        client: Client,
        alert_id: String,
        #[arg(long)]
        officer: String,
        #[arg(long, value_enum)]
        outcome: OutcomeArg,
        #[arg(long, value_enum)]
        decision: Option<DecisionArg>,
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Subcommand)]
pub enum WatchlistCommand {
    /// Add or update an account.
    Add {
        #[command(flatten)]
        client: Client,
        account: String,
        #[arg(long)]
        station: String,
        #[arg(long)]
        reason: String,
        /// e.g. 30d; none = until removed.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Remove an account.
    Rm {
        #[command(flatten)]
        client: Client,
        account: String,
    },
    /// List every entry.
    Ls {
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Compile every rule file; list every error with file:line:col (exit 1 on error).
    ///
    /// Example: transfer-guard rules check rules/
    Check {
        /// The rules folder.
        #[arg(default_value = "rules")]
        dir: PathBuf,
    },
    /// Run the rule test cases in DIR/tests (exit 1 if any fails).
    ///
    /// Example: transfer-guard rules test rules/ --verbose
    Test {
        #[arg(default_value = "rules")]
        dir: PathBuf,
        /// Print every case, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print the context field table of docs/rules.md, generated from the schema.
    Fields,
    /// Show the ruleset a server is running.
    Show {
        #[command(flatten)]
        client: Client,
    },
    /// Ask a server to reload its rules folder (kept on any error).
    Reload {
        #[command(flatten)]
        client: Client,
    },
    /// Screen on a server without touching state or raising alerts.
    DryRun(Box<ScreenArgs>),
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Rules(RulesCommand::Check { dir }) => Ok(match load(&dir) {
            Ok(rs) => {
                println!("ok: {} rules, {} lists, version {}", rs.rules.len(), rs.lists.len(), rs.version);
                0
            }
            Err(code) => code,
        }),
        Command::Rules(RulesCommand::Test { dir, verbose }) => rules_test(&dir, verbose),
        Command::Rules(RulesCommand::Fields) => {
            print!("{}", schema::field_table_markdown());
            Ok(0)
        }
        Command::Bench(args) => runtime()?.block_on(bench(args)),
        Command::Store(StoreCommand::Recover { data_dir, rules }) => store_recover(&data_dir, &rules),
        Command::Store(StoreCommand::Fill { data_dir, customers, transfers, rules }) => {
            store_fill(&data_dir, &rules, customers, transfers)
        }
        Command::Simulate { customers, days, seed } => {
            use std::io::Write as _;
            let out = std::io::stdout();
            let mut out = std::io::BufWriter::new(out.lock());
            for line in crate::simulate::generate(customers, days, seed) {
                serde_json::to_writer(&mut out, &line)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(0)
        }
        Command::Backtest { rules, input, baseline, json, report, from } => {
            backtest(&rules, &input, baseline.as_deref(), json, report.as_deref(), from.as_deref())
        }
        other => runtime()?.block_on(client(other)),
    }
}

fn backtest(
    rules: &Path,
    input: &Path,
    baseline: Option<&Path>,
    json: bool,
    html: Option<&Path>,
    from: Option<&str>,
) -> anyhow::Result<i32> {
    let load_rules = |dir: &Path| -> anyhow::Result<(Ruleset, crate::alerts::Routing)> {
        let ruleset = load(dir).map_err(|_| anyhow::anyhow!("the rules in {} did not load", dir.display()))?;
        let routing = crate::alerts::Routing::load_dir(dir)
            .map_err(|d| anyhow::anyhow!("{}", d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
        Ok((ruleset, routing))
    };
    let (ruleset, routing) = load_rules(rules)?;
    let measure_from = match from {
        None => None,
        Some(day) => {
            let date = time::Date::parse(day, time::macros::format_description!("[year]-[month]-[day]"))
                .with_context(|| format!("--from: `{day}` is not YYYY-MM-DD"))?;
            Some(date.midnight().assume_offset(ruleset.utc_offset).unix_timestamp())
        }
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut history = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parsed: crate::simulate::Labelled = match serde_json::from_str(line) {
            Ok(l) => l,
            // A bare ScreenRequest (no label) is accepted too.
            Err(_) => crate::simulate::Labelled {
                request: serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a ScreenRequest", input.display(), n + 1))?,
                label: String::new(),
                scam_type: String::new(),
            },
        };
        history.push(parsed);
    }
    let started = std::time::Instant::now();
    let total = history.len() as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::default_bar()
            .template("{bar:40} {pos}/{len} transfers, {per_sec}, eta {eta}")
            .expect("a valid template"),
    );
    if total < 100_000 || json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (report, replayed) =
        crate::backtest::run_from(&ruleset, &routing, &history, measure_from, |done| bar.set_position(done));
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if json {
        print_json(&report)?;
    } else {
        println!("{}", crate::backtest::text(&report));
        println!(
            "replayed in {:.2} s ({:.0} transfers/s)",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
    }
    let mut changes = Vec::new();
    if let Some(base) = baseline {
        let (base_rules, base_routing) = load_rules(base)?;
        let (_, base_replayed) = crate::backtest::run_from(&base_rules, &base_routing, &history, measure_from, |_| {});
        changes = crate::backtest::diff(&replayed, &base_replayed);
        println!("\n{} decisions differ from the baseline {}:", changes.len(), base.display());
        for c in changes.iter().take(50) {
            println!("  {c}");
        }
    }
    if let Some(path) = html {
        std::fs::write(path, crate::backtest::html(&report, &changes))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(0)
}

async fn bench(args: BenchArgs) -> anyhow::Result<i32> {
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
    };
    let mode = match args.rate {
        Some(r) => format!("open loop at {r:.0} req/s, at most {} in flight", args.concurrency),
        None => format!("closed loop, {} callers", args.concurrency),
    };
    println!("{mode}, {} connections, {}", args.connections, args.duration);
    let run_id = generated_id("bench");
    let target = crate::loadgen::run(&config, &run_id).await.with_context(|| format!("connect to {addr}"))?;
    let label = if stop_in_process.is_some() {
        format!("screening (in-process, durability {:?})", args.durability).to_lowercase()
    } else {
        format!("screening {addr}")
    };
    println!("{label}: {}", target.summary());
    if let Some(running) = stop_in_process.take() {
        running.stop().await;
    }
    let [_, allow, warn, hold, block] = target.actions;
    println!("  actions: ALLOW {allow}, WARN {warn}, HOLD {hold}, BLOCK {block}");
    if let (true, Some(rules)) = (args.compare_durability, &args.in_process) {
        let other = match args.durability {
            crate::store::Durability::None => crate::store::Durability::Sync,
            crate::store::Durability::Sync => crate::store::Durability::None,
        };
        let (addr, running) = start_in_process(rules, other).await?;
        let run =
            crate::loadgen::run(&crate::loadgen::LoadConfig { addr, ..config.clone() }, &generated_id("bench")).await?;
        running.stop().await;
        println!("{}: {}", format!("screening (in-process, durability {other:?})").to_lowercase(), run.summary());
        let (sync, none) = if other == crate::store::Durability::Sync { (&run, &target) } else { (&target, &run) };
        println!("ratio durable (sync) / in-memory (none) throughput: {:.2}", sync.throughput() / none.throughput());
    }
    if args.baseline {
        let (addr, stop) = crate::loadgen::start_noop().await?;
        config.addr = addr;
        let noop = crate::loadgen::run(&config, &run_id).await?;
        let _ = stop.send(());
        println!("no-op baseline (in-process): {}", noop.summary());
        println!("ratio screening / no-op throughput: {:.2}", target.throughput() / noop.throughput());
    }
    Ok(i32::from(target.errors > 0))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")
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

fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    init_logs(args.log_format);
    let config = Config::resolve(&Overrides {
        listen: args.listen,
        rules: args.rules,
        data_dir: args.data_dir,
        config: args.config,
        nats_url: args.nats_url,
        nats_stream: args.nats_stream,
        nats_subject_prefix: args.nats_subject_prefix,
        metrics_listen: args.metrics_listen,
        durability: args.durability,
        max_clock_skew: args.max_clock_skew,
        alert_retention: args.alert_retention,
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
    })?;
    if config.durability == crate::store::Durability::None {
        tracing::warn!("durability none: nothing is kept across a restart");
    }
    let setup = crate::app::Setup {
        alert_retention_secs: config.alert_retention.as_secs() as i64,
        ..crate::app::Setup::new(&config.rules_dir, &config.data_dir, config.durability)
    };
    let guard = crate::app::build(&setup)?.guard;
    runtime()?.block_on(async move {
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
        let metrics = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("listen for metrics on {}", config.metrics_listen))?;
        tracing::info!(metrics = %metrics.local_addr()?, "metrics at /metrics");
        let extras = server::Extras {
            nats: config.nats.clone(),
            webhook: config.webhook.clone(),
            metrics: Some(metrics),
            watch_rules: true,
            max_clock_skew: config.max_clock_skew,
        };
        server::run_with(listener, guard, extras, server::shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(0)
    })
}

fn store_recover(data_dir: &Path, rules: &Path) -> anyhow::Result<i32> {
    let (guard, store) = attach_store(open_rules(rules)?, data_dir)?;
    let r = guard.recovered();
    println!(
        "recovered in {:.2} s: {} customers, {} payees, {} watchlist entries, {} transfers ({} held), {} event ids, {} alerts, {} alert events",
        r.seconds, r.customers, r.payees, r.watchlist, r.transfers, r.held, r.event_ids, r.alerts, r.alert_events
    );
    println!("store on disk: {:.1} MiB", store.disk_bytes() as f64 / (1024.0 * 1024.0));
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
    println!("{customers} customers written in {:.1} s", started.elapsed().as_secs_f64());
    let started = std::time::Instant::now();
    for k in 0..transfers {
        let transfer = crate::model::Transfer::try_from(&crate::loadgen::request("fill", k))
            .map_err(|v| anyhow::anyhow!("generated request invalid: {v:?}"))?;
        guard.screen(&transfer, k)?;
        if k % 50_000 == 49_999 {
            store.flush()?;
        }
    }
    store.flush()?;
    if transfers > 0 {
        println!("{transfers} transfers screened and written in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(0)
}

/// Loads a ruleset, printing every diagnostic to stderr on failure.
fn load(dir: &Path) -> Result<Ruleset, i32> {
    Ruleset::load_dir(dir).map_err(|diags| {
        for d in &diags {
            eprintln!("{d}\n");
        }
        eprintln!("{} error(s); the ruleset was not loaded", diags.len());
        1
    })
}

fn rules_test(dir: &Path, verbose: bool) -> anyhow::Result<i32> {
    let ruleset = match load(dir) {
        Ok(rs) => rs,
        Err(code) => return Ok(code),
    };
    let tests = dir.join("tests");
    if !tests.is_dir() {
        bail!("no test folder at {}", tests.display());
    }
    let results = match ruletest::run_dir(&ruleset, &tests) {
        Ok(r) => r,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}\n");
            }
            return Ok(1);
        }
    };
    let failed = results.iter().filter(|r| !r.passed()).count();
    for r in &results {
        if r.passed() {
            if verbose {
                println!("ok    {} [{} score {}] {}", r.location, r.action, r.score, r.name);
            }
        } else {
            println!("FAIL  {} {}", r.location, r.name);
            for f in &r.failures {
                println!("      {f}");
            }
        }
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    Ok(i32::from(failed > 0))
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_string())
        .with_context(|| format!("bad server address {addr}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach transfer-guard at {addr}"))
}

fn now() -> Timestamp {
    Timestamp { seconds: crate::service::wall_clock(), nanos: 0 }
}

fn generated_id(prefix: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{prefix}-{}-{}", t.as_secs(), t.subsec_nanos())
}

fn yuan(field: &str, s: &str) -> anyhow::Result<i64> {
    parse_major_units(s).with_context(|| format!("--{field}: `{s}` is not an amount in yuan (e.g. 1234.50)"))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints an answer as proto3 JSON with `--json`, else for a person.
fn show<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        human(value);
        Ok(())
    }
}

/// Maps a gRPC error to a readable one, listing BadRequest fields.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    match status.get_details_bad_request() {
        Some(bad) => {
            let mut msg = format!("{:?}: the server refused these fields:", status.code());
            for v in bad.field_violations {
                msg.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
            anyhow::anyhow!(msg)
        }
        None => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
    }
}

fn screen_request(args: &ScreenArgs) -> anyhow::Result<pb::ScreenRequest> {
    if let Some(path) = &args.file {
        let text = if path == Path::new("-") {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        };
        let mut r: pb::ScreenRequest = serde_json::from_str(&text).context("not a ScreenRequest in proto3 JSON")?;
        if args.now {
            if let Some(at) = r.requested_at {
                let shift = now().seconds - at.seconds;
                r.requested_at = Some(now());
                if let Some(change) = r.customer.as_mut().and_then(|c| c.last_limit_change.as_mut()) {
                    if let Some(t) = change.changed_at.as_mut() {
                        t.seconds = t.seconds.saturating_add(shift);
                    }
                }
            }
        }
        if r.requested_at.is_none() {
            r.requested_at = Some(now());
        }
        if r.request_id.is_empty() {
            r.request_id = generated_id("cli");
        }
        return Ok(r);
    }
    let t = &args.transfer;
    let channel = match t.channel.as_str() {
        "counter" => pb::Channel::Counter,
        "atm" => pb::Channel::Atm,
        "mobile" => pb::Channel::Mobile,
        "online" => pb::Channel::Online,
        other => bail!("--channel: unknown `{other}`; use counter, atm, mobile or online"),
    };
    let observations = t
        .observations
        .iter()
        .map(|o| {
            pb::Observation::from_str_name(&format!("OBSERVATION_{}", o.to_uppercase()))
                .map(|o| o as i32)
                .with_context(|| format!("--observe: unknown observation `{o}`"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(pb::ScreenRequest {
        request_id: t.request_id.clone().unwrap_or_else(|| generated_id("cli")),
        requested_at: Some(now()),
        bank_id: t.bank.clone(),
        branch_id: t.branch.clone(),
        teller_id: t.teller.clone(),
        channel: channel as i32,
        customer: Some(pb::Customer {
            customer_id: t.customer_id.clone(),
            account_id: t.account_id.clone(),
            birth_date: t.birth_date.clone(),
            account_opened_on: t.opened_on.clone(),
            daily_limit_minor: yuan("daily-limit", &t.daily_limit)?,
            last_limit_change: None,
        }),
        payee: Some(pb::Payee {
            account: t.payee_account.clone(),
            name: t.payee_name.clone(),
            bank_code: t.payee_bank.clone(),
        }),
        amount_minor: yuan("amount", &t.amount)?,
        currency: t.currency.clone(),
        memo: t.memo.clone(),
        observations,
    })
}

fn print_decision(r: &pb::ScreenResponse) {
    let action = pb::Action::try_from(r.action).map_or("?", |a| a.as_str_name().trim_start_matches("ACTION_"));
    println!("{action}  score {}  request {}  ruleset {}", r.score, r.request_id, r.ruleset_version);
    if !r.alert_id.is_empty() {
        println!("alert {} sent to station {}", r.alert_id, r.station_id);
    }
    if let Some(t) = &r.hold_expires_at {
        println!("held until {} (watch with: transfer-guard transfer watch {})", rfc3339(t.seconds), r.request_id);
    }
    for h in &r.hits {
        let mark = if h.shadow { "shadow" } else { "+" };
        println!("  {mark} {} ({})\n      {}\n      {}", h.rule_id, h.score, h.reason_zh, h.reason_en);
    }
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

fn print_status(s: &pb::TransferStatus) {
    let state =
        pb::TransferState::try_from(s.state).map_or("?", |x| x.as_str_name().trim_start_matches("TRANSFER_STATE_"));
    let mut line = format!("{}  {state}", s.request_id);
    if !s.outcome.is_empty() {
        line.push_str(&format!("  outcome {} by {}", s.outcome, s.officer_id));
    }
    if !s.note.is_empty() {
        line.push_str(&format!("  note: {}", s.note));
    }
    println!("{line}");
}

fn print_alert(a: &pb::Alert) {
    let state = pb::AlertState::try_from(a.state).map_or("?", |x| x.as_str_name().trim_start_matches("ALERT_STATE_"));
    let t = a.transfer.clone().unwrap_or_default();
    println!(
        "{}  {state}  station {}  score {}  {} {} from {} (age {}) to {} at {}",
        a.alert_id,
        a.station_id,
        a.score,
        format_minor(t.amount_minor),
        t.currency,
        t.customer_account_masked,
        t.customer_age_band,
        t.payee_account_masked,
        t.branch_id
    );
    for h in &a.hits {
        println!("    {} ({}): {}", h.rule_id, h.score, h.reason_zh);
    }
}

async fn screen(args: ScreenArgs, dry_run: bool) -> anyhow::Result<()> {
    let request = screen_request(&args)?;
    let channel = connect(&args.client.addr).await?;
    let response = if dry_run {
        pb::rules_client::RulesClient::new(channel).dry_run(request).await
    } else {
        pb::screening_client::ScreeningClient::new(channel).screen(request).await
    }
    .map_err(rpc_error)?
    .into_inner();
    show(args.client.json, &response, print_decision)
}

async fn client(command: Command) -> anyhow::Result<i32> {
    use pb::alerts_client::AlertsClient;
    use pb::rules_client::RulesClient;
    use pb::screening_client::ScreeningClient;
    use pb::watchlist_client::WatchlistClient;
    match command {
        Command::Screen(args) => {
            let dry = args.dry_run;
            screen(*args, dry).await?;
        }
        Command::Rules(RulesCommand::DryRun(args)) => screen(*args, true).await?,
        Command::Event(e) => {
            use pb::record_event_request::Event;
            let (client, event_id, event) = match e {
                EventCommand::LimitChanged { client, customer_id, old, new, maximum, event_id } => {
                    let ev = Event::LimitChanged(pb::LimitChanged {
                        customer_id,
                        old_limit_minor: yuan("old", &old)?,
                        new_limit_minor: yuan("new", &new)?,
                        is_maximum: maximum,
                        changed_at: Some(now()),
                    });
                    (client, event_id, ev)
                }
                EventCommand::Executed { client, request_id, event_id } => {
                    (client, event_id, Event::TransferExecuted(pb::TransferExecuted { request_id }))
                }
                EventCommand::Cancelled { client, request_id, event_id } => {
                    (client, event_id, Event::TransferCancelled(pb::TransferCancelled { request_id }))
                }
            };
            let request =
                pb::RecordEventRequest { event_id: event_id.unwrap_or_else(|| generated_id("ev")), event: Some(event) };
            let r = ScreeningClient::new(connect(&client.addr).await?)
                .record_event(request)
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &r, |r| {
                println!("recorded {}{}", r.event_id, if r.duplicate { " (already recorded)" } else { "" })
            })?;
        }
        Command::Transfer(TransferCommand::Get { client, request_id }) => {
            let s = ScreeningClient::new(connect(&client.addr).await?)
                .get_transfer(pb::GetTransferRequest { request_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &s, print_status)?;
        }
        Command::Transfer(TransferCommand::Watch { client, request_id }) => {
            let mut stream = ScreeningClient::new(connect(&client.addr).await?)
                .watch_transfer(pb::GetTransferRequest { request_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(s) = stream.message().await.map_err(rpc_error)? {
                if client.json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    print_status(&s);
                }
            }
        }
        Command::Alerts(AlertsCommand::Watch { client, stations, after }) => {
            let mut stream = AlertsClient::new(connect(&client.addr).await?)
                .watch_alerts(pb::WatchAlertsRequest { station_ids: stations, after_cursor: after })
                .await
                .map_err(rpc_error)?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(rpc_error)? {
                if client.json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!("[cursor {}] {}", e.cursor, e.kind);
                    if let Some(a) = &e.alert {
                        print_alert(a);
                    }
                }
            }
        }
        Command::Alerts(AlertsCommand::List { client, stations, limit, page_size }) => {
            let mut alerts = AlertsClient::new(connect(&client.addr).await?);
            let mut all = pb::ListAlertsResponse::default();
            loop {
                let wanted = if limit == 0 { page_size } else { page_size.min(limit - all.alerts.len() as u32) };
                let page = alerts
                    .list_alerts(pb::ListAlertsRequest {
                        station_ids: stations.clone(),
                        limit: wanted,
                        page_token: std::mem::take(&mut all.next_page_token),
                        ..Default::default()
                    })
                    .await
                    .map_err(rpc_error)?
                    .into_inner();
                all.alerts.extend(page.alerts);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() || (limit != 0 && all.alerts.len() as u32 >= limit) {
                    break;
                }
            }
            show(client.json, &all, |r| r.alerts.iter().for_each(print_alert))?;
        }
        Command::Alerts(AlertsCommand::Claim { client, alert_id, officer }) => {
            let a = AlertsClient::new(connect(&client.addr).await?)
                .claim_alert(pb::ClaimAlertRequest { alert_id, officer_id: officer })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &a, print_alert)?;
        }
        Command::Alerts(AlertsCommand::Resolve { client, alert_id, officer, outcome, decision, note }) => {
            let outcome = match outcome {
                OutcomeArg::Dissuaded => pb::Outcome::Dissuaded,
                OutcomeArg::FraudConfirmed => pb::Outcome::FraudConfirmed,
                OutcomeArg::FalseAlarm => pb::Outcome::FalseAlarm,
                OutcomeArg::CustomerProceeded => pb::Outcome::CustomerProceeded,
            };
            let decision = match decision {
                None => pb::HoldDecision::Unspecified,
                Some(DecisionArg::Release) => pb::HoldDecision::Release,
                Some(DecisionArg::Block) => pb::HoldDecision::Block,
            };
            let a = AlertsClient::new(connect(&client.addr).await?)
                .resolve_alert(pb::ResolveAlertRequest {
                    alert_id,
                    officer_id: officer,
                    outcome: outcome as i32,
                    hold_decision: decision as i32,
                    note,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            show(client.json, &a, print_alert)?;
        }
        Command::Watchlist(WatchlistCommand::Add { client, account, station, reason, expires_in }) => {
            let expires_at = match expires_in {
                None => None,
                Some(d) => Some(Timestamp {
                    seconds: now().seconds
                        + parse_duration(&d).with_context(|| format!("--expires-in: `{d}` is not e.g. 30d"))?,
                    nanos: 0,
                }),
            };
            let e = WatchlistClient::new(connect(&client.addr).await?)
                .upsert_entry(pb::WatchlistEntry {
                    account,
                    issuer_station_id: station,
                    reason,
                    expires_at,
                    added_at: None,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_json(&e)?;
        }
        Command::Watchlist(WatchlistCommand::Rm { client, account }) => {
            let r = WatchlistClient::new(connect(&client.addr).await?)
                .remove_entry(pb::RemoveEntryRequest { account })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("{}", if r.removed { "removed" } else { "no such entry" });
        }
        Command::Watchlist(WatchlistCommand::Ls { client }) => {
            let r = WatchlistClient::new(connect(&client.addr).await?)
                .list_entries(pb::ListEntriesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            print_json(&r)?;
        }
        Command::Rules(RulesCommand::Show { client }) => {
            let r = RulesClient::new(connect(&client.addr).await?)
                .get_ruleset(pb::GetRulesetRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if client.json {
                print_json(&r)?;
            } else {
                println!(
                    "{} {} (warn {}, hold {}, block {})",
                    r.name, r.version, r.warn_threshold, r.hold_threshold, r.block_threshold
                );
                for rule in &r.rules {
                    println!("  {:<40} {:>5} {:<6} {}", rule.id, rule.score, rule.mode, rule.title);
                }
            }
        }
        Command::Rules(RulesCommand::Reload { client }) => {
            let r = RulesClient::new(connect(&client.addr).await?)
                .reload_rules(pb::ReloadRulesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if r.reloaded {
                println!("reloaded: version {}", r.version);
            } else {
                for e in &r.errors {
                    eprintln!("{e}\n");
                }
                eprintln!("not reloaded; still running version {}", r.version);
                return Ok(1);
            }
        }
        Command::Serve(_)
        | Command::Store(_)
        | Command::Rules(_)
        | Command::Bench(_)
        | Command::Simulate { .. }
        | Command::Backtest { .. } => unreachable!("handled before"),
    }
    Ok(0)
}
