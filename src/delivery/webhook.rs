//! The HTTP webhook sink: each event is POSTed, as proto3 JSON, to a URL the
//! station (or the bank's integration layer) runs; a 2xx answer acknowledges
//! it, anything else is retried with backoff, in order.
//!
//! Headers: `Idempotency-Key` is the event id (`<alert id>:<n>`), so the
//! receiver drops redeliveries; `X-TransferGuard-Timestamp` is the send time in
//! Unix seconds and `X-TransferGuard-Signature` is `sha256=` and the hex
//! HMAC-SHA256, under the configured secret, of `<timestamp>.<body>`, so the
//! receiver can check who sent it and refuse stale replays. Plain `http://`
//! only for now (a station's relay on the bank's network); TLS comes with the
//! trust work.

use super::AlertSink;
use crate::alerts::AlertEvent;
use crate::api::proto as pb;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use std::time::Duration;

/// Where events are POSTed and the secret they are signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WebhookConfig").field("url", &self.url).finish_non_exhaustive()
    }
}

/// How long one POST may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", crate::model::hex(&digest))
}

pub struct WebhookSink {
    config: WebhookConfig,
    uri: hyper::Uri,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl WebhookSink {
    /// Checks the URL (absolute `http://`) and builds the client.
    pub fn new(config: WebhookConfig) -> Result<WebhookSink, String> {
        let uri: hyper::Uri = config.url.parse().map_err(|e| format!("webhook url `{}`: {e}", config.url))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!("webhook url `{}` must be an absolute http:// URL", config.url));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(WebhookSink { config, uri, client })
    }
}

#[tonic::async_trait]
impl AlertSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn prepare(&mut self) -> Result<(), String> {
        Ok(())
    }

    async fn deliver(&mut self, event: &AlertEvent, payload: &pb::AlertEvent) -> Result<u64, String> {
        let body = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        let timestamp = crate::clock::wall_clock();
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", event.event_id.as_str())
            .header("X-TransferGuard-Timestamp", timestamp.to_string())
            .header("X-TransferGuard-Signature", signature(&self.config.secret, timestamp, &body))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("POST {}: no answer in {TIMEOUT:?}", event.event_id))?
            .map_err(|e| format!("POST {}: {e}", event.event_id))?;
        let status = response.status();
        // Read the answer to the end so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(1)
        } else {
            Err(format!("POST {}: the receiver answered {status}", event.event_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Checked against an independently computed value
        // (`printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`).
        assert_eq!(
            signature("secret", 1_700_000_000, b"{}"),
            "sha256=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn only_absolute_http_urls() {
        let sink = |url: &str| WebhookSink::new(WebhookConfig { url: url.into(), secret: "s".into() }).map(|_| ());
        assert!(sink("http://127.0.0.1:8080/alerts").is_ok());
        assert!(sink("https://example.org/alerts").is_err());
        assert!(sink("/alerts").is_err());
        assert!(sink("not a url").is_err());
    }
}
