//! Wire → domain: every request validated field by field into the domain
//! value the service takes, or every problem found, each naming its field.

use super::super::proto as pb;
use super::{local_date, trimmed, truncate, FieldViolation, LiveClock, Nested, Violations};
use crate::alerts::{AlertState, HoldDecision, Outcome};
use crate::model::{Channel, Customer, LimitChange, Observation, Observations, Payee, Transfer, UnixSeconds};
use crate::service::CustomerEvent;
use crate::state::WatchEntry;

pub fn channel(v: &mut Violations, field: &str, raw: i32) -> Channel {
    match pb::Channel::try_from(raw) {
        Ok(pb::Channel::Counter) => Channel::Counter,
        Ok(pb::Channel::Atm) => Channel::Atm,
        Ok(pb::Channel::Mobile) => Channel::Mobile,
        Ok(pb::Channel::Online) => Channel::Online,
        Ok(pb::Channel::Unspecified) => {
            v.add(field, "required");
            Channel::Mobile
        }
        Err(_) => {
            v.add(field, format!("unknown channel {raw}"));
            Channel::Mobile
        }
    }
}

fn observation(raw: i32) -> Option<Observation> {
    let o = pb::Observation::try_from(raw).ok()?;
    Observation::ALL.into_iter().find(|m| super::observation_to_pb(*m) == o)
}

pub fn limit_change(v: &mut Violations, field: &str, raw: &pb::LimitChanged) -> LimitChange {
    LimitChange {
        old_limit: v.amount(Nested(field, "old_limit_minor"), raw.old_limit_minor, true),
        new_limit: v.amount(Nested(field, "new_limit_minor"), raw.new_limit_minor, true),
        is_maximum: raw.is_maximum,
        changed_at: v.time(Nested(field, "changed_at"), raw.changed_at.as_ref()),
    }
}

pub fn payee(v: &mut Violations, field: &str, raw: Option<pb::Payee>) -> Payee {
    let Some(p) = raw else {
        v.add(field, "required");
        return Payee { account: String::new(), name: String::new(), bank_code: String::new() };
    };
    Payee {
        account: v.account(Nested(field, "account"), p.account),
        name: v.id(Nested(field, "name"), p.name, 128),
        bank_code: v.id(Nested(field, "bank_code"), p.bank_code, 32),
    }
}

/// For clients and tools without a ruleset: [`transfer`] at the default
/// offset ([`crate::rules::DEFAULT_UTC_OFFSET`]).
impl TryFrom<&pb::ScreenRequest> for Transfer {
    type Error = Vec<FieldViolation>;

    fn try_from(r: &pb::ScreenRequest) -> Result<Transfer, Self::Error> {
        transfer(r.clone(), crate::rules::DEFAULT_UTC_OFFSET)
    }
}

