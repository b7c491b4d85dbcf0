//! In-memory state the rules read: per customer the payees already paid (with
//! times, last and largest amount, growing run), an amount histogram of ~90
//! days (the profile), recent transfers (velocity windows), the last limit
//! change and the stop a held or blocked transfer leaves; per payee account the customers who paid it lately and which of
//! them paid it for the first time (fan-in, the mule signal) and when the
//! bank's customers first paid it; the police watchlist.
//!
//! Concurrent maps (dashmap): different customers never contend; one customer's
//! record is changed under its shard lock. Time is always passed in (the
//! transfer's time), never read from the clock. Windows are bounded: entries
//! older than [`WINDOW_SECS`] are pruned on write and by [`State::prune`].
//! Must not know about rules, tokio or tonic.
//!
//! One cohesive thing, long because it is whole (not a hub: nothing routes
//! through it): the customer record (known payees with their profile, the
//! amount histogram, the windows, the limit change, the stop), the fan-in and the
//! first-seen accounts, the watchlist, each with its stored image or its
//! rebuild, the snapshot that reads them and the apply/revert that change
//! them, and their tests.

use crate::model::{LimitChange, Minor, Payee, UnixSeconds};
use dashmap::DashMap;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// The longest window any fact looks back over.
pub const WINDOW_SECS: i64 = 24 * 3600;
const HOUR_SECS: i64 = 3600;
/// A customer's window keeps at most this many transfers (counts saturate there),
/// so a runaway client cannot grow one record without bound.
pub const MAX_RECENT: usize = 512;
/// Fan-in keeps at most this many senders per payee account: its counts
/// stop there (one more with the customer asking). A popular account — the
/// power company thousands pay in a day — would otherwise make every screen
/// to it scan thousands of entries (90,000 instructions at 4,096, against
/// 5,000 for the whole screen of an ordinary payee); the mule rules ask
/// about a handful of payers and their share of first payers.
pub const MAX_SENDERS: usize = 128;
/// How long the bank remembers when its customers first paid an account
/// after the last first payment to it ([`Snapshot::payee_first_seen`]): a
/// week for an account one customer started paying (what is kept is about a
/// week of first payments, a few bytes a customer), four weeks for one that
/// several did — a hospital, a school, a dealer — so that it is remembered
/// from its first.
pub const FIRST_SEEN_KEPT_SECS: i64 = 7 * 24 * 3600;
pub const SHARED_FIRST_SEEN_KEPT_SECS: i64 = 28 * 24 * 3600;

/// Identifies a payee (bank code and account) inside a customer's record in 8
/// bytes rather than the full strings: 5 known payees fit in 80 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PayeeKey(pub u64);

impl PayeeKey {
    pub fn of(payee: &Payee) -> PayeeKey {
        PayeeKey(stable_hash(&[payee.bank_code.trim().as_bytes(), payee.account.trim().as_bytes()]))
    }
}

/// A customer paying a payee, as the payee's fan-in counts it: the
/// customer's stable hash with its lowest bit replaced by whether the payee
/// was new to them when they paid it. One word, so a fan-in entry and the
/// cluster's payee-paid fact keep their size; one customer is one sender
/// whichever the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender(pub u64);

impl Sender {
    pub fn of(customer_id: &str, new_payee: bool) -> Sender {
        Sender((stable_hash(&[customer_id.as_bytes()]) & !1) | u64::from(new_payee))
    }

    /// The same customer, whether or not each paid the payee as new.
    pub fn same_customer(self, other: Sender) -> bool {
        (self.0 ^ other.0) & !1 == 0
    }

    /// The payee was new to this customer (in the window: once new, it stays
    /// so for the day, whatever they paid it after).
    pub fn paid_as_new(self) -> bool {
        self.0 & 1 == 1
    }

    fn paying_as_new(self, new_payee: bool) -> Sender {
        Sender((self.0 & !1) | u64::from(new_payee))
    }

    fn merged(self, other: Sender) -> Sender {
        Sender(self.0 | (other.0 & 1))
    }
}

/// The partition of a customer in the clustered mode: the stable hash (fixed
/// keys), so every node and every build agrees.
pub fn partition_of(customer_id: &str, partitions: u16) -> u16 {
    (stable_hash(&[customer_id.as_bytes()]) % u64::from(partitions.max(1))) as u16
}

/// A 64-bit hash of `parts` that stays the same across restarts, builds and
/// Rust releases, because the store keeps it: SipHash-2-4 with fixed keys over
/// the bytes of each part, each followed by 0xff (fed to the hasher directly,
/// not through `Hash`, whose impls may change between releases). 64 bits make
/// a collision among one customer's payees (or one account's senders)
/// vanishingly unlikely.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7472_616e_7366_6572, 0x6775_6172_6421_0001);
    for part in parts {
        h.write(part);
        h.write(&[0xff]);
    }
    h.finish()
}

/// A payee this customer has paid, with what is normal between them (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnownPayee {
    key: PayeeKey,
    /// The last amount paid (0: known without a payment, e.g. imported).
    last: Minor,
    largest: Minor,
    /// Unix seconds ([`pack_time`]).
    first_paid: u32,
    /// Payments counted (saturating).
    times: u16,
    /// Payments in a row each larger than the one before, ending with the last.
    growing: u16,
}

/// First-paid times are kept as unsigned 32-bit unix seconds (to 2106-02-07),
/// which keeps a known payee at 32 bytes; earlier times read as 1970.
fn pack_time(at: UnixSeconds) -> u32 {
    at.clamp(0, u32::MAX as i64) as u32
}

fn unpack_time(t: u32) -> UnixSeconds {
    t as i64
}

impl KnownPayee {
    fn new(key: PayeeKey, at: UnixSeconds) -> KnownPayee {
        KnownPayee { key, last: 0, largest: 0, first_paid: pack_time(at), times: 0, growing: 0 }
    }

    fn paid(&mut self, amount: Minor) {
        self.growing = if self.times > 0 && amount > self.last { self.growing.saturating_add(1) } else { 0 };
        self.times = self.times.saturating_add(1);
        self.last = amount;
        self.largest = self.largest.max(amount);
    }
}

/// Log-2 amount buckets of the profile: bucket 0 holds amounts under 2^11 fen
/// (20.48 CNY), bucket b in 1..15 amounts in [2^(b+10), 2^(b+11)), bucket 15
/// everything from 2^25 fen (335,544 CNY).
pub const AMOUNT_BUCKETS: usize = 16;
/// The profile looks back about this long: older counts are halved away.
pub const PROFILE_DAYS: u32 = 90;
/// A customer has a usual amount once this many transfers are in the profile.
pub const USUAL_AFTER: u32 = 5;

/// What is normal for one customer: how many transfers of which size over
/// the last ~90 days (20 bytes, kept in the record itself). Counts saturate
/// at 255 by halving them all, which keeps their proportions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Profile {
    counts: [u8; AMOUNT_BUCKETS],
    /// Day (unix days) the window started; 0 before the first transfer.
    since_day: u32,
}

fn bucket_of(amount: Minor) -> usize {
    let bits = 64 - (amount.max(1) as u64).leading_zeros() as usize; // floor(log2) + 1
    bits.saturating_sub(11).min(AMOUNT_BUCKETS - 1)
}

/// The largest amount a bucket holds (its upper edge, exclusive, less one fen).
fn bucket_top(b: usize) -> Minor {
    (1i64 << (b + 11)) - 1
}

