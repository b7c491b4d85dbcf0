//! The gRPC contract against the real server and a real tonic client.

use crate::harness::{ordinary, seed_case, TestServer};
use std::collections::BTreeSet;
use tonic::Code;
use tonic_types::StatusExt;
use transfer_guard::api::proto as pb;
use transfer_guard::model::Payee;

fn hits(r: &pb::ScreenResponse) -> BTreeSet<String> {
    r.hits.iter().map(|h| h.rule_id.clone()).collect()
}

#[tokio::test]
async fn the_seed_case_is_held_with_reasons_and_an_ordinary_transfer_is_allowed() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;

    let seed = client.screen(seed_case("seed-1")).await.unwrap().into_inner();
    assert_eq!(seed.action, pb::Action::Hold as i32, "{seed:?}");
    assert!(hits(&seed).contains("limit_raised_to_max_new_payee_large"), "{seed:?}");
    assert!(hits(&seed).contains("obs_on_phone_with_stranger"));
    assert!(seed.hits.iter().all(|h| !h.reason_zh.is_empty() && !h.reason_en.is_empty()));
    assert!(seed.alert_id.starts_with("al-"));
    assert_eq!(seed.station_id, "heshan-zhongshan-ps");
    assert!(seed.hold_expires_at.is_some());
    assert_eq!(seed.ruleset_version, server.guard.ruleset().version.to_string());
    // The teller's questions for what was hit, once each, in both languages.
    let asks: Vec<&str> = seed.questions.iter().map(|q| q.zh.as_str()).collect();
    assert!(asks.iter().any(|q| q.contains("投资导师")), "{asks:?}");
    assert!(asks.iter().any(|q| q.contains("提高限额")), "{asks:?}");
    assert!(seed.questions.iter().all(|q| !q.en.is_empty() && !q.rule_id.is_empty()));
    let mut unique = asks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), asks.len());
    let alert = server.alerts().await.list_alerts(pb::ListAlertsRequest::default()).await.unwrap().into_inner();
    let hit = alert.alerts[0].hits.iter().find(|h| h.rule_id == "memo_investment").unwrap();
    assert_eq!((hit.ask_zh.len(), hit.ask_en.len()), (2, 2), "the station sees the questions too");

    let plain = client.screen(ordinary("rent-1", "customer-7", "6222020000008002")).await.unwrap().into_inner();
    assert_eq!(plain.action, pb::Action::Allow as i32, "{plain:?}");
    assert!(plain.alert_id.is_empty() && plain.station_id.is_empty() && plain.hold_expires_at.is_none());
    assert!(plain.questions.is_empty());
    server.stop().await;
}

/// Each malformed request is INVALID_ARGUMENT with the field named in a
/// google.rpc.BadRequest detail.
#[tokio::test]
async fn every_invalid_field_is_named() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    type Breaker = fn(&mut pb::ScreenRequest);
    let cases: &[(&str, Breaker)] = &[
        ("request_id", |r| r.request_id.clear()),
        ("request_id", |r| r.request_id = "x".repeat(129)),
        ("requested_at", |r| r.requested_at = None),
        ("requested_at", |r| r.requested_at.as_mut().unwrap().seconds = -1),
        ("bank_id", |r| r.bank_id.clear()),
        ("branch_id", |r| r.branch_id.clear()),
        ("teller_id", |r| r.teller_id.clear()),
        ("channel", |r| r.channel = 0),
        ("channel", |r| r.channel = 17),
        ("customer", |r| r.customer = None),
        ("customer.customer_id", |r| r.customer.as_mut().unwrap().customer_id.clear()),
        ("customer.account_id", |r| r.customer.as_mut().unwrap().account_id = "!!".into()),
        ("customer.birth_date", |r| r.customer.as_mut().unwrap().birth_date = "10/05/1968".into()),
        ("customer.account_opened_on", |r| r.customer.as_mut().unwrap().account_opened_on = "2015-13-01".into()),
        ("customer.daily_limit_minor", |r| r.customer.as_mut().unwrap().daily_limit_minor = -1),
        ("payee", |r| r.payee = None),
        ("payee.account", |r| r.payee.as_mut().unwrap().account.clear()),
        ("payee.name", |r| r.payee.as_mut().unwrap().name = "n".repeat(129)),
        ("payee.bank_code", |r| r.payee.as_mut().unwrap().bank_code.clear()),
        ("amount_minor", |r| r.amount_minor = 0),
        ("amount_minor", |r| r.amount_minor = i64::MAX),
        ("currency", |r| r.currency = "RMB".into()),
        ("currency", |r| r.currency.clear()),
        ("memo", |r| r.memo = "m".repeat(300)),
        ("memo", |r| r.memo = "bell\u{7}".into()),
        ("observations[0]", |r| r.observations = vec![99]),
    ];
    for (field, break_it) in cases {
        let mut request = ordinary("bad-1", "customer-1", "6222020000008002");
        break_it(&mut request);
        let status = client.screen(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let bad = status.get_details_bad_request().expect("BadRequest details");
        let fields: Vec<&str> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, vec![*field], "{}", status.message());
        assert!(status.message().contains(field));
    }
    // Nothing invalid reached the engine or state.
    assert_eq!(server.guard.screened_count(), 0);
    assert_eq!(server.guard.state().sizes().customers, 0);
    server.stop().await;
}

