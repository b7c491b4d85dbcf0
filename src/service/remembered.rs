//! What the service remembers of each screened transfer through the
//! idempotency window: a compact entry (64 bytes, plus the customer's id) keyed
//! by a 128-bit hash of the request id, holding the idempotency fingerprint,
//! the decision summary, the status and the history record a later move
//! counts or uncounts. What only some transfers have — hits, an alert, an
//! officer's outcome — sits behind one optional box, so an ordinary transfer
//! with no hit costs no more than the entry. (Bank id, ruleset version) pairs
//! are interned ([`Names`]): a process sees few of them.
//!
//! Must not know tokio, locks beyond the interner's, or the store's encoding
//! beyond the conversion to and from [`StoredTransfer`].

use super::{Screened, TransferStatus};
use crate::alerts::Outcome;
use crate::lifecycle::TransferState;
use crate::model::{Action, Decision, Hit, Minor, UnixSeconds};
use crate::state::{stable_hash, PayeeKey, TransferRecord};
use crate::store::StoredTransfer;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A request id as the service keys it in memory and in the store: 128 bits
/// of two keyed SipHash-2-4 digests ([`stable_hash`]) (a collision between two ids is not
/// expected in the life of the universe; a fingerprint check follows anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferKey([u64; 2]);

impl TransferKey {
    pub fn of(request_id: &str) -> TransferKey {
        let id = request_id.as_bytes();
        TransferKey([stable_hash(&[b"transfer/a", id]), stable_hash(&[b"transfer/b", id])])
    }

    /// The store's key (format 2).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.0[0].to_be_bytes());
        b[8..].copy_from_slice(&self.0[1].to_be_bytes());
        b
    }

    /// Reads back [`Self::to_bytes`]; None for a key of another length.
    pub fn from_bytes(b: &[u8]) -> Option<TransferKey> {
        let word = |r: std::ops::Range<usize>| Some(u64::from_be_bytes(b.get(r)?.try_into().ok()?));
        (b.len() == 16).then(|| Some(TransferKey([word(0..8)?, word(8..16)?]))).flatten()
    }
}

/// The (bank id, ruleset version) pairs entries share, each kept once; an
/// entry holds its index. A process sees a few banks and a version per
/// reload. Never forgotten, so bounded: at most [`Names::CAPACITY`] pairs (a
/// few MB); past that an entry keeps its own copy (in its box), so a caller
/// inventing bank ids costs memory only for its own transfers' lifetime.
#[derive(Default)]
pub struct Names {
    table: RwLock<NameTable>,
}

/// The pairs in order of arrival, and for each bank each version's index.
type NameTable = (Vec<(Arc<str>, Arc<str>)>, HashMap<Arc<str>, HashMap<Arc<str>, u16>>);

impl Names {
    pub const CAPACITY: usize = u16::MAX as usize;

    /// The index of (`bank`, `version`), interning it if there is room.
    fn intern(&self, bank: &str, version: &Arc<str>) -> Option<u16> {
        let read = self.table.read().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = read.1.get(bank).and_then(|v| v.get(&**version)) {
            return Some(*i);
        }
        drop(read);
        let mut write = self.table.write().unwrap_or_else(|e| e.into_inner());
        let (list, index) = &mut *write;
        if let Some(i) = index.get(bank).and_then(|v| v.get(&**version)) {
            return Some(*i);
        }
        if list.len() >= Self::CAPACITY {
            return None;
        }
        let i = list.len() as u16;
        let bank: Arc<str> = bank.into();
        list.push((bank.clone(), version.clone()));
        index.entry(bank).or_default().insert(version.clone(), i);
        Some(i)
    }

    fn get(&self, i: u16) -> (Arc<str>, Arc<str>) {
        let read = self.table.read().unwrap_or_else(|e| e.into_inner());
        read.0.get(usize::from(i)).cloned().unwrap_or_else(|| ("".into(), "".into()))
    }
}

