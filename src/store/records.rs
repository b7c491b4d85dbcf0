//! The records the store keeps: explicit types with the encoding on disk
//! (JSON), converted from and to the domain types. Renaming a domain field
//! changes nothing here; changing a record is a format change, pinned by
//! `tests/golden/store-v1.json` and versioned by [`super::FORMAT_VERSION`].
//!
//! Must not hold logic beyond the conversions.

use crate::alerts::{Alert, AlertEvent, AlertState, HoldDecision, Outcome, TransferSummary, EVENT_KINDS};
use crate::lifecycle::TransferState;
use crate::model::{Action, Channel, Decision, Hit, Observations, RuleText, UnixSeconds, AGE_BANDS};
use crate::service::{Screened, TransferStatus};
use crate::state::{PayeeKey, TransferRecord, WatchEntry};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A stored value that does not map back onto the domain (a name outside
/// the fixed set the code knows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a known {what}")]
pub struct Unknown {
    pub what: &'static str,
    pub value: String,
}

fn known(what: &'static str, names: &[&'static str], value: &str) -> Result<&'static str, Unknown> {
    names.iter().copied().find(|n| *n == value).ok_or_else(|| Unknown { what, value: value.to_string() })
}

macro_rules! mirror_enum {
    ($rec:ident, $domain:ty, [$($v:ident),+ $(,)?]) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $rec { $($v),+ }
        impl From<$domain> for $rec {
            fn from(d: $domain) -> $rec {
                match d { $(<$domain>::$v => $rec::$v),+ }
            }
        }
        impl From<$rec> for $domain {
            fn from(r: $rec) -> $domain {
                match r { $($rec::$v => <$domain>::$v),+ }
            }
        }
    };
}

mirror_enum!(ActionRec, Action, [Allow, Warn, Hold, Block]);
mirror_enum!(ChannelRec, Channel, [Counter, Atm, Mobile, Online]);
mirror_enum!(TransferStateRec, TransferState, [Allowed, Warned, Held, Released, Blocked, Expired, Cancelled, Executed]);
mirror_enum!(AlertStateRec, AlertState, [New, Claimed, Escalated, Resolved]);
mirror_enum!(OutcomeRec, Outcome, [Dissuaded, FraudConfirmed, FalseAlarm, CustomerProceeded]);
mirror_enum!(HoldDecisionRec, HoldDecision, [Release, Block]);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTextRec {
    pub rule_id: String,
    pub reason_zh: String,
    pub reason_en: String,
    /// The teller's questions; absent in records written before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ask_zh: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ask_en: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub typology: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitRec {
    pub text: RuleTextRec,
    pub score: i64,
    pub shadow: bool,
}

impl From<&Hit> for HitRec {
    fn from(h: &Hit) -> HitRec {
        HitRec {
            text: RuleTextRec {
                rule_id: h.text.rule_id.to_string(),
                reason_zh: h.text.reason_zh.to_string(),
                reason_en: h.text.reason_en.to_string(),
                ask_zh: h.text.ask_zh.iter().map(|q| q.to_string()).collect(),
                ask_en: h.text.ask_en.iter().map(|q| q.to_string()).collect(),
                typology: h.text.typology.to_string(),
            },
            score: h.score,
            shadow: h.shadow,
        }
    }
}

