//! The analyst's commands: check and test rule folders offline, show, reload
//! and dry-run against a server, simulate traffic and backtest a ruleset.

use super::{connect, print_json, rpc_error, runtime, teller, Client};
use crate::api::proto as pb;
use crate::rules::{schema, Ruleset};
use crate::ruletest;
use anyhow::{bail, Context};
use clap::Subcommand;
use pb::rules_client::RulesClient;
use std::path::{Path, PathBuf};
use teller::ScreenArgs;

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
    /// Maker-checker: ask a server to compile and test its rules folder and hold it for a
    /// second analyst's approval (prints the version to approve).
    Propose {
        #[command(flatten)]
        client: Client,
    },
    /// Maker-checker: make the proposed VERSION live (not as its proposer).
    ///
    /// Example: transfer-guard rules approve sha256:3f2a... --token "$TOKEN"
    Approve {
        version: String,
        #[command(flatten)]
        client: Client,
    },
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
                outln!("ok    {} [{} score {}] {}", r.location, r.action, r.score, r.name);
            }
        } else {
            outln!("FAIL  {} {}", r.location, r.name);
            for f in &r.failures {
                outln!("      {f}");
            }
        }
    }
    outln!("{} passed, {} failed", results.len() - failed, failed);
    Ok(i32::from(failed > 0))
}

/// Where a backtest's report goes besides the text on stdout.
pub struct Outputs<'a> {
    /// The report as JSON on stdout instead of text.
    pub json: bool,
    /// A self-contained HTML report.
    pub html: Option<&'a Path>,
    /// Every measured transfer's decision, as JSON lines.
    pub decisions: Option<&'a Path>,
}

/// How a backtest replays the history.
pub struct ReplayArgs<'a> {
    /// Measure from this local date (YYYY-MM-DD).
    pub from: Option<&'a str>,
    /// Officers confirm held scams after this long ("2h", "30m").
    pub officers_confirm_after: Option<&'a str>,
}

pub fn backtest(
    rules: &Path,
    input: &Path,
    baseline: Option<&Path>,
    outputs: Outputs<'_>,
    replay: ReplayArgs<'_>,
) -> anyhow::Result<i32> {
    let Outputs { json, html, decisions } = outputs;
    let from = replay.from;
    let officers_confirm_after = match replay.officers_confirm_after {
        None => None,
        Some(d) => Some(
            crate::rules::parse_duration(d.trim())
                .filter(|secs| *secs >= 0)
                .with_context(|| format!("--officers-confirm-after: `{d}` is not a duration like 30m or 2h"))?,
        ),
    };
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
    let replay = crate::backtest::Replay { measure_from, officers_confirm_after };
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
                stage: String::new(),
                kind: String::new(),
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
        crate::backtest::run_with(&ruleset, &routing, &history, replay, |done| bar.set_position(done));
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if json {
        print_json(&report)?;
    } else {
        outln!("{}", crate::backtest::text(&report));
        outln!("replayed in {:.2} s ({:.0} transfers/s)", elapsed.as_secs_f64(), total as f64 / elapsed.as_secs_f64());
    }
    let mut changes = Vec::new();
    if let Some(base) = baseline {
        let (base_rules, base_routing) = load_rules(base)?;
        let (_, base_replayed) = crate::backtest::run_with(&base_rules, &base_routing, &history, replay, |_| {});
        changes = crate::backtest::diff(&replayed, &base_replayed);
        outln!("\n{} decisions differ from the baseline {}:", changes.len(), base.display());
        for c in changes.iter().take(50) {
            outln!("  {c}");
        }
    }
    if let Some(path) = decisions {
        std::fs::write(path, crate::backtest::decision_lines(&replayed, &history))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = html {
        std::fs::write(path, crate::backtest::html(&report, &changes))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(0)
}

/// `simulate`: labelled synthetic traffic as JSON lines on stdout.
pub fn simulate(customers: usize, days: u32, seed: u64) -> anyhow::Result<i32> {
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

/// `rules`: offline checks, and the calls to a running server.
pub fn rules(command: RulesCommand) -> anyhow::Result<i32> {
    match command {
        RulesCommand::Check { dir } => Ok(match load(&dir) {
            Ok(rs) => {
                let mut codes = rs.currencies.codes();
                let base = codes.next().unwrap_or_default();
                outln!(
                    "ok: {} rules, {} lists, amounts in {base} (rates for {}), version {}",
                    rs.rules.len(),
                    rs.lists.len(),
                    codes.collect::<Vec<_>>().join(" "),
                    rs.version
                );
                0
            }
            Err(code) => code,
        }),
        RulesCommand::Test { dir, verbose } => rules_test(&dir, verbose),
        RulesCommand::Fields => {
            out!("{}", schema::field_table_markdown());
            Ok(0)
        }
        remote => runtime()?.block_on(rules_remote(remote)),
    }
}

/// Prints why a ruleset was not `what` (each error, file:line:col) and the
/// version still running; the exit code.
fn refused(what: &str, errors: &[String], running: &str) -> i32 {
    for e in errors {
        eprintln!("{e}\n");
    }
    eprintln!("not {what}; still running version {running}");
    1
}

async fn rules_remote(command: RulesCommand) -> anyhow::Result<i32> {
    match command {
        RulesCommand::DryRun(args) => teller::screen(*args, true).await?,
        RulesCommand::Show { client } => {
            let r = RulesClient::new(connect(&client).await?)
                .get_ruleset(pb::GetRulesetRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if client.json {
                print_json(&r)?;
            } else {
                outln!(
                    "{} {} (warn {}, hold {}, block {})",
                    r.name,
                    r.version,
                    r.warn_threshold,
                    r.hold_threshold,
                    r.block_threshold
                );
                for rule in &r.rules {
                    outln!("  {:<40} {:>5} {:<6} {}", rule.id, rule.score, rule.mode, rule.title);
                }
            }
        }
        RulesCommand::Reload { client } => {
            let r = RulesClient::new(connect(&client).await?)
                .reload_rules(pb::ReloadRulesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if !r.reloaded {
                return Ok(refused("reloaded", &r.errors, &r.version));
            }
            outln!("reloaded: version {}", r.version);
        }
        RulesCommand::Propose { client } => {
            let r = RulesClient::new(connect(&client).await?)
                .propose_rules(pb::ProposeRulesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            if client.json {
                print_json(&r)?;
            }
            if !r.proposed {
                return Ok(refused("proposed", &r.errors, &r.running_version));
            }
            if !client.json {
                outln!("proposed: version {} by {}", r.version, r.proposed_by);
                outln!("still running {} until a second analyst runs: rules approve {}", r.running_version, r.version);
            }
        }
        RulesCommand::Approve { version, client } => {
            let r = RulesClient::new(connect(&client).await?)
                .approve_rules(pb::ApproveRulesRequest { version })
                .await
                .map_err(rpc_error)?
                .into_inner();
            outln!("approved: version {} is live", r.version);
        }
        RulesCommand::Check { .. } | RulesCommand::Test { .. } | RulesCommand::Fields => {
            bail!("offline rules commands run without a server")
        }
    }
    Ok(0)
}
