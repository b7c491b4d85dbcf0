//! In-memory state the rules read: per customer the payees already paid, recent
//! transfers (velocity windows) and the last limit change; per payee account the
//! customers who paid it lately (fan-in, the mule signal); the police watchlist.
//!
//! Concurrent maps (dashmap): different customers never contend; one customer's
//! record is changed under its shard lock. Time is always passed in (the
//! transfer's time), never read from the clock. Windows are bounded: entries
//! older than [`WINDOW_SECS`] are pruned on write and by [`State::prune`].
//! Must not know about rules, tokio or tonic.

use crate::model::{LimitChange, Minor, Payee, UnixSeconds};
use dashmap::DashMap;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

/// The longest window any fact looks back over.
pub const WINDOW_SECS: i64 = 24 * 3600;
const HOUR_SECS: i64 = 3600;
/// A customer's window keeps at most this many transfers (counts saturate there),
/// so a runaway client cannot grow one record without bound.
pub const MAX_RECENT: usize = 512;
/// Fan-in keeps at most this many senders per payee account.
pub const MAX_SENDERS: usize = 4096;

/// Identifies a payee (bank code and account) inside a customer's record in 8
/// bytes rather than the full strings: 5 known payees fit in 80 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PayeeKey(pub u64);

impl PayeeKey {
    pub fn of(payee: &Payee) -> PayeeKey {
        PayeeKey(stable_hash(&[payee.bank_code.trim().as_bytes(), payee.account.trim().as_bytes()]))
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnownPayee {
    key: PayeeKey,
    first_paid: UnixSeconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    at: UnixSeconds,
    amount: Minor,
    /// Kept so a payee's fan-in can be rebuilt from the windows after a restart.
    payee: PayeeKey,
    new_payee: bool,
}

/// Kept small on purpose (32 bytes): most customers have known payees and no
/// recent activity, so the windows and limit change live behind one optional box.
#[derive(Debug, Default)]
struct CustomerRecord {
    /// Sorted by key for binary search; grown one slot at a time (new payees are rare).
    known: Vec<KnownPayee>,
    activity: Option<Box<Activity>>,
}

#[derive(Debug, Default)]
struct Activity {
    /// Oldest first.
    recent: VecDeque<Recent>,
    limit: Option<LimitChange>,
}

impl CustomerRecord {
    fn image(&self) -> CustomerImage {
        let activity = self.activity.as_deref();
        CustomerImage {
            known: self.known.iter().map(|k| (k.key.0, k.first_paid)).collect(),
            recent: activity
                .into_iter()
                .flat_map(|a| a.recent.iter().map(|r| (r.at, r.amount, r.payee.0, r.new_payee)))
                .collect(),
            limit: activity.and_then(|a| a.limit),
        }
    }

    fn from_image(image: CustomerImage) -> CustomerRecord {
        let mut known: Vec<KnownPayee> =
            image.known.into_iter().map(|(key, first_paid)| KnownPayee { key: PayeeKey(key), first_paid }).collect();
        known.sort_by_key(|k| k.key);
        known.dedup_by_key(|k| k.key);
        known.shrink_to_fit();
        let recent: VecDeque<Recent> = image
            .recent
            .into_iter()
            .map(|(at, amount, payee, new_payee)| Recent { at, amount, payee: PayeeKey(payee), new_payee })
            .collect();
        let activity =
            (!recent.is_empty() || image.limit.is_some()).then(|| Box::new(Activity { recent, limit: image.limit }));
        CustomerRecord { known, activity }
    }

    fn activity(&mut self) -> &mut Activity {
        self.activity.get_or_insert_with(Box::default)
    }

    /// Inserts or updates a known payee; returns whether it was new.
    fn know(&mut self, key: PayeeKey, at: UnixSeconds) -> bool {
        match self.known.binary_search_by_key(&key, |k| k.key) {
            Ok(i) => {
                let k = &mut self.known[i];
                k.first_paid = k.first_paid.min(at);
                false
            }
            Err(i) => {
                self.known.reserve_exact(1);
                self.known.insert(i, KnownPayee { key, first_paid: at });
                true
            }
        }
    }
}

#[derive(Debug, Default)]
struct PayeeRecord {
    /// (sender key, last time paid), one per distinct customer.
    senders: Vec<(u64, UnixSeconds)>,
}

/// A customer's record as the durable store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerImage {
    /// (payee key, first paid).
    #[serde(rename = "k")]
    pub known: Vec<(u64, UnixSeconds)>,
    /// (at, amount, payee key, new payee), oldest first.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(UnixSeconds, Minor, u64, bool)>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitChange>,
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
    pub transfers_1h: i64,
    pub transfers_24h: i64,
    pub amount_24h: Minor,
    pub new_payees_24h: i64,
    pub last_limit_change: Option<LimitChange>,
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
    pub payees: usize,
    pub watchlist: usize,
}

pub struct State {
    customers: DashMap<Box<str>, CustomerRecord>,
    payees: DashMap<PayeeKey, PayeeRecord>,
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

/// A concurrent map for large keyed state (see [`MAP_SHARDS`]).
pub fn large_map<K: Eq + Hash, V>() -> DashMap<K, V> {
    DashMap::with_shard_amount(MAP_SHARDS)
}

impl Default for State {
    fn default() -> State {
        State { customers: large_map(), payees: large_map(), watchlist: DashMap::new(), log: OnceLock::new() }
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
    pub fn rebuild_fan_in(&self) {
        self.payees.clear();
        for c in self.customers.iter() {
            let Some(a) = c.activity.as_deref() else { continue };
            let sender = stable_hash(&[c.key().as_bytes()]);
            for r in &a.recent {
                let mut p = self.payees.entry(r.payee).or_default();
                match p.senders.iter().position(|(s, _)| *s == sender) {
                    Some(i) => p.senders[i].1 = p.senders[i].1.max(r.at),
                    None if p.senders.len() < MAX_SENDERS => p.senders.push((sender, r.at)),
                    None => {}
                }
            }
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
            let sender = stable_hash(&[customer_id.as_bytes()]);
            for (s, at) in &p.senders {
                if in_window(*at, now, WINDOW_SECS) {
                    snap.payee_distinct_senders_24h += 1;
                    this_customer_counted |= *s == sender;
                }
            }
        }
        if !this_customer_counted {
            snap.payee_distinct_senders_24h += 1;
        }
        if let Some(c) = self.customers.get(customer_id) {
            if let Ok(i) = c.known.binary_search_by_key(&key, |k| k.key) {
                let first = c.known[i].first_paid;
                // A payee first paid after `now` (a replay out of order) is still new now.
                snap.payee_first_paid = (first <= now).then_some(first);
            }
            let activity = c.activity.as_deref();
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
                snap.transfers_1h += i64::from(in_window(r.at, now, HOUR_SECS));
            }
            snap.last_limit_change = activity.and_then(|a| a.limit);
        }
        snap
    }

