//! The audit trail: an append-only JSON-lines file of every decision, alert
//! lifecycle change, watchlist change, ruleset change and refused call, each
//! naming who caused it (`by`: the principal, `open` when the server trusts
//! every caller, `service` for its own expiry and escalation), with accounts
//! and names masked as in the logs.
//!
//! Screening does not wait on the disk: records go through a bounded channel
//! (65,536 records) to one writer thread, which appends, and flushes whenever the
//! channel runs dry (records reach the file within about 10 ms). Only if the writer falls a whole channel behind does a
//! caller wait for it: an audit trail that drops records is no audit trail.
//! Must not write personal data unmasked.
//!
//! The file is a hash chain: every line carries its sequence number (`seq`)
//! and the SHA-256 of the line before it (`prev`; 64 zeros for the first), so
//! an edited, deleted or reordered line breaks the chain at the next one
//! ([`verify`], `transfer-guard audit verify DATA_DIR`). Appending after a
//! restart continues the chain from the file's last line. The last line has no
//! successor to vouch for it: `verify` prints its hash (the head) for an
//! operator to anchor elsewhere.

use crate::auth::Caller;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::io::{BufRead, Read, Seek, SeekFrom};
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
    /// A ruleset put forward for a second analyst's approval (maker–checker).
    RulesProposed {
        at: i64,
        version: String,
    },
    /// A proposed ruleset approved (or an approval refused, with why).
    RulesApproved {
        at: i64,
        version: String,
        proposed_by: String,
        approved: bool,
        why: String,
    },
    /// A call refused: unauthenticated, wrong role, wrong bank or station.
    Denied {
        at: i64,
        method: String,
        reason: &'static str,
        message: String,
    },
    /// A screen answered by the fail mode while the store could not commit.
    FailMode {
        at: i64,
        request_id: String,
        decided: &'static str,
        answered: &'static str,
    },
    /// The store could not commit in time (degraded), or commits again.
    Degraded {
        at: i64,
        degraded: bool,
        why: String,
    },
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    /// None once dropped: the writer then drains what is queued and stops.
    tx: Option<mpsc::SyncSender<(Caller, AuditRecord)>>,
    /// Joined when the last clone is dropped, so every record queued is on
    /// disk before the process may exit.
    _writer: Arc<Writer>,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (creating or appending to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let mut chain = Chain::continuing(path)?;
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::sync_channel::<(Caller, AuditRecord)>(BUFFER);
        let writer = std::thread::Builder::new().name("audit-writer".into()).spawn(move || {
            let mut out = BufWriter::new(file);
            // Poll rather than block in recv: a blocked receiver makes every
            // send a futex wake-up, which measurably slowed screening.
            loop {
                match rx.try_recv() {
                    Ok((by, record)) => {
                        let written = chain.line(&by, &record).and_then(|line| out.write_all(line));
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
        let writer = Arc::new(Writer(std::sync::Mutex::new(Some(writer))));
        Ok(AuditLog { tx: Some(tx), _writer: writer, dropped: Arc::new(AtomicU64::new(0)), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record of what `by` caused (waits only while the channel is full).
    /// The caller is formatted on the writer thread, off the request's path.
    pub fn record(&self, by: &Caller, record: AuditRecord) {
        if self.tx.as_ref().is_none_or(|tx| tx.send((by.clone(), record)).is_err()) {
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

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Before the writer handle: the last clone's sender goes first, so
        // the writer drains and stops, then is joined.
        drop(self.tx.take());
    }
}

/// The writer thread, joined when the last [`AuditLog`] clone lets it go.
struct Writer(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(writer) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

/// The `prev` of the first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The SHA-256 of one line (without its newline), in hex.
fn line_hash(line: &[u8]) -> String {
    crate::model::hex(&Sha256::digest(line))
}

/// Where the chain stands: the next line's sequence number and `prev`, and
/// the line being written (one buffer, reused for every line).
struct Chain {
    seq: u64,
    prev: String,
    line: Vec<u8>,
    /// The last caller seen and its name: most lines are one teller
    /// system's, so the name is formatted once, not once a line.
    by: Option<(Caller, String)>,
}

impl Chain {
    fn new(seq: u64, prev: String) -> Chain {
        Chain { seq, prev, line: Vec::with_capacity(1024), by: None }
    }

    /// After the last line of the file at `path` (a new chain if there is none).
    fn continuing(path: &Path) -> std::io::Result<Chain> {
        let Some(last) = last_line(path)? else { return Ok(Chain::new(1, GENESIS.into())) };
        let seq =
            serde_json::from_str::<serde_json::Value>(&last).ok().and_then(|v| v["seq"].as_u64()).map_or(1, |s| s + 1);
        Ok(Chain::new(seq, line_hash(last.as_bytes())))
    }

    /// The line for `record`, linked to the one before it, with its newline.
    /// Written straight from the record (no intermediate JSON value): the
    /// record's object, then who, its place and the link as its last fields.
    /// The chain hashes the line's bytes as written.
    fn line(&mut self, by: &Caller, record: &AuditRecord) -> std::io::Result<&[u8]> {
        if self.by.as_ref().is_none_or(|(c, _)| c != by) {
            self.by = Some((by.clone(), by.to_string()));
        }
        let name = self.by.as_ref().map_or("", |(_, name)| name.as_str());
        let line = &mut self.line;
        line.clear();
        serde_json::to_writer(&mut *line, record)?;
        // Every record is an object with at least its `kind`: reopen it.
        if line.pop() != Some(b'}') {
            return Err(std::io::Error::other("an audit record did not serialise as an object"));
        }
        line.extend_from_slice(b",\"by\":");
        serde_json::to_writer(&mut *line, name)?;
        write!(line, ",\"seq\":{},\"prev\":\"{}\"}}", self.seq, self.prev)?;
        self.seq += 1;
        self.prev = line_hash(line);
        line.push(b'\n');
        Ok(line)
    }
}

/// The last complete line of a file, read from its end.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.seek(SeekFrom::End(0))?;
    let mut tail = Vec::new();
    let mut read_from = len;
    // Grow the window from the end until it holds a whole last line.
    loop {
        let step = (64 * 1024).min(read_from);
        read_from -= step;
        file.seek(SeekFrom::Start(read_from))?;
        let mut chunk = vec![0; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if let Some(i) = body.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(String::from_utf8_lossy(&body[i + 1..]).into_owned()));
        }
        if read_from == 0 {
            return Ok((!body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned()));
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every line links to the one before it.
    Intact { records: u64, head: String },
    /// The first line that does not: its number in the file (from 1) and why.
    Broken { line: u64, why: String },
}

/// Checks the hash chain of an audit file, line by line.
pub fn verify(path: &Path) -> std::io::Result<Verified> {
    let file = std::fs::File::open(path)?;
    let mut prev = GENESIS.to_string();
    let mut expected_seq: Option<u64> = None;
    let mut n = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        n += 1;
        let broken = |why: String| Ok(Verified::Broken { line: n, why });
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            return broken("not a JSON record".into());
        };
        let (Some(seq), Some(claimed)) = (value["seq"].as_u64(), value["prev"].as_str()) else {
            return broken("no seq or prev: not part of the chain".into());
        };
        if claimed != prev {
            return broken(format!(
                "record {seq} does not follow the line before it (an earlier line was edited, deleted or moved)"
            ));
        }
        if expected_seq.is_some_and(|e| e != seq) {
            return broken(format!("record {seq} where record {} was due", expected_seq.unwrap_or(0)));
        }
        expected_seq = Some(seq + 1);
        prev = line_hash(line.as_bytes());
    }
    Ok(Verified::Intact { records: n, head: prev })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64) -> AuditRecord {
        AuditRecord::Ruleset { at: 1_773_109_200 + i, version: format!("sha256:{i:016x}"), loaded: true, errors: 0 }
    }

    /// One line, without its newline.
    fn line(chain: &mut Chain, by: &Caller, record: &AuditRecord) -> String {
        let line = chain.line(by, record).unwrap();
        String::from_utf8(line.strip_suffix(b"\n").unwrap().to_vec()).unwrap()
    }

    /// Five chained lines in a temp file.
    fn chained() -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::continuing(&path).unwrap();
        let lines: Vec<String> = (0..5).map(|i| line(&mut chain, &Caller::Open, &record(i))).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        (dir, path, lines)
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// Lines are written field by field; they must be what serialising the
    /// record with who, place and link flattened into it gives, byte for byte.
    #[test]
    fn a_line_is_the_record_with_who_place_and_link_as_its_last_fields() {
        #[derive(Serialize)]
        struct Flattened<'a> {
            #[serde(flatten)]
            record: &'a AuditRecord,
            by: &'a str,
            seq: u64,
            prev: &'a str,
        }
        let teller = Caller::Known(crate::auth::Principal {
            role: crate::auth::Role::ALL[0],
            scope: "bank \"一\"\\".into(),
            subject: "t\u{1}1".into(),
        });
        let records = [
            AuditRecord::Decision {
                at: 1,
                request_id: "r-1".into(),
                bank_id: "b".into(),
                branch_id: "br".into(),
                channel: "counter",
                amount_minor: 40_000_000,
                currency: "CNY".into(),
                customer_account: "6222****1234".into(),
                payee_account: "6217****0001".into(),
                payee_name: "王\"某\"\n".into(),
                action: "HOLD",
                score: 90,
                hits: vec!["seed.large".into(), "new_payee".into()],
                shadow_hits: vec![],
                ruleset_version: "sha256:00".into(),
                alert_id: Some("a-1".into()),
                station_id: None,
            },
            AuditRecord::Alert {
                at: 2,
                event: "claimed",
                alert_id: "a".into(),
                station_id: "s".into(),
                officer_id: None,
                outcome: Some("x"),
                hold_decision: None,
            },
            AuditRecord::Denied { at: 3, method: "Screen".into(), reason: "role", message: "\u{7f}\t".into() },
            record(4),
        ];
        let mut chain = Chain::new(7, GENESIS.into());
        let mut prev = GENESIS.to_string();
        for (i, r) in records.iter().enumerate() {
            for by in [&Caller::Open, &teller, &Caller::Service, &teller] {
                let seq = chain.seq;
                let want =
                    serde_json::to_string(&Flattened { record: r, by: &by.to_string(), seq, prev: &prev }).unwrap();
                assert_eq!(line(&mut chain, by, r), want, "record {i}");
                prev = line_hash(want.as_bytes());
                assert_eq!(chain.prev, prev);
            }
        }
    }

    #[test]
    fn an_intact_chain_verifies_and_names_its_head() {
        let (_dir, path, lines) = chained();
        assert_eq!(verify(&path).unwrap(), Verified::Intact { records: 5, head: line_hash(lines[4].as_bytes()) });
    }

    #[test]
    fn an_edited_a_deleted_and_a_moved_line_are_each_found() {
        let (_dir, path, lines) = chained();
        let mut edited = lines.clone();
        edited[1] = edited[1].replace("\"loaded\":true", "\"loaded\":false");
        write(&path, &edited);
        assert!(matches!(verify(&path).unwrap(), Verified::Broken { line: 3, .. }), "edit");

        let mut deleted = lines.clone();
        deleted.remove(1);
        write(&path, &deleted);
        assert!(matches!(verify(&path).unwrap(), Verified::Broken { line: 2, .. }), "delete");

        let mut moved = lines.clone();
        moved.swap(1, 2);
        write(&path, &moved);
        assert!(matches!(verify(&path).unwrap(), Verified::Broken { line: 2, .. }), "reorder");
    }

    #[test]
    fn the_writer_continues_the_chain_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let lines = |n: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() >= n {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "the writer did not write {n} lines");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let log = AuditLog::open(&path).unwrap();
        (0..3).for_each(|i| log.record(&Caller::Open, record(i)));
        lines(3);
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        (3..5).for_each(|i| log.record(&Caller::Open, record(i)));
        lines(5);
        match verify(&path).unwrap() {
            Verified::Intact { records: 5, .. } => {}
            other => panic!("{other:?}"),
        }
    }
}