/// Index meaning "not interned: in the entry's box".
const OWN: u16 = u16::MAX;

/// One screened transfer as remembered for the idempotency window (64 bytes).
pub struct Remembered {
    /// The request body's fingerprint: a retry must match it.
    pub fingerprint: u64,
    customer: Box<str>,
    payee: PayeeKey,
    amount: Minor,
    /// When it was answered and when its status last changed.
    answered_at: u32,
    updated_at: u32,
    /// The transfer's own time, in seconds from `answered_at` when that fits
    /// (live requests are held to the server's clock), else in `more`.
    at: i16,
    /// The decision's score when it fits (else in `more`).
    score: i16,
    /// (bank id, ruleset version): an index into [`Names`], or [`OWN`].
    names: u16,
    action: Action,
    state: TransferState,
    more: Option<Box<More>>,
}

/// What only some transfers have: hits (a warned transfer), and rarer still
/// the rest (an alert, an outcome, a value that did not fit the entry).
#[derive(Default)]
struct More {
    hits: Box<[Hit]>,
    rare: Option<Box<Rare>>,
}

#[derive(Default)]
struct Rare {
    /// What did not fit the entry itself.
    at: Option<UnixSeconds>,
    score: Option<i64>,
    names: Option<(Arc<str>, Arc<str>)>,
    alert_id: Option<Box<str>>,
    station_id: Option<Box<str>>,
    /// The hold's expiry as answered; the status drops it once the hold ended.
    hold_expires_at: Option<UnixSeconds>,
    hold_ended: bool,
    outcome: Option<Outcome>,
    officer_id: Option<Box<str>>,
    note: Box<str>,
}

/// Unix seconds as unsigned 32 bits (to 2106); earlier times read as 1970.
fn pack(at: UnixSeconds) -> u32 {
    at.clamp(0, u32::MAX as i64) as u32
}

impl Remembered {
    /// Remembers a fresh answer and the record its transfer counts.
    pub fn new(
        names: &Names,
        bank_id: &str,
        answer: &Screened,
        record: TransferRecord,
        state: TransferState,
        now: UnixSeconds,
    ) -> Remembered {
        let mut rare = Rare::default();
        let d = &answer.decision;
        let names = names.intern(bank_id, &d.ruleset_version).unwrap_or_else(|| {
            rare.names = Some((bank_id.into(), d.ruleset_version.clone()));
            OWN
        });
        let score = i16::try_from(d.score).unwrap_or_else(|_| {
            rare.score = Some(d.score);
            0
        });
        let answered_at = pack(now);
        let offset = record.at.checked_sub(i64::from(answered_at)).and_then(|d| i16::try_from(d).ok());
        let at = offset.unwrap_or_else(|| {
            rare.at = Some(record.at);
            0
        });
        rare.alert_id = answer.alert_id.as_deref().map(Into::into);
        rare.station_id = answer.station_id.as_deref().map(Into::into);
        rare.hold_expires_at = answer.hold_expires_at;
        let rare = rare.needed().then(|| Box::new(rare));
        let more = (!d.hits.is_empty() || rare.is_some())
            .then(|| Box::new(More { hits: d.hits.iter().cloned().collect(), rare }));
        Remembered {
            fingerprint: 0,
            customer: record.customer_id.into_boxed_str(),
            payee: record.payee,
            amount: record.amount,
            answered_at,
            updated_at: answered_at,
            at,
            score,
            names,
            action: d.action,
            state,
            more,
        }
    }

    pub fn with_fingerprint(mut self, fingerprint: u64) -> Remembered {
        self.fingerprint = fingerprint;
        self
    }

    pub fn answered_at(&self) -> UnixSeconds {
        self.answered_at.into()
    }

    /// The customer who sent it.
    pub fn customer(&self) -> &str {
        &self.customer
    }

    pub fn state(&self) -> TransferState {
        self.state
    }

    pub fn alert_id(&self) -> Option<&str> {
        self.rare()?.alert_id.as_deref()
    }

