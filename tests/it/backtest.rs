//! Backtests replay exactly what the server does, and the commands around them.

use crate::harness::{repo, rules_dir, transfer_guard, TestServer};
use transfer_guard::alerts::Routing;
use transfer_guard::backtest;
use transfer_guard::rules::Ruleset;
use transfer_guard::simulate;

/// The same simulated history screened through the real server one request at
/// a time gives the same decisions as the backtest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backtest_decides_as_the_server_does() {
    let history = simulate::generate(300, 6, 7);
    let ruleset = Ruleset::load_dir(&rules_dir()).unwrap();
    let routing = Routing::load_dir(&rules_dir()).unwrap();
    let (_, replayed) = backtest::run(&ruleset, &routing, &history, |_| {});
    assert!(replayed.len() > 500, "{}", replayed.len());
    assert!(replayed.iter().any(|r| r.action >= transfer_guard::model::Action::Warn));

    // The history is stamped in the past: a replay server accepts any time, as
    // a staging server fed with history would be configured.
    let server = TestServer::start_with_clock_skew(std::time::Duration::from_secs(100 * 365 * 86_400)).await;
    let mut teller = server.screening().await;
    for (line, expected) in history.iter().zip(&replayed) {
        let answer = teller.screen(line.request.clone()).await.unwrap().into_inner();
        assert_eq!(answer.request_id, expected.request_id);
        let action = transfer_guard::model::Action::ALL[(answer.action - 1) as usize];
        assert_eq!((action, answer.score), (expected.action, expected.score), "{}", expected.request_id);
    }
    server.stop().await;
}

/// `simulate` then `backtest --report` through the real binary: a summary, and
/// a self-contained HTML page with charts.
#[test]
fn simulate_then_backtest_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = transfer_guard(&["simulate", "--customers", "400", "--days", "5", "--seed", "3"]);
    assert!(out.status.success());
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, &out.stdout).unwrap();
    let report = dir.path().join("report.html");
    let out = transfer_guard(&[
        "backtest",
        "--rules",
        repo().join("rules").to_str().unwrap(),
        "--input",
        history.to_str().unwrap(),
        "--baseline",
        repo().join("rules").to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("transfers replayed") && stdout.contains("flagged at least"), "{stdout}");
    assert!(stdout.contains("0 decisions differ from the baseline"), "{stdout}");
    let page = std::fs::read_to_string(report).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg") && page.contains("Rule hits"));
    assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"), "no outside resources");

    let json = transfer_guard(&["backtest", "--input", history.to_str().unwrap(), "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    assert!(value["transfers"].as_u64().unwrap() > 0);
}

/// The report per scam type and stage, per kind of ordinary transfer and for
/// the police, in text, JSON and the HTML page, from the real binary.
#[test]
fn the_backtest_reports_each_typology_and_kind_of_ordinary_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let out = transfer_guard(&["simulate", "--customers", "1500", "--days", "30", "--seed", "5"]);
    assert!(out.status.success());
    let history = dir.path().join("history.jsonl");
    std::fs::write(&history, &out.stdout).unwrap();
    let lines: Vec<simulate::Labelled> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let measured = |l: &&simulate::Labelled| l.request.requested_at.unwrap().seconds >= simulate::START;
    let decisive = lines.iter().filter(measured).filter(|l| l.is_scam() && l.stage == "decisive").count() as u64;
    let ordinary = lines.iter().filter(measured).filter(|l| !l.is_scam()).count() as u64;
    let report = dir.path().join("report.html");
    let args = |extra: &[&str]| {
        let mut v = vec!["backtest", "--input", history.to_str().unwrap(), "--from", "2026-03-01"];
        v.extend_from_slice(extra);
        transfer_guard(&v)
    };
    let json = args(&["--json"]);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON report");
    let typologies = value["typologies"].as_object().unwrap();
    let counted: u64 = typologies.values().filter_map(|s| s["decisive"]["transfers"].as_u64()).sum();
    assert_eq!(counted, decisive, "every decisive scam payment is counted under its type");
    for (kind, stages) in typologies {
        for (stage, c) in stages.as_object().unwrap() {
            assert!(stage == "decisive" || stage == "lead-in", "{kind} {stage}");
            let (warn, hold) = (c["warn_or_more"].as_f64().unwrap(), c["hold_or_more"].as_f64().unwrap());
            assert!((0.0..=1.0).contains(&hold) && hold <= warn && warn <= 1.0, "{kind} {stage}: {c}");
        }
    }
    let kinds = value["ordinary_kinds"].as_object().unwrap();
    assert_eq!(kinds.values().map(|c| c["transfers"].as_u64().unwrap()).sum::<u64>(), ordinary);
    for kind in simulate::ORDINARY_KINDS.iter().filter(|k| **k != "red packets") {
        assert!(kinds.contains_key(*kind), "{kind} reported separately");
    }
    let workload = &value["workload"];
    assert_eq!(workload["days"].as_u64(), Some(30));
    let alerts: u64 = value["actions"]["HOLD"].as_u64().unwrap_or(0) + value["actions"]["BLOCK"].as_u64().unwrap_or(0);
    assert_eq!(workload["alerts"].as_u64(), Some(alerts));
    assert!(workload["per_day_per_10k_customers"].as_f64().unwrap() > 0.0);

    let text = args(&["--report", report.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("scams by type and stage") && stdout.contains("police workload"), "{stdout}");
    assert!(stdout.contains("刷单返利") && stdout.contains("large first payment"), "{stdout}");
    let page = std::fs::read_to_string(report).unwrap();
    for section in
        ["Scams by type and stage", "False alarms by kind", "Police workload", "by score threshold", "own scale"]
    {
        assert!(page.contains(section), "{section}");
    }
}

/// A shadow rule never changes an action or a score, however it scores.
#[test]
fn shadow_rules_never_change_decisions() {
    let sources = transfer_guard::rules::read_sources(&rules_dir()).unwrap();
    let loud: Vec<_> = sources
        .iter()
        .cloned()
        .map(|mut s| {
            if s.path == "typology-romance.toml" {
                s.text = s.text.replace("mode = \"shadow\"\nwhen = 'matches_list(transfer.memo, \"kw_romance\") && payee.is_new'\nscore = 25", "mode = \"shadow\"\nwhen = 'transfer.amount > 0'\nscore = 900");
                assert!(s.text.contains("score = 900"));
            }
            s
        })
        .collect();
    let quiet = Ruleset::from_sources(sources).unwrap();
    let loud = Ruleset::from_sources(loud).unwrap();
    let routing = Routing::load_dir(&rules_dir()).unwrap();
    let history = simulate::generate(500, 7, 11);
    let (_, a) = backtest::run(&quiet, &routing, &history, |_| {});
    let (report, b) = backtest::run(&loud, &routing, &history, |_| {});
    assert_eq!(report.rules["memo_romance"].hits as usize, history.len(), "the shadow rule hit everything");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.action, x.score), (y.action, y.score), "{}", x.request_id);
    }
}
