//! The webhook alert sink against a real HTTP server of the test's own: every
//! alert event is POSTed in order, signed, with its event id as the
//! Idempotency-Key, and retried until the receiver answers 2xx.

use crate::harness::{seed_case, TestServer};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use transfer_guard::api::proto as pb;
use transfer_guard::delivery::WebhookConfig;
use transfer_guard::server::Extras;

const SECRET: &str = "station-relay-secret";

#[derive(Default)]
struct Receiver {
    /// (Idempotency-Key, timestamp, signature, body) of every POST, refused ones included.
    posts: Vec<(String, String, String, Vec<u8>)>,
    /// Answer 500 to this many more POSTs.
    refuse: usize,
}

async fn receive(State(r): State<Arc<Mutex<Receiver>>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut r = r.lock().unwrap();
    r.posts.push((
        header("idempotency-key"),
        header("x-transferguard-timestamp"),
        header("x-transferguard-signature"),
        body.to_vec(),
    ));
    if r.refuse > 0 {
        r.refuse -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

fn verify(timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    signature == format!("sha256={expected}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_event_is_posted_signed_in_order_and_retried_until_accepted() {
    let receiver = Arc::new(Mutex::new(Receiver { refuse: 2, ..Receiver::default() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/alerts", axum::routing::post(receive)).with_state(receiver.clone());
    let http = tokio::spawn(async move { axum::serve(listener, app).await });

    let webhook = WebhookConfig { url, secret: SECRET.into() };
    let server = TestServer::start_with_extras(Extras { webhook: Some(webhook), ..Extras::default() }, true).await;
    let mut teller = server.screening().await;
    let mut alert_ids = Vec::new();
    for i in 0..3 {
        alert_ids.push(teller.screen(seed_case(&format!("hook-{i}"))).await.unwrap().into_inner().alert_id);
    }
    let mut alerts = server.alerts().await;
    alerts
        .claim_alert(pb::ClaimAlertRequest { alert_id: alert_ids[0].clone(), officer_id: "officer-li".into() })
        .await
        .unwrap();
    // Four events: three raised, one claimed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        let posts = receiver.lock().unwrap().posts.clone();
        let accepted: Vec<_> = posts.iter().skip(2).cloned().collect();
        if accepted.len() >= 4 {
            break posts;
        }
        assert!(tokio::time::Instant::now() < deadline, "webhook got {} posts", posts.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The two refused POSTs were the first event, tried again until accepted.
    assert_eq!(accepted[0].0, accepted[1].0);
    assert_eq!(accepted[1].0, accepted[2].0);
    let mut keys: Vec<String> = accepted.iter().map(|p| p.0.clone()).collect();
    keys.dedup();
    let events: Vec<pb::AlertEvent> =
        accepted.iter().map(|p| transfer_guard::delivery::decode(&p.3).expect("proto3 JSON")).collect();
    for ((key, timestamp, signature, body), event) in accepted.iter().zip(&events) {
        assert_eq!(key, &event.event_id, "Idempotency-Key is the event id");
        assert!(verify(timestamp, signature, body), "a valid signature on {key}");
        assert!(!verify(timestamp, signature, b"{}"), "a signature that checks the body");
    }
    let mut cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    cursors.dedup();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in order: {cursors:?}");
    let kinds: Vec<&str> = {
        let mut seen = std::collections::HashSet::new();
        events.iter().filter(|e| seen.insert(e.event_id.clone())).map(|e| e.kind.as_str()).collect()
    };
    assert_eq!(kinds, ["raised", "raised", "raised", "claimed"]);
    assert_eq!(keys.len(), 4);
    // The sink's cursor is kept in the store, for a restart to resume from.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.guard.sink_cursor("webhook") < *cursors.last().unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the sink's cursor was not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    http.abort();
}