/// An amount in another currency is read in the ruleset's, at its rate; a
/// currency the ruleset has no rate for is refused, naming `currency`, and
/// leaves nothing behind.
#[tokio::test]
async fn amounts_in_other_currencies_are_read_at_the_rulesets_rates() {
    let server = TestServer::start_with(|dir| crate::harness::edit(dir, "ruleset.toml", "MOP = \"0.88\"\n", "")).await;
    let mut client = server.screening().await;
    let mut hkd = ordinary("hkd-1", "customer-hk", "6222020000008002");
    (hkd.currency, hkd.amount_minor) = ("HKD".into(), 6_000_000);
    let answer = client.screen(hkd).await.unwrap().into_inner();
    assert!(hits(&answer).contains("amount_50k"), "60,000 HKD is 54,600 CNY: {answer:?}");

    let mut mop = ordinary("mop-1", "customer-mo", "6222020000008002");
    (mop.currency, mop.amount_minor) = ("MOP".into(), 6_000_000);
    for status in [
        client.screen(mop.clone()).await.expect_err("no MOP rate"),
        server.rules().await.dry_run(mop).await.expect_err("no MOP rate"),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let bad = status.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, "currency");
        assert!(status.message().contains("MOP") && status.message().contains("rates"), "{}", status.message());
    }
    assert_eq!(server.guard.screened_count(), 1, "only the HKD transfer");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_request_id_is_answered_the_same_and_counted_once() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    let request = ordinary("retry-1", "customer-r", "6222020000000001");
    let first = client.screen(request.clone()).await.unwrap().into_inner();
    let second = client.screen(request.clone()).await.unwrap().into_inner();
    assert_eq!(first, second);
    let payee = Payee { account: "6222020000000001".into(), name: "王房东".into(), bank_code: "icbc".into() };
    let snap = server.guard.state().snapshot("customer-r", &payee, request.requested_at.unwrap().seconds + 1);
    assert_eq!((snap.transfers_24h, snap.amount_24h), (1, 350_000));

    let seed_request = seed_case("seed-retry");
    let seed = client.screen(seed_request.clone()).await.unwrap().into_inner();
    let again = client.screen(seed_request).await.unwrap().into_inner();
    assert_eq!(seed, again);
    assert!(!seed.alert_id.is_empty());
    assert_eq!(server.guard.alerts().len(), 1, "one alert for one hold");

    let mut changed = request.clone();
    changed.amount_minor += 1;
    let status = client.screen(changed).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let server = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "transferguard.v1.Screening", "transferguard.v1.Alerts"] {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }

    // Reflection in both versions: v1 (grpcurl) and v1alpha (grpcio-reflection and others).
    macro_rules! listed_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            let mut reflection = ServerReflectionClient::new(server.channel().await);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream =
                reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
            let response = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
                panic!("{response:?}")
            };
            // Each version lists itself; the rest is the same.
            list.service
                .into_iter()
                .map(|s| s.name)
                .filter(|n| !n.starts_with("grpc.reflection."))
                .collect::<BTreeSet<_>>()
        }};
    }
    let names = listed_services!(v1);
    assert_eq!(names, listed_services!(v1alpha));
    for expected in [
        "transferguard.v1.Screening",
        "transferguard.v1.Alerts",
        "transferguard.v1.Watchlist",
        "transferguard.v1.Rules",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(expected), "{names:?}");
    }
    server.stop().await;
}

