//! Subcommands of the one `transfer-guard` binary, one module per role: the
//! operator's (`serve`, `bench`, `store`), the teller's and core banking's
//! (`screen`, `event`, `transfer`), the officer's (`alerts`, `watchlist`) and
//! the analyst's (`rules`, `simulate`, `backtest`). Parses flags with clap and
//! calls the library; `anyhow` lives here and in `main`, nowhere else.

/// `println!` for a command's output that stops quietly when whoever reads it
/// has gone (`transfer-guard … | head`), as ripgrep does, rather than panicking
/// with a backtrace; any other failure to write is an error (exit 2).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

/// `print!` for a command's output, as [`outln`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e)
        }
    }};
}

mod analyst;
mod officer;
mod operator;
mod teller;

use crate::model::parse_major_units;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pbjson_types::Timestamp;
use std::path::PathBuf;
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
    Serve(Box<operator::ServeArgs>),
    /// Screen a transfer (teller). From a JSON ScreenRequest (--file, or - for stdin) or flags.
    Screen(Box<teller::ScreenArgs>),
    /// Record a customer event (core banking).
    #[command(subcommand)]
    Event(teller::EventCommand),
    /// A screened transfer's status (teller).
    #[command(subcommand)]
    Transfer(teller::TransferCommand),
    /// The police station's queue (officer).
    #[command(subcommand)]
    Alerts(officer::AlertsCommand),
    /// The police watchlist of mule accounts (officer).
    #[command(subcommand)]
    Watchlist(officer::WatchlistCommand),
    /// Analyst tools: offline (check, test, fields) and against a server (show, reload, dry-run).
    #[command(subcommand)]
    Rules(analyst::RulesCommand),
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
        /// Also write every measured transfer's decision as JSON lines (label, kind or scam
        /// type and stage, action, score, rules hit): the misses and false alarms to read.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Replay the police's side from the labels: this long after a scam payment was
        /// held or blocked (e.g. 2h), its officer confirms the fraud and the receiving
        /// account goes on the watchlist, as the service does on `fraud_confirmed`.
        #[arg(long, value_name = "DURATION")]
        officers_confirm_after: Option<String>,
    },
    /// Load-test a server's Screen with realistic requests; print throughput and latency percentiles.
    ///
    /// Example: transfer-guard bench --concurrency 64 --duration 10s --baseline
    Bench(operator::BenchArgs),
    /// The durable store in DATA_DIR/store (the service must not be running on it).
    #[command(subcommand)]
    Store(operator::StoreCommand),
    /// The audit trail in DATA_DIR/audit.jsonl.
    #[command(subcommand)]
    Audit(operator::AuditCommand),
    /// Signed bearer tokens for people (PASETO v4.public, Ed25519): make a key pair, issue a token.
    #[command(subcommand)]
    Token(operator::TokenCommand),
}

#[derive(Args, Clone)]
pub struct Client {
    /// The server (https:// for TLS).
    #[arg(long, global = true, env = "TRANSFER_GUARD_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Print the answer as proto3 JSON.
    #[arg(long, global = true)]
    json: bool,
    /// A bearer token (`transfer-guard token issue`) naming who you are.
    #[arg(long, global = true, env = "TRANSFER_GUARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With https://: the CA that signed the server's certificate (PEM).
    #[arg(long, global = true, env = "TRANSFER_GUARD_CA")]
    ca: Option<PathBuf>,
    /// With https://: this client's certificate (PEM), whose SPIFFE id names you.
    #[arg(long, global = true, env = "TRANSFER_GUARD_CLIENT_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// With --cert: its private key (PEM).
    #[arg(long, global = true, env = "TRANSFER_GUARD_CLIENT_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

/// Runs one command. Every command is routed here by its role's module: a new
/// command that is not routed does not compile.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(args) => operator::serve(*args),
        Command::Bench(args) => runtime()?.block_on(operator::bench(args)),
        Command::Store(command) => operator::store(command),
        Command::Audit(command) => operator::audit(command),
        Command::Token(command) => operator::token(command),
        Command::Screen(args) => runtime()?.block_on(teller::screen_command(*args)),
        Command::Event(command) => runtime()?.block_on(teller::event(command)),
        Command::Transfer(command) => runtime()?.block_on(teller::transfer(command)),
        Command::Alerts(command) => runtime()?.block_on(officer::alerts(command)),
        Command::Watchlist(command) => runtime()?.block_on(officer::watchlist(command)),
        Command::Rules(command) => analyst::rules(command),
        Command::Simulate { customers, days, seed } => analyst::simulate(customers, days, seed),
        Command::Backtest { rules, input, baseline, json, report, from, decisions, officers_confirm_after } => {
            analyst::backtest(
                &rules,
                &input,
                baseline.as_deref(),
                analyst::Outputs { json, html: report.as_deref(), decisions: decisions.as_deref() },
                analyst::ReplayArgs {
                    from: from.as_deref(),
                    officers_confirm_after: officers_confirm_after.as_deref(),
                },
            )
        }
    }
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")
}

/// A connection that sends the client's bearer token, if any, with every call.
pub(super) type Connection = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

#[derive(Clone)]
pub(super) struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(super) async fn connect(client: &Client) -> anyhow::Result<Connection> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let addr = &client.addr;
    let mut endpoint = Channel::from_shared(addr.to_string()).with_context(|| format!("bad server address {addr}"))?;
    if addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &client.ca {
            let pem = std::fs::read(ca).with_context(|| format!("read --ca {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&client.cert, &client.key) {
            let cert = std::fs::read(cert).with_context(|| format!("read --cert {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("read --key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach transfer-guard at {addr}"))?;
    let token = match &client.token {
        None => None,
        Some(t) => Some(format!("Bearer {}", t.trim()).parse().context("--token is not a valid header value")?),
    };
    Ok(tonic::service::interceptor::InterceptedService::new(channel, Bearer(token)))
}

pub(super) fn now() -> Timestamp {
    Timestamp { seconds: crate::service::wall_clock(), nanos: 0 }
}

pub(super) fn generated_id(prefix: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{prefix}-{}-{}", t.as_secs(), t.subsec_nanos())
}

pub(super) fn yuan(field: &str, s: &str) -> anyhow::Result<i64> {
    parse_major_units(s).with_context(|| format!("--{field}: `{s}` is not an amount in yuan (e.g. 1234.50)"))
}

pub(super) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints an answer as proto3 JSON with `--json`, else for a person.
pub(super) fn show<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        print_json(value)
    } else {
        human(value);
        Ok(())
    }
}

/// Maps a gRPC error to a readable one, listing BadRequest fields.
pub(super) fn rpc_error(status: tonic::Status) -> anyhow::Error {
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

pub(super) fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// The output could not be written: quietly done if the reader closed the
/// pipe, an error otherwise.
#[doc(hidden)]
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(2)
}
