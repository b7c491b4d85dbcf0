//! The loop from the counter to the police station and back: alerts reach the
//! right station's watchers, officers claim and resolve, the teller's
//! WatchTransfer sees the outcome; holds expire; unclaimed alerts escalate;
//! watchers resume from a cursor. Also live rule reloads.

use crate::harness::{edit, ordinary, seed_case, TestServer};
use std::time::Duration;
use tonic::Code;
use transfer_guard::api::proto as pb;
use transfer_guard::auth::Caller;

const STATION: &str = "heshan-zhongshan-ps";
const OTHER: &str = "heshan-shaping-ps";

async fn next_event(stream: &mut tonic::Streaming<pb::AlertEvent>) -> pb::AlertEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("an event in time").unwrap().unwrap()
}

async fn watch(server: &TestServer, station: &str, after: u64) -> tonic::Streaming<pb::AlertEvent> {
    server
        .alerts()
        .await
        .watch_alerts(pb::WatchAlertsRequest { station_ids: vec![station.into()], after_cursor: after })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn seed_alert_reaches_its_station_and_the_officer_releases_the_teller() {
    seed_loop(TestServer::start().await).await;
}

/// The same loop with the durable store attached: events reach watchers as
/// soon as they are on disk (the book is gated by the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_loop_with_a_durable_store() {
    seed_loop(TestServer::start_durable().await).await;
}