/// 1,000 screens from 50 concurrent tasks: all answered, state counts exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_screens_all_answer_and_count_exactly() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut tasks = Vec::new();
    for task in 0..50 {
        let mut client = pb::screening_client::ScreeningClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut actions = Vec::new();
            for i in 0..20 {
                let customer = format!("busy-{}", task % 10);
                let payee = format!("62220200{:02}{:06}", task % 10, (task / 10) * 100 + i);
                let mut r = ordinary(&format!("c-{task}-{i}"), &customer, &payee);
                r.amount_minor = 1_000 + i64::from(task);
                actions.push(client.screen(r).await.expect("answered").into_inner().action);
            }
            actions
        }));
    }
    let mut answered = 0;
    for t in tasks {
        for action in t.await.unwrap() {
            assert!(action == pb::Action::Allow as i32 || action == pb::Action::Warn as i32);
            answered += 1;
        }
    }
    assert_eq!(answered, 1000);
    let probe = Payee { account: "6222029999999999".into(), name: "x".into(), bank_code: "icbc".into() };
    let now = transfer_guard::service::wall_clock() + 1;
    for c in 0..10 {
        let snap = server.guard.state().snapshot(&format!("busy-{c}"), &probe, now);
        // Tasks c, c+10, ..., c+40 each sent 20 transfers of 1000 + task fen.
        let expected_amount: i64 = (0..5).map(|k| 20 * (1_000 + c + 10 * k)).sum();
        assert_eq!((snap.transfers_24h, snap.amount_24h, snap.new_payees_24h), (100, expected_amount, 100), "busy-{c}");
    }
    assert_eq!(server.guard.screened_count(), 1000);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_transfer_leaves_the_history_and_events_are_idempotent() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    let request = ordinary("to-cancel", "customer-c", "6222020000000777");
    client.screen(request.clone()).await.unwrap();
    let cancel = pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: "ev-1".into(),
        event: Some(pb::record_event_request::Event::TransferCancelled(pb::TransferCancelled {
            request_id: "to-cancel".into(),
        })),
    };
    assert!(!client.record_event(cancel.clone()).await.unwrap().into_inner().duplicate);
    assert!(client.record_event(cancel).await.unwrap().into_inner().duplicate);
    let status =
        client.get_transfer(pb::GetTransferRequest { request_id: "to-cancel".into() }).await.unwrap().into_inner();
    assert_eq!(status.state, pb::TransferState::Cancelled as i32);
    let payee = Payee { account: "6222020000000777".into(), name: "王房东".into(), bank_code: "icbc".into() };
    let snap = server.guard.state().snapshot("customer-c", &payee, transfer_guard::service::wall_clock() + 1);
    assert_eq!((snap.payee_first_paid, snap.transfers_24h), (None, 0));

    let unknown = client.get_transfer(pb::GetTransferRequest { request_id: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let reused = pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: "ev-1".into(),
        event: Some(pb::record_event_request::Event::TransferExecuted(pb::TransferExecuted {
            request_id: "to-cancel".into(),
        })),
    };
    assert_eq!(client.record_event(reused).await.unwrap_err().code(), Code::AlreadyExists);
    server.stop().await;
}

#[tokio::test]
async fn a_recorded_limit_raise_and_the_watchlist_change_decisions() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    let mut request = seed_case("seed-by-event");
    request.customer.as_mut().unwrap().last_limit_change = None;
    request.memo.clear();
    request.observations.clear();
    let dry = server.rules().await.dry_run(request.clone()).await.unwrap().into_inner();
    assert_eq!(dry.action, pb::Action::Warn as i32, "{dry:?}");

    let raise = pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: "limit-1".into(),
        event: Some(pb::record_event_request::Event::LimitChanged(pb::LimitChanged {
            customer_id: "zhongshan-customer-58".into(),
            old_limit_minor: 5_000_000,
            new_limit_minor: 50_000_000,
            is_maximum: true,
            changed_at: Some(crate::harness::now()),
        })),
    };
    client.record_event(raise).await.unwrap();
    let held = client.screen(request).await.unwrap().into_inner();
    assert_eq!(held.action, pb::Action::Hold as i32, "{held:?}");
    assert_eq!(server.guard.screened_count(), 1, "the dry run left no trace");

    let mut watchlist = server.watchlist().await;
    watchlist
        .upsert_entry(pb::WatchlistEntry {
            account: "6222-0000-5555-6666".into(),
            issuer_station_id: "heshan-zhongshan-ps".into(),
            reason: "涉诈收款账户".into(),
            expires_at: None,
            added_at: None,
        })
        .await
        .unwrap();
    let listed = watchlist.list_entries(pb::ListEntriesRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.entries.len(), 1);
    let mut to_mule = ordinary("to-mule", "customer-m", "6222000055556666");
    to_mule.amount_minor = 10_000;
    let blocked = client.screen(to_mule).await.unwrap().into_inner();
    assert_eq!(blocked.action, pb::Action::Block as i32);
    assert!(!blocked.alert_id.is_empty());
    let removed = watchlist.remove_entry(pb::RemoveEntryRequest { account: "6222000055556666".into() }).await.unwrap();
    assert!(removed.into_inner().removed);
    let bad =
        watchlist.upsert_entry(pb::WatchlistEntry { account: "1".into(), ..Default::default() }).await.unwrap_err();
    let fields: Vec<String> =
        bad.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["account", "issuer_station_id", "reason"]);
    server.stop().await;
}