impl Profile {
    fn total(&self) -> u32 {
        self.counts.iter().map(|c| u32::from(*c)).sum()
    }

    fn add(&mut self, amount: Minor, at: UnixSeconds) {
        let day = at.div_euclid(86_400).clamp(1, u32::MAX as i64) as u32;
        if self.since_day == 0 || day.saturating_sub(self.since_day) > 8 * PROFILE_DAYS {
            // The first transfer, or none for years: start afresh.
            if self.since_day != 0 {
                self.counts = [0; AMOUNT_BUCKETS];
            }
            self.since_day = day;
        }
        // Halve the counts every half window, so the profile forgets smoothly.
        while day.saturating_sub(self.since_day) >= PROFILE_DAYS {
            for c in &mut self.counts {
                *c /= 2;
            }
            self.since_day += PROFILE_DAYS / 2;
        }
        let c = &mut self.counts[bucket_of(amount)];
        if *c == u8::MAX {
            for c in &mut self.counts {
                *c /= 2;
            }
        }
        self.counts[bucket_of(amount)] += 1;
    }

    fn remove(&mut self, amount: Minor) {
        let c = &mut self.counts[bucket_of(amount)];
        *c = c.saturating_sub(1);
    }

    /// The amount 80 % of the customer's transfers stay under (a bucket's top),
    /// once there are [`USUAL_AFTER`] of them.
    fn usual(&self) -> Option<Minor> {
        let total = self.total();
        if total < USUAL_AFTER {
            return None;
        }
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += u32::from(*c);
            if seen * 5 >= total * 4 {
                return Some(bucket_top(b));
            }
        }
        Some(bucket_top(AMOUNT_BUCKETS - 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    at: UnixSeconds,
    amount: Minor,
    /// Kept so a payee's fan-in can be rebuilt from the windows after a restart.
    payee: PayeeKey,
    new_payee: bool,
}

/// Kept small on purpose (48 bytes): most customers have known payees and no
/// recent activity, so the windows and limit change live behind one optional
/// box, and the known payees in a boxed slice sized exactly.
#[derive(Debug, Default)]
struct CustomerRecord {
    /// Sorted by key for binary search; grown one slot at a time (new payees are rare).
    known: Box<[KnownPayee]>,
    activity: Option<Box<Activity>>,
    profile: Profile,
}

#[derive(Debug, Default)]
struct Activity {
    /// Oldest first.
    recent: VecDeque<Recent>,
    limit: Option<LimitChange>,
    /// When the first of the customer's transfers held or blocked in the
    /// last [`STOP_KEPT_SECS`] was screened, until an officer finds it was no
    /// fraud ([`State::record_stopped`]).
    stopped: Option<UnixSeconds>,
}

impl CustomerRecord {
    fn image(&self) -> CustomerImage {
        let activity = self.activity.as_deref();
        CustomerImage {
            known: self.known.iter().map(|k| (k.key.0, unpack_time(k.first_paid))).collect(),
            paid: self.known.iter().map(|k| (k.times, k.growing, k.last, k.largest)).collect(),
            amounts: if self.profile.since_day == 0 {
                Vec::new()
            } else {
                self.profile.counts.iter().map(|c| u16::from(*c)).collect()
            },
            since_day: self.profile.since_day,
            recent: activity
                .into_iter()
                .flat_map(|a| a.recent.iter().map(|r| (r.at, r.amount, r.payee.0, r.new_payee)))
                .collect(),
            limit: activity.and_then(|a| a.limit),
            stopped: activity.and_then(|a| a.stopped),
        }
    }

    fn from_image(image: CustomerImage) -> CustomerRecord {
        let mut paid = image.paid.into_iter();
        let mut known: Vec<KnownPayee> = image
            .known
            .into_iter()
            .map(|(key, first_paid)| {
                let mut k = KnownPayee::new(PayeeKey(key), first_paid);
                // Images from before the profile have no payment facts: known, never counted.
                if let Some((times, growing, last, largest)) = paid.next() {
                    (k.times, k.growing, k.last, k.largest) = (times, growing, last, largest);
                }
                k
            })
            .collect();
        let mut profile = Profile { since_day: image.since_day, ..Profile::default() };
        for (c, n) in profile.counts.iter_mut().zip(image.amounts) {
            *c = n.min(u16::from(u8::MAX)) as u8;
        }
        known.sort_by_key(|k| k.key);
        known.dedup_by_key(|k| k.key);
        let known = known.into_boxed_slice();
        let recent: VecDeque<Recent> = image
            .recent
            .into_iter()
            .map(|(at, amount, payee, new_payee)| Recent { at, amount, payee: PayeeKey(payee), new_payee })
            .collect();
        let activity = (!recent.is_empty() || image.limit.is_some() || image.stopped.is_some())
            .then(|| Box::new(Activity { recent, limit: image.limit, stopped: image.stopped }));
        CustomerRecord { known, activity, profile }
    }

    fn activity(&mut self) -> &mut Activity {
        self.activity.get_or_insert_with(Box::default)
    }

    /// Inserts or updates a known payee; returns it and whether it was new.
    fn know(&mut self, key: PayeeKey, at: UnixSeconds) -> (&mut KnownPayee, bool) {
        match self.known.binary_search_by_key(&key, |k| k.key) {
            Ok(i) => {
                let k = &mut self.known[i];
                k.first_paid = k.first_paid.min(pack_time(at));
                (k, false)
            }
            Err(i) => {
                let mut grown = std::mem::take(&mut self.known).into_vec();
                grown.insert(i, KnownPayee::new(key, at));
                self.known = grown.into_boxed_slice();
                (&mut self.known[i], true)
            }
        }
    }
}

/// When customers of the bank first paid an account: the first of an
/// unbroken run of first payments, and the last of them. The run goes on
/// while the entry is remembered: [`FIRST_SEEN_KEPT_SECS`] after a single
/// first payment, [`SHARED_FIRST_SEEN_KEPT_SECS`] after the last of several.
/// 16 bytes with its key, kept only while remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FirstSeen {
    first: u32,
    last: u32,
}

impl FirstSeen {
    fn at(at: UnixSeconds) -> FirstSeen {
        FirstSeen { first: pack_time(at), last: pack_time(at) }
    }

    fn remembered(&self, now: UnixSeconds) -> bool {
        // Several first payments: the first and the last differ (two in the same second count as one).
        let kept = if self.first < self.last { SHARED_FIRST_SEEN_KEPT_SECS } else { FIRST_SEEN_KEPT_SECS };
        now - unpack_time(self.last) < kept
    }

