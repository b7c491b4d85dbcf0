//! Delivery to NATS JetStream, against nats-server processes of the tests' own
//! (free loopback ports, temp stores): a fresh machine has no NATS on 4222.

use crate::harness::{free_port, seed_case, unique_nats, NatsServer, TestServer};
use async_nats::jetstream::{self, consumer};
use std::time::Duration;
use transfer_guard::api::proto as pb;
use transfer_guard::delivery::{decode, NatsConfig};

/// Reads a station's subject with a durable pull consumer until `want`
/// messages came, then waits a little longer to be sure no more come.
pub async fn read_station(config: &NatsConfig, station: &str, want: usize) -> Vec<pb::AlertEvent> {
    read_as(config, station, &format!("station-{station}"), want).await
}

/// The same with a durable consumer of the given name.
pub async fn read_as(config: &NatsConfig, station: &str, durable: &str, want: usize) -> Vec<pb::AlertEvent> {
    let client = async_nats::connect(config.url.as_str()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match js.get_stream(&config.stream).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("stream {} never appeared: {e}", config.stream),
        }
    };
    let consumer = stream
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.to_string()),
                filter_subject: config.subject(station),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let waited = if got.len() < want { Duration::from_millis(500) } else { Duration::from_millis(700) };
        let mut batch = consumer.fetch().max_messages(100).expires(waited).messages().await.unwrap();
        let mut any = false;
        while let Some(Ok(m)) = tokio_stream::StreamExt::next(&mut batch).await {
            any = true;
            got.push(decode(&m.payload).expect("proto3 JSON AlertEvent"));
            m.ack().await.unwrap();
        }
        if got.len() >= want && !any {
            return got;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} of {want} messages on {station}", got.len());
    }
}

async fn delete_stream(config: &NatsConfig) {
    if let Ok(client) = async_nats::connect(config.url.as_str()).await {
        let _ = jetstream::new(client).delete_stream(&config.stream).await;
    }
}

fn request_ids(events: &[pb::AlertEvent]) -> Vec<String> {
    events.iter().map(|e| e.alert.as_ref().unwrap().transfer.as_ref().unwrap().request_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_arrives_once_on_its_stations_subject() {
    let nats = NatsServer::start_fresh();
    let config = unique_nats(&nats.url());
    let server = TestServer::start_full(|_| {}, Some(config.clone()), false).await;
    let mut teller = server.screening().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = teller.screen(seed_case(&format!("nats-{i}"))).await.unwrap().into_inner();
        ids.push(r.alert_id);
    }
    let mut elsewhere = seed_case("nats-shaping");
    elsewhere.branch_id = "psbc-heshan-shaping".into();
    let r = teller.screen(elsewhere.clone()).await.unwrap().into_inner();
    assert_eq!(r.station_id, "heshan-shaping-ps");
    // A retried request raises nothing new.
    teller.screen(elsewhere).await.unwrap();
    server
        .alerts()
        .await
        .claim_alert(pb::ClaimAlertRequest { alert_id: ids[0].clone(), officer_id: "officer-li".into() })
        .await
        .unwrap();

    let zhongshan = read_station(&config, "heshan-zhongshan-ps", 4).await;
    let kinds: Vec<&str> = zhongshan.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["raised", "raised", "raised", "claimed"]);
    assert_eq!(request_ids(&zhongshan), ["nats-0", "nats-1", "nats-2", "nats-0"]);
    assert!(zhongshan.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let shaping = read_station(&config, "heshan-shaping-ps", 1).await;
    assert_eq!(request_ids(&shaping), ["nats-shaping"]);
    server.stop().await;
    delete_stream(&config).await;
}

/// NATS goes down: screening goes on; when it is back every event arrives, in
/// order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_nats_is_down_and_arrive_in_order_once() {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let nats = NatsServer::start(port, store.path());
    let config = unique_nats(&nats.url());
    let server = TestServer::start_full(|_| {}, Some(config.clone()), false).await;
    let mut teller = server.screening().await;
    for i in 0..2 {
        teller.screen(seed_case(&format!("fault-{i}"))).await.unwrap();
    }
    assert_eq!(read_station(&config, "heshan-zhongshan-ps", 2).await.len(), 2);

    nats.kill();
    for i in 2..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), teller.screen(seed_case(&format!("fault-{i}"))))
            .await
            .expect("screening does not wait on NATS")
            .unwrap()
            .into_inner();
        assert_eq!(r.action, pb::Action::Hold as i32);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _back = NatsServer::start(port, store.path());

    let all = read_station(&config, "heshan-zhongshan-ps", 3).await;
    // The durable consumer already acknowledged the first two.
    assert_eq!(request_ids(&all), ["fault-2", "fault-3", "fault-4"]);
    // A new consumer reading the whole stream sees each alert exactly once, in order.
    let whole = read_as(&config, "heshan-zhongshan-ps", "auditor", 5).await;
    assert_eq!(request_ids(&whole), ["fault-0", "fault-1", "fault-2", "fault-3", "fault-4"]);
    server.stop().await;
}