/// The CLI client speaks the same proto3 JSON as grpcurl: the example files
/// screen through the real binary against the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_screens_the_example_files() {
    let server = TestServer::start().await;
    let addr = server.addr.clone();
    let run = move |file: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            crate::harness::transfer_guard(&["screen", "--addr", &addr, "--file", file, "--now", "--json"])
        })
    };
    let seed = run("examples/seed-case.json").await.unwrap();
    assert!(seed.status.success(), "{}", String::from_utf8_lossy(&seed.stderr));
    let answer: pb::ScreenResponse = serde_json::from_slice(&seed.stdout).expect("proto3 JSON");
    assert_eq!(answer.action, pb::Action::Hold as i32, "{answer:?}");
    assert_eq!(answer.station_id, "heshan-zhongshan-ps");

    // Without --now, the file's own (past) time is refused by the live server.
    let stale = tokio::task::spawn_blocking({
        let addr = server.addr.clone();
        move || crate::harness::transfer_guard(&["screen", "--addr", &addr, "--file", "examples/seed-case.json"])
    })
    .await
    .unwrap();
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("requested_at"), "{stale:?}");

    let rent = run("examples/rent.json").await.unwrap();
    let answer: pb::ScreenResponse = serde_json::from_slice(&rent.stdout).expect("proto3 JSON");
    assert_eq!(answer.action, pb::Action::Allow as i32, "{answer:?}");

    // --amount is in the currency's own units: 1,100,000 yen (no minor unit) is 52,800 CNY.
    let flags = |amount: &'static str, currency: &'static str| {
        let addr = server.addr.clone();
        tokio::task::spawn_blocking(move || {
            crate::harness::transfer_guard(&[
                "screen",
                "--addr",
                &addr,
                "--dry-run",
                "--json",
                "--amount",
                amount,
                "--currency",
                currency,
            ])
        })
    };
    let yen = flags("1100000", "JPY").await.unwrap();
    assert!(yen.status.success(), "{}", String::from_utf8_lossy(&yen.stderr));
    let answer: pb::ScreenResponse = serde_json::from_slice(&yen.stdout).expect("proto3 JSON");
    assert!(hits(&answer).contains("amount_50k"), "{answer:?}");
    let bad = flags("1100000.5", "JPY").await.unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--amount"), "{bad:?}");
    server.stop().await;
}

/// Ids and statuses are remembered for 48 h, then forgotten (held ones stay).
#[tokio::test]
async fn old_ids_are_pruned_but_held_transfers_stay() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    client.screen(ordinary("old-1", "customer-o", "6222020000000101")).await.unwrap();
    client.screen(seed_case("old-held")).await.unwrap();
    let later = transfer_guard::service::wall_clock() + transfer_guard::service::IDEMPOTENCY_SECS + 1;
    server.guard.prune(later);
    assert_eq!(server.guard.screened_count(), 1);
    let held = client.get_transfer(pb::GetTransferRequest { request_id: "old-held".into() }).await.unwrap();
    assert_eq!(held.into_inner().state, pb::TransferState::Held as i32);
    server.stop().await;
}

