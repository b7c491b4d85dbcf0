//! The alert book on every node (clustered mode). Each node publishes the
//! events of the alerts it owns to one stream, one subject per alert
//! (`<prefix>.alertbook.<alert id>`, its latest event kept, for the alert
//! retention), and every node follows that stream into its own book as
//! copied events: an officer lists, watches and opens any station's alerts
//! on any node, and a node that starts reads every alert's latest image.
//!
//! Must not change an alert this node does not own: claims and resolutions
//! are forwarded to the owner (`api`, `board`); copied events are never
//! delivered to stations from here (the owner delivers them).

use crate::alerts::AlertEvent;
use crate::api::proto as pb;
use crate::delivery::AlertSink;
use crate::store::records::AlertEventRec;
use async_nats::jetstream::{self, message::PublishMessage};
use std::time::Duration;

/// The stream's settings: the latest event of each alert, for `retention`.
pub fn stream(prefix: &str, replicas: usize, retention: Duration) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: super::journal::stream_name(prefix, "ALERTBOOK"),
        subjects: vec![format!("{prefix}.alertbook.>")],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        max_age: retention,
        // A new owner re-sends an adopted alert's last event under its id
        // (JetStream wants the window within the stream's age limit).
        duplicate_window: retention.min(Duration::from_secs(120)),
        ..Default::default()
    }
}

/// Publishes this node's alert events to the stream: a delivery sink, so
/// each event goes once acknowledged, in order, resumed after restarts.
pub struct AlertFeed {
    pub(super) js: jetstream::Context,
    pub(super) prefix: String,
}

#[tonic::async_trait]
impl AlertSink for AlertFeed {
    fn name(&self) -> &'static str {
        "cluster"
    }

    async fn prepare(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn deliver(&mut self, event: &AlertEvent, _payload: &pb::AlertEvent) -> Result<u64, String> {
        let body = serde_json::to_vec(&AlertEventRec::from(event)).map_err(|e| e.to_string())?;
        let publish = PublishMessage::build().payload(body.into()).message_id(event.event_id.clone());
        let subject = format!("{}.alertbook.{}", self.prefix, event.alert.id);
        let ack =
            self.js.send_publish(subject, publish).await.map_err(|e| format!("publish {}: {e}", event.event_id))?;
        ack.await.map_err(|e| format!("ack {}: {e}", event.event_id))?;
        Ok(1)
    }
}

/// An event read back from the stream (None: not one this version reads).
pub fn decode(payload: &[u8]) -> Option<AlertEvent> {
    let rec: AlertEventRec = serde_json::from_slice(payload).ok()?;
    AlertEvent::try_from(rec).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duplicate_window_is_never_longer_than_what_the_stream_keeps() {
        let short = stream("transferguard", 1, Duration::from_secs(60));
        assert_eq!(short.duplicate_window, Duration::from_secs(60));
        let long = stream("transferguard", 3, Duration::from_secs(30 * 86_400));
        assert_eq!((long.duplicate_window, long.num_replicas), (Duration::from_secs(120), 3));
    }

    #[test]
    fn a_payload_that_is_not_an_event_is_skipped_not_a_panic() {
        assert!(decode(b"").is_none());
        assert!(decode(b"{\"cursor\": 1}").is_none());
        assert!(decode(&[0xff, 0x00, 0x7b]).is_none());
    }
}