    /// Counts a transfer: its payee becomes known, it enters the windows and the
    /// payee's fan-in.
    pub fn apply(&self, record: &TransferRecord) {
        let mut c = self.customers.entry(record.customer_id.as_str().into()).or_default();
        let new_payee = c.know(record.payee, record.at);
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
        let sender = stable_hash(&[record.customer_id.as_bytes()]);
        let mut p = self.payees.entry(record.payee).or_default();
        p.senders.retain(|(_, at)| record.at - *at < WINDOW_SECS);
        match p.senders.iter().position(|(s, _)| *s == sender) {
            Some(i) => p.senders[i].1 = p.senders[i].1.max(record.at),
            None if p.senders.len() < MAX_SENDERS => p.senders.push((sender, record.at)),
            None => {}
        }
    }

    /// Undoes [`State::apply`] for a cancelled transfer: it leaves the windows,
    /// and the payee is forgotten again if this transfer made it known.
    pub fn revert(&self, record: &TransferRecord) {
        if let Some(mut c) = self.customers.get_mut(record.customer_id.as_str()) {
            if let Some(a) = c.activity.as_deref_mut() {
                if let Some(pos) = a
                    .recent
                    .iter()
                    .rposition(|r| r.at == record.at && r.amount == record.amount && r.payee == record.payee)
                {
                    a.recent.remove(pos);
                }
            }
            if let Ok(i) = c.known.binary_search_by_key(&record.payee, |k| k.key) {
                if c.known[i].first_paid == record.at {
                    c.known.remove(i);
                }
            }
            self.log_customer(&record.customer_id, &c);
        }
        let sender = stable_hash(&[record.customer_id.as_bytes()]);
        if let Some(mut p) = self.payees.get_mut(&record.payee) {
            p.senders.retain(|(s, at)| !(*s == sender && *at == record.at));
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

    /// Marks a payee as known from `at` (e.g. imported history) without counting
    /// a transfer in the windows.
    pub fn record_known_payee(&self, customer_id: &str, payee: &Payee, at: UnixSeconds) {
        let mut c = self.customers.entry(customer_id.into()).or_default();
        c.know(PayeeKey::of(payee), at);
        self.log_customer(customer_id, &c);
    }

    pub fn watchlist_upsert(&self, entry: WatchEntry) {
        let key = normalise_account(&entry.account).into_owned();
        let slot = self.watchlist.entry(key).insert(entry);
        if let Some(log) = self.log.get() {
            log.watch(slot.key(), Some(slot.value()));
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

    /// Drops window entries and watchlist entries that can no longer match at `now`.
    pub fn prune(&self, now: UnixSeconds) {
        for mut c in self.customers.iter_mut() {
            let Some(a) = c.activity.as_deref_mut() else { continue };
            let before = a.recent.len();
            while a.recent.front().is_some_and(|r| now - r.at >= WINDOW_SECS) {
                a.recent.pop_front();
            }
            if a.recent.len() == before {
                continue;
            }
            if a.recent.is_empty() {
                if a.limit.is_none() {
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
        Sizes { customers: self.customers.len(), payees: self.payees.len(), watchlist: self.watchlist.len() }
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
    fn images_restore_the_same_state_and_fan_in() {
        let live = State::new();
        for (i, c) in ["c1", "c2", "c3"].iter().enumerate() {
            pay(&live, c, "mule", 100, 1000 + i as i64);
            pay(&live, c, "rent", 50, 500);
        }
        live.record_limit_change("c1", LimitChange { old_limit: 1, new_limit: 9, is_maximum: true, changed_at: 900 });
        let restored = State::new();
        for c in live.customers.iter() {
            restored.restore_customer(c.key(), c.image());
        }
        restored.rebuild_fan_in();
        for c in ["c1", "c2", "c3", "c4"] {
            for p in ["mule", "rent", "other"] {
                assert_eq!(live.snapshot(c, &payee(p), 2000), restored.snapshot(c, &payee(p), 2000), "{c} {p}");
            }
        }
        assert_eq!(restored.snapshot("c4", &payee("mule"), 2000).payee_distinct_senders_24h, 4);
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
