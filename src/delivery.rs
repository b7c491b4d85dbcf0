//! Delivery of alert events to NATS JetStream, for stations that consume a
//! subject rather than the gRPC stream.
//!
//! The outbox is the alert book's ordered event log: the publisher keeps the
//! cursor of the last event JetStream acknowledged and publishes what follows,
//! in order, each with `Nats-Msg-Id` set to the event id (per station subject),
//! so JetStream drops the duplicates a retry makes. While NATS is down,
//! screening goes on and events wait in the log; they go out in order when it
//! is back. Must not block screening: it only reads the log.

use crate::alerts::{AlertEvent, EventsAfter};
use crate::api::proto as pb;
use crate::service::TransferGuard;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where and how alert events are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    pub url: String,
    /// The JetStream stream, created if missing.
    pub stream: String,
    /// Events for station S go to `<prefix>.S`.
    pub subject_prefix: String,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            stream: "TRANSFER_GUARD_ALERTS".into(),
            subject_prefix: "transferguard.alerts".into(),
        }
    }

    pub fn subject(&self, station: &str) -> String {
        format!("{}.{station}", self.subject_prefix)
    }
}

/// What the publisher has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct DeliveryProgress {
    /// Cursor of the last event acknowledged by JetStream.
    pub published_cursor: AtomicU64,
    pub published_messages: AtomicU64,
}

/// How long to wait before retrying after a failure, growing to a ceiling.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(5)).min(3_000))
}

/// The stations an event goes to: its station, and the escalation target once escalated.
fn targets(e: &AlertEvent) -> Vec<&str> {
    let mut v = vec![e.alert.station_id.as_str()];
    if let Some(s) = e.alert.escalation_station_id.as_deref() {
        if s != e.alert.station_id {
            v.push(s);
        }
    }
    v
}

/// Publishes alert events until `shutdown` turns true.
pub async fn run(
    guard: Arc<TransferGuard>,
    config: NatsConfig,
    progress: Arc<DeliveryProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .name("transfer-guard")
        .connect(config.url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %config.url, error = %e, "cannot use the NATS url; alerts stay in the embedded queue only");
            return;
        }
    };
    let js = jetstream::new(client);
    let mut wake = guard.subscribe_alerts();
    let mut stream_ready = false;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = async {
            if !stream_ready {
                js.get_or_create_stream(stream::Config {
                    name: config.stream.clone(),
                    subjects: vec![format!("{}.>", config.subject_prefix)],
                    storage: stream::StorageType::File,
                    duplicate_window: Duration::from_secs(3600),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create stream {}: {e}", config.stream))?;
                stream_ready = true;
            }
            publish_pending(&guard, &js, &config, &progress).await
        }
        .await;
        let pause = match result {
            Ok(()) => {
                failures = 0;
                Duration::from_secs(1)
            }
            Err(e) => {
                guard.metrics().publish_failures.inc();
                let pending =
                    guard.alerts().last_cursor().saturating_sub(progress.published_cursor.load(Ordering::Relaxed));
                guard.metrics().outbox_depth.set(pending as i64);
                failures += 1;
                tracing::warn!(error = %e, pending = guard.alerts().last_cursor().saturating_sub(progress.published_cursor.load(Ordering::Relaxed)), "publishing alerts to NATS failed; will retry");
                backoff(failures)
            }
        };
        tokio::select! {
            _ = wake.recv() => {}
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn publish_pending(
    guard: &TransferGuard,
    js: &jetstream::Context,
    config: &NatsConfig,
    progress: &DeliveryProgress,
) -> Result<(), String> {
    let after = progress.published_cursor.load(Ordering::Relaxed);
    let events = match guard.alerts().events_after(after) {
        EventsAfter::Events(events) => events,
        EventsAfter::TooOld { oldest } => {
            tracing::error!(after, oldest, "alert events were dropped from the log before NATS took them");
            progress.published_cursor.store(oldest - 1, Ordering::Relaxed);
            return Ok(());
        }
    };
    let result = publish_events(guard, js, config, progress, events).await;
    let published = progress.published_cursor.load(Ordering::Relaxed);
    if published > after {
        // Remembered across restarts; a republish after a crash is deduplicated
        // by JetStream on the message id.
        guard.nats_delivered(published);
    }
    result
}

async fn publish_events(
    guard: &TransferGuard,
    js: &jetstream::Context,
    config: &NatsConfig,
    progress: &DeliveryProgress,
    events: Vec<AlertEvent>,
) -> Result<(), String> {
    for event in events {
        let payload = serde_json::to_vec(&crate::api::services::event_to_pb(&event)).map_err(|e| e.to_string())?;
        for station in targets(&event) {
            let publish = PublishMessage::build()
                .payload(payload.clone().into())
                .message_id(format!("{}/{station}", event.event_id));
            let ack = js
                .send_publish(config.subject(station), publish)
                .await
                .map_err(|e| format!("publish {}: {e}", event.event_id))?;
            ack.await.map_err(|e| format!("ack {}: {e}", event.event_id))?;
            progress.published_messages.fetch_add(1, Ordering::Relaxed);
        }
        progress.published_cursor.store(event.cursor, Ordering::Relaxed);
        guard.metrics().outbox_depth.set(guard.alerts().last_cursor().saturating_sub(event.cursor) as i64);
    }
    Ok(())
}

/// Decodes a message a station received.
pub fn decode(payload: &[u8]) -> Result<pb::AlertEvent, serde_json::Error> {
    serde_json::from_slice(payload)
}
