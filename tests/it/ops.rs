//! Operations: the real binary's logs mask accounts and names and it stops
//! cleanly on SIGTERM, without transparent huge pages; the load generator and
//! its no-op baseline work.

use crate::harness::{ordinary, seed_case, ServeProcess, TestServer};
use std::time::{Duration, Instant};
use transfer_guard::api::proto as pb;
use transfer_guard::loadgen::{self, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_show_full_accounts_or_names_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--log-format".to_string(), "json".into()];
    let mut server =
        ServeProcess::start_with_env(&dir.path().join("data"), "logs.txt", &flags, &[("TRANSFER_GUARD_LOG", "debug")])
            .await;
    let channel = server.channel().await;
    let mut client = pb::screening_client::ScreeningClient::new(channel.clone());
    let held = client.screen(seed_case("log-seed")).await.unwrap().into_inner();
    client.screen(ordinary("log-rent", "customer-log", "6222020000008002")).await.unwrap();
    let mut bad = ordinary("log-bad", "customer-log", "6222020000008002");
    bad.customer.as_mut().unwrap().account_id = "6210-9812-3456-7890-BAD!".into();
    assert!(client.screen(bad).await.is_err());
    let mut alerts = pb::alerts_client::AlertsClient::new(channel);
    alerts
        .claim_alert(pb::ClaimAlertRequest { alert_id: held.alert_id.clone(), officer_id: "officer-li".into() })
        .await
        .unwrap();

    let status = server.terminate(Duration::from_secs(20)).await;
    let logs = server.logs();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("\"request_id\":\"log-seed\"") && logs.contains("\"action\":\"HOLD\""), "{logs}");
    assert!(logs.contains("\"request_id\":\"log-rent\""), "a span of fields for every screen: {logs}");
    assert!(logs.contains("6217***********8777"), "the payee appears masked: {logs}");
    assert!(logs.contains("alert claimed") && logs.contains("stopped"), "{logs}");
    for secret in ["6217000099998888777", "6210981234567890", "621098123456", "陈某某", "王房东"] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }

    // The audit trail is a hash chain: intact as written, and an edited line is found.
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let verify = || crate::harness::transfer_guard(&["audit", "verify", &data_arg]);
    let intact = verify();
    let said = String::from_utf8_lossy(&intact.stdout).to_string();
    assert!(intact.status.success() && said.starts_with("intact, "), "{said}");
    let audit = data.join("audit.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    let tampered = text.replacen("\"action\":\"HOLD\"", "\"action\":\"ALLOW\"", 1);
    assert_ne!(tampered, text, "the held decision is audited");
    std::fs::write(&audit, tampered).unwrap();
    let broken = verify();
    let said = String::from_utf8_lossy(&broken.stdout).to_string();
    assert!(!broken.status.success() && said.contains("broken at line"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_measures_closed_and_open_loops_and_the_baseline() {
    let server = TestServer::start().await;
    let closed = LoadConfig {
        addr: server.addr.clone(),
        concurrency: 4,
        duration: Duration::from_millis(800),
        rate: None,
        connections: 2,
        backoff: Duration::ZERO,
    };
    let report = loadgen::run(&closed, "lg-closed").await.unwrap();
    assert!(report.ok > 0 && report.errors == 0, "{report:?}");
    assert_eq!(report.latency.len(), report.ok);
    assert_eq!(report.actions.iter().sum::<u64>(), report.ok);

    let open = LoadConfig { rate: Some(200.0), ..closed.clone() };
    let report = loadgen::run(&open, "lg-open").await.unwrap();
    // 200/s for 0.8 s is 160 intended sends, each answered.
    assert_eq!((report.ok, report.errors), (160, 0), "{report:?}");

    let (addr, stop) = loadgen::start_noop().await.unwrap();
    let noop = loadgen::run(&LoadConfig { addr, ..closed }, "lg-noop").await.unwrap();
    assert!(noop.ok > 0 && noop.errors == 0);
    let _ = stop.send(());
    server.stop().await;
}

/// Every decision, alert change, watchlist change and ruleset change is in the
/// audit file, masked.
#[tokio::test]
async fn the_audit_trail_records_every_change_masked() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let held = teller.screen(seed_case("audit-seed")).await.unwrap().into_inner();
    teller.screen(seed_case("audit-seed")).await.unwrap(); // a retry is not a new decision
    teller.screen(ordinary("audit-rent", "customer-a", "6222020000008002")).await.unwrap();
    let mut officer = server.alerts().await;
    officer
        .claim_alert(pb::ClaimAlertRequest { alert_id: held.alert_id.clone(), officer_id: "officer-li".into() })
        .await
        .unwrap();
    officer
        .resolve_alert(pb::ResolveAlertRequest {
            alert_id: held.alert_id.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::Dissuaded as i32,
            hold_decision: pb::HoldDecision::Block as i32,
            note: String::new(),
        })
        .await
        .unwrap();
    server
        .watchlist()
        .await
        .upsert_entry(pb::WatchlistEntry {
            account: "6222000055556666".into(),
            issuer_station_id: "heshan-zhongshan-ps".into(),
            reason: "涉诈收款账户".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    server.rules().await.reload_rules(pb::ReloadRulesRequest {}).await.unwrap();

    let path = server.data.path().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
        if lines.len() >= 8 || Instant::now() > deadline {
            assert!(!text.contains("6217000099998888777") && !text.contains("陈某某"), "{text}");
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "{}:{}",
                l["kind"].as_str().unwrap(),
                l["event"].as_str().or(l["op"].as_str()).or(l["action"].as_str()).unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ruleset:",
            "alert:raised",
            "decision:HOLD",
            "decision:ALLOW",
            "alert:claimed",
            "alert:resolved",
            "watchlist:upsert",
            "ruleset:"
        ],
        "{lines:#?}"
    );
    assert_eq!(lines[2]["payee_account"], "6217***********8777");
    assert_eq!(lines[2]["payee_name"], "陈**");
    assert_eq!(lines[5]["hold_decision"], "block");
    server.stop().await;
}

/// A fresh `serve` on its defaults (durable store included) logs its own lines;
/// its dependencies speak only at WARN or above unless asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_log_only_warnings_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--log-format".to_string(), "json".into()];
    let mut server = ServeProcess::start(&dir.path().join("data"), "quiet.txt", &flags).await;
    let mut client = pb::screening_client::ScreeningClient::new(server.channel().await);
    client.screen(seed_case("quiet-seed")).await.unwrap();
    // Transparent huge pages are off for the server (their first touch
    // zeroes 2 MiB inside a request: docs/performance.md).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("Linux 5.0 or later reports THP_enabled");
    assert_eq!(thp.split_whitespace().nth(1), Some("0"), "{thp}");
    let status = server.terminate(Duration::from_secs(20)).await;
    let logs = server.logs();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.contains("transfer-guard serving"), "{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let (target, level) = (v["target"].as_str().unwrap_or(""), v["level"].as_str().unwrap_or(""));
        assert!(
            target.starts_with("transfer_guard") || matches!(level, "WARN" | "ERROR"),
            "a dependency's {level} line by default: {line}"
        );
    }
}

/// The no-op baseline runs as a process of its own, and `bench` reads a
/// server's CPU time per request from its pid.
#[test]
fn the_noop_baseline_runs_alone_and_bench_reads_the_servers_cpu() {
    let port = crate::harness::free_port();
    let mut noop = std::process::Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
        .args(["bench", "--noop-server", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the no-op server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the no-op server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = format!("http://127.0.0.1:{port}");
    let pid = noop.id().to_string();
    let out = crate::harness::transfer_guard(&[
        "bench",
        "--addr",
        &addr,
        "--server-pid",
        &pid,
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--connections",
        "1",
    ]);
    let _ = noop.kill();
    let _ = noop.wait();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("server (pid {pid}) CPU:")) && said.contains("per request"), "{said}");
}
