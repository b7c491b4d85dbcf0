//! Subcommands of the one `transfer-guard` binary. Parses flags with clap and
//! calls the library; `anyhow` lives here and in `main`, nowhere else.

use crate::rules::{schema, Ruleset};
use crate::ruletest;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "transfer-guard", version, about = "Screens outgoing bank transfers for fraud and alerts the police station that covers the branch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Analyst tools for the rules folder.
    #[command(subcommand)]
    Rules(RulesCommand),
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
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
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
    }
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
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
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
    println!("{} passed, {} failed", results.len() - failed.len(), failed.len());
    Ok(i32::from(!failed.is_empty()))
}

/// Reads a file for a subcommand, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
