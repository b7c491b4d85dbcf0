//! What the service remembers of each screened transfer through the
//! idempotency window: a compact entry (72 bytes, plus the customer's id) keyed
//! by a 128-bit hash of the request id, holding the idempotency fingerprint,
//! the decision summary, the status and the history record a later move
//! counts or uncounts. What only some transfers have — hits, an alert, an
//! officer's outcome — sits behind one optional box, so an ordinary transfer
//! with no hit costs no more than the entry. Bank ids and ruleset versions
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
}

/// Short strings many entries share (bank ids, ruleset versions), each kept
/// once; an entry holds its index. At most [`Names::CAPACITY`] of them: past
/// that an entry keeps its own copy (in its box), so a caller inventing bank
/// ids costs memory only for its own transfers' lifetime.
#[derive(Default)]
pub struct Names {
    table: RwLock<NameTable>,
}

/// The names in order of arrival, and each one's index.
type NameTable = (Vec<Arc<str>>, HashMap<Arc<str>, u16>);

impl Names {
    pub const CAPACITY: usize = u16::MAX as usize;

    /// The index of `name`, interning it if there is room.
    fn intern(&self, name: &str) -> Option<u16> {
        let read = self.table.read().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = read.1.get(name) {
            return Some(*i);
        }
        drop(read);
        let mut write = self.table.write().unwrap_or_else(|e| e.into_inner());
        let (list, index) = &mut *write;
        if let Some(i) = index.get(name) {
            return Some(*i);
        }
        if list.len() >= Self::CAPACITY {
            return None;
        }
        let i = list.len() as u16;
        let name: Arc<str> = name.into();
        list.push(name.clone());
        index.insert(name, i);
        Some(i)
    }

    fn get(&self, i: u16) -> Arc<str> {
        let read = self.table.read().unwrap_or_else(|e| e.into_inner());
        read.0.get(usize::from(i)).cloned().unwrap_or_else(|| "".into())
    }
}

/// Index meaning "not interned: in the entry's box".
const OWN: u16 = u16::MAX;

/// One screened transfer as remembered for the idempotency window.
pub struct Remembered {
    /// The request body's fingerprint: a retry must match it.
    pub fingerprint: u64,
    customer: Box<str>,
    payee: PayeeKey,
    amount: Minor,
    /// The transfer's time, when it was answered and when its status last changed.
    at: u32,
    answered_at: u32,
    updated_at: u32,
    /// The decision's score when it fits (else in `more`).
    score: i32,
    bank: u16,
    version: u16,
    action: Action,
    state: TransferState,
    more: Option<Box<More>>,
}