async fn seed_loop(server: TestServer) {
    let mut right = watch(&server, STATION, 0).await;
    let mut other = watch(&server, OTHER, 0).await;
    let mut teller = server.screening().await;

    let held = teller.screen(seed_case("seed-loop")).await.unwrap().into_inner();
    assert_eq!(held.action, pb::Action::Hold as i32);
    let raised = next_event(&mut right).await;
    assert_eq!(raised.kind, "raised");
    let alert = raised.alert.unwrap();
    assert_eq!(alert.alert_id, held.alert_id);
    let summary = alert.transfer.unwrap();
    assert_eq!(summary.payee_account_masked, "6217***********8777");
    assert_eq!(summary.customer_age_band, "45-59");
    assert!(tokio::time::timeout(Duration::from_millis(300), other.message()).await.is_err(), "other station saw it");

    let mut waiting =
        teller.watch_transfer(pb::GetTransferRequest { request_id: "seed-loop".into() }).await.unwrap().into_inner();
    let first = waiting.message().await.unwrap().unwrap();
    assert_eq!(first.state, pb::TransferState::Held as i32);

    let mut officer = server.alerts().await;
    officer
        .claim_alert(pb::ClaimAlertRequest { alert_id: held.alert_id.clone(), officer_id: "officer-li".into() })
        .await
        .unwrap();
    let no_decision = officer
        .resolve_alert(pb::ResolveAlertRequest {
            alert_id: held.alert_id.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::Dissuaded as i32,
            hold_decision: 0,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_decision.code(), Code::InvalidArgument);
    let resolved = officer
        .resolve_alert(pb::ResolveAlertRequest {
            alert_id: held.alert_id.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::FalseAlarm as i32,
            hold_decision: pb::HoldDecision::Release as i32,
            note: "家人确认是购房款".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.state, pb::AlertState::Resolved as i32);

    let last = tokio::time::timeout(Duration::from_secs(5), waiting.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(last.state, pb::TransferState::Released as i32);
    assert_eq!(last.outcome, "false_alarm");
    assert!(waiting.message().await.unwrap().is_none(), "the stream ends at a final state");
    assert_eq!(next_event(&mut right).await.kind, "claimed");
    assert_eq!(next_event(&mut right).await.kind, "resolved");

    let again = officer
        .resolve_alert(pb::ResolveAlertRequest {
            alert_id: held.alert_id.clone(),
            officer_id: "officer-li".into(),
            outcome: pb::Outcome::FraudConfirmed as i32,
            hold_decision: pb::HoldDecision::Block as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // Released: the transfer now counts, so the payee is known.
    let mut next = seed_case("seed-loop-2");
    next.amount_minor = 100_000;
    let second = teller.screen(next).await.unwrap().into_inner();
    assert!(second.hits.iter().all(|h| h.rule_id != "new_payee_large"), "{second:?}");
    server.stop().await;
}

/// The shipped 30-minute expiry, on the server's clock moved ahead: no sleeping.
#[tokio::test]
async fn an_expired_hold_takes_the_expiry_action_and_cannot_be_resolved() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let held = teller.screen(seed_case("seed-expire")).await.unwrap().into_inner();
    let mut waiting =
        teller.watch_transfer(pb::GetTransferRequest { request_id: "seed-expire".into() }).await.unwrap().into_inner();
    let first = waiting.message().await.unwrap().unwrap();
    assert_eq!(first.state, pb::TransferState::Held as i32);
    server.clock.advance(29 * 60);
    server.guard.tick(server.guard.now());
    let still = teller.get_transfer(pb::GetTransferRequest { request_id: "seed-expire".into() }).await.unwrap();
    assert_eq!(still.into_inner().state, pb::TransferState::Held as i32, "not before 30 minutes");
    server.clock.advance(2 * 60);
    server.guard.tick(server.guard.now());
    let last = waiting.message().await.unwrap().unwrap();
    assert_eq!(last.state, pb::TransferState::Expired as i32, "{last:?}");
    let late = server
        .alerts()
        .await
        .resolve_alert(pb::ResolveAlertRequest {
            alert_id: held.alert_id,
            officer_id: "officer-wang".into(),
            outcome: pb::Outcome::Dissuaded as i32,
            hold_decision: pb::HoldDecision::Release as i32,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    server.stop().await;
}

/// The shipped 10-minute claim deadline, on the server's clock moved ahead.
#[tokio::test]
async fn an_unclaimed_alert_escalates_and_both_stations_see_it() {
    let server = TestServer::start().await;
    let mut centre = watch(&server, "jiangmen-anti-fraud-centre", 0).await;
    let held = server.screening().await.screen(seed_case("seed-escalate")).await.unwrap().into_inner();
    server.clock.advance(11 * 60);
    server.guard.tick(server.guard.now());
    let escalated = next_event(&mut centre).await;
    assert_eq!(escalated.kind, "escalated");
    let alert = escalated.alert.unwrap();
    assert_eq!((alert.alert_id.as_str(), alert.station_id.as_str()), (held.alert_id.as_str(), STATION));
    assert_eq!(alert.escalation_station_id, "jiangmen-anti-fraud-centre");
    let listed = server
        .alerts()
        .await
        .list_alerts(pb::ListAlertsRequest {
            station_ids: vec![STATION.into()],
            states: vec![pb::AlertState::Escalated as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.alerts.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_watcher_that_reconnects_with_its_cursor_misses_nothing_and_repeats_nothing() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let mut first = watch(&server, STATION, 0).await;
    let mut seen = Vec::new();
    for i in 0..3 {
        teller.screen(seed_case(&format!("seed-w{i}"))).await.unwrap();
        seen.push(next_event(&mut first).await);
    }
    drop(first);
    let last_cursor = seen.last().unwrap().cursor;
    for i in 3..6 {
        teller.screen(seed_case(&format!("seed-w{i}"))).await.unwrap();
    }
    let mut resumed = watch(&server, STATION, last_cursor).await;
    for i in 6..8 {
        teller.screen(seed_case(&format!("seed-w{i}"))).await.unwrap();
    }
    for _ in 3..8 {
        seen.push(next_event(&mut resumed).await);
    }
    let ids: Vec<String> =
        seen.iter().map(|e| e.alert.as_ref().unwrap().transfer.as_ref().unwrap().request_id.clone()).collect();
    let expected: Vec<String> = (0..8).map(|i| format!("seed-w{i}")).collect();
    assert_eq!(ids, expected);
    assert!(seen.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert!(tokio::time::timeout(Duration::from_millis(300), resumed.message()).await.is_err(), "nothing repeated");
    server.stop().await;
}

#[tokio::test]
async fn a_broken_reload_keeps_the_running_rules_and_a_good_one_changes_decisions() {
    let server = TestServer::start().await;
    let mut rules = server.rules().await;
    let before = rules.get_ruleset(pb::GetRulesetRequest {}).await.unwrap().into_inner();
    edit(server.rules.path(), "amounts.toml", "transfer.amount >= 100000000", "transfer.amont >= 100000000");
    let refused = rules.reload_rules(pb::ReloadRulesRequest {}).await.unwrap().into_inner();
    assert!(!refused.reloaded);
    assert_eq!(refused.version, before.version);
    assert!(refused.errors.iter().any(|e| e.contains("amounts.toml:") && e.contains("transfer.amont")), "{refused:?}");

    edit(server.rules.path(), "amounts.toml", "transfer.amont >= 100000000", "transfer.amount >= 100000000");
    edit(
        server.rules.path(),
        "teller.toml",
        "score = 30\nreason.zh = \"客户办理业务时",
        "score = 31\nreason.zh = \"客户办理业务时",
    );
    let mut r = ordinary("after-reload", "customer-x", "6222020000001234");
    r.observations = vec![pb::Observation::OnPhoneWithStranger as i32];
    let old = rules.dry_run(r.clone()).await.unwrap().into_inner();
    let reloaded = rules.reload_rules(pb::ReloadRulesRequest {}).await.unwrap().into_inner();
    assert!(reloaded.reloaded, "{reloaded:?}");
    assert_ne!(reloaded.version, before.version);
    let new = server.screening().await.screen(r).await.unwrap().into_inner();
    assert_eq!((old.score, new.score), (30, 31));
    assert_eq!(new.ruleset_version, reloaded.version);
    server.stop().await;
}

/// `transfer-guard alerts watch --station X` prints alerts as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_stations_alerts_as_they_come() {
    use std::io::{BufRead, BufReader};
    let server = TestServer::start().await;
    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
        .args(["alerts", "watch", "--station", STATION, "--addr", &server.addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The watcher subscribes before the alerts exist; give it time to connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut teller = server.screening().await;
    let first = teller.screen(seed_case("cli-watch-1")).await.unwrap().into_inner();
    let second = teller.screen(seed_case("cli-watch-2")).await.unwrap().into_inner();
    let mut printed = String::new();
    while !(printed.contains(&first.alert_id) && printed.contains(&second.alert_id)) {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv()).await.expect("a line in time").unwrap();
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(printed.contains("[cursor 1] raised") && printed.contains("station heshan-zhongshan-ps"), "{printed}");
    assert!(printed.contains("6217***********8777") && !printed.contains("6217000099998888777"), "{printed}");
    watcher.kill().unwrap();
    let _ = watcher.wait();
    server.stop().await;
}

/// Saving a rule file reloads it; a broken save is refused and the running
/// rules stay; screens during 100 reloads all succeed, each with one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_when_files_change_and_screens_never_see_half_a_ruleset() {
    let server = TestServer::start_full(|_| {}, None, true).await;
    // Once the server answers, it is watching the folder.
    let before = server.rules().await.get_ruleset(pb::GetRulesetRequest {}).await.unwrap().into_inner().version;
    let teller_file = server.rules.path().join("teller.toml");
    let original = std::fs::read_to_string(&teller_file).unwrap();
    let changed = original.replacen("score = 30\n", "score = 32\n", 1);

    std::fs::write(&teller_file, &changed).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while server.guard.ruleset().version.to_string() == before {
        assert!(std::time::Instant::now() < deadline, "the change was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = server.guard.ruleset().version.to_string();

    std::fs::write(&teller_file, original.replacen("score = 30\n", "score = 'x'\n", 1)).unwrap();
    let failures = || server.guard.metrics().reload_failures.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while failures() == 0 {
        assert!(std::time::Instant::now() < deadline, "the broken save was not tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.guard.ruleset().version.to_string(), after, "the running rules stay");

    // 100 reloads between two good versions while tellers screen.
    std::fs::write(&teller_file, &original).unwrap();
    let guard = server.guard.clone();
    let dir = server.rules.path().to_path_buf();
    let reloads = tokio::task::spawn_blocking(move || {
        let mut versions = std::collections::BTreeSet::new();
        for i in 0..100 {
            let text = if i % 2 == 0 { &changed } else { &original };
            std::fs::write(dir.join("teller.toml"), text).unwrap();
            let r = guard.reload(&Caller::Open);
            assert!(r.reloaded, "{:?}", r.errors);
            versions.insert(r.version);
        }
        versions
    });
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut client = server.screening().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..150 {
                let mut r = crate::harness::ordinary(
                    &format!("reload-{t}-{i}"),
                    &format!("c-{t}-{i}"),
                    &format!("62220200{t}{i:06}"),
                );
                r.observations = vec![pb::Observation::OnPhoneWithStranger as i32];
                let answer = client.screen(r).await.expect("every screen succeeds").into_inner();
                // One version per answer: the score matches the version's rule.
                seen.push((answer.ruleset_version, answer.score));
            }
            seen
        }));
    }
    let versions = reloads.await.unwrap();
    assert_eq!(versions.len(), 2);
    for t in tasks {
        for (version, score) in t.await.unwrap() {
            assert!(versions.contains(&version) || version == after, "{version}");
            assert!(score == 30 || score == 32, "{score}");
        }
    }
    server.stop().await;
}

/// Closing the loop the other way: an officer's confirmed fraud puts the
/// receiving account on the station's watchlist, so the next customer who
/// pays it — any customer, any branch — is stopped; a false alarm lists nothing.
#[tokio::test]
async fn a_confirmed_fraud_lists_the_receiving_account_and_stops_the_next_victim() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let mut officer = server.alerts().await;

    // A false alarm first: the payee stays off the list.
    let innocent = teller.screen(seed_case("confirm-innocent")).await.unwrap().into_inner();
    assert_eq!(innocent.action, pb::Action::Hold as i32);
    let (false_alarm, release) = (pb::Outcome::FalseAlarm, pb::HoldDecision::Release);
    TestServer::claim_and_resolve(&mut officer, &innocent.alert_id, false_alarm, release).await;
    let listed = server.watchlist().await.list_entries(pb::ListEntriesRequest {}).await.unwrap().into_inner();
    assert!(listed.entries.is_empty(), "{listed:?}");

    // The same account, another victim: the officer confirms the fraud.
    let mut victim = seed_case("confirm-victim");
    let customer = victim.customer.as_mut().unwrap();
    customer.customer_id = "zhongshan-customer-77".into();
    customer.account_id = "6217000011112222333".into();
    customer.last_limit_change.as_mut().unwrap().customer_id = "zhongshan-customer-77".into();
    let held = teller.screen(victim).await.unwrap().into_inner();
    // A second first payer of the same fresh account: held or refused outright.
    assert!(held.action >= pb::Action::Hold as i32 && !held.alert_id.is_empty(), "{held:?}");
    let decision =
        if held.action == pb::Action::Hold as i32 { pb::HoldDecision::Block } else { pb::HoldDecision::Unspecified };
    TestServer::claim_and_resolve(&mut officer, &held.alert_id, pb::Outcome::FraudConfirmed, decision).await;
    let listed = server.watchlist().await.list_entries(pb::ListEntriesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.entries.len(), 1, "{listed:?}");
    let entry = &listed.entries[0];
    assert_eq!(entry.account, "6217000099998888777");
    assert_eq!(entry.issuer_station_id, STATION);
    assert!(entry.reason.contains(&held.alert_id) && entry.reason.contains("officer-li"), "{}", entry.reason);
    assert!(entry.expires_at.is_none(), "until the station removes it");

    // A third customer, a small sum with nothing else odd: stopped by the list alone.
    let mut next = ordinary("confirm-next", "customer-next", "6217000099998888777");
    next.amount_minor = 50_000;
    let stopped = teller.screen(next).await.unwrap().into_inner();
    assert_eq!(stopped.action, pb::Action::Block as i32, "{stopped:?}");
    assert!(stopped.hits.iter().any(|h| h.rule_id == "payee_watchlisted"), "{stopped:?}");
    server.stop().await;
}

/// A scammer whose account was stopped names another: the customer's next
/// new payee is held for the stop (`new_payee_after_a_stop`) until an officer
/// finds the stopped transfer was no fraud; then it no longer holds one.
#[tokio::test]
async fn a_stop_holds_the_next_new_payee_until_an_officer_clears_it() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let mut officer = server.alerts().await;
    let customer = "zhongshan-customer-58";
    let first = teller.screen(seed_case("stop-first")).await.unwrap().into_inner();
    assert_eq!(first.action, pb::Action::Hold as i32, "{first:?}");

    let again = teller.screen(ordinary("stop-again", customer, "6222000011112222")).await.unwrap().into_inner();
    assert_eq!(again.action, pb::Action::Hold as i32, "{again:?}");
    assert!(again.hits.iter().any(|h| h.rule_id == "new_payee_after_a_stop"), "{again:?}");
    // Another customer paying the same new account is not touched by it.
    let other = teller.screen(ordinary("stop-other", "customer-other", "6222000011113333")).await.unwrap().into_inner();
    assert_eq!(other.action, pb::Action::Allow as i32, "{other:?}");

    for alert_id in [first.alert_id, again.alert_id] {
        TestServer::claim_and_resolve(&mut officer, &alert_id, pb::Outcome::FalseAlarm, pb::HoldDecision::Release)
            .await;
    }
    // (The released transfers now count: a third new payee within the hour
    // may still be warned or held by the velocity rules, but not for the stop.)
    let cleared = teller.screen(ordinary("stop-cleared", customer, "6222000011114444")).await.unwrap().into_inner();
    assert!(!cleared.hits.iter().any(|h| h.rule_id == "new_payee_after_a_stop"), "{cleared:?}");
    server.stop().await;
}
