//! The audit trail: an append-only JSON-lines file of every decision, alert
//! lifecycle change, watchlist change and ruleset change, with accounts and
//! names masked as in the logs.
//!
//! Screening does not wait on the disk: records go through a bounded channel
//! (65,536 records) to one writer thread, which appends, and flushes whenever the
//! channel runs dry (records reach the file within about 10 ms). Only if the writer falls a whole channel behind does a
//! caller wait for it: an audit trail that drops records is no audit trail.
//! Must not write personal data unmasked.

use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// Records buffered between the service and the writer thread.
const BUFFER: usize = 65_536;
/// How long the writer sleeps when it has written everything: records reach
/// the file within about this long.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// One line of the audit file.
// Decisions are most records, so they stay inline: boxing them would add an
// allocation per decision to move a value through the channel once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditRecord {
    Decision {
        at: i64,
        request_id: String,
        bank_id: String,
        branch_id: String,
        channel: &'static str,
        amount_minor: i64,
        currency: String,
        customer_account: String,
        payee_account: String,
        payee_name: String,
        action: &'static str,
        score: i64,
        hits: Vec<String>,
        shadow_hits: Vec<String>,
        ruleset_version: String,
        alert_id: Option<String>,
        station_id: Option<String>,
    },
    Alert {
        at: i64,
        event: &'static str,
        alert_id: String,
        station_id: String,
        officer_id: Option<String>,
        outcome: Option<&'static str>,
        hold_decision: Option<&'static str>,
    },
    Watchlist {
        at: i64,
        op: &'static str,
        account: String,
        station_id: String,
        reason: String,
    },
    Ruleset {
        at: i64,
        version: String,
        loaded: bool,
        errors: usize,
    },
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::SyncSender<AuditRecord>,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating or appending to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::sync_channel::<AuditRecord>(BUFFER);
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || {
            let mut out = BufWriter::new(file);
            // Poll rather than block in recv: a blocked receiver makes every
            // send a futex wake-up, which measurably slowed screening.
            loop {
                match rx.try_recv() {
                    Ok(record) => {
                        let written = serde_json::to_writer(&mut out, &record)
                            .map_err(std::io::Error::from)
                            .and_then(|()| out.write_all(b"\n"));
                        if let Err(e) = written {
                            tracing::error!(error = %e, "cannot write the audit file");
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => {
                        if let Err(e) = out.flush() {
                            tracing::error!(error = %e, "cannot flush the audit file");
                        }
                        std::thread::sleep(FLUSH_EVERY);
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            }
            let _ = out.flush();
        })?;
        Ok(AuditLog { tx, dropped: Arc::new(AtomicU64::new(0)), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record (waits only while the channel is full).
    pub fn record(&self, record: AuditRecord) {
        if self.tx.send(record).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(lost = n, "the audit writer has stopped; records lost");
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
