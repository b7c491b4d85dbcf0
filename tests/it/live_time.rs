//! Trusted time: live requests are held to the server's clock; replays are not.

use crate::harness::{now, ordinary, seed_case, TestServer};
use tonic::Code;
use tonic_types::StatusExt;
use transfer_guard::api::proto as pb;
use transfer_guard::model::Payee;

const YEAR: i64 = 365 * 24 * 3600;

/// The fields named by an INVALID_ARGUMENT, with their descriptions.
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("BadRequest details");
    bad.field_violations.into_iter().map(|v| (v.field, v.description)).collect()
}

fn at(shift: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp { seconds: now().seconds + shift, nanos: 0 })
}

#[tokio::test]
async fn screens_stamped_far_from_the_server_clock_are_refused_and_leave_no_trace() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    for (name, shift) in [("ten years ahead", 10 * YEAR), ("three years back", -3 * YEAR), ("six minutes ahead", 360)] {
        let mut r = ordinary(&format!("skewed-{shift}"), "customer-skew", "6222020000007001");
        r.requested_at = at(shift);
        let status = client.screen(r).await.unwrap_err();
        let v = violations(&status);
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        assert_eq!(v[0].0, "requested_at", "{name}");
        assert!(v[0].1.contains("not within 5m of the server's clock: accepted from"), "{name}: {}", v[0].1);
    }
    // Nothing was counted: the payee is still new to the customer.
    let payee = Payee { account: "6222020000007001".into(), name: "王房东".into(), bank_code: "icbc".into() };
    let snap = server.guard.state().snapshot("customer-skew", &payee, now().seconds);
    assert!(snap.payee_first_paid.is_none() && snap.transfers_24h == 0, "{snap:?}");
    assert_eq!(server.guard.screened_count(), 0);

    // Within the window either side is fine.
    for shift in [-240, 240] {
        let mut r = ordinary(&format!("on-time-{shift}"), "customer-skew", "6222020000007001");
        r.requested_at = at(shift);
        client.screen(r).await.unwrap();
    }

    // A limit change reported with the transfer may be old, never in the future.
    let mut r = seed_case("future-limit");
    r.customer.as_mut().unwrap().last_limit_change.as_mut().unwrap().changed_at = at(3600);
    let v = violations(&client.screen(r).await.unwrap_err());
    assert_eq!(v[0].0, "customer.last_limit_change.changed_at", "{v:?}");
    assert!(v[0].1.contains("is in the future"), "{v:?}");
    let mut r = seed_case("old-limit");
    r.customer.as_mut().unwrap().last_limit_change.as_mut().unwrap().changed_at = at(-2 * YEAR);
    client.screen(r).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn events_stamped_far_from_the_server_clock_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.screening().await;
    let limit = |id: &str, shift: i64| pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: id.into(),
        event: Some(pb::record_event_request::Event::LimitChanged(pb::LimitChanged {
            customer_id: "customer-ev".into(),
            old_limit_minor: 5_000_000,
            new_limit_minor: 50_000_000,
            is_maximum: true,
            changed_at: at(shift),
        })),
    };
    let v = violations(&client.record_event(limit("ahead", 3600)).await.unwrap_err());
    assert_eq!(v.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["limit_changed.changed_at"]);
    let v = violations(&client.record_event(limit("behind", -YEAR)).await.unwrap_err());
    assert_eq!(v[0].0, "limit_changed.changed_at");
    assert!(!client.record_event(limit("live", -60)).await.unwrap().into_inner().duplicate);

    let payee = |id: &str, shift: i64| pb::RecordEventRequest {
        bank_id: String::new(),
        event_id: id.into(),
        event: Some(pb::record_event_request::Event::PayeeAdded(pb::PayeeAdded {
            customer_id: "customer-ev".into(),
            payee: Some(pb::Payee {
                account: "6222020000007002".into(),
                name: "张三".into(),
                bank_code: "icbc".into(),
            }),
            added_at: at(shift),
        })),
    };
    let v = violations(&client.record_event(payee("payee-ahead", 24 * 3600)).await.unwrap_err());
    assert_eq!(v[0].0, "payee_added.added_at");
    client.record_event(payee("payee-live", 0)).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn dry_runs_replay_their_own_times() {
    let server = TestServer::start().await;
    let mut r = seed_case("replayed");
    let shift = -3 * YEAR;
    r.requested_at = at(shift);
    r.customer.as_mut().unwrap().last_limit_change.as_mut().unwrap().changed_at = at(shift - 900);
    let dry = server.rules().await.dry_run(r).await.unwrap().into_inner();
    assert_eq!(dry.action, pb::Action::Hold as i32, "{dry:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_window_is_configurable() {
    let server = TestServer::start_with_clock_skew(std::time::Duration::from_secs(60)).await;
    let mut client = server.screening().await;
    let mut r = ordinary("two-minutes-late", "customer-w", "6222020000007003");
    r.requested_at = at(-120);
    let v = violations(&client.screen(r.clone()).await.unwrap_err());
    assert!(v[0].1.contains("not within 1m"), "{v:?}");
    r.requested_at = at(-30);
    client.screen(r).await.unwrap();
    server.stop().await;
}
