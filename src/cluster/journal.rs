//! A partition's journal on JetStream: one subject per partition
//! (`<prefix>.state.<n>`) in one stream, each message one commit's changes
//! (`store::encode_batch`). Appends carry the sequence the writer last saw on
//! that subject (`Nats-Expected-Last-Subject-Sequence`), so a deposed owner's
//! late write is refused by JetStream itself: that is the fencing. A new owner
//! replays the subject, then appends a fence marker with the sequence it read.
//!
//! Owns the stream's layout and the read-back. Must not decide ownership (see
//! `cluster::leases`) or interpret the changes (the service does).

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use std::time::Duration;

/// A journal append that did not land.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Someone else appended since this writer's last sequence: a new owner.
    #[error("partition {0}: fenced by a newer owner")]
    Fenced(u16),
    #[error("partition {partition}: {error}")]
    Failed { partition: u16, error: String },
}

#[derive(Clone)]
pub struct Journal {
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

/// The name of the cluster's stream `what` (`TRANSFERGUARD_STATE`, `…_PAYEES`).
pub fn stream_name(prefix: &str, what: &str) -> String {
    format!("{}_{what}", prefix.to_uppercase().replace(['.', '-'], "_"))
}

/// Header naming the node that wrote a fence marker.
const OWNER_HEADER: &str = "Transfer-Guard-Owner";

impl Journal {
    /// Creates the stream if missing (`replicas` copies, on file).
    pub async fn open(js: jetstream::Context, prefix: &str, replicas: usize) -> Result<Journal, String> {
        let stream = stream_name(prefix, "STATE");
        js.get_or_create_stream(stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.state.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create stream {stream}: {e}"))?;
        Ok(Journal { js, stream, prefix: prefix.to_string() })
    }

    fn subject(&self, partition: u16) -> String {
        format!("{}.state.{partition}", self.prefix)
    }

    /// Appends `batch` to the partition's subject if its last sequence is
    /// still `last`; returns the new one.
    pub async fn append(&self, partition: u16, last: u64, batch: Vec<u8>) -> Result<u64, JournalError> {
        self.publish(partition, PublishMessage::build().payload(batch.into()).expected_last_subject_sequence(last))
            .await
    }

    /// Claims the partition's journal for `node` after reading it up to
    /// `last`: later appends by anyone who read less are refused.
    pub async fn fence(&self, partition: u16, last: u64, node: &str) -> Result<u64, JournalError> {
        let marker = PublishMessage::build().header(OWNER_HEADER, node).expected_last_subject_sequence(last);
        self.publish(partition, marker).await
    }

    async fn publish(&self, partition: u16, message: PublishMessage) -> Result<u64, JournalError> {
        let failed = |error: String| JournalError::Failed { partition, error };
        let ack = self.js.send_publish(self.subject(partition), message).await.map_err(|e| failed(e.to_string()))?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(JournalError::Fenced(partition)),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Drops the partition's messages before sequence `first` (what a
    /// compaction rewrote after them).
    pub async fn purge_before(&self, partition: u16, first: u64) -> Result<(), String> {
        let stream = self.js.get_stream_no_info(&self.stream).await.map_err(|e| e.to_string())?;
        stream.purge().filter(self.subject(partition)).sequence(first).await.map(drop).map_err(|e| e.to_string())
    }

    /// Every commit the partition's subject holds, in order, and the
    /// sequence of the last message (0: none yet).
    pub async fn replay(&self, partition: u16) -> Result<(Vec<bytes::Bytes>, u64), String> {
        let subject = self.subject(partition);
        let stream = self.js.get_stream_no_info(&self.stream).await.map_err(|e| e.to_string())?;
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(format!("last message of {subject}: {e}")),
        };
        // One leader read per message (no consumer to set up, none left behind).
        let mut out = Vec::new();
        let mut next = 1;
        while next <= last {
            let read = stream.get_first_raw_message_by_subject(&subject, next);
            let message = match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(format!("read {subject} from {next}: {e}")),
                Err(_) => return Err(format!("read {subject} from {next}: no answer within 5 s")),
            };
            out.push(message.payload);
            next = message.sequence + 1;
        }
        Ok((out, last))
    }
}
