//! The police side: routing (bank branch → police station), alerts and their
//! lifecycle (NEW → CLAIMED → RESOLVED, or ESCALATED when nobody claims one by
//! its deadline), and an ordered event log with cursors that station watchers
//! stream from and resume with.
//!
//! Alert times run on the server's clock (an officer's deadline is real time),
//! passed in as `now`. Must not decide transfers (the service does) or know tonic.

mod routing;

pub use routing::{Routing, Station};

use crate::model::{Action, Channel, Hit, Observations, UnixSeconds};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events kept for watchers to resume from; older cursors get "resume too old".
pub const EVENT_RETENTION: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    New,
    Claimed,
    Escalated,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Dissuaded,
    FraudConfirmed,
    FalseAlarm,
    CustomerProceeded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Dissuaded => "dissuaded",
            Outcome::FraudConfirmed => "fraud_confirmed",
            Outcome::FalseAlarm => "false_alarm",
            Outcome::CustomerProceeded => "customer_proceeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldDecision {
    Release,
    Block,
}

/// What an officer sees of a transfer: no full account number, no birth date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSummary {
    pub request_id: String,
    pub amount: i64,
    pub currency: String,
    pub channel: Channel,
    pub bank_id: String,
    pub branch_id: String,
    pub teller_id: String,
    pub customer_age_band: StaticName,
    pub customer_account_masked: String,
    pub payee_account_masked: String,
    pub payee_name_masked: String,
    pub payee_bank_code: String,
    pub memo: String,
    pub observations: Observations,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub id: String,
    pub station_id: String,
    pub escalation_station_id: Option<String>,
    pub state: AlertState,
    pub action: Action,
    pub score: i64,
    pub hits: Vec<Hit>,
    pub ruleset_version: String,
    pub transfer: TransferSummary,
    pub created_at: UnixSeconds,
    pub claim_deadline: UnixSeconds,
    pub officer_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub hold_decision: Option<HoldDecision>,
    pub note: String,
    pub updated_at: UnixSeconds,
    /// The transfer is waiting on this alert (a HOLD not yet decided).
    pub awaiting_decision: bool,
}