/// Validates a `ScreenRequest` into a [`Transfer`]. Dates (birth, account
/// opening) must not be after the request's local date at `utc_offset`, the
/// ruleset's. Takes the request: its strings move into the transfer (the
/// handler owns the request; a caller holding a reference clones it once).
pub fn transfer(r: pb::ScreenRequest, utc_offset: time::UtcOffset) -> Result<Transfer, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let request_id = v.id("request_id", r.request_id, 128);
    let requested_at = v.time("requested_at", r.requested_at.as_ref());
    let bank_id = v.id("bank_id", r.bank_id, 64);
    let branch_id = v.id("branch_id", r.branch_id, 64);
    let channel = channel(&mut v, "channel", r.channel);
    let teller_id = if channel == Channel::Counter {
        v.id("teller_id", r.teller_id, 64)
    } else {
        v.text("teller_id", r.teller_id, 64)
    };
    let today = local_date(requested_at, utc_offset);
    let customer = match r.customer {
        None => {
            v.add("customer", "required");
            None
        }
        Some(c) => {
            let limit_change_of_another = c
                .last_limit_change
                .as_ref()
                .is_some_and(|l| !l.customer_id.is_empty() && l.customer_id != c.customer_id);
            let customer_id = v.id("customer.customer_id", c.customer_id, 64);
            let account_id = v.account("customer.account_id", c.account_id);
            let birth_date = v.date("customer.birth_date", &c.birth_date);
            let opened = v.date("customer.account_opened_on", &c.account_opened_on);
            if let Some(b) = birth_date {
                if requested_at != 0 && b > today {
                    v.add("customer.birth_date", "is after requested_at");
                }
            }
            if let Some(o) = opened {
                if requested_at != 0 && o > today {
                    v.add("customer.account_opened_on", "is after requested_at");
                }
            }
            let daily_limit = v.amount("customer.daily_limit_minor", c.daily_limit_minor, false);
            let last_limit_change =
                c.last_limit_change.as_ref().map(|l| limit_change(&mut v, "customer.last_limit_change", l));
            if limit_change_of_another {
                v.add("customer.last_limit_change.customer_id", "differs from customer.customer_id");
            }
            match (birth_date, opened) {
                (Some(birth_date), Some(account_opened_on)) => Some(Customer {
                    customer_id,
                    account_id,
                    birth_date,
                    account_opened_on,
                    daily_limit,
                    last_limit_change,
                }),
                _ => None,
            }
        }
    };
    let payee = payee(&mut v, "payee", r.payee);
    let amount = v.amount("amount_minor", r.amount_minor, false);
    let currency = trimmed(r.currency);
    if currency.is_empty() {
        v.add("currency", "required");
    } else if crate::model::minor_digits(&currency).is_none() {
        v.add("currency", format!("unknown currency `{}`; use an upper-case ISO 4217 code", truncate(&currency)));
    }
    let memo = v.text("memo", r.memo, 256);
    let mut observations = Observations::default();
    for (i, raw) in r.observations.iter().enumerate() {
        match observation(*raw) {
            Some(o) => observations.insert(o),
            None => v.add(format!("observations[{i}]"), format!("unknown observation {raw}")),
        }
    }
    let customer = v.into_value(customer)?;
    Ok(Transfer {
        request_id,
        requested_at,
        bank_id,
        branch_id,
        teller_id,
        channel,
        customer,
        payee,
        amount,
        currency,
        memo,
        observations,
    })
}

impl TryFrom<&pb::WatchlistEntry> for WatchEntry {
    type Error = Vec<FieldViolation>;

    fn try_from(r: &pb::WatchlistEntry) -> Result<WatchEntry, Self::Error> {
        let mut v = Violations::default();
        let account = v.account("account", &r.account);
        let station_id = v.id("issuer_station_id", &r.issuer_station_id, 64);
        let reason = v.id("reason", &r.reason, 256);
        let expires_at = r.expires_at.as_ref().map(|t| v.time("expires_at", Some(t)));
        let added_at = r.added_at.as_ref().map_or(0, |t| v.time("added_at", Some(t)));
        v.into_result(WatchEntry { account, station_id, reason, added_at, expires_at })
    }
}

pub fn request_id(r: &pb::GetTransferRequest) -> Result<String, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let id = v.id("request_id", &r.request_id, 128);
    v.into_result(id)
}

/// Validates an event; its timestamps must be live (`clock`): a core-banking
/// system reports what happens as it happens.
pub fn customer_event(r: &pb::RecordEventRequest, clock: LiveClock) -> Result<CustomerEvent, Vec<FieldViolation>> {
    use pb::record_event_request::Event;
    let mut v = Violations::default();
    v.id("event_id", &r.event_id, 128);
    v.text("bank_id", &r.bank_id, 64);
    let event = match &r.event {
        None => {
            v.add("event", "required: one of limit_changed, payee_added, transfer_executed, transfer_cancelled");
            None
        }
        Some(Event::LimitChanged(l)) => {
            let change = limit_change(&mut v, "limit_changed", l);
            clock.within(&mut v, "limit_changed.changed_at", change.changed_at);
            Some(CustomerEvent::LimitChanged {
                customer_id: v.id("limit_changed.customer_id", &l.customer_id, 64),
                change,
            })
        }
        Some(Event::PayeeAdded(p)) => {
            let added_at = v.time("payee_added.added_at", p.added_at.as_ref());
            clock.within(&mut v, "payee_added.added_at", added_at);
            Some(CustomerEvent::PayeeAdded {
                customer_id: v.id("payee_added.customer_id", &p.customer_id, 64),
                payee: payee(&mut v, "payee_added.payee", p.payee.clone()),
                added_at,
            })
        }
        Some(Event::TransferExecuted(t)) => Some(CustomerEvent::TransferExecuted {
            request_id: v.id("transfer_executed.request_id", &t.request_id, 128),
        }),
        Some(Event::TransferCancelled(t)) => Some(CustomerEvent::TransferCancelled {
            request_id: v.id("transfer_cancelled.request_id", &t.request_id, 128),
        }),
    };
    v.into_value(event)
}