    /// Counts a first payment at `at` (in any order): a run goes on while it
    /// is remembered.
    fn add(&mut self, at: UnixSeconds) {
        let t = pack_time(at);
        if t > self.last && !self.remembered(at) {
            *self = FirstSeen::at(at);
        } else {
            (self.first, self.last) = (self.first.min(t), self.last.max(t));
        }
    }
}

#[derive(Debug, Default)]
struct PayeeRecord {
    /// (sender, last time paid), one per distinct customer.
    senders: Vec<(Sender, UnixSeconds)>,
}

impl PayeeRecord {
    /// Counts `sender` at `at` once: the latest time, new if it was ever new in the window.
    fn count(&mut self, sender: Sender, at: UnixSeconds) {
        match self.senders.iter().position(|(s, _)| s.same_customer(sender)) {
            Some(i) => {
                let (s, last) = &mut self.senders[i];
                (*s, *last) = (s.merged(sender), (*last).max(at));
            }
            None if self.senders.len() < MAX_SENDERS => self.senders.push((sender, at)),
            None => {}
        }
    }
}

/// A customer's record as the durable store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerImage {
    /// (payee key, first paid).
    #[serde(rename = "k")]
    pub known: Vec<(u64, UnixSeconds)>,
    /// For each of `known`, in the same order: (times paid, growing run, last
    /// amount, largest amount). Empty in images from before the profile.
    #[serde(rename = "kp", default, skip_serializing_if = "Vec::is_empty")]
    pub paid: Vec<(u16, u16, Minor, Minor)>,
    /// The profile's amount buckets ([`AMOUNT_BUCKETS`]), empty before the first transfer.
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub amounts: Vec<u16>,
    /// The day the profile's window started.
    #[serde(rename = "ad", default, skip_serializing_if = "is_zero")]
    pub since_day: u32,
    /// (at, amount, payee key, new payee), oldest first.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(UnixSeconds, Minor, u64, bool)>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitChange>,
    /// The stop the customer carries ([`State::record_stopped`]).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<UnixSeconds>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where changes to state go to be made durable. Each method gets the new
/// image of one record (None: gone), called under the lock that made the
/// change, so images of one record reach the log in the order the changes
/// were made. Implementations must only queue the image (no I/O, no locks
/// beyond their own queue). Payees' fan-in is not logged: it is rebuilt from
/// the customers' windows ([`State::rebuild_fan_in`]).
pub trait StateLog: Send + Sync {
    fn customer(&self, id: &str, image: CustomerImage);
    fn watch(&self, account: &str, entry: Option<&WatchEntry>);
    /// `sender` paid `payee` at `at` (counted): a clustered node tells the
    /// others, whose customers may pay the same payee. Only queues.
    fn paid(&self, _payee: PayeeKey, _sender: Sender, _at: UnixSeconds) {}
}

/// A police watchlist entry: transfers to `account` hit `payee.watchlisted`
/// until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEntry {
    pub account: String,
    pub station_id: String,
    pub reason: String,
    pub added_at: UnixSeconds,
    /// None: until removed.
    pub expires_at: Option<UnixSeconds>,
}

impl WatchEntry {
    pub fn is_active(&self, at: UnixSeconds) -> bool {
        self.expires_at.is_none_or(|e| at < e)
    }
}

/// What the engine reads about one transfer, taken under one customer's lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The payee's key, computed once per request.
    pub payee_key: PayeeKey,
    /// None: this customer never paid this payee.
    pub payee_first_paid: Option<UnixSeconds>,
    pub payee_watchlisted: bool,
    /// Distinct customers who paid the payee in the last 24 h, this one included.
    pub payee_distinct_senders_24h: i64,
    /// Of those, the ones to whom it was a new payee when they paid it (this
    /// one included when it is new to them).
    pub payee_new_senders_24h: i64,
    /// When a customer of the bank first paid this account, as far as
    /// remembered ([`FirstSeen`]); None: nobody did (this transfer aside).
    pub payee_first_seen: Option<UnixSeconds>,
    pub transfers_1h: i64,
    pub transfers_24h: i64,
    pub amount_24h: Minor,
    pub new_payees_24h: i64,
    pub last_limit_change: Option<LimitChange>,
    /// When the transfer screened that left the stop the customer carries
    /// ([`State::record_stopped`]); None: none.
    pub last_stopped: Option<UnixSeconds>,
    /// Transfers in the customer's profile (the last ~90 days, decayed).
    pub transfers_seen: i64,
    /// The amount 80 % of them stay under; None with too little history.
    pub usual_amount: Option<Minor>,
    /// Payments to this payee counted so far (0 for a new payee).
    pub payee_times_paid: i64,
    /// The last and the largest amount paid to this payee; None before any.
    pub payee_last_paid: Option<Minor>,
    pub payee_largest_paid: Option<Minor>,
    /// Payments to this payee in a row, each larger than the one before, up to the last.
    pub payee_growing: i64,
    pub new_payees_1h: i64,
    pub amount_1h: Minor,
    /// In the last 24 h: how many payments to then-new payees in a row each
    /// grew on the one before, ending with the latest; and that one's amount.
    pub new_payee_run: i64,
    pub new_payee_run_last: Minor,
    /// When this payee is new: the longest run of growing payments (each
    /// larger than the one before, ending with the latest) to a payee first
    /// paid in the last [`YOUNG_PAYEE_SECS`]; 0 otherwise.
    pub young_payee_growing_run: i64,
}

/// The change a counted transfer makes to state. The engine returns it; the
/// caller decides when to apply it (at once for ALLOW/WARN, on release for HOLD)
/// and can revert it (a cancelled transfer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub customer_id: String,
    pub payee: PayeeKey,
    pub amount: Minor,
    pub at: UnixSeconds,
}

/// Counts of what is held, for metrics and memory reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub customers: usize,
    /// Accounts in the fan-in (paid in the last day).
    pub payees: usize,
    /// Accounts whose first payment is remembered ([`FirstSeen`]).
    pub first_seen: usize,
    pub watchlist: usize,
}

pub struct State {
    customers: DashMap<Box<str>, CustomerRecord>,
    payees: DashMap<PayeeKey, PayeeRecord>,
    first_seen: DashMap<PayeeKey, FirstSeen>,
    watchlist: DashMap<String, WatchEntry>,
    log: OnceLock<Arc<dyn StateLog>>,
}

fn in_window(at: UnixSeconds, now: UnixSeconds, window: i64) -> bool {
    at <= now && now - at < window
}

/// Shards for maps that grow to millions of entries. A shard rehashes as one
/// step while it grows, holding its lock (and the worker thread that took it):
/// with few large shards that is a pause of milliseconds in a teller's
/// request; with many small ones it is microseconds.
pub const MAP_SHARDS: usize = 512;

/// How recently a payee was first paid to count as a young acquaintance
/// ([`Snapshot::young_payee_growing_run`]): 60 days.
pub const YOUNG_PAYEE_SECS: UnixSeconds = 60 * 86_400;

/// How long the first of a run of stops is kept before a new stop starts
/// another ([`State::record_stopped`]): the day the rules look back over.
pub const STOP_KEPT_SECS: UnixSeconds = 86_400;

/// A concurrent map for large keyed state (see [`MAP_SHARDS`]).
pub fn large_map<K: Eq + Hash, V>() -> DashMap<K, V> {
    DashMap::with_shard_amount(MAP_SHARDS)
}