    /// The history record this transfer counts (or counted).
    pub fn record(&self) -> TransferRecord {
        TransferRecord {
            customer_id: self.customer.to_string(),
            payee: self.payee,
            amount: self.amount,
            at: self.rare().and_then(|r| r.at).unwrap_or(self.answered_at() + i64::from(self.at)),
        }
    }

    fn rare(&self) -> Option<&Rare> {
        self.more.as_ref()?.rare.as_deref()
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.more.get_or_insert_with(Box::default).rare.get_or_insert_with(Box::default)
    }

    /// Moves the transfer to `to` at `now`.
    pub fn move_to(&mut self, to: TransferState, now: UnixSeconds) {
        self.state = to;
        self.updated_at = pack(now);
    }

    /// Ends a hold: by an officer's outcome, or (`outcome` None) by its expiry.
    pub fn end_hold(&mut self, to: TransferState, outcome: Option<(Outcome, &str)>, note: &str, now: UnixSeconds) {
        self.move_to(to, now);
        let more = self.rare_mut();
        more.hold_ended = true;
        if let Some((outcome, officer)) = outcome {
            more.outcome = Some(outcome);
            more.officer_id = Some(officer.into());
        }
        more.note = note.into();
    }

    /// (bank id, ruleset version).
    fn names(&self, names: &Names) -> (Arc<str>, Arc<str>) {
        match (self.names, self.rare().and_then(|r| r.names.clone())) {
            (OWN, Some(own)) => own,
            (i, _) => names.get(i),
        }
    }

    /// The answer given, for a retry.
    pub fn answer(&self, names: &Names, request_id: &str) -> Screened {
        let more = self.rare();
        Screened {
            request_id: request_id.to_string(),
            decision: Decision {
                action: self.action,
                score: more.and_then(|m| m.score).unwrap_or(i64::from(self.score)),
                hits: self.more.as_ref().map(|m| m.hits.to_vec()).unwrap_or_default(),
                ruleset_version: self.names(names).1,
            },
            alert_id: more.and_then(|m| m.alert_id.as_deref().map(String::from)),
            station_id: more.and_then(|m| m.station_id.as_deref().map(String::from)),
            hold_expires_at: more.and_then(|m| m.hold_expires_at),
        }
    }

    /// Where the transfer stands now.
    pub fn status(&self, names: &Names, request_id: &str) -> TransferStatus {
        let more = self.rare();
        TransferStatus {
            request_id: request_id.to_string(),
            bank_id: self.names(names).0.to_string(),
            state: self.state,
            action: self.action,
            alert_id: more.and_then(|m| m.alert_id.as_deref().map(String::from)),
            station_id: more.and_then(|m| m.station_id.as_deref().map(String::from)),
            hold_expires_at: more.filter(|m| !m.hold_ended).and_then(|m| m.hold_expires_at),
            outcome: more.and_then(|m| m.outcome),
            officer_id: more.and_then(|m| m.officer_id.as_deref().map(String::from)),
            note: more.map(|m| m.note.to_string()).unwrap_or_default(),
            updated_at: self.updated_at.into(),
        }
    }

    /// The store's image of it.
    pub fn stored(&self, names: &Names, request_id: &str) -> StoredTransfer {
        self.stored_answering(names, &self.answer(names, request_id))
    }

    /// The store's image of it, with the answer it gave already in hand (at
    /// screen time), so the answer is not built again from the entry.
    pub fn stored_answering(&self, names: &Names, answer: &Screened) -> StoredTransfer {
        StoredTransfer {
            answered_at: self.answered_at(),
            fingerprint: self.fingerprint,
            answer: answer.into(),
            record: (&self.record()).into(),
            status: (&self.status(names, &answer.request_id)).into(),
        }
    }

