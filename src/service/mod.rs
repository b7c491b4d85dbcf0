//! The application: one [`TransferGuard`] ties the ruleset, state, alerts and
//! transfer statuses together and enforces what the API promises —
//! idempotent screens and events, per-customer serialisation, history that
//! counts only what went out (ALLOW/WARN unless cancelled, HOLD once released,
//! never BLOCK), and the hold loop (officer's decision or expiry).
//!
//! Speaks domain types only; the `api` module maps the wire onto it. Must not
//! block on I/O while holding a lock, or read rules from disk on the hot path.

mod audit_trail;
mod housekeeping;
mod partitions;
mod recovery;
mod reload;
mod remembered;

pub use reload::{load_checked, Approval, ApprovalError};

use audit_trail::{decision_record, summary};
pub use recovery::Recovered;

use crate::alerts::{
    Alert, AlertBook, AlertError, AlertEvent, AlertState, HoldDecision, Outcome, Routing, TransferSummary,
};
use crate::audit::{AuditLog, AuditRecord};
pub use crate::auth::Caller;
use crate::clock::{Clock, SystemClock};
use crate::engine::{self, Evaluation};
use crate::lifecycle::{History, TransferEvent};
use crate::model::{age_band, mask_account, mask_name, Action, Decision, LimitChange, Payee, Transfer, UnixSeconds};
use crate::rules::{Diagnostic, ExpiryAction, Ruleset};
use crate::ruletest;
use crate::state::{State, TransferRecord, WatchEntry};
use crate::store::{Space, Store, StoreError, StoredAlert, StoredTransfer};
use crate::telemetry::Metrics;
use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub use crate::lifecycle::TransferState;
use remembered::{Names, Remembered, TransferKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStatus {
    pub request_id: String,
    /// The bank that screened it: only its tellers may follow it.
    pub bank_id: String,
    pub state: TransferState,
    pub action: Action,
    pub alert_id: Option<String>,
    pub station_id: Option<String>,
    pub hold_expires_at: Option<UnixSeconds>,
    pub outcome: Option<Outcome>,
    pub officer_id: Option<String>,
    pub note: String,
    pub updated_at: UnixSeconds,
}

/// The answer to a screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screened {
    pub request_id: String,
    pub decision: Decision,
    pub alert_id: Option<String>,
    pub station_id: Option<String>,
    pub hold_expires_at: Option<UnixSeconds>,
}

/// A customer event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerEvent {
    LimitChanged { customer_id: String, change: LimitChange },
    PayeeAdded { customer_id: String, payee: Payee, added_at: UnixSeconds },
    TransferExecuted { request_id: String },
    TransferCancelled { request_id: String },
}

impl CustomerEvent {
    /// The screened transfer the event is about, if any.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CustomerEvent::TransferExecuted { request_id } | CustomerEvent::TransferCancelled { request_id } => {
                Some(request_id)
            }
            CustomerEvent::LimitChanged { .. } | CustomerEvent::PayeeAdded { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("request_id `{0}` was already used for a different request")]
    RequestIdReused(String),
    #[error("event_id `{0}` was already used for a different event")]
    EventIdReused(String),
    #[error("no transfer with request_id `{0}`")]
    UnknownTransfer(String),
    #[error("transfer `{id}` is {state}; it cannot be {what}")]
    TransferFinal { id: String, state: &'static str, what: &'static str },
    #[error(transparent)]
    Alert(#[from] AlertError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("currency `{0}` has no rate in the running ruleset, so its amount cannot be compared with the rules' (the analysts add one under [ruleset.rates])")]
    NoRate(String),
}

/// Result of a reload: the version in force and the errors, if it was refused.
#[derive(Debug, Clone)]
pub struct Reload {
    pub reloaded: bool,
    pub version: String,
    pub errors: Vec<String>,
}

/// Refuses a transfer whose amount the ruleset cannot bring to its own currency.
fn priced(ruleset: &Ruleset, transfer: &Transfer) -> Result<(), ServiceError> {
    match ruleset.in_base(transfer.amount, &transfer.currency) {
        Some(_) => Ok(()),
        None => Err(ServiceError::NoRate(transfer.currency.clone())),
    }
}

