//! `/metrics` over real HTTP: decisions, rule hits, alerts by station, branches
//! with no station mapping, the ruleset in force.

use crate::harness::{ordinary, seed_case, TestServer};

pub(crate) fn scrape(addr: &str) -> String {
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a loopback address with a port");
    let (status, response) = crate::harness::http(port, "/metrics", None);
    assert_eq!(status, 200, "{response}");
    response
}

pub(crate) fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_alerts_and_unrouted_branches() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    teller.screen(seed_case("m-1")).await.unwrap();
    teller.screen(ordinary("m-2", "customer-m", "6222020000008002")).await.unwrap();
    let mut lost = seed_case("m-3");
    lost.branch_id = "branch-nobody-covers".into();
    let r = teller.screen(lost).await.unwrap().into_inner();
    let mut bad = ordinary("m-4", "customer-m", "6222020000008002");
    bad.amount_minor = 0;
    assert!(teller.screen(bad).await.is_err());
    assert_eq!(r.station_id, "jiangmen-anti-fraud-centre", "the default station");

    let addr = server.metrics_addr.clone();
    let text = tokio::task::spawn_blocking(move || scrape(&addr)).await.unwrap();
    assert_eq!(value(&text, "transfer_guard_decisions_total{action=\"HOLD\"}"), 2.0, "{text}");
    assert_eq!(value(&text, "transfer_guard_decisions_total{action=\"ALLOW\"}"), 1.0);
    assert_eq!(value(&text, "transfer_guard_unrouted_branch_alerts_total"), 1.0);
    assert_eq!(value(&text, "transfer_guard_alerts{state=\"new\",station=\"heshan-zhongshan-ps\"}"), 1.0, "{text}");
    assert_eq!(value(&text, "transfer_guard_alerts_total{kind=\"raised\",station=\"heshan-zhongshan-ps\"}"), 1.0);
    assert_eq!(
        value(&text, "transfer_guard_rule_hits_total{mode=\"active\",rule=\"limit_raised_to_max_new_payee_large\"}"),
        2.0
    );
    assert_eq!(value(&text, "transfer_guard_screen_duration_seconds_count{action=\"HOLD\"}"), 2.0);
    assert_eq!(value(&text, "transfer_guard_grpc_requests_total{code=\"OK\",method=\"Screen\"}"), 3.0, "{text}");
    let version = server.guard.ruleset().version.to_string();
    assert_eq!(value(&text, &format!("transfer_guard_ruleset_info{{version=\"{version}\"}}")), 1.0);
    // The ALLOW's customer, and the stop the HOLDs left on theirs.
    assert_eq!(value(&text, "transfer_guard_state_entries{kind=\"customers\"}"), 2.0);
    assert_eq!(value(&text, "transfer_guard_grpc_requests_total{code=\"INVALID_ARGUMENT\",method=\"Screen\"}"), 1.0);
    assert!(!text.contains("6217000099998888777"), "no account numbers in metrics");
    server.stop().await;
}

/// The exposition passes `promtool check metrics` (Debian package `prometheus`;
/// `scripts/test` installs it). Without promtool the test fails and says so: it
/// never passes without checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let which = std::process::Command::new("sh").args(["-c", "command -v promtool"]).output().unwrap();
    assert!(
        which.status.success(),
        "promtool is not on PATH: run the tests with scripts/test, which installs it (Debian package prometheus)"
    );
    let server = TestServer::start().await;
    server.screening().await.screen(seed_case("promtool-1")).await.unwrap();
    let addr = server.metrics_addr.clone();
    let response = tokio::task::spawn_blocking(move || scrape(&addr)).await.unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap();
    let check = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    server.stop().await;
}
