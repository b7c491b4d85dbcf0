//! The durable store: what the service must not forget, kept in the data dir
//! in an embedded LSM store (fjall), one keyspace per kind of record.
//!
//! The store holds *current state*, not history: each change puts the new
//! image of the record it touched (a customer, a watchlist entry, a screened
//! transfer, an event id, an alert and its events), so a
//! restart reads live state only and its time does not grow with history.
//!
//! Group commit: changes are queued under the lock that made them (so images
//! of one record arrive in order); one writer thread takes whatever has queued,
//! writes it as one atomic batch and fsyncs once. A caller waits for the
//! sequence number its changes were given ([`Store::wait`]) before it answers,
//! so concurrent requests share each fsync.
//!
//! Owns the file format (fjall's) and the encoding of values (JSON). Must not
//! decide anything or hold locks of other modules while writing.

pub mod records;

pub use records::{AlertEventRec, StoredAlert, StoredTransfer, WatchEntryRec};

use crate::alerts::{Alert, AlertEvent, AlertLog};
use crate::model::UnixSeconds;
use crate::state::{CustomerImage, StateLog, WatchEntry};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// The kinds of record, one keyspace each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Customers,
    Watchlist,
    Transfers,
    Events,
    Alerts,
    AlertEvents,
    Meta,
}

impl Space {
    pub const ALL: [Space; 7] = [
        Space::Customers,
        Space::Watchlist,
        Space::Transfers,
        Space::Events,
        Space::Alerts,
        Space::AlertEvents,
        Space::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::Customers => "customers",
            Space::Watchlist => "watchlist",
            Space::Transfers => "transfers",
            Space::Events => "events",
            Space::Alerts => "alerts",
            Space::AlertEvents => "alert_events",
            Space::Meta => "meta",
        }
    }
}

/// `sync` answers only after the change is on disk; `none` keeps everything in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Sync,
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        crate::model::parse_name("durability", s, "sync or none")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {source}")]
    Open { path: String, source: fjall::Error },
    #[error("the store in {0} is in use by another process (is another transfer-guard running on this data dir?)")]
    InUse(String),
    #[error("the store cannot be written: {0}")]
    Write(String),
    #[error("the store cannot be read: {0}")]
    Read(String),
    #[error("record {space}/{key} in the store is damaged: {error}")]
    Damaged { space: &'static str, key: String, error: String },
    #[error(
        "the store in {path} was written in format {found}, newer than this build reads ({supported}): \
         run the transfer-guard that wrote it, or a newer one"
    )]
    NewerFormat { path: String, found: u32, supported: u32 },
}

/// The version of the records' encoding. Raised when a record kind changes in
/// a way an older build cannot read; a store written by a newer version is
/// refused at open rather than misread. `golden_records` pins the records'
/// encoding (unchanged since 1). Format 2 keys `transfers` by the 128-bit hash
/// of the request id (the id itself stays in the record); a format-1 store's
/// transfers are re-keyed when the service opens it.
pub const FORMAT_VERSION: u32 = 2;
/// Key in `meta` of the format version the store was written in.
const META_FORMAT: &[u8] = b"format";

/// How far the writer has got, and who waits for what.
#[derive(Default)]
struct Committed {
    /// Every change with a sequence number up to this one is on disk.
    seq: u64,
    /// A write failed; nothing after it will be written.
    failed: bool,
    /// Callers waiting, by the sequence number they wait for. Each is woken
    /// once, when its number is on disk (not at every commit).
    waiters: std::collections::BTreeMap<u64, Vec<oneshot::Sender<bool>>>,
}

/// One change, already in the store's own byte type, so the copy into it
/// happens on the caller's thread, not the single writer's.
pub struct Put {
    pub space: Space,
    pub key: Slice,
    /// None: delete.
    pub value: Option<Slice>,
    /// In the clustered mode, the partition of the customer the record belongs
    /// to: written to the cluster's journal instead of the local disk.
    pub partition: Option<u16>,
}

/// The "partition" of records every node shares (the watchlist): in the
/// clustered mode they go to a bucket every node reads, not to a partition's journal.
pub const SHARED: u16 = u16::MAX;