/// How long request and event ids are remembered for idempotent retries (and
/// transfer statuses kept for GetTransfer). Held transfers are kept until decided.
pub const IDEMPOTENCY_SECS: i64 = 48 * 3600;
/// How often old ids, statuses and window entries are pruned.
const PRUNE_EVERY_SECS: i64 = 60;

/// How many stripes serialise per-customer screening (snapshot, decide, apply
/// as one step). Different customers in different stripes never wait on each
/// other. Lock order: stripe, then a `screens` entry, then state's maps, then
/// the alert book, then `holds`; paths that start at a `screens` entry never
/// take a stripe.
const CUSTOMER_STRIPES: usize = 1024;

pub struct TransferGuard {
    rules_dir: PathBuf,
    ruleset: ArcSwap<Ruleset>,
    routing: ArcSwap<Routing>,
    state: State,
    alerts: Arc<AlertBook>,
    /// Every transfer screened in the idempotency window (and every one still held).
    screens: DashMap<TransferKey, Remembered>,
    /// Bank ids and ruleset versions the remembered transfers share.
    names: Names,
    /// The status channels of transfers someone is watching.
    watchers: DashMap<TransferKey, watch::Sender<TransferStatus>>,
    /// event id → (fingerprint, recorded at).
    events: DashMap<String, (u64, UnixSeconds)>,
    last_prune: AtomicU64,
    /// (expires at, request id) of every transfer still held.
    holds: Mutex<BTreeSet<(UnixSeconds, String)>>,
    customer_stripes: Box<[Mutex<()>]>,
    alert_counter: AtomicU64,
    /// In the clustered mode: this node's id and the number of partitions,
    /// which alert ids carry.
    cluster_ids: std::sync::OnceLock<(String, u16)>,
    started_at: UnixSeconds,
    metrics: Arc<Metrics>,
    audit: Option<AuditLog>,
    store: Option<Arc<Store>>,
    recovered: Recovered,
    /// The server's time: hold expiry, claim deadlines, idempotency windows.
    clock: Arc<dyn Clock>,
    /// Resolved alerts, and alert events, leave memory and the store this long after.
    alert_retention_secs: i64,
    /// Whether a reload goes live or waits for a second analyst.
    approval: reload::Approval,
    proposal: Mutex<Option<reload::Proposal>>,
    /// In the clustered mode a tested ruleset waits here until every node has
    /// loaded it (`cluster` then calls [`Self::activate_staged`]).
    staged: Mutex<Option<(Ruleset, Routing)>>,
    /// The store could not commit within the bound (`committed_within`).
    degraded: std::sync::atomic::AtomicBool,
    /// When the last reload ran and what it did (None: none since start).
    last_reload: Mutex<Option<(UnixSeconds, Reload)>>,
}

/// Whether a change reached the disk within the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    Durable,
    /// Not yet on disk; queued in memory, written when the store recovers.
    Stalled,
}

/// While degraded, how long a call waits to see whether the store recovered.
const DEGRADED_PROBE: std::time::Duration = std::time::Duration::from_millis(5);

/// How long resolved alerts and alert events are kept by default: 30 days.
pub const DEFAULT_ALERT_RETENTION_SECS: i64 = 30 * 86_400;

pub use crate::clock::wall_clock;