impl From<HitRec> for Hit {
    fn from(h: HitRec) -> Hit {
        let t = h.text;
        Hit {
            text: Arc::new(RuleText {
                rule_id: t.rule_id.into(),
                reason_zh: t.reason_zh.into(),
                reason_en: t.reason_en.into(),
                ask_zh: t.ask_zh.into_iter().map(Into::into).collect(),
                ask_en: t.ask_en.into_iter().map(Into::into).collect(),
                typology: t.typology.into(),
            }),
            score: h.score,
            shadow: h.shadow,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRec {
    pub action: ActionRec,
    pub score: i64,
    pub hits: Vec<HitRec>,
    pub ruleset_version: String,
}

impl From<&Decision> for DecisionRec {
    fn from(d: &Decision) -> DecisionRec {
        DecisionRec {
            action: d.action.into(),
            score: d.score,
            hits: d.hits.iter().map(HitRec::from).collect(),
            ruleset_version: d.ruleset_version.to_string(),
        }
    }
}

impl From<DecisionRec> for Decision {
    fn from(d: DecisionRec) -> Decision {
        Decision {
            action: d.action.into(),
            score: d.score,
            hits: d.hits.into_iter().map(Hit::from).collect(),
            ruleset_version: d.ruleset_version.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenedRec {
    pub request_id: String,
    pub decision: DecisionRec,
    pub alert_id: Option<String>,
    pub station_id: Option<String>,
    pub hold_expires_at: Option<UnixSeconds>,
}

impl From<&Screened> for ScreenedRec {
    fn from(s: &Screened) -> ScreenedRec {
        ScreenedRec {
            request_id: s.request_id.clone(),
            decision: (&s.decision).into(),
            alert_id: s.alert_id.clone(),
            station_id: s.station_id.clone(),
            hold_expires_at: s.hold_expires_at,
        }
    }
}

impl From<ScreenedRec> for Screened {
    fn from(s: ScreenedRec) -> Screened {
        Screened {
            request_id: s.request_id,
            decision: s.decision.into(),
            alert_id: s.alert_id,
            station_id: s.station_id,
            hold_expires_at: s.hold_expires_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecordRec {
    pub customer_id: String,
    pub payee: u64,
    pub amount: i64,
    pub at: UnixSeconds,
}

impl From<&TransferRecord> for TransferRecordRec {
    fn from(r: &TransferRecord) -> TransferRecordRec {
        TransferRecordRec { customer_id: r.customer_id.clone(), payee: r.payee.0, amount: r.amount, at: r.at }
    }
}

impl From<TransferRecordRec> for TransferRecord {
    fn from(r: TransferRecordRec) -> TransferRecord {
        TransferRecord { customer_id: r.customer_id, payee: PayeeKey(r.payee), amount: r.amount, at: r.at }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatusRec {
    pub request_id: String,
    /// Added within format 1: absent in older records (read as empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bank_id: String,
    pub state: TransferStateRec,
    pub action: ActionRec,
    pub alert_id: Option<String>,
    pub station_id: Option<String>,
    pub hold_expires_at: Option<UnixSeconds>,
    pub outcome: Option<OutcomeRec>,
    pub officer_id: Option<String>,
    pub note: String,
    pub updated_at: UnixSeconds,
}

impl From<&TransferStatus> for TransferStatusRec {
    fn from(s: &TransferStatus) -> TransferStatusRec {
        TransferStatusRec {
            request_id: s.request_id.clone(),
            bank_id: s.bank_id.clone(),
            state: s.state.into(),
            action: s.action.into(),
            alert_id: s.alert_id.clone(),
            station_id: s.station_id.clone(),
            hold_expires_at: s.hold_expires_at,
            outcome: s.outcome.map(OutcomeRec::from),
            officer_id: s.officer_id.clone(),
            note: s.note.clone(),
            updated_at: s.updated_at,
        }
    }
}

impl From<TransferStatusRec> for TransferStatus {
    fn from(s: TransferStatusRec) -> TransferStatus {
        TransferStatus {
            request_id: s.request_id,
            bank_id: s.bank_id,
            state: s.state.into(),
            action: s.action.into(),
            alert_id: s.alert_id,
            station_id: s.station_id,
            hold_expires_at: s.hold_expires_at,
            outcome: s.outcome.map(Outcome::from),
            officer_id: s.officer_id,
            note: s.note,
            updated_at: s.updated_at,
        }
    }
}

/// A screened transfer: its answer, the history record it makes, its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTransfer {
    pub answered_at: UnixSeconds,
    pub fingerprint: u64,
    pub answer: ScreenedRec,
    pub record: TransferRecordRec,
    pub status: TransferStatusRec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSummaryRec {
    pub request_id: String,
    pub amount: i64,
    pub currency: String,
    pub channel: ChannelRec,
    pub bank_id: String,
    pub branch_id: String,
    pub teller_id: String,
    pub customer_age_band: String,
    pub customer_account_masked: String,
    pub payee_account_masked: String,
    pub payee_name_masked: String,
    pub payee_bank_code: String,
    pub memo: String,
    pub observations: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRec {
    pub id: String,
    pub station_id: String,
    pub escalation_station_id: Option<String>,
    pub state: AlertStateRec,
    pub action: ActionRec,
    pub score: i64,
    pub hits: Vec<HitRec>,
    pub ruleset_version: String,
    pub transfer: TransferSummaryRec,
    pub created_at: UnixSeconds,
    pub claim_deadline: UnixSeconds,
    pub officer_id: Option<String>,
    pub outcome: Option<OutcomeRec>,
    pub hold_decision: Option<HoldDecisionRec>,
    pub note: String,
    pub updated_at: UnixSeconds,
    pub awaiting_decision: bool,
    /// Added after format 1's first records: absent in those (empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payee_account: String,
}

impl From<&Alert> for AlertRec {
    fn from(a: &Alert) -> AlertRec {
        let t = &a.transfer;
        AlertRec {
            id: a.id.clone(),
            station_id: a.station_id.clone(),
            escalation_station_id: a.escalation_station_id.clone(),
            state: a.state.into(),
            action: a.action.into(),
            score: a.score,
            hits: a.hits.iter().map(HitRec::from).collect(),
            ruleset_version: a.ruleset_version.clone(),
            transfer: TransferSummaryRec {
                request_id: t.request_id.clone(),
                amount: t.amount,
                currency: t.currency.clone(),
                channel: t.channel.into(),
                bank_id: t.bank_id.clone(),
                branch_id: t.branch_id.clone(),
                teller_id: t.teller_id.clone(),
                customer_age_band: t.customer_age_band.to_string(),
                customer_account_masked: t.customer_account_masked.clone(),
                payee_account_masked: t.payee_account_masked.clone(),
                payee_name_masked: t.payee_name_masked.clone(),
                payee_bank_code: t.payee_bank_code.clone(),
                memo: t.memo.clone(),
                observations: t.observations.0,
            },
            created_at: a.created_at,
            claim_deadline: a.claim_deadline,
            officer_id: a.officer_id.clone(),
            outcome: a.outcome.map(OutcomeRec::from),
            hold_decision: a.hold_decision.map(HoldDecisionRec::from),
            note: a.note.clone(),
            updated_at: a.updated_at,
            awaiting_decision: a.awaiting_decision,
            payee_account: a.payee_account.0.clone(),
        }
    }
}

impl TryFrom<AlertRec> for Alert {
    type Error = Unknown;

    fn try_from(a: AlertRec) -> Result<Alert, Unknown> {
        let t = a.transfer;
        Ok(Alert {
            id: a.id,
            station_id: a.station_id,
            escalation_station_id: a.escalation_station_id,
            state: a.state.into(),
            action: a.action.into(),
            score: a.score,
            hits: a.hits.into_iter().map(Hit::from).collect(),
            ruleset_version: a.ruleset_version,
            transfer: TransferSummary {
                request_id: t.request_id,
                amount: t.amount,
                currency: t.currency,
                channel: t.channel.into(),
                bank_id: t.bank_id,
                branch_id: t.branch_id,
                teller_id: t.teller_id,
                customer_age_band: known("age band", &AGE_BANDS, &t.customer_age_band)?,
                customer_account_masked: t.customer_account_masked,
                payee_account_masked: t.payee_account_masked,
                payee_name_masked: t.payee_name_masked,
                payee_bank_code: t.payee_bank_code,
                memo: t.memo,
                observations: Observations(t.observations),
            },
            created_at: a.created_at,
            claim_deadline: a.claim_deadline,
            officer_id: a.officer_id,
            outcome: a.outcome.map(Outcome::from),
            hold_decision: a.hold_decision.map(HoldDecision::from),
            note: a.note,
            updated_at: a.updated_at,
            awaiting_decision: a.awaiting_decision,
            payee_account: crate::model::FullAccount(a.payee_account),
        })
    }
}

/// An alert: its image and how many events it has had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAlert {
    pub alert: AlertRec,
    pub sequence: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEventRec {
    pub cursor: u64,
    pub event_id: String,
    pub kind: String,
    pub alert: AlertRec,
    pub at: UnixSeconds,
}

impl From<&AlertEvent> for AlertEventRec {
    fn from(e: &AlertEvent) -> AlertEventRec {
        AlertEventRec {
            cursor: e.cursor,
            event_id: e.event_id.clone(),
            kind: e.kind.to_string(),
            alert: (&e.alert).into(),
            at: e.at,
        }
    }
}

impl TryFrom<AlertEventRec> for AlertEvent {
    type Error = Unknown;

    fn try_from(e: AlertEventRec) -> Result<AlertEvent, Unknown> {
        Ok(AlertEvent {
            cursor: e.cursor,
            event_id: e.event_id,
            kind: known("alert event kind", &EVENT_KINDS, &e.kind)?,
            alert: e.alert.try_into()?,
            at: e.at,
            origin: crate::alerts::Origin::Here,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEntryRec {
    pub account: String,
    pub station_id: String,
    pub reason: String,
    pub added_at: UnixSeconds,
    pub expires_at: Option<UnixSeconds>,
}

impl From<&WatchEntry> for WatchEntryRec {
    fn from(e: &WatchEntry) -> WatchEntryRec {
        WatchEntryRec {
            account: e.account.clone(),
            station_id: e.station_id.clone(),
            reason: e.reason.clone(),
            added_at: e.added_at,
            expires_at: e.expires_at,
        }
    }
}

impl From<WatchEntryRec> for WatchEntry {
    fn from(e: WatchEntryRec) -> WatchEntry {
        WatchEntry {
            account: e.account,
            station_id: e.station_id,
            reason: e.reason,
            added_at: e.added_at,
            expires_at: e.expires_at,
        }
    }
}

/// Decodes `bytes` as each record kind that maps onto the domain and
/// converts what decodes: the store-record fuzz target's second half.
#[doc(hidden)]
pub fn to_domain_any(bytes: &[u8]) {
    if let Ok(t) = serde_json::from_slice::<StoredTransfer>(bytes) {
        let _ = (Screened::from(t.answer), TransferRecord::from(t.record), TransferStatus::from(t.status));
    }
    if let Ok(a) = serde_json::from_slice::<StoredAlert>(bytes) {
        let _ = Alert::try_from(a.alert);
    }
    if let Ok(e) = serde_json::from_slice::<AlertEventRec>(bytes) {
        let _ = AlertEvent::try_from(e);
    }
    if let Ok(w) = serde_json::from_slice::<WatchEntryRec>(bytes) {
        let _ = WatchEntry::from(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden file's records (`tests/golden/store-v1.json`) of one keyspace.
    fn golden(space: &str) -> Vec<String> {
        let all: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../tests/golden/store-v1.json")).expect("golden file");
        all.iter().filter(|r| r["space"] == space).map(|r| r["value"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn records_round_trip_through_the_domain() {
        for value in golden("alert_events") {
            let rec: AlertEventRec = serde_json::from_str(&value).unwrap();
            let event = AlertEvent::try_from(rec.clone()).unwrap();
            assert_eq!(AlertEventRec::from(&event), rec);
        }
        for value in golden("transfers") {
            let rec: StoredTransfer = serde_json::from_str(&value).unwrap();
            let (answer, status) = (Screened::from(rec.answer.clone()), TransferStatus::from(rec.status.clone()));
            assert_eq!((ScreenedRec::from(&answer), TransferStatusRec::from(&status)), (rec.answer, rec.status));
        }
    }

    #[test]
    fn a_name_outside_the_known_set_is_refused_not_guessed() {
        let value = golden("alert_events").remove(0);
        let mut rec: AlertEventRec = serde_json::from_str(&value).unwrap();
        rec.kind = "teleported".into();
        let e = AlertEvent::try_from(rec.clone()).unwrap_err();
        assert_eq!(e, Unknown { what: "alert event kind", value: "teleported".into() });
        rec.kind = "raised".into();
        rec.alert.transfer.customer_age_band = "ancient".into();
        assert_eq!(AlertEvent::try_from(rec).unwrap_err().what, "age band");
    }
}