impl Alert {
    pub fn visible_to(&self, stations: &[String]) -> bool {
        stations.iter().any(|s| *s == self.station_id || self.escalation_station_id.as_ref() == Some(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub cursor: u64,
    /// `<alert id>:<sequence>`: stable, so JetStream can deduplicate on it.
    pub event_id: String,
    pub kind: StaticName,
    pub alert: Alert,
    pub at: UnixSeconds,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlertError {
    #[error("no alert `{0}`")]
    NotFound(String),
    #[error("alert `{id}` is {state}; {why}")]
    Conflict { id: String, state: &'static str, why: &'static str },
    #[error("hold_decision is required: the transfer is waiting on this alert")]
    DecisionRequired,
}

/// A name from a fixed set (an age band, an event kind).
pub type StaticName = &'static str;

/// An alert id in the clustered mode: it names the partition of the
/// customer, so any node knows where the alert's changes are made.
pub fn partitioned_id(partition: u16, node: &str, started_at: UnixSeconds, n: u64) -> String {
    format!("al-p{partition}-{node}-{started_at:x}-{n:06x}")
}

/// The partition an alert id names (None: an id of the single-node mode).
pub fn partition_of_id(id: &str) -> Option<u16> {
    let rest = id.strip_prefix("al-p")?;
    rest[..rest.find('-')?].parse().ok()
}

/// Every kind of [`AlertEvent`].
pub const EVENT_KINDS: [&str; 5] = ["raised", "claimed", "resolved", "expired", "escalated"];

/// Where alert changes go to be made durable; called under the book's lock,
/// so in cursor order. Implementations only queue (no I/O, no other locks).
pub trait AlertLog: Send + Sync {
    /// `alert` changed (its new image, with how many events it has had) and `event` says how.
    fn changed(&self, alert: &Alert, sequence: u32, event: &AlertEvent);
    /// The event at `cursor` fell out of the retained log.
    fn forgotten(&self, cursor: u64);
    /// The resolved alert `id` passed its retention and left the book.
    fn removed(&self, id: &str);
}

/// The alert book: every alert and the ordered log of their events.
///
/// With a log attached the book is *gated*: an event reaches watchers (the
/// live broadcast, backlogs, the NATS outbox) only once [`AlertBook::release`]
/// says the log holds it durably, so no station sees an alert a crash could
/// take back. Without one, events are released as they are made.
pub struct AlertBook {
    inner: Mutex<Book>,
    live: broadcast::Sender<AlertEvent>,
}

#[derive(Default)]
struct Book {
    alerts: HashMap<String, Alert>,
    sequence: HashMap<String, u32>,
    events: VecDeque<AlertEvent>,
    next_cursor: u64,
    /// Events up to here may be seen.
    released: u64,
    log: Option<Arc<dyn AlertLog>>,
}

impl Book {
    fn record(&mut self, kind: &'static str, alert: &Alert, now: UnixSeconds) -> AlertEvent {
        self.next_cursor += 1;
        let seq = self.sequence.entry(alert.id.clone()).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let event = AlertEvent {
            cursor: self.next_cursor,
            event_id: format!("{}:{}", alert.id, seq),
            kind,
            alert: alert.clone(),
            at: now,
        };
        self.events.push_back(event.clone());
        if let Some(log) = &self.log {
            log.changed(alert, seq, &event);
        }
        while self.events.len() > EVENT_RETENTION {
            if let (Some(old), Some(log)) = (self.events.pop_front(), &self.log) {
                log.forgotten(old.cursor);
            }
        }
        event
    }
}

pub fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::New => "new",
        AlertState::Claimed => "claimed",
        AlertState::Escalated => "escalated",
        AlertState::Resolved => "resolved",
    }
}

/// What watchers get when they resume from a cursor.
pub type EventsAfter = Backlog;

/// What watchers get when they resume from a cursor.
pub enum Backlog {
    Events(Vec<AlertEvent>),
    /// The cursor is older than the retained events.
    TooOld {
        oldest: u64,
    },
}

impl Default for AlertBook {
    fn default() -> Self {
        AlertBook::new()
    }
}

impl AlertBook {
    pub fn new() -> AlertBook {
        // Live fan-out buffer; a watcher that falls further behind re-reads the log.
        let (live, _) = broadcast::channel(4096);
        AlertBook { inner: Mutex::new(Book::default()), live }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // A panic while holding the lock cannot leave the book half-written
        // (every change is one insert and one push), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, event: AlertEvent) {
        let _ = self.live.send(event);
    }

    /// Sends every change to `log` from now on; events wait for [`AlertBook::release`].
    pub fn set_log(&self, log: Arc<dyn AlertLog>) {
        self.lock().log = Some(log);
    }

    /// The log holds every event up to `cursor`: watchers may see them now.
    pub fn release(&self, cursor: u64) {
        let events: Vec<AlertEvent> = {
            let mut book = self.lock();
            let from = book.released;
            let upto = cursor.min(book.next_cursor);
            if upto <= from {
                return;
            }
            book.released = upto;
            // The log is in cursor order: walk back only over the new events.
            let mut fresh: Vec<AlertEvent> = book
                .events
                .iter()
                .rev()
                .skip_while(|e| e.cursor > upto)
                .take_while(|e| e.cursor > from)
                .cloned()
                .collect();
            fresh.reverse();
            fresh
        };
        for e in events {
            self.publish(e);
        }
    }

    /// After an event was recorded: without a log it is released at once;
    /// with one, when the log says it is durable.
    fn recorded(&self, book: std::sync::MutexGuard<'_, Book>, cursor: u64) {
        let gated = book.log.is_some();
        drop(book);
        if !gated {
            self.release(cursor);
        }
    }

    /// Puts back alerts (with their event counts) and retained events read
    /// from the durable store, before anything else uses the book.
    pub fn restore(&self, alerts: Vec<(Alert, u32)>, mut events: Vec<AlertEvent>) {
        let mut book = self.lock();
        events.sort_by_key(|e| e.cursor);
        book.next_cursor = events.last().map_or(0, |e| e.cursor).max(book.next_cursor);
        book.released = book.next_cursor;
        for (alert, seq) in alerts {
            book.sequence.insert(alert.id.clone(), seq);
            book.alerts.insert(alert.id.clone(), alert);
        }
        book.events = events.into();
    }

    /// Takes over an alert another node made (its partition moved here):
    /// its image and event count, and its last event once more, under the same
    /// event id, so a sink that already delivered it drops the repeat and one
    /// that did not delivers it now.
    pub fn adopt(&self, alert: Alert, sequence: u32) {
        let mut book = self.lock();
        book.sequence.insert(alert.id.clone(), sequence.saturating_sub(1));
        let kind = match alert.state {
            AlertState::New => "raised",
            AlertState::Claimed => "claimed",
            AlertState::Escalated => "escalated",
            AlertState::Resolved => "resolved",
        };
        let event = book.record(kind, &alert, alert.updated_at);
        book.alerts.insert(alert.id.clone(), alert);
        self.recorded(book, event.cursor);
    }

    /// Forgets the alerts whose ids `belongs` picks (their partition is
    /// another node's now); their past events stay in the log.
    pub fn forget(&self, belongs: impl Fn(&str) -> bool) {
        let mut book = self.lock();
        book.alerts.retain(|id, _| !belongs(id));
        book.sequence.retain(|id, _| !belongs(id));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.live.subscribe()
    }

    /// Events after `cursor` for `stations`.
    pub fn backlog(&self, stations: &[String], after: u64) -> Backlog {
        self.events_matching(after, |e| e.alert.visible_to(stations))
    }

    /// Every event after `cursor`, whatever the station (the NATS outbox).
    pub fn events_after(&self, after: u64) -> EventsAfter {
        self.events_matching(after, |_| true)
    }

    fn events_matching(&self, after: u64, keep: impl Fn(&AlertEvent) -> bool) -> Backlog {
        let book = self.lock();
        let oldest = book.events.front().map_or(book.released + 1, |e| e.cursor);
        if after + 1 < oldest && after < book.released {
            return Backlog::TooOld { oldest };
        }
        let released = book.released;
        Backlog::Events(
            book.events.iter().filter(|e| e.cursor > after && e.cursor <= released && keep(e)).cloned().collect(),
        )
    }

    /// The cursor of the newest event watchers may see (0 before the first).
    pub fn last_cursor(&self) -> u64 {
        self.lock().released
    }

    pub fn raise(&self, alert: Alert) -> AlertEvent {
        let mut book = self.lock();
        let event = book.record("raised", &alert, alert.created_at);
        book.alerts.insert(alert.id.clone(), alert);
        self.recorded(book, event.cursor);
        event
    }

    pub fn get(&self, id: &str) -> Option<Alert> {
        self.lock().alerts.get(id).cloned()
    }

    /// One page of the alerts that pass the filters, newest first (by
    /// creation time, then id), starting after `after` (the last alert of the
    /// previous page); and whether more follow.
    pub fn list(
        &self,
        stations: &[String],
        states: &[AlertState],
        created: (Option<UnixSeconds>, Option<UnixSeconds>),
        after: Option<(UnixSeconds, &str)>,
        limit: usize,
    ) -> (Vec<Alert>, bool) {
        let book = self.lock();
        let mut v: Vec<Alert> = book
            .alerts
            .values()
            .filter(|a| stations.is_empty() || a.visible_to(stations))
            .filter(|a| states.is_empty() || states.contains(&a.state))
            .filter(|a| created.0.is_none_or(|t| a.created_at >= t) && created.1.is_none_or(|t| a.created_at < t))
            .filter(|a| after.is_none_or(|(at, id)| (a.created_at, a.id.as_str()) < (at, id)))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let more = v.len() > limit;
        v.truncate(limit);
        (v, more)
    }

    fn change(
        &self,
        id: &str,
        kind: &'static str,
        now: UnixSeconds,
        f: impl FnOnce(&mut Alert) -> Result<(), AlertError>,
    ) -> Result<Alert, AlertError> {
        let mut book = self.lock();
        let alert = book.alerts.get_mut(id).ok_or_else(|| AlertError::NotFound(id.to_string()))?;
        f(alert)?;
        alert.updated_at = now;
        let alert = alert.clone();
        let event = book.record(kind, &alert, now);
        self.recorded(book, event.cursor);
        Ok(alert)
    }

    pub fn claim(&self, id: &str, officer: &str, now: UnixSeconds) -> Result<Alert, AlertError> {
        self.change(id, "claimed", now, |a| match a.state {
            AlertState::New | AlertState::Escalated => {
                a.state = AlertState::Claimed;
                a.officer_id = Some(officer.to_string());
                Ok(())
            }
            AlertState::Claimed if a.officer_id.as_deref() == Some(officer) => Ok(()),
            s => Err(AlertError::Conflict { id: a.id.clone(), state: state_name(s), why: "it cannot be claimed" }),
        })
    }

    /// Resolves an alert. The caller decides whether a hold decision applies
    /// (only while the transfer is still held).
    pub fn resolve(
        &self,
        id: &str,
        officer: &str,
        outcome: Outcome,
        decision: Option<HoldDecision>,
        note: &str,
        now: UnixSeconds,
    ) -> Result<Alert, AlertError> {
        self.change(id, "resolved", now, |a| {
            if a.state == AlertState::Resolved {
                return Err(AlertError::Conflict {
                    id: a.id.clone(),
                    state: "resolved",
                    why: "it cannot change again",
                });
            }
            a.state = AlertState::Resolved;
            a.officer_id = Some(officer.to_string());
            a.outcome = Some(outcome);
            if decision.is_some() {
                a.hold_decision = decision;
            }
            a.awaiting_decision = false;
            a.note = note.to_string();
            Ok(())
        })
    }

    /// The hold behind this alert expired: the transfer no longer waits on it.
    pub fn hold_expired(&self, id: &str, decision: HoldDecision, now: UnixSeconds) -> Result<Alert, AlertError> {
        self.change(id, "expired", now, |a| {
            if !a.awaiting_decision {
                return Err(AlertError::Conflict {
                    id: a.id.clone(),
                    state: state_name(a.state),
                    why: "no hold waits on it",
                });
            }
            a.awaiting_decision = false;
            a.hold_decision = Some(decision);
            Ok(())
        })
    }

    /// Escalates every NEW alert past its claim deadline; returns them.
    pub fn escalate_overdue(&self, routing: &Routing, now: UnixSeconds) -> Vec<Alert> {
        let overdue: Vec<String> = self
            .lock()
            .alerts
            .values()
            .filter(|a| a.state == AlertState::New && a.claim_deadline <= now)
            .map(|a| a.id.clone())
            .collect();
        overdue
            .into_iter()
            .filter_map(|id| {
                self.change(&id, "escalated", now, |a| {
                    if a.state != AlertState::New {
                        return Err(AlertError::Conflict { id: a.id.clone(), state: state_name(a.state), why: "" });
                    }
                    a.state = AlertState::Escalated;
                    a.escalation_station_id = routing
                        .stations
                        .get(&a.station_id)
                        .and_then(|s| s.escalate_to.clone())
                        .or_else(|| Some(routing.default_station.clone()))
                        .filter(|e| *e != a.station_id);
                    Ok(())
                })
                .ok()
            })
            .collect()
    }

    /// How many alerts each station has in each state (for the metrics gauge).
    /// Forgets what is older than `before`: resolved alerts last changed
    /// before it (with their event counts), and released events made before it
    /// (from the front of the log, so cursors stay contiguous). Open alerts stay
    /// whatever their age. Returns how many alerts left.
    pub fn forget_before(&self, before: UnixSeconds) -> usize {
        let mut book = self.lock();
        let old: Vec<String> = book
            .alerts
            .values()
            .filter(|a| a.state == AlertState::Resolved && a.updated_at < before)
            .map(|a| a.id.clone())
            .collect();
        for id in &old {
            book.alerts.remove(id);
            book.sequence.remove(id);
            if let Some(log) = &book.log {
                log.removed(id);
            }
        }
        while book.events.front().is_some_and(|e| e.at < before && e.cursor <= book.released) {
            let event = book.events.pop_front().expect("front exists");
            if let Some(log) = &book.log {
                log.forgotten(event.cursor);
            }
        }
        old.len()
    }

    /// The retained events of one alert, oldest first.
    pub fn history(&self, id: &str) -> Vec<AlertEvent> {
        self.lock().events.iter().filter(|e| e.alert.id == id).cloned().collect()
    }

    /// The alert with this id, or the one raised for this transfer request id.
    pub fn find(&self, id_or_request: &str) -> Option<Alert> {
        let book = self.lock();
        book.alerts
            .get(id_or_request)
            .or_else(|| book.alerts.values().find(|a| a.transfer.request_id == id_or_request))
            .cloned()
    }

    /// How many alerts fall under each key `key` gives (alerts it gives none for are left out).
    pub fn tally<K: Ord>(&self, key: impl Fn(&Alert) -> Option<K>) -> std::collections::BTreeMap<K, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for k in self.lock().alerts.values().filter_map(key) {
            *counts.entry(k).or_insert(0) += 1;
        }
        counts
    }

    /// How many events the log holds now.
    pub fn retained_events(&self) -> usize {
        self.lock().events.len()
    }

    pub fn counts(&self) -> HashMap<(String, AlertState), usize> {
        let mut counts = HashMap::new();
        for a in self.lock().alerts.values() {
            *counts.entry((a.station_id.clone(), a.state)).or_insert(0) += 1;
        }
        counts
    }

    pub fn len(&self) -> usize {
        self.lock().alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIONS: &str = r#"
default_station = "city-centre"

[[station]]
id = "zhongshan-ps"
name = "中山派出所"
branches = ["psbc-heshan-zhongshan"]
escalate_to = "city-centre"
claim_deadline = "10m"

[[station]]
id = "city-centre"
name = "反诈中心"
claim_deadline = "15m"
"#;

    #[test]
    fn routes_branches_and_falls_back_to_the_default() {
        let r = Routing::parse("stations.toml", STATIONS).unwrap();
        assert_eq!(r.route("psbc-heshan-zhongshan").0.id, "zhongshan-ps");
        let (s, fallback) = r.route("unknown-branch");
        assert_eq!((s.id.as_str(), fallback), ("city-centre", true));
    }

    #[test]
    fn routing_errors_have_locations() {
        let bad = STATIONS.replace("escalate_to = \"city-centre\"", "escalate_to = \"nowhere\"");
        let e = Routing::parse("stations.toml", &bad).unwrap_err();
        assert_eq!(e[0].location(), "stations.toml:8:15");
        assert!(e[0].message.contains("unknown station `nowhere`"));
    }
}