/// Where a clustered node's partitioned changes go instead of the local disk
/// (`cluster::Journal`). The writer hands it each commit's changes grouped by
/// partition and waits; a partition refused (its journal was fenced by a new
/// owner) fails the callers waiting on that commit, without stopping the store.
pub trait Replica: Send + Sync {
    /// The partition of the customer `customer_id`.
    fn partition(&self, customer_id: &str) -> u16;
    /// Appends each partition's changes (encoded by [`encode_batch`]); Err
    /// names the partitions whose changes were not appended, and why.
    fn append(&self, batches: Vec<(u16, Vec<u8>)>) -> Result<(), Refused>;
    /// A customer ([`crate::state::Sender`]) paid a payee: a fact for every node's
    /// fan-in, sent when it can be (only queues).
    fn paid(&self, payee: u64, sender: u64, at: UnixSeconds);
}

/// Called after each commit with the newest alert cursor in it and the
/// partitions whose changes the cluster's journal refused.
type OnCommit = Box<dyn Fn(u64, &[u16]) + Send + Sync>;

/// What the cluster's journal did not take: these partitions' changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Refused {
    pub partitions: Vec<u16>,
    pub why: String,
}

/// A partition's changes as one journal message: for each, the keyspace's
/// index, the key and the value (or a deletion), length-prefixed.
pub fn encode_batch(puts: &[Put]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(puts.iter().map(|p| 10 + p.key.len() + p.value.as_ref().map_or(0, |v| v.len())).sum());
    for put in puts {
        encode_change(&mut out, put.space, &put.key, put.value.as_deref());
    }
    out
}

/// Appends one change to a journal message (the layout [`decode_batch`] reads).
pub fn encode_change(out: &mut Vec<u8>, space: Space, key: &[u8], value: Option<&[u8]>) {
    out.push(space as u8);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
}

/// A change read back from a journal message: keyspace, key, value (None: deleted).
pub type Change = (Space, Vec<u8>, Option<Vec<u8>>);

/// Reads back [`encode_batch`]; None when the bytes are not a batch.
pub fn decode_batch(mut bytes: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.len() >= n).then(|| bytes.split_at(n))?;
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let space = *Space::ALL.get(take(&mut bytes, 1)?[0] as usize)?;
        let n = len(&mut bytes)?;
        let key = take(&mut bytes, n)?.to_vec();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut bytes)?;
                Some(take(&mut bytes, n)?.to_vec())
            }
            _ => return None,
        };
        out.push((space, key, value));
    }
    Some(out)
}

/// Decodes a journal change's value as the type its keyspace holds.
pub fn decode_change<T: DeserializeOwned>(space: Space, key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    decode(space, key, value)
}

/// Decodes a stored value; a value that does not decode names its record.
/// Decodes a stored value as the type its keyspace holds and encodes it again:
/// the golden test's check that the encoding of every record kind is unchanged.
pub fn reencode(space_name: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    fn again<T: Serialize + DeserializeOwned>(space: Space, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(encode(&decode::<T>(space, key, value)?).to_vec())
    }
    let space = Space::ALL.into_iter().find(|s| s.name() == space_name).ok_or_else(|| StoreError::Damaged {
        space: "?",
        key: space_name.to_string(),
        error: "no such keyspace".into(),
    })?;
    match space {
        Space::Customers => again::<CustomerImage>(space, key, value),
        Space::Watchlist => again::<WatchEntryRec>(space, key, value),
        Space::Transfers => again::<StoredTransfer>(space, key, value),
        Space::Events => again::<(u64, UnixSeconds)>(space, key, value),
        Space::Alerts => again::<StoredAlert>(space, key, value),
        Space::AlertEvents => again::<AlertEventRec>(space, key, value),
        Space::Meta => again::<u64>(space, key, value),
    }
}

fn decode<T: DeserializeOwned>(space: Space, key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Damaged {
        space: space.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

/// Encodes `value` as JSON into the store's byte type through a reusable
/// per-thread buffer (no allocation but the result's).
fn encode<T: Serialize + ?Sized>(value: &T) -> Slice {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        serde_json::to_writer(&mut *buf, value).expect("store records serialise");
        Slice::from(buf.as_slice())
    })
}

