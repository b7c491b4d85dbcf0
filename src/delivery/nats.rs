//! The NATS JetStream sink: each event is published to the subject of every
//! station it targets (`<prefix>.<station>`), with `Nats-Msg-Id` set to the
//! event id and station, so JetStream's duplicate window drops the re-sends a
//! retry or a restart makes.

use super::{targets, AlertSink};
use crate::alerts::AlertEvent;
use crate::api::proto as pb;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use std::time::Duration;

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

pub struct NatsSink {
    config: NatsConfig,
    js: Option<jetstream::Context>,
}

impl NatsSink {
    pub fn new(config: NatsConfig) -> NatsSink {
        NatsSink { config, js: None }
    }
}

#[tonic::async_trait]
impl AlertSink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn prepare(&mut self) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .name("transfer-guard")
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| format!("connect {}: {e}", self.config.url))?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create stream {}: {e}", self.config.stream))?;
        self.js = Some(js);
        Ok(())
    }

    async fn deliver(&mut self, event: &AlertEvent, payload: &pb::AlertEvent) -> Result<u64, String> {
        let js = self.js.as_ref().ok_or("not connected")?;
        let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        let mut messages = 0;
        for station in targets(event) {
            let publish = PublishMessage::build()
                .payload(body.clone().into())
                .message_id(format!("{}/{station}", event.event_id));
            let ack = js
                .send_publish(self.config.subject(station), publish)
                .await
                .map_err(|e| format!("publish {}: {e}", event.event_id))?;
            ack.await.map_err(|e| format!("ack {}: {e}", event.event_id))?;
            messages += 1;
        }
        Ok(messages)
    }
}