/// A claim: which alert, by which officer.
pub fn claim(r: &pb::ClaimAlertRequest) -> Result<(String, String), Vec<FieldViolation>> {
    let mut v = Violations::default();
    let alert_id = v.id("alert_id", &r.alert_id, 64);
    let officer = v.id("officer_id", &r.officer_id, 64);
    v.into_result((alert_id, officer))
}

/// An officer's resolution of an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub alert_id: String,
    pub officer: String,
    pub outcome: Outcome,
    pub decision: Option<HoldDecision>,
    pub note: String,
}

pub fn resolution(r: &pb::ResolveAlertRequest) -> Result<Resolution, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let alert_id = v.id("alert_id", &r.alert_id, 64);
    let officer = v.id("officer_id", &r.officer_id, 64);
    let note = v.text("note", &r.note, 1024);
    let outcome = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Dissuaded) => Outcome::Dissuaded,
        Ok(pb::Outcome::FraudConfirmed) => Outcome::FraudConfirmed,
        Ok(pb::Outcome::FalseAlarm) => Outcome::FalseAlarm,
        Ok(pb::Outcome::CustomerProceeded) => Outcome::CustomerProceeded,
        _ => {
            v.add("outcome", "required: dissuaded, fraud_confirmed, false_alarm or customer_proceeded");
            Outcome::Dissuaded
        }
    };
    let decision = match pb::HoldDecision::try_from(r.hold_decision) {
        Ok(pb::HoldDecision::Release) => Some(HoldDecision::Release),
        Ok(pb::HoldDecision::Block) => Some(HoldDecision::Block),
        Ok(pb::HoldDecision::Unspecified) => None,
        Err(_) => {
            v.add("hold_decision", format!("unknown hold decision {}", r.hold_decision));
            None
        }
    };
    v.into_result(Resolution { alert_id, officer, outcome, decision, note })
}

/// The filters and page of a `ListAlerts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertQuery {
    pub stations: Vec<String>,
    pub states: Vec<AlertState>,
    pub created_after: Option<UnixSeconds>,
    pub created_before: Option<UnixSeconds>,
    pub page: Option<super::PageToken>,
    pub limit: usize,
}

pub fn alert_query(r: &pb::ListAlertsRequest) -> Result<AlertQuery, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let mut states = Vec::new();
    for (i, s) in r.states.iter().enumerate() {
        match pb::AlertState::try_from(*s) {
            Ok(pb::AlertState::New) => states.push(AlertState::New),
            Ok(pb::AlertState::Claimed) => states.push(AlertState::Claimed),
            Ok(pb::AlertState::Escalated) => states.push(AlertState::Escalated),
            Ok(pb::AlertState::Resolved) => states.push(AlertState::Resolved),
            _ => v.add(format!("states[{i}]"), format!("unknown alert state {s}")),
        }
    }
    let created_after = r.created_after.as_ref().map(|t| v.time("created_after", Some(t)));
    let created_before = r.created_before.as_ref().map(|t| v.time("created_before", Some(t)));
    if r.limit > 1000 {
        v.add("limit", "at most 1000");
    }
    let page = super::PageToken::decode(&mut v, r);
    let limit = if r.limit == 0 { 100 } else { r.limit as usize };
    v.into_result(AlertQuery { stations: r.station_ids.clone(), states, created_after, created_before, page, limit })
}

/// The stations a `WatchAlerts` watches (at least one).
pub fn watched_stations(r: &pb::WatchAlertsRequest) -> Result<Vec<String>, Vec<FieldViolation>> {
    let mut v = Violations::default();
    if r.station_ids.is_empty() {
        v.add("station_ids", "required: at least one station");
    }
    for (i, s) in r.station_ids.iter().enumerate() {
        v.id(&format!("station_ids[{i}]"), s, 64);
    }
    v.into_result(r.station_ids.clone())
}

/// The account of a `RemoveEntry`.
pub fn removed_account(r: &pb::RemoveEntryRequest) -> Result<String, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let account = v.account("account", &r.account);
    v.into_result(account)
}
