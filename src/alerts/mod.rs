//! The police side: routing (bank branch → police station), alerts and their
//! lifecycle (NEW → CLAIMED → RESOLVED, or ESCALATED when nobody claims one by
//! its deadline), and an ordered event log with cursors that station watchers
//! stream from and resume with.
//!
//! Alert times run on the server's clock (an officer's deadline is real time),
//! passed in as `now`. Must not decide transfers (the service does) or know tonic.

mod routing;

pub use routing::{Routing, Station};

use crate::model::{Action, Channel, FullAccount, Hit, Observations, UnixSeconds};
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
    /// The payee's full account: what the station's watchlist entry is made
    /// of when an officer confirms the fraud. Never in the officer's view
    /// (the summary has it masked) nor in a log (its `Debug` masks it).
    pub payee_account: FullAccount,
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
    pub origin: Origin,
}

/// Where an event in this node's log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made here.
    Here,
    /// The clustered mode: a copy of an event another node made (its
    /// partition is theirs), for this node's watchers; never delivered or
    /// logged from here.
    Copied,
    /// Made here, but the cluster's journal refused the change (its
    /// partition had a new owner): nobody ever sees it.
    Withdrawn,
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
            origin: Origin::Here,
        };
        if let Some(log) = &self.log {
            log.changed(alert, seq, &event);
        }
        self.push(event.clone());
        event
    }

    fn push(&mut self, event: AlertEvent) {
        self.events.push_back(event);
        while self.events.len() > EVENT_RETENTION {
            if let (Some(old), Some(log)) = (self.events.pop_front(), &self.log) {
                log.forgotten(old.cursor);
            }
        }
    }

    /// Past `upto`, the run of copied (and withdrawn) events that may be
    /// released with it (they wait for no log of this node's).
    fn settled_after(&self, upto: u64) -> u64 {
        let Some(front) = self.events.front().map(|e| e.cursor) else { return upto };
        let mut upto = upto;
        while upto >= front.saturating_sub(1)
            && self.events.get((upto + 1 - front) as usize).is_some_and(|e| e.origin != Origin::Here)
        {
            upto += 1;
        }
        upto
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
            let upto = book.settled_after(cursor.min(book.next_cursor));
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
                .filter(|e| e.origin != Origin::Withdrawn)
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

    /// The clustered mode: applies `event`, made by the node that owns the
    /// alert's partition, to this node's copy of the book, so officers see
    /// every alert on any node. A copy older than the one held (a late
    /// delivery from a deposed owner, a replay) changes nothing. The event
    /// gets a cursor of this node's log, marked copied. Returns whether it applied.
    pub fn mirror(&self, event: AlertEvent) -> bool {
        let Some(seq) = event.event_id.rsplit_once(':').and_then(|(_, n)| n.parse::<u32>().ok()) else {
            return false;
        };
        let mut book = self.lock();
        if book.sequence.get(&event.alert.id).is_some_and(|&held| held >= seq) {
            return false;
        }
        book.sequence.insert(event.alert.id.clone(), seq);
        book.alerts.insert(event.alert.id.clone(), event.alert.clone());
        book.next_cursor += 1;
        let cursor = book.next_cursor;
        book.push(AlertEvent { cursor, origin: Origin::Copied, ..event });
        // Seen now if everything before it is; otherwise with the event it waits behind.
        let seen = book.released + 1 == cursor;
        drop(book);
        if seen {
            self.release(cursor);
        }
        true
    }

    /// The clustered mode: a node whose log is empty numbers its events from
    /// a place of its own (from its name), so a cursor one node gave is
    /// never another node's: resumed elsewhere, it is refused, not misread.
    pub fn number_from_node(&self, node: &str) {
        // FNV-1a: stable across builds and platforms.
        let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let base = ((hash & 0xffff) + 1) << 40;
        let mut book = self.lock();
        if book.events.is_empty() && book.next_cursor < base {
            book.next_cursor = base;
            book.released = base;
        }
    }

    /// The clustered mode: the cluster's journal refused the changes of the
    /// alerts `refused` picks among the events up to `upto` not yet
    /// released (their partition had a new owner): those events are
    /// withdrawn — no watcher or sink ever sees them — and their alerts
    /// leave this node's book (the owner's events bring them back as copies).
    /// Returns how many events were withdrawn.
    pub fn withdraw(&self, upto: u64, refused: impl Fn(&str) -> bool) -> usize {
        let mut book = self.lock();
        let from = book.released;
        let mut gone = Vec::new();
        for e in book.events.iter_mut().rev().skip_while(|e| e.cursor > upto).take_while(|e| e.cursor > from) {
            if e.origin == Origin::Here && refused(&e.alert.id) {
                e.origin = Origin::Withdrawn;
                gone.push(e.alert.id.clone());
            }
        }
        for id in &gone {
            book.alerts.remove(id);
            book.sequence.remove(id);
        }
        gone.len()
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
        // Cursor 0: from the oldest event retained.
        let after = if after == 0 { oldest - 1 } else { after };
        if after + 1 < oldest && after < book.released {
            return Backlog::TooOld { oldest };
        }
        let released = book.released;
        Backlog::Events(
            book.events
                .iter()
                .filter(|e| e.cursor > after && e.cursor <= released && e.origin != Origin::Withdrawn && keep(e))
                .cloned()
                .collect(),
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
        self.lock().events.iter().filter(|e| e.alert.id == id && e.origin != Origin::Withdrawn).cloned().collect()
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

    fn alert(id: &str, state: AlertState, at: UnixSeconds) -> Alert {
        Alert {
            id: id.into(),
            station_id: "zhongshan-ps".into(),
            escalation_station_id: None,
            state,
            action: Action::Hold,
            score: 80,
            hits: Vec::new(),
            ruleset_version: "v1".into(),
            transfer: TransferSummary {
                request_id: format!("req-{id}"),
                amount: 1_000_000,
                currency: "CNY".into(),
                channel: Channel::Counter,
                bank_id: "psbc".into(),
                branch_id: "psbc-heshan-zhongshan".into(),
                teller_id: "t-07".into(),
                customer_age_band: "55-64",
                customer_account_masked: "6217****7777".into(),
                payee_account_masked: "6222****3344".into(),
                payee_name_masked: "王*".into(),
                payee_bank_code: "ICBC".into(),
                memo: String::new(),
                observations: Observations::default(),
            },
            created_at: at,
            claim_deadline: at + 600,
            officer_id: None,
            outcome: None,
            hold_decision: None,
            note: String::new(),
            updated_at: at,
            awaiting_decision: true,
            payee_account: FullAccount("6222020000003344".into()),
        }
    }

    /// Another node's event for `a`, its `seq`th.
    fn theirs(kind: StaticName, a: &Alert, seq: u32) -> AlertEvent {
        AlertEvent {
            cursor: 77,
            event_id: format!("{}:{seq}", a.id),
            kind,
            alert: a.clone(),
            at: a.updated_at,
            origin: Origin::Here,
        }
    }

    #[test]
    fn another_nodes_events_are_copied_in_order_and_an_older_copy_changes_nothing() {
        let book = AlertBook::new();
        let mut watcher = book.subscribe();
        let raised = alert("al-p3-n2-1-000001", AlertState::New, 100);
        let mut claimed = raised.clone();
        claimed.state = AlertState::Claimed;
        claimed.officer_id = Some("officer-li".into());
        assert!(book.mirror(theirs("raised", &raised, 1)));
        assert!(book.mirror(theirs("claimed", &claimed, 2)));
        // A late copy of the first event (a deposed owner's delivery, a replay).
        assert!(!book.mirror(theirs("raised", &raised, 1)));
        assert_eq!(book.get(&raised.id).unwrap().state, AlertState::Claimed);
        let seen: Vec<(u64, &str, Origin)> =
            std::iter::from_fn(|| watcher.try_recv().ok()).map(|e| (e.cursor, e.kind, e.origin)).collect();
        let copied = Origin::Copied;
        assert_eq!(seen, vec![(1, "raised", copied), (2, "claimed", copied)], "this node's cursors, marked copied");
        assert!(!book.mirror(AlertEvent { event_id: "no-sequence".into(), ..theirs("raised", &raised, 9) }));
    }

    struct Holding;
    impl AlertLog for Holding {
        fn changed(&self, _: &Alert, _: u32, _: &AlertEvent) {}
        fn forgotten(&self, _: u64) {}
        fn removed(&self, _: &str) {}
    }

    #[test]
    fn a_copied_event_waits_behind_this_nodes_event_not_yet_durable() {
        let book = AlertBook::new();
        book.set_log(Arc::new(Holding));
        let mine = book.raise(alert("al-p1-n1-1-000001", AlertState::New, 100));
        assert!(book.mirror(theirs("raised", &alert("al-p2-n2-1-000001", AlertState::New, 101), 1)));
        assert_eq!(book.last_cursor(), 0, "neither is seen before this node's event is durable");
        book.release(mine.cursor);
        assert_eq!(book.last_cursor(), 2, "the copy behind it is seen with it");
        // With nothing waiting, a copy is seen at once.
        assert!(book.mirror(theirs("raised", &alert("al-p2-n2-1-000002", AlertState::New, 102), 1)));
        assert_eq!(book.last_cursor(), 3);
        match book.events_after(0) {
            Backlog::Events(e) => {
                assert_eq!(
                    e.iter().map(|e| e.origin).collect::<Vec<_>>(),
                    [Origin::Here, Origin::Copied, Origin::Copied]
                )
            }
            Backlog::TooOld { .. } => panic!("nothing forgotten"),
        }
    }

    #[test]
    fn events_the_journal_refused_are_withdrawn_and_nobody_sees_them() {
        let book = AlertBook::new();
        book.set_log(Arc::new(Holding));
        let mut watcher = book.subscribe();
        let kept = book.raise(alert("al-p1-n1-1-000001", AlertState::New, 100));
        let refused = book.raise(alert("al-p2-n1-1-000002", AlertState::New, 100));
        let n = book.withdraw(refused.cursor, |id| partition_of_id(id) == Some(2));
        assert_eq!(n, 1);
        book.release(refused.cursor);
        assert_eq!(book.last_cursor(), refused.cursor, "the log moves past it");
        let seen: Vec<String> = std::iter::from_fn(|| watcher.try_recv().ok()).map(|e| e.alert.id).collect();
        assert_eq!(seen, vec![kept.alert.id.clone()]);
        match book.events_after(0) {
            Backlog::Events(e) => assert_eq!(e.iter().map(|e| e.cursor).collect::<Vec<_>>(), [kept.cursor]),
            Backlog::TooOld { .. } => panic!("nothing forgotten"),
        }
        assert!(book.get(&refused.alert.id).is_none(), "its alert is not this node's to show");
        assert!(book.get(&kept.alert.id).is_some());
        // Released events are not withdrawn afterwards.
        assert_eq!(book.withdraw(refused.cursor, |_| true), 0);
    }
}