    /// Back from the store's image.
    pub fn from_stored(names: &Names, t: StoredTransfer) -> Remembered {
        let answer = Screened::from(t.answer);
        let status = TransferStatus::from(t.status);
        let mut r = Remembered::new(names, &status.bank_id, &answer, t.record.into(), status.state, t.answered_at)
            .with_fingerprint(t.fingerprint);
        r.updated_at = pack(status.updated_at);
        if status.outcome.is_some() || !status.note.is_empty() || status.hold_expires_at != answer.hold_expires_at {
            let more = r.rare_mut();
            more.hold_ended = status.hold_expires_at.is_none();
            more.outcome = status.outcome;
            more.officer_id = status.officer_id.map(String::into_boxed_str);
            more.note = status.note.into_boxed_str();
        }
        r
    }
}

impl Rare {
    fn needed(&self) -> bool {
        self.at.is_some()
            || self.score.is_some()
            || self.names.is_some()
            || self.alert_id.is_some()
            || self.hold_expires_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_key_reads_back_from_its_bytes() {
        let key = TransferKey::of("req-1");
        assert_eq!(TransferKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(TransferKey::from_bytes(b"req-1"), None);
    }

    #[test]
    fn an_entry_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Remembered>(), 64);
        assert_eq!(std::mem::size_of::<TransferKey>(), 16);
    }

    fn screened(score: i64, held: bool) -> Screened {
        let text = Arc::new(crate::model::RuleText {
            rule_id: "r".into(),
            reason_zh: "原因".into(),
            reason_en: "why".into(),
            ask_zh: Box::new([]),
            ask_en: Box::new([]),
            typology: "".into(),
        });
        Screened {
            request_id: "req-1".into(),
            decision: Decision {
                action: if held { Action::Hold } else { Action::Allow },
                score,
                hits: if held { vec![Hit { text, score, shadow: false }] } else { vec![] },
                ruleset_version: "v1".into(),
            },
            alert_id: held.then(|| "al-1".into()),
            station_id: held.then(|| "st-1".into()),
            hold_expires_at: held.then_some(2_000_900),
        }
    }

    /// Every field comes back as given, through memory and through the
    /// store's image, including the values that do not fit the entry itself.
    #[test]
    fn an_entry_gives_back_the_answer_status_and_record_it_was_given() {
        let names = Names::default();
        for (score, at, held) in
            [(0, 1_999_990, false), (160, 2_000_000, true), (1 << 40, 1_000, true), (i64::MIN, i64::MIN, false)]
        {
            let answer = screened(score, held);
            let record = TransferRecord { customer_id: "c-1".into(), payee: PayeeKey(7), amount: 5_000_000_000, at };
            let state = if held { TransferState::Held } else { TransferState::Allowed };
            let mut e = Remembered::new(&names, "psbc", &answer, record.clone(), state, 2_000_000).with_fingerprint(9);
            assert_eq!(e.answer(&names, "req-1"), answer);
            assert_eq!(e.record(), record);
            let status = e.status(&names, "req-1");
            assert_eq!(
                (status.bank_id.as_str(), status.state, status.hold_expires_at),
                ("psbc", state, answer.hold_expires_at)
            );
            if held {
                e.end_hold(TransferState::Blocked, Some((Outcome::Dissuaded, "officer-li")), "劝阻", 2_000_100);
            }
            let again = Remembered::from_stored(&names, e.stored(&names, "req-1"));
            assert_eq!(again.fingerprint, 9);
            assert_eq!(again.answer(&names, "req-1"), answer, "the answer keeps its hold expiry");
            assert_eq!(again.record(), record);
            assert_eq!(again.status(&names, "req-1"), e.status(&names, "req-1"));
            if held {
                let s = again.status(&names, "req-1");
                assert_eq!(
                    (s.hold_expires_at, s.outcome, s.officer_id.as_deref()),
                    (None, Some(Outcome::Dissuaded), Some("officer-li"))
                );
            }
        }
    }

