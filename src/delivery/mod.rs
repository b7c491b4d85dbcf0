//! Delivery of alert events to the places stations read them besides the gRPC
//! stream: one [`AlertSink`] per place (NATS JetStream, an HTTP webhook), each
//! driven by [`run`] with a durable cursor of its own.
//!
//! The outbox is the alert book's ordered event log: a sink's driver keeps the
//! cursor of the last event the sink acknowledged (in the store, so it
//! survives restarts) and delivers what follows, in order, retrying with
//! backoff. Delivery is at least once; each sink carries the event id so its
//! receiver drops the duplicates a retry or a restart makes. While a sink is
//! down, screening goes on and events wait in the log. Must not block
//! screening: drivers only read the log. A new sink is a new file here
//! implementing [`AlertSink`], and a setting that starts it in `server`.

pub mod nats;
pub mod webhook;

use crate::alerts::{AlertEvent, EventsAfter};
use crate::api::proto as pb;
use crate::service::TransferGuard;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub use nats::NatsConfig;
pub use webhook::WebhookConfig;

/// A place alert events are delivered to, in cursor order, at least once.
#[tonic::async_trait]
pub trait AlertSink: Send {
    /// A stable name: the metrics label and the key of its durable cursor.
    fn name(&self) -> &'static str;
    /// Gets ready (connects, creates streams); called before delivering until it succeeds.
    async fn prepare(&mut self) -> Result<(), String>;
    /// Delivers one event; `Ok` only once the receiver has acknowledged it.
    /// Returns how many messages that took (one per station for NATS).
    async fn deliver(&mut self, event: &AlertEvent, payload: &pb::AlertEvent) -> Result<u64, String>;
}

/// What a sink's driver has done, for metrics and tests.
#[derive(Debug, Default)]
pub struct DeliveryProgress {
    /// Cursor of the last event the sink acknowledged.
    pub published_cursor: AtomicU64,
    pub published_messages: AtomicU64,
}

/// How long to wait before retrying after a failure, growing to a ceiling.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(5)).min(3_000))
}

/// The stations an event goes to: its station, and the escalation target once escalated.
pub fn targets(e: &AlertEvent) -> Vec<&str> {
    let mut v = vec![e.alert.station_id.as_str()];
    if let Some(s) = e.alert.escalation_station_id.as_deref() {
        if s != e.alert.station_id {
            v.push(s);
        }
    }
    v
}

/// Delivers alert events to `sink` until `shutdown` turns true, from the
/// cursor the store remembered for it.
pub async fn run(
    guard: Arc<TransferGuard>,
    mut sink: Box<dyn AlertSink>,
    progress: Arc<DeliveryProgress>,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    progress.published_cursor.store(guard.sink_cursor(name), Ordering::Relaxed);
    let mut wake = guard.subscribe_alerts();
    let mut ready = false;
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = async {
            if !ready {
                sink.prepare().await?;
                ready = true;
            }
            deliver_pending(&guard, sink.as_mut(), &progress).await
        }
        .await;
        let pause = match result {
            Ok(()) => {
                failures = 0;
                Duration::from_secs(1)
            }
            Err(e) => {
                guard.metrics().publish_failures.with_label_values(&[name]).inc();
                let pending =
                    guard.alerts().last_cursor().saturating_sub(progress.published_cursor.load(Ordering::Relaxed));
                guard.metrics().outbox_depth.with_label_values(&[name]).set(pending as i64);
                failures += 1;
                tracing::warn!(sink = name, error = %e, pending, "delivering alert events failed; will retry");
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

async fn deliver_pending(
    guard: &TransferGuard,
    sink: &mut dyn AlertSink,
    progress: &DeliveryProgress,
) -> Result<(), String> {
    let name = sink.name();
    let after = progress.published_cursor.load(Ordering::Relaxed);
    let events = match guard.alerts().events_after(after) {
        EventsAfter::Events(events) => events,
        EventsAfter::TooOld { oldest } => {
            tracing::error!(sink = name, after, oldest, "alert events left the log before the sink took them");
            progress.published_cursor.store(oldest - 1, Ordering::Relaxed);
            return Ok(());
        }
    };
    let mut result = Ok(());
    for event in events {
        if event.origin == crate::alerts::Origin::Copied {
            // Another node's event: that node delivers it.
            progress.published_cursor.store(event.cursor, Ordering::Relaxed);
            continue;
        }
        let payload = crate::api::convert::event_to_pb(&event);
        match sink.deliver(&event, &payload).await {
            Ok(messages) => {
                progress.published_messages.fetch_add(messages, Ordering::Relaxed);
                progress.published_cursor.store(event.cursor, Ordering::Relaxed);
                let pending = guard.alerts().last_cursor().saturating_sub(event.cursor);
                guard.metrics().outbox_depth.with_label_values(&[name]).set(pending as i64);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let delivered = progress.published_cursor.load(Ordering::Relaxed);
    if delivered > after {
        // Remembered across restarts; a redelivery after a crash is dropped by
        // the receiver on the event id.
        guard.sink_delivered(name, delivered);
    }
    result
}

/// Decodes a message a station received (NATS payload or webhook body).
pub fn decode(payload: &[u8]) -> Result<pb::AlertEvent, serde_json::Error> {
    serde_json::from_slice(payload)
}