fn stripe_of(customer_id: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(customer_id) as usize % CUSTOMER_STRIPES
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here can panic half-way through a change, so poison is harmless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TransferGuard {
    pub fn new(rules_dir: PathBuf, ruleset: Ruleset, routing: Routing) -> TransferGuard {
        TransferGuard {
            rules_dir,
            ruleset: ArcSwap::from_pointee(ruleset),
            routing: ArcSwap::from_pointee(routing),
            state: State::new(),
            alerts: Arc::new(AlertBook::new()),
            screens: crate::state::large_map(),
            names: Names::default(),
            watchers: DashMap::new(),
            events: crate::state::large_map(),
            last_prune: AtomicU64::new(0),
            holds: Mutex::new(BTreeSet::new()),
            customer_stripes: (0..CUSTOMER_STRIPES).map(|_| Mutex::new(())).collect(),
            alert_counter: AtomicU64::new(0),
            cluster_ids: std::sync::OnceLock::new(),
            started_at: SystemClock.now(),
            metrics: Arc::new(Metrics::new()),
            audit: None,
            store: None,
            recovered: Recovered::default(),
            clock: Arc::new(SystemClock),
            alert_retention_secs: DEFAULT_ALERT_RETENTION_SECS,
            approval: reload::Approval::Automatic,
            proposal: Mutex::new(None),
            staged: Mutex::new(None),
            degraded: std::sync::atomic::AtomicBool::new(false),
            last_reload: Mutex::new(None),
        }
        .with_ruleset_metric()
    }

    /// Keeps resolved alerts and alert events for `secs` after their last change.
    pub fn with_alert_retention(mut self, secs: i64) -> Self {
        self.alert_retention_secs = secs;
        self
    }

    /// How long resolved alerts and alert events are kept after their last change.
    pub fn alert_retention_secs(&self) -> i64 {
        self.alert_retention_secs
    }

    /// Reads the time from `clock` from now on (tests advance one).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.started_at = clock.now();
        self.clock = clock;
        self
    }

    /// The server's time now.
    pub fn now(&self) -> UnixSeconds {
        self.clock.now()
    }

    /// Writes the audit trail to `audit` from now on.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        let version = self.ruleset.load().version.to_string();
        audit.record(&Caller::Service, AuditRecord::Ruleset { at: self.now(), version, loaded: true, errors: 0 });
        self.audit = Some(audit);
        self
    }

    /// Waits until every change made so far is durable (at once without a store).
    /// Called before answering a request that changed something.
    pub async fn committed(&self) -> Result<(), ServiceError> {
        match &self.store {
            Some(store) => Ok(store.wait(store.queued()).await?),
            None => Ok(()),
        }
    }

    /// [`Self::committed`], but no longer than `bound`: past it the store is
    /// degraded (a stalled or full disk) and this says so at once, until a
    /// commit completes again. While degraded, a call waits only a moment.
    pub async fn committed_within(&self, bound: std::time::Duration) -> Result<Commit, ServiceError> {
        let Some(store) = &self.store else { return Ok(Commit::Durable) };
        let seq = store.queued();
        let degraded = self.degraded.load(Ordering::Relaxed);
        let bound = if degraded { bound.min(DEGRADED_PROBE) } else { bound };
        match tokio::time::timeout(bound, store.wait(seq)).await {
            Ok(result) => {
                result?;
                if degraded && self.degraded.swap(false, Ordering::Relaxed) {
                    self.set_degraded(false, "the store commits again");
                }
                Ok(Commit::Durable)
            }
            Err(_) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    self.set_degraded(true, &format!("no commit within {} ms", bound.as_millis()));
                }
                Ok(Commit::Stalled)
            }
        }
    }

    fn set_degraded(&self, degraded: bool, why: &str) {
        self.metrics.degraded.set(degraded as i64);
        if degraded {
            tracing::error!(why, "store degraded: screens get the fail mode until it commits again");
        } else {
            tracing::warn!(why, "store recovered: screens answered normally again");
        }
        self.audit(&Caller::Service, || AuditRecord::Degraded { at: self.now(), degraded, why: why.to_string() });
    }

    /// True while the store cannot commit in time.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn with_ruleset_metric(self) -> Self {
        self.metrics.set_ruleset(&self.ruleset.load().version);
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Refreshes the gauges read from state (before a scrape).
    pub fn refresh_gauges(&self) {
        let sizes = self.state.sizes();
        self.metrics.state_size.with_label_values(&["customers"]).set(sizes.customers as i64);
        self.metrics.state_size.with_label_values(&["payees"]).set(sizes.payees as i64);
        self.metrics.state_size.with_label_values(&["first_seen_accounts"]).set(sizes.first_seen as i64);
        self.metrics.state_size.with_label_values(&["watchlist"]).set(sizes.watchlist as i64);
        self.metrics.state_size.with_label_values(&["alerts"]).set(self.alerts.len() as i64);
        self.metrics.state_size.with_label_values(&["transfers"]).set(self.screens.len() as i64);
        self.metrics.alerts_by_state.reset();
        for ((station, state), n) in self.alerts.counts() {
            self.metrics.alerts_by_state.with_label_values(&[&station, crate::alerts::state_name(state)]).set(n as i64);
        }
    }

    /// In the clustered mode: alert ids name the customer's partition (of
    /// `partitions`) and this node.
    pub fn set_cluster_ids(&self, node: &str, partitions: u16) {
        let _ = self.cluster_ids.set((node.to_string(), partitions));
        self.alerts.number_from_node(node);
    }

    /// Loads and tests the rules folder, then builds the service.
    pub fn open(rules_dir: &Path) -> Result<TransferGuard, Vec<String>> {
        let (ruleset, routing) = load_checked(rules_dir)?;
        Ok(TransferGuard::new(rules_dir.to_path_buf(), ruleset, routing))
    }

    pub fn rules_dir(&self) -> &Path {
        &self.rules_dir
    }

    pub fn ruleset(&self) -> Arc<Ruleset> {
        self.ruleset.load_full()
    }

    /// The local time of the branches (the ruleset's), without taking a
    /// reference on the ruleset: read on every request.
    pub fn utc_offset(&self) -> time::UtcOffset {
        self.ruleset.load().utc_offset
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// When this process started serving (the server's clock).
    pub fn started_at(&self) -> UnixSeconds {
        self.started_at
    }

    /// Branch → station routing in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.load_full()
    }

    /// When the last reload ran and what it did; None when none ran since start.
    pub fn last_reload(&self) -> Option<(UnixSeconds, Reload)> {
        lock(&self.last_reload).clone()
    }

    pub fn alerts(&self) -> &AlertBook {
        &self.alerts
    }

    /// Screens a transfer; `fingerprint` identifies the request body for idempotency.
    pub fn screen(&self, transfer: &Transfer, fingerprint: u64, by: &Caller) -> Result<Screened, ServiceError> {
        let key = TransferKey::of(&transfer.request_id);
        if let Some(done) = self.replay(key, &transfer.request_id, fingerprint)? {
            return Ok(done);
        }
        let started = std::time::Instant::now();
        let _customer = lock(&self.customer_stripes[stripe_of(&transfer.customer.customer_id)]);
        let ruleset = self.ruleset.load();
        priced(&ruleset, transfer)?;
        let evaluation = engine::screen(&ruleset, transfer, &self.state);
        self.metrics.observe_screen(evaluation.decision.action, started.elapsed().as_secs_f64());
        for hit in &evaluation.decision.hits {
            let mode = if hit.shadow { "shadow" } else { "active" };
            self.metrics.rule_hits.with_label_values(&[hit.rule_id(), mode]).inc();
            if !hit.text.typology.is_empty() {
                self.metrics.typology_hits.with_label_values(&[&hit.text.typology, mode]).inc();
            }
        }
        match self.screens.entry(key) {
            Entry::Occupied(e) => {
                // The same id raced in from another customer's stripe.
                let entry = e.get();
                if entry.fingerprint == fingerprint {
                    Ok(entry.answer(&self.names, &transfer.request_id))
                } else {
                    Err(ServiceError::RequestIdReused(transfer.request_id.clone()))
                }
            }
            Entry::Vacant(slot) => {
                let (entry, answer) = self.settle(&ruleset, transfer, evaluation, fingerprint, by);
                self.log_screened(key, &entry, &answer);
                slot.insert(entry);
                self.audit(by, || decision_record(transfer, &answer));
                Ok(answer)
            }
        }
    }

    fn replay(&self, key: TransferKey, request_id: &str, fingerprint: u64) -> Result<Option<Screened>, ServiceError> {
        match self.screens.get(&key) {
            Some(e) if e.fingerprint == fingerprint => Ok(Some(e.answer(&self.names, request_id))),
            Some(_) => Err(ServiceError::RequestIdReused(request_id.to_string())),
            None => Ok(None),
        }
    }

    /// Applies a fresh decision: counts the transfer, or raises its alert.
    fn settle(
        &self,
        ruleset: &Ruleset,
        transfer: &Transfer,
        evaluation: Evaluation,
        fingerprint: u64,
        by: &Caller,
    ) -> (Remembered, Screened) {
        let now = self.now();
        let Evaluation { decision, record, customer_age } = evaluation;
        let mut answer = Screened {
            request_id: transfer.request_id.clone(),
            decision,
            alert_id: None,
            station_id: None,
            hold_expires_at: None,
        };
        let screened = TransferState::screened(answer.decision.action);
        let state = screened.to;
        self.change_history(screened.history, &record);
        if answer.decision.action.raises_alert() {
            self.state.record_stopped(&record.customer_id, record.at);
            let routing = self.routing.load();
            let (station, fallback) = routing.route(&transfer.branch_id);
            if fallback {
                self.metrics.unrouted_branches.inc();
                tracing::warn!(branch = %transfer.branch_id, station = %station.id, "branch has no station mapping; alert sent to the default station");
            }
            self.metrics.alerts.with_label_values(&[&station.id, "raised"]).inc();
            let n = self.alert_counter.fetch_add(1, Ordering::Relaxed) + 1;
            let id = match self.cluster_ids.get() {
                Some((node, partitions)) => {
                    let partition = crate::state::partition_of(&transfer.customer.customer_id, *partitions);
                    crate::alerts::partitioned_id(partition, node, self.started_at, n)
                }
                None => format!("al-{:x}-{:06x}", self.started_at, n),
            };
            let held = answer.decision.action == Action::Hold;
            if held {
                let expires = now + ruleset.hold.expiry_secs;
                answer.hold_expires_at = Some(expires);
                lock(&self.holds).insert((expires, transfer.request_id.clone()));
            }
            let event = self.alerts.raise(Alert {
                id: id.clone(),
                station_id: station.id.clone(),
                escalation_station_id: None,
                state: AlertState::New,
                action: answer.decision.action,
                score: answer.decision.score,
                hits: answer.decision.hits.iter().filter(|h| !h.shadow).cloned().collect(),
                ruleset_version: answer.decision.ruleset_version.to_string(),
                transfer: summary(transfer, customer_age),
                created_at: now,
                claim_deadline: now + station.claim_deadline_secs,
                officer_id: None,
                outcome: None,
                hold_decision: None,
                note: String::new(),
                updated_at: now,
                awaiting_decision: held,
                payee_account: crate::model::FullAccount(transfer.payee.account.clone()),
            });
            self.audit_alert(by, "raised", &event.alert);
            answer.alert_id = Some(id);
            answer.station_id = Some(station.id.clone());
        }
        let entry = Remembered::new(&self.names, &transfer.bank_id, &answer, record, state, now);
        (entry.with_fingerprint(fingerprint), answer)
    }

    /// Screens without touching state or raising alerts.
    pub fn dry_run(&self, transfer: &Transfer) -> Result<Screened, ServiceError> {
        let ruleset = self.ruleset.load();
        priced(&ruleset, transfer)?;
        let evaluation = engine::screen(&ruleset, transfer, &self.state);
        Ok(Screened {
            request_id: transfer.request_id.clone(),
            decision: evaluation.decision,
            alert_id: None,
            station_id: None,
            hold_expires_at: None,
        })
    }

    pub fn transfer_status(&self, request_id: &str) -> Result<TransferStatus, ServiceError> {
        self.screens
            .get(&TransferKey::of(request_id))
            .map(|e| e.status(&self.names, request_id))
            .ok_or_else(|| ServiceError::UnknownTransfer(request_id.to_string()))
    }

    /// A receiver that sees the current status and every change.
    pub fn watch_transfer(&self, request_id: &str) -> Result<watch::Receiver<TransferStatus>, ServiceError> {
        let key = TransferKey::of(request_id);
        // Under the entry's lock, which every change to it holds while publishing.
        let entry = self.screens.get(&key).ok_or_else(|| ServiceError::UnknownTransfer(request_id.to_string()))?;
        let watcher =
            self.watchers.entry(key).or_insert_with(|| watch::channel(entry.status(&self.names, request_id)).0);
        Ok(watcher.subscribe())
    }

    /// Tells whoever watches the transfer its new status (called under its entry's lock).
    fn publish(&self, key: TransferKey, request_id: &str, entry: &Remembered) {
        if let Some(watcher) = self.watchers.get(&key) {
            watcher.send_replace(entry.status(&self.names, request_id));
        }
    }

    /// Records a customer event; returns true when `event_id` was seen before.
    pub fn record_event(&self, event_id: &str, fingerprint: u64, event: CustomerEvent) -> Result<bool, ServiceError> {
        if let Some(seen) = self.events.get(event_id) {
            return if seen.0 == fingerprint {
                Ok(true)
            } else {
                Err(ServiceError::EventIdReused(event_id.to_string()))
            };
        }
        // Whose event it is: its record goes with the customer's (one partition in a cluster).
        let customer = match event {
            CustomerEvent::LimitChanged { customer_id, change } => {
                let _c = lock(&self.customer_stripes[stripe_of(&customer_id)]);
                self.state.record_limit_change(&customer_id, change);
                customer_id
            }
            CustomerEvent::PayeeAdded { customer_id, payee, added_at } => {
                let _c = lock(&self.customer_stripes[stripe_of(&customer_id)]);
                self.state.record_known_payee(&customer_id, &payee, added_at);
                customer_id
            }
            CustomerEvent::TransferExecuted { request_id } => {
                self.change_transfer(&request_id, TransferEvent::Execute)?
            }
            CustomerEvent::TransferCancelled { request_id } => {
                let customer = self.change_transfer(&request_id, TransferEvent::Cancel)?;
                lock(&self.holds).retain(|(_, id)| *id != request_id);
                customer
            }
        };
        match self.events.entry(event_id.to_string()) {
            Entry::Occupied(e) if e.get().0 != fingerprint => Err(ServiceError::EventIdReused(event_id.to_string())),
            Entry::Occupied(_) => Ok(true),
            Entry::Vacant(v) => {
                let seen = (fingerprint, self.now());
                if let Some(store) = &self.store {
                    store.put_for(&customer, Space::Events, event_id.as_bytes(), Some(&seen));
                }
                v.insert(seen);
                Ok(false)
            }
        }
    }

    /// Moves a transfer by a bank's event under its entry's lock (see
    /// [`crate::lifecycle`]); returns the customer who sent it.
    fn change_transfer(&self, request_id: &str, event: TransferEvent) -> Result<String, ServiceError> {
        let key = TransferKey::of(request_id);
        let mut entry = self.screens.get_mut(&key).ok_or_else(|| ServiceError::UnknownTransfer(request_id.into()))?;
        let from = entry.state();
        let step = from.next(event).map_err(|e| ServiceError::TransferFinal {
            id: request_id.into(),
            state: e.from.as_str(),
            what: e.event.as_str(),
        })?;
        if step.to != from {
            self.change_history(step.history, &entry.record());
            entry.move_to(step.to, self.now());
            self.publish(key, request_id, &entry);
            self.log_transfer(key, (request_id, &entry));
        }
        Ok(entry.customer().to_string())
    }

    /// What a move of a transfer does to its customer's history.
    fn change_history(&self, history: History, record: &TransferRecord) {
        match history {
            History::Count => self.state.apply(record),
            History::Uncount => self.state.revert(record),
            History::Unchanged => {}
        }
    }

    pub fn claim_alert(&self, alert_id: &str, officer: &str, by: &Caller) -> Result<Alert, ServiceError> {
        let alert = self.alerts.claim(alert_id, officer, self.now())?;
        self.metrics.alerts.with_label_values(&[&alert.station_id, "claimed"]).inc();
        tracing::info!(alert_id, station = %alert.station_id, officer, "alert claimed");
        self.audit_alert(by, "claimed", &alert);
        Ok(alert)
    }

    /// Resolves an alert; a held transfer is released (and counted) or blocked.
    pub fn resolve_alert(
        &self,
        alert_id: &str,
        officer: &str,
        outcome: Outcome,
        decision: Option<HoldDecision>,
        note: &str,
        by: &Caller,
    ) -> Result<Alert, ServiceError> {
        let alert = self.alerts.get(alert_id).ok_or_else(|| AlertError::NotFound(alert_id.into()))?;
        let request_id = alert.transfer.request_id.clone();
        // Take the transfer's entry lock first, so expiry cannot race the officer.
        let key = TransferKey::of(&request_id);
        let entry = self.screens.get_mut(&key);
        let held = entry.as_ref().is_some_and(|e| e.state() == TransferState::Held);
        if held && decision.is_none() {
            return Err(AlertError::DecisionRequired.into());
        }
        if !held && decision.is_some() && alert.action == Action::Hold {
            // The hold expired, or the bank cancelled the transfer: too late to decide it.
            return Err(AlertError::Conflict {
                id: alert.id,
                state: "past its hold",
                why: "resolve without a hold decision to record the outcome",
            }
            .into());
        }
        let now = self.now();
        let alert = self.alerts.resolve(alert_id, officer, outcome, decision.filter(|_| held), note, now)?;
        self.metrics.alerts.with_label_values(&[&alert.station_id, "resolved"]).inc();
        tracing::info!(
            alert_id,
            station = %alert.station_id,
            officer,
            outcome = outcome.as_str(),
            decision = ?alert.hold_decision,
            "alert resolved"
        );
        self.audit_alert(by, "resolved", &alert);
        match (outcome, &entry) {
            (Outcome::FraudConfirmed, _) => self.list_confirmed_account(&alert, officer, by),
            // The stop this transfer left on its customer no longer says anything.
            (Outcome::FalseAlarm, Some(e)) => self.state.clear_stopped(e.customer(), e.record().at),
            _ => {}
        }
        if let (Some(mut entry), true) = (entry, held) {
            let (event, outcome_label) = match alert.hold_decision {
                Some(HoldDecision::Release) => (TransferEvent::Release, "release"),
                _ => (TransferEvent::Block, "block"),
            };
            let step = TransferState::Held.next(event).expect("a held transfer can be released or blocked");
            self.change_history(step.history, &entry.record());
            self.metrics.hold_outcomes.with_label_values(&[outcome_label]).inc();
            entry.end_hold(step.to, Some((outcome, officer)), note, now);
            self.publish(key, &request_id, &entry);
            self.log_transfer(key, (&request_id, &entry));
            lock(&self.holds).retain(|(_, id)| *id != request_id);
        }
        Ok(alert)
    }

    /// An officer confirmed the fraud: the account the money was sent to goes
    /// on the station's watchlist, so the next customer who pays it is stopped
    /// (the `payee_watchlisted` rule) until the station removes it. An entry
    /// already there stays as its station wrote it; an alert stored before
    /// alerts kept the account lists nothing.
    fn list_confirmed_account(&self, alert: &Alert, officer: &str, by: &Caller) {
        let account = &alert.payee_account.0;
        if account.is_empty() {
            return;
        }
        let entry = WatchEntry {
            account: account.clone(),
            station_id: alert.station_id.clone(),
            reason: format!("fraud confirmed by {officer} in alert {}", alert.id),
            added_at: self.now(),
            expires_at: None,
        };
        if self.state.watchlist_add(entry.clone()) {
            self.audit_watchlist(by, "upsert", entry.added_at, &entry);
            tracing::info!(alert_id = %alert.id, station = %alert.station_id, payee = %mask_account(account), "confirmed fraud account watchlisted");
        }
    }

    pub fn watchlist_upsert(&self, mut entry: WatchEntry, by: &Caller) -> WatchEntry {
        if entry.added_at == 0 {
            entry.added_at = self.now();
        }
        self.state.watchlist_upsert(entry.clone());
        self.audit_watchlist(by, "upsert", entry.added_at, &entry);
        entry
    }

    pub fn watchlist_remove(&self, account: &str, by: &Caller) -> bool {
        let removed = self.state.watchlist_remove(account);
        if let Some(e) = &removed {
            self.audit_watchlist(by, "remove", self.now(), e);
        }
        removed.is_some()
    }

    /// One watchlist change in the audit trail (the account masked).
    fn audit_watchlist(&self, by: &Caller, op: &'static str, at: UnixSeconds, entry: &WatchEntry) {
        self.audit(by, || AuditRecord::Watchlist {
            at,
            op,
            account: mask_account(&entry.account),
            station_id: entry.station_id.clone(),
            reason: entry.reason.clone(),
        });
    }

    pub fn watchlist_entry(&self, account: &str) -> Option<WatchEntry> {
        self.state.watchlist_entry(account)
    }

    /// Audits a screen answered by the fail mode (`answered`: hold, warn, unavailable).
    pub fn fail_mode_answered(&self, request_id: &str, decided: Action, answered: &'static str, by: &Caller) {
        self.audit(by, || AuditRecord::FailMode {
            at: self.now(),
            request_id: request_id.to_string(),
            decided: decided.as_str(),
            answered,
        });
    }

    pub fn watchlist(&self) -> Vec<WatchEntry> {
        self.state.watchlist_entries()
    }

    pub fn backlog(&self, stations: &[String], after: u64) -> crate::alerts::Backlog {
        self.alerts.backlog(stations, after)
    }

    pub fn subscribe_alerts(&self) -> tokio::sync::broadcast::Receiver<AlertEvent> {
        self.alerts.subscribe()
    }

    pub fn screened_count(&self) -> usize {
        self.screens.len()
    }
}