impl Default for State {
    fn default() -> State {
        State {
            customers: large_map(),
            payees: large_map(),
            first_seen: large_map(),
            watchlist: DashMap::new(),
            log: OnceLock::new(),
        }
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Sends every change from now on to `log` (once; later calls are ignored).
    pub fn set_log(&self, log: Arc<dyn StateLog>) {
        let _ = self.log.set(log);
    }

    fn log_customer(&self, id: &str, record: &CustomerRecord) {
        if let Some(log) = self.log.get() {
            log.customer(id, record.image());
        }
    }

    /// Puts back a customer's record read from the durable store.
    pub fn restore_customer(&self, id: &str, image: CustomerImage) {
        self.customers.insert(id.into(), CustomerRecord::from_image(image));
    }

    /// Rebuilds every payee's fan-in from the customers' windows (after
    /// restoring them): each customer counts once per payee, at the last time
    /// it paid it. The same as the live fan-in for every window the rules read.
    /// And when accounts were first paid, from the customers' known payees.
    pub fn rebuild_fan_in(&self) {
        self.payees.clear();
        self.first_seen.clear();
        self.merge_fan_in();
    }

    /// Adds every restored customer's payments to the payees' fan-in without
    /// forgetting what is there (a clustered node also counts other nodes'
    /// customers, from their facts).
    pub fn merge_fan_in(&self) {
        for c in self.customers.iter() {
            let Some(a) = c.activity.as_deref() else { continue };
            let sender = Sender::of(c.key(), false);
            for r in &a.recent {
                self.payees.entry(r.payee).or_default().count(sender.paying_as_new(r.new_payee), r.at);
            }
        }
        self.merge_first_seen();
    }

    /// Rebuilds when accounts were first paid ([`FirstSeen`]) from the
    /// customers' known payees: for each account some customer first paid
    /// within [`SHARED_FIRST_SEEN_KEPT_SECS`] of the newest first payment, the run of
    /// first payments ending with its last, as [`State::apply`] would have
    /// counted them. Joined with what is there (a clustered node's other
    /// partitions).
    fn merge_first_seen(&self) {
        let each_first = |f: &mut dyn FnMut(PayeeKey, u32)| {
            for c in self.customers.iter() {
                for k in c.known.iter() {
                    f(k.key, k.first_paid);
                }
            }
        };
        let mut newest = None;
        each_first(&mut |_, t| newest = newest.max(Some(t)));
        let Some(newest) = newest else { return };
        let since = unpack_time(newest) - SHARED_FIRST_SEEN_KEPT_SECS;
        let mut times: HashMap<PayeeKey, Vec<u32>> = HashMap::new();
        each_first(&mut |key, t| {
            if unpack_time(t) > since {
                times.entry(key).or_default();
            }
        });
        each_first(&mut |key, t| {
            if let Some(v) = times.get_mut(&key) {
                v.push(t);
            }
        });
        for (key, mut v) in times {
            v.sort_unstable();
            let mut run = FirstSeen::at(unpack_time(v[0]));
            for t in &v[1..] {
                run.add(unpack_time(*t));
            }
            self.first_seen
                .entry(key)
                .and_modify(|f| (f.first, f.last) = (f.first.min(run.first), f.last.max(run.last)))
                .or_insert(run);
        }
    }

    /// Reads what the rules need about `customer_id` paying `payee` at `now`.
    pub fn snapshot(&self, customer_id: &str, payee: &Payee, now: UnixSeconds) -> Snapshot {
        let key = PayeeKey::of(payee);
        let mut snap = Snapshot {
            payee_key: key,
            payee_watchlisted: self.is_watchlisted(&payee.account, now),
            ..Snapshot::default()
        };
        let mut this_customer_counted = false;
        if let Some(p) = self.payees.get(&key) {
            let sender = Sender::of(customer_id, false);
            for (s, at) in &p.senders {
                if in_window(*at, now, WINDOW_SECS) {
                    snap.payee_distinct_senders_24h += 1;
                    snap.payee_new_senders_24h += i64::from(s.paid_as_new());
                    this_customer_counted |= s.same_customer(sender);
                }
            }
        }
        if let Some(c) = self.customers.get(customer_id) {
            let found = c.known.binary_search_by_key(&key, |k| k.key);
            if found.is_err() {
                let young = now - YOUNG_PAYEE_SECS;
                snap.young_payee_growing_run = c
                    .known
                    .iter()
                    .filter(|k| (young..=now).contains(&unpack_time(k.first_paid)))
                    .map(|k| i64::from(k.growing))
                    .max()
                    .unwrap_or(0);
            }
            if let Ok(i) = found {
                let k = &c.known[i];
                let first = unpack_time(k.first_paid);
                // A payee first paid after `now` (a replay out of order) is still new now.
                if first <= now {
                    snap.payee_first_paid = Some(first);
                    snap.payee_times_paid = i64::from(k.times);
                    if k.times > 0 {
                        (snap.payee_last_paid, snap.payee_largest_paid) = (Some(k.last), Some(k.largest));
                        snap.payee_growing = i64::from(k.growing);
                    }
                }
            }
            snap.transfers_seen = i64::from(c.profile.total());
            snap.usual_amount = c.profile.usual();
            let activity = c.activity.as_deref();
            let (mut run_open, mut run_first) = (true, 0);
            for r in activity.into_iter().flat_map(|a| a.recent.iter().rev()) {
                if !in_window(r.at, now, WINDOW_SECS) {
                    if r.at > now {
                        continue;
                    }
                    break;
                }
                snap.transfers_24h += 1;
                snap.amount_24h = snap.amount_24h.saturating_add(r.amount);
                snap.new_payees_24h += i64::from(r.new_payee);
                let last_hour = in_window(r.at, now, HOUR_SECS);
                snap.transfers_1h += i64::from(last_hour);
                if last_hour {
                    snap.new_payees_1h += i64::from(r.new_payee);
                    snap.amount_1h = snap.amount_1h.saturating_add(r.amount);
                }
                // Newest first: the run goes on while each earlier new-payee payment is smaller.
                if r.new_payee && run_open {
                    if snap.new_payee_run == 0 {
                        (snap.new_payee_run, snap.new_payee_run_last) = (1, r.amount);
                    } else if r.amount < run_first {
                        snap.new_payee_run += 1;
                    } else {
                        run_open = false;
                    }
                    run_first = r.amount;
                }
            }
            snap.last_limit_change = activity.and_then(|a| a.limit);
            snap.last_stopped = activity.and_then(|a| a.stopped).filter(|t| *t <= now);
        }
        if !this_customer_counted {
            snap.payee_distinct_senders_24h += 1;
            snap.payee_new_senders_24h += i64::from(snap.payee_first_paid.is_none());
        }
        if let Some(f) = self.first_seen.get(&key) {
            let first = unpack_time(f.first);
            if f.remembered(now) && first <= now {
                snap.payee_first_seen = Some(first);
            }
        }
        snap
    }

    /// Counts a transfer: its payee becomes known, it enters the windows and the
    /// payee's fan-in.
    pub fn apply(&self, record: &TransferRecord) {
        let mut c = self.customers.entry(record.customer_id.as_str().into()).or_default();
        let (known, new_payee) = c.know(record.payee, record.at);
        known.paid(record.amount);
        c.profile.add(record.amount, record.at);
        let recent = &mut c.activity().recent;
        let entry = Recent { at: record.at, amount: record.amount, payee: record.payee, new_payee };
        // Keep time order even when records arrive slightly out of order.
        let pos = recent.iter().rposition(|r| r.at <= record.at).map_or(0, |p| p + 1);
        recent.insert(pos, entry);
        let newest = recent.back().map_or(record.at, |r| r.at);
        while recent.front().is_some_and(|r| newest - r.at >= WINDOW_SECS) || recent.len() > MAX_RECENT {
            recent.pop_front();
        }
        self.log_customer(&record.customer_id, &c);
        drop(c);
        let sender = Sender::of(&record.customer_id, new_payee);
        self.record_sender(record.payee, sender, record.at);
        if let Some(log) = self.log.get() {
            log.paid(record.payee, sender, record.at);
        }
    }

    /// Counts `sender` as having paid `payee` at `at`, once per customer (the
    /// latest time; a first payer if ever one in the day): the payee's
    /// fan-in, and for a first payment when the account was first paid. Also
    /// how a clustered node counts the senders of other nodes' partitions.
    pub fn record_sender(&self, payee: PayeeKey, sender: Sender, at: UnixSeconds) {
        let mut p = self.payees.entry(payee).or_default();
        p.senders.retain(|(_, seen)| at - *seen < WINDOW_SECS);
        p.count(sender, at);
        drop(p);
        if sender.paid_as_new() {
            self.first_paid(payee, at);
        }
    }

    /// A customer first paid (or came to know) `payee` at `at`.
    fn first_paid(&self, payee: PayeeKey, at: UnixSeconds) {
        self.first_seen.entry(payee).and_modify(|f| f.add(at)).or_insert(FirstSeen::at(at));
    }

    /// Undoes [`State::apply`] for a cancelled transfer: it leaves the windows,
    /// and the payee is forgotten again if this transfer made it known.
    pub fn revert(&self, record: &TransferRecord) {
        // What the customer's window still holds for this payee: the fan-in
        // counts them as those payments say (the latest, new if one was).
        let mut still_paid: Option<(UnixSeconds, bool)> = None;
        if let Some(mut c) = self.customers.get_mut(record.customer_id.as_str()) {
            if let Some(a) = c.activity.as_deref_mut() {
                if let Some(pos) = a
                    .recent
                    .iter()
                    .rposition(|r| r.at == record.at && r.amount == record.amount && r.payee == record.payee)
                {
                    a.recent.remove(pos);
                }
                for r in a.recent.iter().filter(|r| r.payee == record.payee) {
                    let (at, new) = still_paid.unwrap_or((r.at, false));
                    still_paid = Some((at.max(r.at), new || r.new_payee));
                }
            }
            if let Ok(i) = c.known.binary_search_by_key(&record.payee, |k| k.key) {
                if c.known[i].first_paid == pack_time(record.at) {
                    let mut fewer = std::mem::take(&mut c.known).into_vec();
                    fewer.remove(i);
                    c.known = fewer.into_boxed_slice();
                } else {
                    // The count goes back; the last and largest amounts stay (it was attempted).
                    let k = &mut c.known[i];
                    k.times = k.times.saturating_sub(1);
                    k.growing = 0;
                }
            }
            c.profile.remove(record.amount);
            self.log_customer(&record.customer_id, &c);
        }
        let sender = Sender::of(&record.customer_id, false);
        if let Some(mut p) = self.payees.get_mut(&record.payee) {
            let i = p.senders.iter().position(|(s, _)| s.same_customer(sender));
            match (i, still_paid) {
                (Some(i), Some((at, new))) => p.senders[i] = (sender.paying_as_new(new), at),
                (Some(i), None) => {
                    p.senders.swap_remove(i);
                }
                (None, _) => {}
            }
        }
    }

    /// Records a limit change; only the latest (by `changed_at`) is kept.
    pub fn record_limit_change(&self, customer_id: &str, change: LimitChange) {
        let mut c = self.customers.entry(customer_id.into()).or_default();
        let a = c.activity();
        if a.limit.is_none_or(|l| l.changed_at <= change.changed_at) {
            a.limit = Some(change);
        }
        self.log_customer(customer_id, &c);
    }

    /// A transfer of this customer's screened at `at` was held or blocked
    /// (`customer.stopped_ago`, so that the next new payee a scammer names
    /// after a stop is seen as one). The first stop of a day is kept: a
    /// transfer held *because of* an earlier stop does not extend it, so one
    /// false alarm cannot hold a customer's new payees for ever.
    pub fn record_stopped(&self, customer_id: &str, at: UnixSeconds) {
        let mut c = self.customers.entry(customer_id.into()).or_default();
        let a = c.activity();
        let kept = match a.stopped {
            Some(t) if (at - STOP_KEPT_SECS + 1..at + STOP_KEPT_SECS).contains(&t) => t.min(at),
            _ => at,
        };
        if a.stopped != Some(kept) {
            a.stopped = Some(kept);
            self.log_customer(customer_id, &c);
        }
    }

    /// An officer found the transfer screened at `at` was no fraud: the stop
    /// it left is cleared (a stop another transfer left stays).
    pub fn clear_stopped(&self, customer_id: &str, at: UnixSeconds) {
        let Some(mut c) = self.customers.get_mut(customer_id) else { return };
        let Some(a) = c.activity.as_deref_mut() else { return };
        if a.stopped == Some(at) {
            a.stopped = None;
            self.log_customer(customer_id, &c);
        }
    }

    /// Marks a payee as known from `at` (e.g. imported history) without counting
    /// a transfer in the windows.
    pub fn record_known_payee(&self, customer_id: &str, payee: &Payee, at: UnixSeconds) {
        let key = PayeeKey::of(payee);
        let mut c = self.customers.entry(customer_id.into()).or_default();
        let (_, new_payee) = c.know(key, at);
        self.log_customer(customer_id, &c);
        drop(c);
        if new_payee {
            self.first_paid(key, at);
        }
    }

    pub fn watchlist_upsert(&self, entry: WatchEntry) {
        let key = normalise_account(&entry.account).into_owned();
        let slot = self.watchlist.entry(key).insert(entry);
        if let Some(log) = self.log.get() {
            log.watch(slot.key(), Some(slot.value()));
        }
    }

    /// [`State::watchlist_upsert`] unless the account is listed already (an
    /// entry stays as its station wrote it); whether it was added.
    pub fn watchlist_add(&self, entry: WatchEntry) -> bool {
        match self.watchlist.entry(normalise_account(&entry.account).into_owned()) {
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(slot) => {
                let slot = slot.insert(entry);
                if let Some(log) = self.log.get() {
                    log.watch(slot.key(), Some(slot.value()));
                }
                true
            }
        }
    }

    /// Sets or clears the entry under `key` (an account as normalised) without
    /// logging it: a change another node made, read from the shared bucket.
    pub fn watchlist_apply(&self, key: &str, entry: Option<WatchEntry>) {
        match entry {
            Some(e) => {
                self.watchlist.insert(normalise_account(&e.account).into_owned(), e);
            }
            None => {
                self.watchlist.remove(key);
            }
        }
    }

    pub fn watchlist_remove(&self, account: &str) -> Option<WatchEntry> {
        match self.watchlist.entry(normalise_account(account).into_owned()) {
            dashmap::Entry::Occupied(e) => {
                if let Some(log) = self.log.get() {
                    log.watch(e.key(), None);
                }
                Some(e.remove())
            }
            dashmap::Entry::Vacant(_) => None,
        }
    }

    /// The entry for `account` (in any of its spellings), active or not.
    pub fn watchlist_entry(&self, account: &str) -> Option<WatchEntry> {
        self.watchlist.get(normalise_account(account).as_ref()).map(|e| e.value().clone())
    }

    pub fn watchlist_entries(&self) -> Vec<WatchEntry> {
        let mut v: Vec<WatchEntry> = self.watchlist.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.account.cmp(&b.account));
        v
    }