/// The memo evasions a coached victim writes are caught over the wire as the
/// plain words are, and the look-alikes are not (rules/tests/evasion.toml has
/// the same cases through the engine).
#[tokio::test]
async fn memo_evasions_are_caught_over_grpc() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    let cases = [
        ("安全账户", Some("memo_safe_account")),
        ("安全 账户", Some("memo_safe_account")),
        ("转到安全 账户", Some("memo_safe_account")),
        ("安全　账户", Some("memo_safe_account")),
        ("安全賬戶", Some("memo_safe_account")),
        ("转到安全帐户", Some("memo_safe_account")),
        ("安\u{200b}全账户", Some("memo_safe_account")),
        ("ａｎｑｕａｎ账户", Some("memo_safe_account")),
        ("刷单", Some("memo_task_rebate")),
        ("刷 单 返 利", Some("memo_task_rebate")),
        ("资金安全 账户余额", None),
        ("安全 账户余额", None),
        ("账户余额", None),
    ];
    for (i, (memo, rule)) in cases.into_iter().enumerate() {
        // A 68-year-old sending 5,000 CNY to a payee never paid before.
        // A payee of its own each: many customers paying one account is the mule signal.
        let mut r = ordinary(&format!("evasion-{i}"), &format!("customer-ev-{i}"), &format!("62179900000009{i:02}"));
        r.customer.as_mut().unwrap().birth_date = "1958-02-01".into();
        r.amount_minor = 500_000;
        r.memo = memo.into();
        let answer = client.screen(r).await.unwrap().into_inner();
        let memo_hits: Vec<String> = hits(&answer).into_iter().filter(|h| h.starts_with("memo_")).collect();
        match rule {
            Some(rule) => {
                assert_eq!(memo_hits, [rule], "{memo:?}: {answer:?}");
                assert_eq!(answer.action, pb::Action::Hold as i32, "{memo:?}");
            }
            None => {
                assert!(memo_hits.is_empty(), "{memo:?}: {answer:?}");
                assert_eq!(answer.action, pb::Action::Allow as i32, "{memo:?}");
            }
        }
    }
    server.stop().await;
}

/// ListAlerts reads on page by page with an opaque token, newest first; an
/// alert raised between pages is neither skipped nor repeated; a token is tied
/// to its filters; the CLI pages through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_page_by_page() {
    let server = TestServer::start().await;
    let mut teller = server.screening().await;
    let mut raised = Vec::new();
    for i in 0..7 {
        raised.push(teller.screen(seed_case(&format!("page-{i}"))).await.unwrap().into_inner().alert_id);
    }
    let mut alerts = server.alerts().await;
    let ask = |token: String| pb::ListAlertsRequest {
        station_ids: vec!["heshan-zhongshan-ps".into()],
        limit: 3,
        page_token: token,
        ..Default::default()
    };
    let first = alerts.list_alerts(ask(String::new())).await.unwrap().into_inner();
    assert_eq!(first.alerts.len(), 3);
    assert!(!first.next_page_token.is_empty());
    // A new alert while reading: newer than every page already read.
    let late = teller.screen(seed_case("page-late")).await.unwrap().into_inner().alert_id;
    let second = alerts.list_alerts(ask(first.next_page_token.clone())).await.unwrap().into_inner();
    let third = alerts.list_alerts(ask(second.next_page_token.clone())).await.unwrap().into_inner();
    assert_eq!((second.alerts.len(), third.alerts.len()), (3, 1));
    assert!(third.next_page_token.is_empty(), "the last page says so");
    let read: Vec<String> =
        [first, second, third].iter().flat_map(|p| p.alerts.iter().map(|a| a.alert_id.clone())).collect();
    let mut expected = raised.clone();
    expected.reverse();
    assert_eq!(read, expected, "each alert once, newest first");
    assert!(!read.contains(&late));

    // A token is only good for the filters it was given with.
    let page = alerts.list_alerts(ask(String::new())).await.unwrap().into_inner();
    let mut other = ask(page.next_page_token);
    other.states = vec![pb::AlertState::Resolved as i32];
    let status = alerts.list_alerts(other).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "page_token");
    let status = alerts.list_alerts(ask("not-a-token".into())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The CLI reads on until the last page.
    let addr = server.addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        crate::harness::transfer_guard(&[
            "alerts",
            "list",
            "--addr",
            &addr,
            "--limit",
            "0",
            "--page-size",
            "2",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: pb::ListAlertsResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.alerts.len(), 8);
    server.stop().await;
}