    #[test]
    fn names_are_interned_once() {
        let names = Names::default();
        let (v1, v2): (Arc<str>, Arc<str>) = ("v1".into(), "v2".into());
        let a = names.intern("psbc", &v1).unwrap();
        assert_eq!(names.intern("icbc", &v1), Some(a + 1));
        assert_eq!(names.intern("psbc", &v2), Some(a + 2));
        assert_eq!(names.intern("psbc", &v1), Some(a));
        assert_eq!(names.get(a + 2), ("psbc".into(), v2));
    }
}

/// The guard's use of the remembered entries: statuses built on demand, status
/// channels only while watched.
#[cfg(test)]
mod guard_tests {
    use super::super::{CustomerEvent, TransferGuard, TransferState};
    use crate::alerts::{HoldDecision, Outcome};
    use crate::auth::Caller;
    use crate::model::{Channel, Customer, LimitChange, Payee, Transfer};
    use time::macros::date;

    fn transfer(request_id: &str, seed_case: bool) -> Transfer {
        let now = crate::clock::wall_clock();
        Transfer {
            request_id: request_id.into(),
            requested_at: now,
            bank_id: "psbc".into(),
            branch_id: "psbc-heshan-zhongshan".into(),
            teller_id: "t-01".into(),
            channel: Channel::Mobile,
            customer: Customer {
                customer_id: "c-1".into(),
                account_id: "6222020000000001".into(),
                birth_date: date!(1958 - 05 - 10),
                account_opened_on: date!(2008 - 01 - 01),
                daily_limit: 50_000_000,
                last_limit_change: seed_case.then_some(LimitChange {
                    old_limit: 5_000_000,
                    new_limit: 50_000_000,
                    is_maximum: true,
                    changed_at: now - 900,
                }),
            },
            payee: Payee { account: "6236000000000009".into(), name: "某某".into(), bank_code: "pab".into() },
            amount: if seed_case { 40_000_000 } else { 50_000 },
            currency: "CNY".into(),
            memo: if seed_case { "投资理财".into() } else { String::new() },
            observations: Default::default(),
        }
    }

    #[test]
    fn watchers_see_every_change_and_their_channels_go_when_nobody_listens() {
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let guard = TransferGuard::open(&rules).expect("shipped rules");
        let held = guard.screen(&transfer("held", true), 1, &Caller::Open).unwrap();
        assert!(held.alert_id.is_some() && held.hold_expires_at.is_some(), "{held:?}");
        let (mut a, b) = (guard.watch_transfer("held").unwrap(), guard.watch_transfer("held").unwrap());
        assert_eq!(guard.watchers.len(), 1, "one channel, however many watch");
        assert_eq!(a.borrow_and_update().state, TransferState::Held);
        let alert = held.alert_id.clone().unwrap();
        guard
            .resolve_alert(&alert, "officer-li", Outcome::Dissuaded, Some(HoldDecision::Block), "劝阻", &Caller::Open)
            .unwrap();
        for rx in [&mut a, &mut b.clone()] {
            let s = rx.borrow_and_update().clone();
            assert_eq!(
                (s.state, s.officer_id.as_deref(), s.hold_expires_at),
                (TransferState::Blocked, Some("officer-li"), None)
            );
        }
        // The retry's answer is the answer given, its hold expiry included.
        assert_eq!(guard.screen(&transfer("held", true), 1, &Caller::Open).unwrap(), held);
        drop((a, b));
        guard.prune(guard.now());
        assert_eq!(guard.watchers.len(), 0, "nobody listens: the channel is gone");
        // A transfer watched after the fact starts from its status now.
        guard.screen(&transfer("plain", false), 2, &Caller::Open).unwrap();
        let mut late = guard.watch_transfer("plain").unwrap();
        guard.record_event("e-1", 3, CustomerEvent::TransferCancelled { request_id: "plain".into() }).unwrap();
        assert_eq!(late.borrow_and_update().state, TransferState::Cancelled);
        assert_eq!(guard.transfer_status("plain").unwrap().state, TransferState::Cancelled);
    }
}