    pub fn is_watchlisted(&self, account: &str, at: UnixSeconds) -> bool {
        self.watchlist.get(normalise_account(account).as_ref()).is_some_and(|e| e.is_active(at))
    }

    /// Forgets the customers `belongs` picks (a clustered node handing their
    /// partition over). Payees' fan-in is left to [`Self::rebuild_fan_in`].
    pub fn forget_customers(&self, belongs: impl Fn(&str) -> bool) {
        self.customers.retain(|id, _| !belongs(id));
    }

    /// Drops window entries and watchlist entries that can no longer match at `now`.
    pub fn prune(&self, now: UnixSeconds) {
        for mut c in self.customers.iter_mut() {
            let Some(a) = c.activity.as_deref_mut() else { continue };
            let before = a.recent.len();
            while a.recent.front().is_some_and(|r| now - r.at >= WINDOW_SECS) {
                a.recent.pop_front();
            }
            let stale_stop = a.stopped.is_some_and(|t| now - t >= STOP_KEPT_SECS);
            if stale_stop {
                a.stopped = None;
            }
            if a.recent.len() == before && !stale_stop {
                continue;
            }
            if a.recent.is_empty() {
                if a.limit.is_none() && a.stopped.is_none() {
                    c.activity = None;
                } else {
                    a.recent = VecDeque::new();
                }
            }
            self.log_customer(c.key(), &c);
        }
        self.payees.retain(|_, p| {
            p.senders.retain(|(_, at)| now - *at < WINDOW_SECS);
            !p.senders.is_empty()
        });
        self.first_seen.retain(|_, f| f.remembered(now));
        // Fan-in holds only the last day's payees: give back a table left
        // mostly empty by a busy day (rehashing only then, not every prune).
        if self.payees.len() * 4 < self.payees.capacity() {
            self.payees.shrink_to_fit();
        }
        if self.first_seen.len() * 4 < self.first_seen.capacity() {
            self.first_seen.shrink_to_fit();
        }
        self.watchlist.retain(|account, e| {
            let keep = e.is_active(now);
            if !keep {
                if let Some(log) = self.log.get() {
                    log.watch(account, None);
                }
            }
            keep
        });
    }