/// What only some transfers have.
#[derive(Default)]
struct More {
    hits: Box<[Hit]>,
    score: Option<i64>,
    bank: Option<Arc<str>>,
    version: Option<Arc<str>>,
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
        let mut more = More::default();
        let d = &answer.decision;
        let bank = names.intern(bank_id).unwrap_or_else(|| {
            more.bank = Some(bank_id.into());
            OWN
        });
        let version = names.intern(&d.ruleset_version).unwrap_or_else(|| {
            more.version = Some(d.ruleset_version.clone());
            OWN
        });
        let score = i32::try_from(d.score).unwrap_or_else(|_| {
            more.score = Some(d.score);
            0
        });
        more.hits = d.hits.iter().cloned().collect();
        more.alert_id = answer.alert_id.as_deref().map(Into::into);
        more.station_id = answer.station_id.as_deref().map(Into::into);
        more.hold_expires_at = answer.hold_expires_at;
        Remembered {
            fingerprint: 0,
            customer: record.customer_id.into_boxed_str(),
            payee: record.payee,
            amount: record.amount,
            at: pack(record.at),
            answered_at: pack(now),
            updated_at: pack(now),
            score,
            bank,
            version,
            action: d.action,
            state,
            more: more.needed().then(|| Box::new(more)),
        }
    }

    pub fn with_fingerprint(mut self, fingerprint: u64) -> Remembered {
        self.fingerprint = fingerprint;
        self
    }

    pub fn answered_at(&self) -> UnixSeconds {
        self.answered_at.into()
    }

    pub fn state(&self) -> TransferState {
        self.state
    }

    pub fn alert_id(&self) -> Option<&str> {
        self.more.as_ref()?.alert_id.as_deref()
    }

    /// The history record this transfer counts (or counted).
    pub fn record(&self) -> TransferRecord {
        TransferRecord {
            customer_id: self.customer.to_string(),
            payee: self.payee,
            amount: self.amount,
            at: self.at.into(),
        }
    }

    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    /// Moves the transfer to `to` at `now`.
    pub fn move_to(&mut self, to: TransferState, now: UnixSeconds) {
        self.state = to;
        self.updated_at = pack(now);
    }

    /// Ends a hold: by an officer's outcome, or (`outcome` None) by its expiry.
    pub fn end_hold(&mut self, to: TransferState, outcome: Option<(Outcome, &str)>, note: &str, now: UnixSeconds) {
        self.move_to(to, now);
        let more = self.more();
        more.hold_ended = true;
        if let Some((outcome, officer)) = outcome {
            more.outcome = Some(outcome);
            more.officer_id = Some(officer.into());
        }
        more.note = note.into();
    }

    fn bank(&self, names: &Names) -> Arc<str> {
        match (self.bank, self.more.as_ref().and_then(|m| m.bank.clone())) {
            (OWN, Some(own)) => own,
            (i, _) => names.get(i),
        }
    }

    /// The answer given, for a retry.
    pub fn answer(&self, names: &Names, request_id: &str) -> Screened {
        let more = self.more.as_deref();
        let ruleset_version = match (self.version, more.and_then(|m| m.version.clone())) {
            (OWN, Some(own)) => own,
            (i, _) => names.get(i),
        };
        Screened {
            request_id: request_id.to_string(),
            decision: Decision {
                action: self.action,
                score: more.and_then(|m| m.score).unwrap_or(i64::from(self.score)),
                hits: more.map(|m| m.hits.to_vec()).unwrap_or_default(),
                ruleset_version,
            },
            alert_id: more.and_then(|m| m.alert_id.as_deref().map(String::from)),
            station_id: more.and_then(|m| m.station_id.as_deref().map(String::from)),
            hold_expires_at: more.and_then(|m| m.hold_expires_at),
        }
    }

    /// Where the transfer stands now.
    pub fn status(&self, names: &Names, request_id: &str) -> TransferStatus {
        let more = self.more.as_deref();
        TransferStatus {
            request_id: request_id.to_string(),
            bank_id: self.bank(names).to_string(),
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
        StoredTransfer {
            answered_at: self.answered_at(),
            fingerprint: self.fingerprint,
            answer: (&self.answer(names, request_id)).into(),
            record: (&self.record()).into(),
            status: (&self.status(names, request_id)).into(),
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
            let more = r.more();
            more.hold_ended = status.hold_expires_at.is_none();
            more.outcome = status.outcome;
            more.officer_id = status.officer_id.map(String::into_boxed_str);
            more.note = status.note.into_boxed_str();
        }
        r
    }
}

impl More {
    fn needed(&self) -> bool {
        !self.hits.is_empty()
            || self.score.is_some()
            || self.bank.is_some()
            || self.version.is_some()
            || self.alert_id.is_some()
            || self.hold_expires_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_72_bytes() {
        assert_eq!(std::mem::size_of::<Remembered>(), 72);
        assert_eq!(std::mem::size_of::<TransferKey>(), 16);
    }

    #[test]
    fn names_are_interned_once() {
        let names = Names::default();
        let a = names.intern("psbc").unwrap();
        assert_eq!(names.intern("icbc"), Some(a + 1));
        assert_eq!(names.intern("psbc"), Some(a));
        assert_eq!(&*names.get(a), "psbc");
    }
}