#[derive(Default)]
struct Pending {
    puts: Vec<Put>,
    /// Sequence number of the last change queued.
    seq: u64,
    /// Cursor of the newest alert event queued.
    alert_cursor: u64,
    stop: bool,
}

struct Shared {
    db: Database,
    spaces: Vec<Keyspace>,
    pending: Mutex<Pending>,
    wake: Condvar,
    committed: Mutex<Committed>,
    /// Called after each commit with the newest alert cursor it made durable.
    on_commit: OnceLock<OnCommit>,
    /// Called after each commit with its duration and number of changes.
    observe: OnceLock<Box<dyn Fn(f64, usize) + Send + Sync>>,
    /// The stalled-disk drill: while true, the writer waits before each commit.
    stalled: Mutex<bool>,
    unstalled: Condvar,
    /// The clustered mode's journal, for changes that belong to a partition.
    /// Weak: the cluster holds the service, which holds this store.
    replica: OnceLock<std::sync::Weak<dyn Replica>>,
}

/// The open store and its writer thread. Dropping it writes what is queued
/// and stops the writer.
pub struct Store {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The largest journal kept before memtables are flushed to sorted tables:
/// bounds how much a restart replays.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the store in `dir`. The journal's checksums drop a
    /// torn final batch (one whose fsync never returned, so never answered).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let open_err = |source| match source {
            fjall::Error::Locked => StoreError::InUse(dir.display().to_string()),
            source => StoreError::Open { path: dir.display().to_string(), source },
        };
        let db = Database::builder(dir).max_journaling_size(MAX_JOURNAL_BYTES).open().map_err(open_err)?;
        let spaces = Space::ALL
            .iter()
            .map(|s| db.keyspace(s.name(), KeyspaceCreateOptions::default))
            .collect::<Result<Vec<_>, _>>()
            .map_err(open_err)?;
        let shared = Arc::new(Shared {
            db,
            spaces,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            committed: Mutex::new(Committed::default()),
            on_commit: OnceLock::new(),
            observe: OnceLock::new(),
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
            replica: OnceLock::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || write_loop(&shared))
                .map_err(|e| StoreError::Write(format!("cannot start the writer thread: {e}")))?
        };
        let store = Store { shared, writer: Mutex::new(Some(writer)), path: dir.to_path_buf() };
        // A store from before versioning is version 1: the encoding it has.
        let found: u32 = store.get(Space::Meta, META_FORMAT)?.unwrap_or(FORMAT_VERSION);
        if found > FORMAT_VERSION {
            return Err(StoreError::NewerFormat { path: dir.display().to_string(), found, supported: FORMAT_VERSION });
        }
        store.put(Space::Meta, META_FORMAT, Some(&FORMAT_VERSION));
        Ok(store)
    }

    /// Every record of every kind as its raw bytes, by keyspace name (for the
    /// golden test and for inspecting a store).
    pub fn raw(&self) -> Result<Vec<RawRecord>, StoreError> {
        let mut out = Vec::new();
        for space in Space::ALL {
            for item in self.shared.spaces[space as usize].iter() {
                let (k, v) = item.into_inner().map_err(|e| StoreError::Read(format!("{}: {e}", space.name())))?;
                out.push((space.name(), k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// After each commit, `f` gets the newest alert cursor now on disk.
    pub fn on_commit(&self, f: impl Fn(u64, &[u16]) + Send + Sync + 'static) {
        let _ = self.shared.on_commit.set(Box::new(f));
    }

    /// After each commit, `f` gets its duration in seconds and its number of changes.
    pub fn observe_commits(&self, f: impl Fn(f64, usize) + Send + Sync + 'static) {
        let _ = self.shared.observe.set(Box::new(f));
    }

    /// Queues `puts` under one lock, so they land in the same batch;
    /// `alert_cursor` is the newest alert event among them.
    fn queue<const N: usize>(&self, puts: [Put; N], alert_cursor: Option<u64>) {
        let mut p = lock(&self.shared.pending);
        let was_empty = p.puts.is_empty();
        p.puts.extend(puts);
        p.seq += N as u64;
        if let Some(c) = alert_cursor {
            p.alert_cursor = p.alert_cursor.max(c);
        }
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    /// Queues the new value of `key` (None: delete it).
    pub fn put<T: Serialize + ?Sized>(&self, space: Space, key: &[u8], value: Option<&T>) {
        self.queue([Put { space, key: Slice::from(key), value: value.map(encode), partition: None }], None);
    }

    /// [`Self::put`] for a record of the customer `customer_id`: in the
    /// clustered mode it goes to the journal of the customer's partition.
    pub fn put_for<T: Serialize + ?Sized>(&self, customer_id: &str, space: Space, key: &[u8], value: Option<&T>) {
        let partition = self.shared.replica.get().and_then(std::sync::Weak::upgrade).map(|r| r.partition(customer_id));
        self.queue([Put { space, key: Slice::from(key), value: value.map(encode), partition }], None);
    }

    /// From now on, changes put for a customer go to `replica` (the clustered mode).
    pub fn replicate_to(&self, replica: Arc<dyn Replica>) {
        let _ = self.shared.replica.set(Arc::downgrade(&replica));
    }

    /// The stalled-disk drill (tests, fire drills): while `stalled`, commits
    /// wait as they would on a hung or full disk; changes queue in memory.
    pub fn stall_commits(&self, stalled: bool) {
        *lock(&self.shared.stalled) = stalled;
        self.shared.unstalled.notify_all();
    }

    /// The sequence number of the newest queued change.
    pub fn queued(&self) -> u64 {
        lock(&self.shared.pending).seq
    }

    /// Waits until every change up to `seq` is on disk.
    pub async fn wait(&self, seq: u64) -> Result<(), StoreError> {
        let done = {
            let mut c = lock(&self.shared.committed);
            if c.seq >= seq {
                return Ok(());
            }
            if c.failed {
                return Err(failed());
            }
            let (tx, rx) = oneshot::channel();
            c.waiters.entry(seq).or_default().push(tx);
            rx
        };
        match done.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(failed()),
            Err(_) => Err(StoreError::Write("the writer stopped".into())),
        }
    }

    /// Blocks until every queued change is on disk (startup and tools).
    pub fn flush(&self) -> Result<(), StoreError> {
        let seq = self.queued();
        loop {
            {
                let c = lock(&self.shared.committed);
                if c.seq >= seq {
                    return Ok(());
                }
                if c.failed {
                    return Err(failed());
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Every record of `space`, decoded, in key order.
    pub fn load<T: DeserializeOwned>(&self, space: Space) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        self.for_each(space, |k, v| out.push((k.to_vec(), v)))?;
        Ok(out)
    }

    /// Hands every record of `space`, decoded, to `f` in key order (without
    /// holding them all); returns how many there were.
    pub fn for_each<T: DeserializeOwned>(
        &self,
        space: Space,
        mut f: impl FnMut(&[u8], T),
    ) -> Result<usize, StoreError> {
        let ks = &self.shared.spaces[space as usize];
        let mut n = 0;
        for item in ks.iter() {
            let (k, v) = item.into_inner().map_err(|e| StoreError::Read(format!("{}: {e}", space.name())))?;
            f(&k, decode(space, &k, &v)?);
            n += 1;
        }
        Ok(n)
    }

    /// One record of `space`.
    pub fn get<T: DeserializeOwned>(&self, space: Space, key: &[u8]) -> Result<Option<T>, StoreError> {
        let ks = &self.shared.spaces[space as usize];
        let Some(v) = ks.get(key).map_err(|e| StoreError::Read(e.to_string()))? else { return Ok(None) };
        decode(space, key, &v).map(Some)
    }

    pub fn disk_bytes(&self) -> u64 {
        self.shared.db.disk_space().unwrap_or(0)
    }

    fn stop(&self) {
        self.stall_commits(false);
        lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_one();
        if let Some(w) = lock(&self.writer).take() {
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

fn failed() -> StoreError {
    StoreError::Write("an earlier write failed; the service refuses new changes".into())
}

/// How a commit ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    Durable,
    /// The local disk failed: nothing later is acknowledged.
    Failed,
    /// The journal refused a partition (a new owner fenced it): this commit's
    /// callers get an error; later commits go on.
    Refused,
}

/// Marks everything up to `seq` durable (or failed) and wakes the callers
/// whose numbers that covers.
fn settle(shared: &Shared, seq: u64, how: Settled) {
    let woken = {
        let mut c = lock(&shared.committed);
        if how == Settled::Failed {
            c.failed = true;
            std::mem::take(&mut c.waiters)
        } else {
            c.seq = seq;
            let later = c.waiters.split_off(&(seq + 1));
            std::mem::replace(&mut c.waiters, later)
        }
    };
    for tx in woken.into_values().flatten() {
        let _ = tx.send(how == Settled::Durable);
    }
}
fn write_loop(shared: &Shared) {
    let mut failed = false;
    loop {
        {
            let mut p = lock(&shared.pending);
            while p.puts.is_empty() && !p.stop {
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        }
        let (puts, seq, alert_cursor, stop) = {
            let mut p = lock(&shared.pending);
            (std::mem::take(&mut p.puts), p.seq, p.alert_cursor, p.stop)
        };
        if !puts.is_empty() && !failed {
            let started = Instant::now();
            let n = puts.len();
            match commit(shared, puts) {
                Ok(replicated) => {
                    // Stations see the alerts before the tellers get the answers
                    // naming them; none whose partition's journal refused them.
                    let refused = replicated.as_ref().err().map_or(&[][..], |r| &r.partitions[..]);
                    if let Some(f) = shared.on_commit.get() {
                        f(alert_cursor, refused);
                    }
                    let how = match replicated {
                        Ok(()) => Settled::Durable,
                        Err(e) => {
                            tracing::warn!(error = %e, "the cluster's journal refused changes; their callers are told to retry");
                            Settled::Refused
                        }
                    };
                    settle(shared, seq, how);
                    if let Some(f) = shared.observe.get() {
                        f(started.elapsed().as_secs_f64(), n);
                    }
                }
                Err(e) => {
                    // Fail stop: the callers waiting get an error, and no
                    // later change is acknowledged.
                    tracing::error!(error = %e, "the store write failed; changes are no longer acknowledged");
                    failed = true;
                    settle(shared, seq, Settled::Failed);
                }
            }
        }
        if stop {
            return;
        }
    }
}

/// Writes one commit: the partitioned changes to the cluster's journal (the
/// inner result: whether it took them), the rest to the local disk.
fn commit(shared: &Shared, mut puts: Vec<Put>) -> Result<Result<(), Refused>, fjall::Error> {
    {
        let mut stalled = lock(&shared.stalled);
        while *stalled {
            stalled = shared.unstalled.wait(stalled).unwrap_or_else(|e| e.into_inner());
        }
    }
    let mut replicated = Ok(());
    if let Some(replica) = shared.replica.get() {
        let replica = replica.upgrade();
        let mut by_partition: std::collections::BTreeMap<u16, Vec<Put>> = Default::default();
        let mut local = Vec::with_capacity(puts.len());
        for put in puts {
            match put.partition {
                Some(p) => by_partition.entry(p).or_default().push(put),
                None => local.push(put),
            }
        }
        puts = local;
        if !by_partition.is_empty() {
            replicated = match replica {
                Some(r) => r.append(by_partition.iter().map(|(p, puts)| (*p, encode_batch(puts))).collect()),
                None => Err(Refused {
                    partitions: by_partition.keys().copied().collect(),
                    why: "the cluster has stopped".to_string(),
                }),
            };
        }
        if puts.is_empty() {
            return Ok(replicated);
        }
    }
    let mut batch = shared.db.batch();
    for put in puts {
        let ks = &shared.spaces[put.space as usize];
        match put.value {
            Some(v) => batch.insert(ks, put.key, v),
            None => batch.remove(ks, put.key),
        }
    }
    batch.commit()?;
    // fdatasync: flushes the data and the metadata needed to read it back
    // (block allocation), not timestamps.
    shared.db.persist(PersistMode::SyncData)?;
    Ok(replicated)
}

impl StateLog for Store {
    fn paid(&self, payee: crate::state::PayeeKey, sender: crate::state::Sender, at: UnixSeconds) {
        if let Some(replica) = self.shared.replica.get().and_then(std::sync::Weak::upgrade) {
            replica.paid(payee.0, sender.0, at);
        }
    }

    fn customer(&self, id: &str, image: CustomerImage) {
        self.put_for(id, Space::Customers, id.as_bytes(), Some(&image));
    }

    fn watch(&self, account: &str, entry: Option<&WatchEntry>) {
        let value = entry.map(WatchEntryRec::from);
        let partition = self.shared.replica.get().map(|_| SHARED);
        self.queue(
            [Put {
                space: Space::Watchlist,
                key: Slice::from(account.as_bytes()),
                value: value.as_ref().map(encode),
                partition,
            }],
            None,
        );
    }
}

/// A stored record as bytes: its keyspace's name, its key, its value.
pub type RawRecord = (&'static str, Vec<u8>, Vec<u8>);

impl AlertLog for Store {
    fn changed(&self, alert: &Alert, sequence: u32, event: &AlertEvent) {
        let image = Put {
            space: Space::Alerts,
            key: Slice::from(alert.id.as_bytes()),
            value: Some(encode(&StoredAlert { alert: alert.into(), sequence })),
            // With the partition's journal: a node taking the partition over takes its alerts too.
            partition: self.shared.replica.get().and_then(|_| crate::alerts::partition_of_id(&alert.id)),
        };
        let logged = Put {
            space: Space::AlertEvents,
            key: Slice::from(&event.cursor.to_be_bytes()[..]),
            value: Some(encode(&AlertEventRec::from(event))),
            partition: None,
        };
        self.queue([image, logged], Some(event.cursor));
    }

    fn forgotten(&self, cursor: u64) {
        let key = Slice::from(&cursor.to_be_bytes()[..]);
        self.queue([Put { space: Space::AlertEvents, key, value: None, partition: None }], None);
    }

    fn removed(&self, id: &str) {
        self.queue([Put { space: Space::Alerts, key: Slice::from(id.as_bytes()), value: None, partition: None }], None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_committed_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put(Space::Events, b"a", Some(&1u64));
            store.put(Space::Events, b"b", Some(&2u64));
            store.put(Space::Events, b"a", None::<&u64>);
            store.flush().unwrap();
            assert_eq!(store.queued(), 4, "the three puts after the format version");
        }
        let store = Store::open(dir.path()).unwrap();
        let all: Vec<(Vec<u8>, u64)> = store.load(Space::Events).unwrap();
        assert_eq!(all, vec![(b"b".to_vec(), 2)]);
        assert_eq!(store.get::<u64>(Space::Events, b"b").unwrap(), Some(2));
    }

    #[test]
    fn a_journal_batch_reads_back_as_written() {
        let puts = [
            Put {
                space: Space::Customers,
                key: Slice::from(&b"c-1"[..]),
                value: Some(encode(&7u64)),
                partition: Some(3),
            },
            Put { space: Space::Transfers, key: Slice::from(&[0u8, 255][..]), value: None, partition: Some(3) },
        ];
        let bytes = encode_batch(&puts);
        let back = decode_batch(&bytes).expect("a batch");
        assert_eq!(
            back,
            vec![(Space::Customers, b"c-1".to_vec(), Some(b"7".to_vec())), (Space::Transfers, vec![0, 255], None)]
        );
        // A journal message arrives whole; a cut inside a change is refused, not misread.
        let first_ends = 1 + 4 + 3 + 1 + 4 + 1;
        for cut in 1..bytes.len() {
            match decode_batch(&bytes[..cut]) {
                None => assert_ne!(cut, first_ends),
                Some(read) => assert_eq!((cut, &read[..]), (first_ends, &back[..1]), "cut at {cut}"),
            }
        }
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(e, StoreError::InUse(_)), "{e}");
        drop(first);
        Store::open(dir.path()).expect("free again once the first is closed");
    }

    #[test]
    fn a_damaged_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put(Space::Meta, b"x", Some("text"));
        store.flush().unwrap();
        let e = store.load::<u64>(Space::Meta).unwrap_err();
        assert!(e.to_string().contains("meta/x"), "{e}");
    }

    #[tokio::test]
    async fn waiting_returns_once_the_change_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..100u64 {
            store.put(Space::Events, &i.to_be_bytes(), Some(&i));
        }
        store.wait(store.queued()).await.unwrap();
        assert_eq!(store.load::<u64>(Space::Events).unwrap().len(), 100);
    }
}