    pub fn sizes(&self) -> Sizes {
        Sizes {
            customers: self.customers.len(),
            payees: self.payees.len(),
            first_seen: self.first_seen.len(),
            watchlist: self.watchlist.len(),
        }
    }
}

/// Accounts are compared without spaces or dashes, as tellers type them both ways.
pub fn normalise_account(account: &str) -> Cow<'_, str> {
    if account.contains(|c: char| c.is_whitespace() || c == '-') {
        Cow::Owned(account.chars().filter(|c| !c.is_whitespace() && *c != '-').collect())
    } else {
        Cow::Borrowed(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payee(account: &str) -> Payee {
        Payee { account: account.into(), name: "n".into(), bank_code: "b".into() }
    }

    fn pay(state: &State, customer: &str, account: &str, amount: Minor, at: UnixSeconds) {
        state.apply(&TransferRecord { customer_id: customer.into(), payee: PayeeKey::of(&payee(account)), amount, at });
    }

    const PINNED_PAYEE_KEY: u64 = 2525438232055850698;
    const PINNED_SENDER_KEY: u64 = 17979972799666957467;

    #[test]
    fn stored_keys_never_change() {
        // These values are in every store: a change here forgets every known payee.
        assert_eq!(PayeeKey::of(&payee("6222020000008002")).0, PINNED_PAYEE_KEY);
        assert_eq!(PayeeKey::of(&Payee { account: " 6222020000008002 ".into(), ..payee("") }).0, PINNED_PAYEE_KEY);
        assert_eq!(stable_hash(&[b"customer-1"]), PINNED_SENDER_KEY);
    }

    #[test]
    fn a_paid_payee_is_known_afterwards_and_windows_count() {
        let s = State::new();
        assert_eq!(s.snapshot("c1", &payee("p1"), 1000).payee_first_paid, None);
        pay(&s, "c1", "p1", 100, 1000);
        pay(&s, "c1", "p2", 200, 1000 + 2 * HOUR_SECS);
        let snap = s.snapshot("c1", &payee("p1"), 1000 + 2 * HOUR_SECS + 60);
        assert_eq!(snap.payee_first_paid, Some(1000));
        assert_eq!((snap.transfers_1h, snap.transfers_24h, snap.amount_24h, snap.new_payees_24h), (1, 2, 300, 2));
        let later = s.snapshot("c1", &payee("p1"), 1000 + WINDOW_SECS + 60);
        assert_eq!(later.transfers_24h, 1);
        assert_eq!(later.payee_first_paid, Some(1000), "known payees outlive the window");
    }

    #[test]
    fn fan_in_counts_distinct_senders_including_this_one() {
        let s = State::new();
        assert_eq!(s.snapshot("c0", &payee("mule"), 10).payee_distinct_senders_24h, 1);
        for i in 0..5 {
            pay(&s, &format!("c{i}"), "mule", 100, 10 + i);
            pay(&s, &format!("c{i}"), "mule", 100, 20 + i);
        }
        assert_eq!(s.snapshot("c9", &payee("mule"), 100).payee_distinct_senders_24h, 6);
        assert_eq!(s.snapshot("c1", &payee("mule"), 100).payee_distinct_senders_24h, 5);
        assert_eq!(s.snapshot("c9", &payee("mule"), 100 + WINDOW_SECS).payee_distinct_senders_24h, 1);
    }

    #[test]
    fn fan_in_counts_stop_at_the_bound() {
        let s = State::new();
        for i in 0..MAX_SENDERS + 50 {
            pay(&s, &format!("c{i}"), "grid", 100, 1_000 + i as i64);
        }
        let snap = s.snapshot("someone-else", &payee("grid"), 5_000);
        assert_eq!(snap.payee_distinct_senders_24h, MAX_SENDERS as i64 + 1);
        assert_eq!(snap.payee_new_senders_24h, MAX_SENDERS as i64 + 1);
        // A sender left out is still counted once, as the one asking.
        let late = s.snapshot(&format!("c{}", MAX_SENDERS + 10), &payee("grid"), 5_000);
        assert_eq!(late.payee_distinct_senders_24h, MAX_SENDERS as i64 + 1);
    }

    #[test]
    fn fan_in_tells_first_payers_from_returning_ones() {
        let s = State::new();
        let now = 40 * 86_400;
        // A utility its payers also paid last month; a collection account new to all of them.
        for i in 0..3 {
            let c = format!("c{i}");
            pay(&s, &c, "grid", 100, 10);
            pay(&s, &c, "grid", 100, now - 100);
            pay(&s, &c, "mule", 100, now - 50 + i);
        }
        let counts = |customer: &str, account: &str, at: UnixSeconds| {
            let snap = s.snapshot(customer, &payee(account), at);
            (snap.payee_distinct_senders_24h, snap.payee_new_senders_24h)
        };
        assert_eq!(counts("c9", "grid", now), (4, 1), "a newcomer to the utility");
        assert_eq!(counts("c0", "grid", now), (3, 0), "a returning payer");
        assert_eq!(counts("c9", "mule", now), (4, 4));
        assert_eq!(counts("c0", "mule", now), (3, 3), "a first payer paying again today");
        // Paying it again today leaves a first payer a first payer.
        pay(&s, "c0", "mule", 100, now);
        assert_eq!(counts("c9", "mule", now + 1), (4, 4));
        // A cancelled first payment leaves the fan-in.
        let record =
            TransferRecord { customer_id: "c7".into(), payee: PayeeKey::of(&payee("mule")), amount: 100, at: now + 2 };
        s.apply(&record);
        assert_eq!(counts("c9", "mule", now + 3), (5, 5));
        s.revert(&record);
        assert_eq!(counts("c9", "mule", now + 3), (4, 4));
        // Another node's fact counts alike: one customer once, new if ever new.
        s.record_sender(PayeeKey::of(&payee("grid")), Sender::of("c8", true), now + 4);
        s.record_sender(PayeeKey::of(&payee("grid")), Sender::of("c8", false), now + 5);
        assert_eq!(counts("c9", "grid", now + 6), (5, 2));
    }

    #[test]
    fn the_bank_remembers_when_an_account_was_first_paid() {
        let s = State::new();
        let day = 86_400;
        let first_seen =
            |s: &State, account: &str, at: UnixSeconds| s.snapshot("c9", &payee(account), at).payee_first_seen;
        assert_eq!(first_seen(&s, "hospital", 0), None);
        // New patients every few days: one run of first payments.
        for (i, d) in [10, 14, 15, 20, 26].iter().enumerate() {
            pay(&s, &format!("c{i}"), "hospital", 100, d * day);
        }
        pay(&s, "c0", "hospital", 100, 27 * day); // a returning patient adds nothing
        pay(&s, "c7", "mule", 100, 30 * day);
        assert_eq!(first_seen(&s, "hospital", 30 * day), Some(10 * day), "first payments under a week apart");
        assert_eq!(first_seen(&s, "mule", 30 * day), Some(30 * day));
        assert_eq!(first_seen(&s, "mule", 30 * day - 1), None, "not before it happened");
        // Rebuilt from the customers' known payees alike.
        let restored = State::new();
        for c in s.customers.iter() {
            restored.restore_customer(c.key(), c.image());
        }
        restored.rebuild_fan_in();
        for account in ["hospital", "mule", "other"] {
            assert_eq!(first_seen(&restored, account, 30 * day), first_seen(&s, account, 30 * day), "{account}");
        }
        // An account one customer started paying is forgotten a week later,
        // one several did four weeks after the last; the next starts afresh.
        assert_eq!(first_seen(&s, "mule", 37 * day), None);
        assert_eq!(first_seen(&s, "hospital", 53 * day), Some(10 * day));
        assert_eq!(first_seen(&s, "hospital", 54 * day), None);
        s.prune(37 * day);
        assert!(s.first_seen.get(&PayeeKey::of(&payee("mule"))).is_none());
        s.prune(54 * day);
        assert!(s.first_seen.get(&PayeeKey::of(&payee("hospital"))).is_none());
        pay(&s, "c8", "hospital", 100, 60 * day);
        assert_eq!(first_seen(&s, "hospital", 60 * day + 1), Some(60 * day));
        // Another node's first payments, and a payee imported as known, count alike.
        s.record_sender(PayeeKey::of(&payee("ring")), Sender::of("n1", true), 60 * day);
        s.record_sender(PayeeKey::of(&payee("ring")), Sender::of("n2", false), 60 * day + 9);
        assert_eq!(first_seen(&s, "ring", 61 * day), Some(60 * day));
        s.record_known_payee("c4", &payee("school"), 58 * day);
        assert_eq!(first_seen(&s, "school", 60 * day), Some(58 * day));
    }

    #[test]
    fn images_restore_the_same_state_and_fan_in() {
        let live = State::new();
        let t = 10 * 86_400;
        // c1 paid the landlord days before: a returning payer in the fan-in.
        live.record_known_payee("c1", &payee("rent"), t - 3 * 86_400);
        for (i, c) in ["c1", "c2", "c3"].iter().enumerate() {
            pay(&live, c, "mule", 100, t + 1000 + i as i64);
            pay(&live, c, "rent", 50, t + 500);
        }
        let change = LimitChange { old_limit: 1, new_limit: 9, is_maximum: true, changed_at: t + 900 };
        live.record_limit_change("c1", change);
        let restored = State::new();
        for c in live.customers.iter() {
            restored.restore_customer(c.key(), c.image());
        }
        restored.rebuild_fan_in();
        for c in ["c1", "c2", "c3", "c4"] {
            for p in ["mule", "rent", "other"] {
                let at = t + 2000;
                assert_eq!(live.snapshot(c, &payee(p), at), restored.snapshot(c, &payee(p), at), "{c} {p}");
            }
        }
        let mule = restored.snapshot("c4", &payee("mule"), t + 2000);
        assert_eq!((mule.payee_distinct_senders_24h, mule.payee_first_seen), (4, Some(t + 1000)));
        let rent = restored.snapshot("c4", &payee("rent"), t + 2000);
        assert_eq!((rent.payee_new_senders_24h, rent.payee_first_seen), (3, Some(t - 3 * 86_400)));
    }

    #[test]
    fn revert_forgets_a_cancelled_transfer() {
        let s = State::new();
        let rec = TransferRecord { customer_id: "c".into(), payee: PayeeKey::of(&payee("p")), amount: 5, at: 50 };
        s.apply(&rec);
        s.revert(&rec);
        let snap = s.snapshot("c", &payee("p"), 60);
        assert_eq!((snap.payee_first_paid, snap.transfers_24h, snap.payee_distinct_senders_24h), (None, 0, 1));
    }

    #[test]
    fn the_profile_learns_what_is_usual_and_forgets_slowly() {
        let s = State::new();
        let day = 86_400;
        for i in 0..4 {
            pay(&s, "c", "shop", 10_000, 1_800_000_000 + i * day);
        }
        let snap = s.snapshot("c", &payee("new"), 1_800_000_000 + 5 * day);
        assert_eq!((snap.transfers_seen, snap.usual_amount), (4, None), "too little history");
        pay(&s, "c", "shop", 12_000, 1_800_000_000 + 5 * day);
        let snap = s.snapshot("c", &payee("new"), 1_800_000_000 + 6 * day);
        // 100-120 CNY lie in [2^13, 2^14) fen: the usual amount is that bucket's top.
        assert_eq!((snap.transfers_seen, snap.usual_amount), (5, Some(16_383)));
        // A year later the counts have halved away below the threshold.
        pay(&s, "c", "shop", 10_000, 1_800_000_000 + 365 * day);
        let snap = s.snapshot("c", &payee("new"), 1_800_000_000 + 366 * day);
        assert!(snap.transfers_seen < 5 && snap.usual_amount.is_none(), "{snap:?}");
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(i64::MAX), AMOUNT_BUCKETS - 1);
        assert_eq!(std::mem::size_of::<KnownPayee>(), 32);
        assert_eq!(std::mem::size_of::<CustomerRecord>(), 48);
    }

    #[test]
    fn each_payee_remembers_times_last_largest_and_growth() {
        let s = State::new();
        for (i, amount) in [1_000, 3_000, 2_000, 5_000, 9_000].into_iter().enumerate() {
            pay(&s, "c", "friend", amount, 1_000 + i as i64);
        }
        let snap = s.snapshot("c", &payee("friend"), 2_000);
        assert_eq!(snap.payee_times_paid, 5);
        assert_eq!((snap.payee_last_paid, snap.payee_largest_paid, snap.payee_growing), (Some(9_000), Some(9_000), 2));
        let fresh = s.snapshot("c", &payee("stranger"), 2_000);
        assert_eq!((fresh.payee_times_paid, fresh.payee_last_paid, fresh.payee_growing), (0, None, 0));
        // A payee known from imported history has no payments yet.
        s.record_known_payee("c", &payee("landlord"), 500);
        let imported = s.snapshot("c", &payee("landlord"), 2_000);
        assert_eq!(
            (imported.payee_first_paid, imported.payee_times_paid, imported.payee_last_paid),
            (Some(500), 0, None)
        );
    }

    #[test]
    fn new_payees_in_a_growing_run_and_in_the_last_hour() {
        let s = State::new();
        let t = 100_000;
        pay(&s, "c", "a", 5_000, t);
        pay(&s, "c", "b", 1_000, t + 10);
        pay(&s, "c", "b", 9_000, t + 20); // known by now: not part of the run
        pay(&s, "c", "d", 2_000, t + 30);
        pay(&s, "c", "e", 4_000, t + HOUR_SECS + 40);
        let snap = s.snapshot("c", &payee("f"), t + HOUR_SECS + 50);
        assert_eq!((snap.new_payee_run, snap.new_payee_run_last), (3, 4_000), "b, d, e grew; a was larger than b");
        assert_eq!((snap.new_payees_1h, snap.amount_1h, snap.transfers_1h), (1, 4_000, 1));
    }

    #[test]
    fn revert_takes_back_the_count_and_restore_keeps_the_profile() {
        let s = State::new();
        for i in 0..6 {
            pay(&s, "c", "p", 10_000 * (i + 1), 1_000 + i);
        }
        let rec =
            TransferRecord { customer_id: "c".into(), payee: PayeeKey::of(&payee("p")), amount: 70_000, at: 2_000 };
        s.apply(&rec);
        s.revert(&rec);
        let snap = s.snapshot("c", &payee("p"), 3_000);
        assert_eq!((snap.transfers_seen, snap.payee_times_paid), (6, 6));
        let restored = State::new();
        for c in s.customers.iter() {
            restored.restore_customer(c.key(), c.image());
        }
        restored.rebuild_fan_in();
        assert_eq!(restored.snapshot("c", &payee("p"), 3_000), snap);
        // An image written before the profile existed restores its payees as known, never paid.
        let old = CustomerImage { known: vec![(PayeeKey::of(&payee("p")).0, 1_000)], ..CustomerImage::default() };
        let json = serde_json::to_string(&old).unwrap();
        assert_eq!(
            json,
            r#"{"k":[[2525438232055850698,1000]]}"#
                .replace("2525438232055850698", &PayeeKey::of(&payee("p")).0.to_string())
        );
        restored.restore_customer("old", serde_json::from_str(&json).unwrap());
        let o = restored.snapshot("old", &payee("p"), 3_000);
        assert_eq!((o.payee_first_paid, o.payee_times_paid, o.transfers_seen), (Some(1_000), 0, 0));
    }

    #[test]
    fn watchlist_entries_expire_and_match_normalised_accounts() {
        let s = State::new();
        s.watchlist_upsert(WatchEntry {
            account: "6222 0000-1111".into(),
            station_id: "ps".into(),
            reason: "mule".into(),
            added_at: 0,
            expires_at: Some(100),
        });
        assert!(s.is_watchlisted("622200001111", 99));
        assert!(!s.is_watchlisted("622200001111", 100));
        s.prune(100);
        assert_eq!(s.sizes().watchlist, 0);
    }

    #[test]
    fn a_new_payee_sees_the_growing_run_of_a_young_payee() {
        let state = State::new();
        let day = 86_400;
        let t = 200 * day;
        for (ago, amount) in [(40, 100), (25, 200), (10, 400)] {
            pay(&state, "c1", "partner", amount, t - ago * day);
        }
        // An old friend paid more each time too, but first paid a year ago.
        for (ago, amount) in [(365, 50), (30, 100), (20, 200), (5, 400)] {
            pay(&state, "c2", "friend", amount, t - ago * day);
        }
        let run = |c: &str, p: &str| state.snapshot(c, &payee(p), t).young_payee_growing_run;
        assert_eq!(run("c1", "platform"), 2, "three growing payments: a run of two");
        assert_eq!(run("c1", "partner"), 0, "only for a new payee");
        assert_eq!(run("c2", "platform"), 0, "not a young payee");
        assert_eq!(state.snapshot("c1", &payee("platform"), t + 30 * day).young_payee_growing_run, 0, "60 days on");
    }

    #[test]
    fn a_stop_stays_until_it_is_cleared_and_survives_a_restart() {
        let state = State::new();
        let t = 10 * 86_400;
        let stopped = |s: &State, at| s.snapshot("c1", &payee("next"), at).last_stopped;
        assert_eq!(stopped(&state, t), None);
        state.record_stopped("c1", t);
        state.record_stopped("c1", t + 60); // held because of the first: the first is kept
        assert_eq!(stopped(&state, t + 600), Some(t));
        assert_eq!(stopped(&state, t - 1), None, "not before it happened");
        assert_eq!(state.snapshot("c2", &payee("next"), t + 600).last_stopped, None, "one customer's only");

        let restored = State::new();
        for c in state.customers.iter() {
            restored.restore_customer(c.key(), c.image());
        }
        assert_eq!(stopped(&restored, t + 600), Some(t));

        // Clearing another transfer's stop leaves it; clearing its own removes it.
        state.clear_stopped("c1", t + 60);
        assert_eq!(stopped(&state, t + 600), Some(t));
        state.clear_stopped("c1", t);
        assert_eq!(stopped(&state, t + 600), None);
        state.clear_stopped("nobody", t);
        // A day on, a new stop starts a new day.
        state.record_stopped("c1", t);
        state.record_stopped("c1", t + STOP_KEPT_SECS);
        assert_eq!(stopped(&state, t + STOP_KEPT_SECS + 1), Some(t + STOP_KEPT_SECS));
        // The prune keeps a stop of the last day (with nothing else to keep)
        // and forgets an older one.
        state.prune(t + STOP_KEPT_SECS + 10);
        assert_eq!(stopped(&state, t + STOP_KEPT_SECS + 20), Some(t + STOP_KEPT_SECS));
        state.prune(t + 2 * STOP_KEPT_SECS);
        assert!(state.customers.get("c1").unwrap().activity.is_none(), "nothing left to keep");
    }

    #[test]
    fn adding_to_the_watchlist_leaves_a_listed_account_as_its_station_wrote_it() {
        let s = State::new();
        let entry = |station: &str| WatchEntry {
            account: "6222 0000-1111".into(),
            station_id: station.into(),
            reason: "mule".into(),
            added_at: 0,
            expires_at: None,
        };
        assert!(s.watchlist_add(entry("first")));
        assert!(!s.watchlist_add(entry("second")));
        assert_eq!(s.watchlist_entry("622200001111").unwrap().station_id, "first");
    }

    #[test]
    fn windows_stay_bounded() {
        let s = State::new();
        for i in 0..(MAX_RECENT as i64 + 100) {
            pay(&s, "c", "p", 1, i);
        }
        assert_eq!(s.snapshot("c", &payee("p"), 10_000).transfers_24h, MAX_RECENT as i64);
        s.prune(10_000 + WINDOW_SECS);
        assert_eq!(s.snapshot("c", &payee("p"), 10_000 + WINDOW_SECS).transfers_24h, 0);
        assert_eq!(s.sizes().payees, 0);
    }

    #[test]
    fn the_latest_limit_change_wins() {
        let s = State::new();
        let ch = |at| LimitChange { old_limit: 1, new_limit: 2, is_maximum: false, changed_at: at };
        s.record_limit_change("c", ch(20));
        s.record_limit_change("c", ch(10));
        assert_eq!(s.snapshot("c", &payee("p"), 30).last_limit_change, Some(ch(20)));
    }
}
