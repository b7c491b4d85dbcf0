//! The tonic services. Each handler: take the request, validate and convert it
//! (`convert`), call the [`TransferGuard`], map the answer or the one error type
//! back ([`status_of`]). No business logic here.

use super::convert::{self, FieldViolation, Violations};
use super::proto as pb;
use crate::alerts::{self, Alert, AlertEvent, AlertState, Backlog, HoldDecision, Outcome};
use crate::model::mask_account;
use crate::service::{CustomerEvent, Screened, ServiceError, TransferGuard, TransferState, TransferStatus};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Every gRPC service shares one handle on the application.
#[derive(Clone)]
pub struct Api {
    pub guard: Arc<TransferGuard>,
    /// Turns true when the server shuts down: streams end so draining can finish.
    pub shutdown: watch::Receiver<bool>,
    /// Seconds a live request's timestamps may be from the server's clock.
    pub max_clock_skew: i64,
}

impl Api {
    /// Runs a handler and counts it by method and gRPC code.
    async fn rpc<T>(
        &self,
        method: &'static str,
        handler: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let result = handler.await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.guard.metrics().observe_rpc(method, code_name(code));
        result
    }

    /// The server's clock now, with the skew live requests are held to.
    fn live_clock(&self) -> convert::LiveClock {
        convert::LiveClock { now: self.guard.now(), skew: self.max_clock_skew }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `INVALID_ARGUMENT` naming every bad field, with `google.rpc.BadRequest` details.
pub fn invalid(violations: Vec<FieldViolation>) -> Status {
    let message = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    let details = ErrorDetails::with_bad_request(
        violations.into_iter().map(|v| tonic_types::FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {message}"), details)
}

/// The one place service errors become gRPC statuses.
pub fn status_of(e: ServiceError) -> Status {
    let code = match &e {
        ServiceError::RequestIdReused(_) | ServiceError::EventIdReused(_) => Code::AlreadyExists,
        ServiceError::UnknownTransfer(_) | ServiceError::Alert(alerts::AlertError::NotFound(_)) => Code::NotFound,
        ServiceError::TransferFinal { .. } | ServiceError::Alert(alerts::AlertError::Conflict { .. }) => {
            Code::FailedPrecondition
        }
        ServiceError::Store(_) => Code::Unavailable,
        ServiceError::Alert(alerts::AlertError::DecisionRequired) => {
            return invalid(vec![FieldViolation { field: "hold_decision".into(), description: e.to_string() }])
        }
    };
    Status::new(code, e.to_string())
}

/// Identifies a request body for idempotency (prost encoding is deterministic).
/// Identifies a request's body for idempotency. Kept in the store, so it
/// must not change across builds: the stable hash of the protobuf encoding.
fn fingerprint<M: Message>(m: &M) -> u64 {
    crate::state::stable_hash(&[&m.encode_to_vec()])
}

fn screened_to_pb(s: &Screened) -> pb::ScreenResponse {
    let mut r = convert::decision_to_pb(&s.request_id, &s.decision);
    r.alert_id = s.alert_id.clone().unwrap_or_default();
    r.station_id = s.station_id.clone().unwrap_or_default();
    r.hold_expires_at = s.hold_expires_at.map(convert::timestamp);
    r
}

fn state_to_pb(s: TransferState) -> pb::TransferState {
    match s {
        TransferState::Allowed => pb::TransferState::Allowed,
        TransferState::Warned => pb::TransferState::Warned,
        TransferState::Held => pb::TransferState::Held,
        TransferState::Released => pb::TransferState::Released,
        TransferState::Blocked => pb::TransferState::Blocked,
        TransferState::Expired => pb::TransferState::Expired,
        TransferState::Cancelled => pb::TransferState::Cancelled,
        TransferState::Executed => pb::TransferState::Executed,
    }
}

fn status_to_pb(s: &TransferStatus) -> pb::TransferStatus {
    pb::TransferStatus {
        request_id: s.request_id.clone(),
        state: state_to_pb(s.state) as i32,
        action: convert::action_to_pb(s.action) as i32,
        alert_id: s.alert_id.clone().unwrap_or_default(),
        station_id: s.station_id.clone().unwrap_or_default(),
        hold_expires_at: s.hold_expires_at.map(convert::timestamp),
        outcome: s.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
        officer_id: s.officer_id.clone().unwrap_or_default(),
        note: s.note.clone(),
        updated_at: Some(convert::timestamp(s.updated_at)),
    }
}

fn alert_state_to_pb(s: AlertState) -> pb::AlertState {
    match s {
        AlertState::New => pb::AlertState::New,
        AlertState::Claimed => pb::AlertState::Claimed,
        AlertState::Escalated => pb::AlertState::Escalated,
        AlertState::Resolved => pb::AlertState::Resolved,
    }
}

fn outcome_to_pb(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Dissuaded => pb::Outcome::Dissuaded,
        Outcome::FraudConfirmed => pb::Outcome::FraudConfirmed,
        Outcome::FalseAlarm => pb::Outcome::FalseAlarm,
        Outcome::CustomerProceeded => pb::Outcome::CustomerProceeded,
    }
}

pub fn alert_to_pb(a: &Alert) -> pb::Alert {
    let t = &a.transfer;
    pb::Alert {
        alert_id: a.id.clone(),
        station_id: a.station_id.clone(),
        escalation_station_id: a.escalation_station_id.clone().unwrap_or_default(),
        state: alert_state_to_pb(a.state) as i32,
        action: convert::action_to_pb(a.action) as i32,
        score: a.score,
        hits: a.hits.iter().map(convert::hit_to_pb).collect(),
        ruleset_version: a.ruleset_version.clone(),
        transfer: Some(pb::TransferSummary {
            request_id: t.request_id.clone(),
            amount_minor: t.amount,
            currency: t.currency.clone(),
            channel: convert::channel_to_pb(t.channel) as i32,
            bank_id: t.bank_id.clone(),
            branch_id: t.branch_id.clone(),
            teller_id: t.teller_id.clone(),
            customer_age_band: t.customer_age_band.to_string(),
            customer_account_masked: t.customer_account_masked.clone(),
            payee_account_masked: t.payee_account_masked.clone(),
            payee_name_masked: t.payee_name_masked.clone(),
            payee_bank_code: t.payee_bank_code.clone(),
            memo: t.memo.clone(),
            observations: t.observations.iter().map(|o| convert::observation_to_pb(o) as i32).collect(),
        }),
        created_at: Some(convert::timestamp(a.created_at)),
        claim_deadline: Some(convert::timestamp(a.claim_deadline)),
        officer_id: a.officer_id.clone().unwrap_or_default(),
        outcome: a.outcome.map_or(pb::Outcome::Unspecified, outcome_to_pb) as i32,
        hold_decision: match a.hold_decision {
            None => pb::HoldDecision::Unspecified,
            Some(HoldDecision::Release) => pb::HoldDecision::Release,
            Some(HoldDecision::Block) => pb::HoldDecision::Block,
        } as i32,
        note: a.note.clone(),
        updated_at: Some(convert::timestamp(a.updated_at)),
    }
}

pub fn event_to_pb(e: &AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        cursor: e.cursor,
        event_id: e.event_id.clone(),
        kind: e.kind.to_string(),
        alert: Some(alert_to_pb(&e.alert)),
        at: Some(convert::timestamp(e.at)),
    }
}

/// Completes once the server is shutting down.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::screening_server::Screening for Api {
    async fn screen(&self, request: Request<pb::ScreenRequest>) -> Result<Response<pb::ScreenResponse>, Status> {
        self.rpc("Screen", async move {
            let started = std::time::Instant::now();
            let request = request.into_inner();
            let transfer = convert::transfer(&request, self.guard.ruleset().utc_offset)
                .and_then(|t| self.live_clock().check_transfer(&t).map(|()| t))
                .map_err(|v| {
                    // Field names only: a bad value may be an account number.
                    let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
                    tracing::debug!(method = "Screen", ?fields, "invalid request");
                    invalid(v)
                })?;
            let screened = self.guard.screen(&transfer, fingerprint(&request)).map_err(status_of)?;
            // Answer only once the decision, its state change and its alert are on disk.
            self.guard.committed().await.map_err(status_of)?;
            let d = &screened.decision;
            let duration_us = started.elapsed().as_micros() as u64;
            macro_rules! log_decision {
                ($level:ident) => {
                    tracing::$level!(
                        method = "Screen",
                        request_id = %transfer.request_id,
                        branch = %transfer.branch_id,
                        action = d.action.as_str(),
                        score = d.score,
                        hits = d.hits.len(),
                        // Evaluated only when the line is logged.
                        payee = %mask_account(&transfer.payee.account),
                        alert_id = screened.alert_id.as_deref().unwrap_or(""),
                        station = screened.station_id.as_deref().unwrap_or(""),
                        duration_us,
                        "screened"
                    )
                };
            }
            if d.action.raises_alert() {
                log_decision!(info);
            } else {
                log_decision!(debug);
            }
            Ok(Response::new(screened_to_pb(&screened)))
        })
        .await
    }

    async fn record_event(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        self.rpc("RecordEvent", async move {
            let request = request.into_inner();
            let event = customer_event(&request, self.live_clock()).map_err(invalid)?;
            let duplicate =
                self.guard.record_event(&request.event_id, fingerprint(&request), event).map_err(status_of)?;
            self.guard.committed().await.map_err(status_of)?;
            Ok(Response::new(pb::RecordEventResponse { event_id: request.event_id, duplicate }))
        })
        .await
    }

    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::TransferStatus>, Status> {
        self.rpc("GetTransfer", async move {
            let id = request_id(&request.into_inner())?;
            let status = self.guard.transfer_status(&id).map_err(status_of)?;
            Ok(Response::new(status_to_pb(&status)))
        })
        .await
    }

    type WatchTransferStream = Stream<pb::TransferStatus>;

    async fn watch_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<Self::WatchTransferStream>, Status> {
        self.rpc("WatchTransfer", async move {
            let id = request_id(&request.into_inner())?;
            let mut updates = self.guard.watch_transfer(&id).map_err(status_of)?;
            let (tx, rx) = mpsc::channel(8);
            let mut shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let status = updates.borrow_and_update().clone();
                    if tx.send(Ok(status_to_pb(&status))).await.is_err() || status.state != TransferState::Held {
                        break;
                    }
                    tokio::select! {
                        changed = updates.changed() => if changed.is_err() { break },
                        _ = stopped(&mut shutdown) => {
                            let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                            break;
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::WatchTransferStream))
        })
        .await
    }
}

fn request_id(r: &pb::GetTransferRequest) -> Result<String, Status> {
    let mut v = Violations::default();
    let id = v.id("request_id", &r.request_id, 128);
    v.into_result(id).map_err(invalid)
}

/// Validates an event; its timestamps must be live (`clock`): a core-banking
/// system reports what happens as it happens.
fn customer_event(r: &pb::RecordEventRequest, clock: convert::LiveClock) -> Result<CustomerEvent, Vec<FieldViolation>> {
    use pb::record_event_request::Event;
    let mut v = Violations::default();
    v.id("event_id", &r.event_id, 128);
    let event = match &r.event {
        None => {
            v.add("event", "required: one of limit_changed, payee_added, transfer_executed, transfer_cancelled");
            None
        }
        Some(Event::LimitChanged(l)) => {
            let change = convert::limit_change(&mut v, "limit_changed", l);
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
                payee: convert::payee(&mut v, "payee_added.payee", p.payee.as_ref()),
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
    v.into_result(event).map(|e| e.expect("present without violations"))
}

#[tonic::async_trait]
impl pb::alerts_server::Alerts for Api {
    type WatchAlertsStream = Stream<pb::AlertEvent>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        self.rpc("WatchAlerts", async move {
            let r = request.into_inner();
            let mut v = Violations::default();
            if r.station_ids.is_empty() {
                v.add("station_ids", "required: at least one station");
            }
            for (i, s) in r.station_ids.iter().enumerate() {
                v.id(&format!("station_ids[{i}]"), s, 64);
            }
            v.into_result(()).map_err(invalid)?;
            let guard = self.guard.clone();
            // Subscribe before reading the backlog so no event falls in between.
            let mut live = guard.subscribe_alerts();
            let (tx, rx) = mpsc::channel(256);
            let mut shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let stations = r.station_ids;
                let mut last = r.after_cursor;
                let mut catch_up = true;
                loop {
                    if catch_up {
                        match guard.backlog(&stations, last) {
                            Backlog::Events(events) => {
                                for e in events {
                                    last = e.cursor;
                                    if tx.send(Ok(event_to_pb(&e))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Backlog::TooOld { oldest } => {
                                let msg = format!("cursor {last} is older than the retained events (oldest {oldest}); list alerts, then resume from {}", oldest - 1);
                                let _ = tx.send(Err(Status::out_of_range(msg))).await;
                                return;
                            }
                        }
                        catch_up = false;
                    }
                    let next = tokio::select! {
                        next = live.recv() => next,
                        _ = stopped(&mut shutdown) => {
                            let _ = tx.send(Err(Status::unavailable(format!("server shutting down; resume after cursor {last}")))).await;
                            return;
                        }
                    };
                    match next {
                        Ok(e) if e.cursor > last && e.alert.visible_to(&stations) => {
                            last = e.cursor;
                            if tx.send(Ok(event_to_pb(&e))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Fell behind the live buffer: read the rest from the log.
                        Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::WatchAlertsStream))
        })
        .await
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        self.rpc("ListAlerts", async move {
            let r = request.into_inner();
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
            let after = r.created_after.as_ref().map(|t| v.time("created_after", Some(t)));
            let before = r.created_before.as_ref().map(|t| v.time("created_before", Some(t)));
            if r.limit > 1000 {
                v.add("limit", "at most 1000");
            }
            let token = convert::PageToken::decode(&mut v, &r);
            v.into_result(()).map_err(invalid)?;
            let limit = if r.limit == 0 { 100 } else { r.limit as usize };
            let cursor = token.as_ref().map(|t| (t.created_at, t.alert_id.as_str()));
            let (alerts, more) = self.guard.alerts().list(&r.station_ids, &states, (after, before), cursor, limit);
            let next_page_token = match alerts.last() {
                Some(last) if more => convert::PageToken {
                    created_at: last.created_at,
                    alert_id: last.id.clone(),
                    filters: convert::PageToken::filters_of(&r),
                }
                .encode(),
                _ => String::new(),
            };
            Ok(Response::new(pb::ListAlertsResponse {
                alerts: alerts.iter().map(alert_to_pb).collect(),
                next_page_token,
            }))
        })
        .await
    }

    async fn claim_alert(&self, request: Request<pb::ClaimAlertRequest>) -> Result<Response<pb::Alert>, Status> {
        self.rpc("ClaimAlert", async move {
            let r = request.into_inner();
            let mut v = Violations::default();
            let alert_id = v.id("alert_id", &r.alert_id, 64);
            let officer = v.id("officer_id", &r.officer_id, 64);
            v.into_result(()).map_err(invalid)?;
            let alert = self.guard.claim_alert(&alert_id, &officer).map_err(status_of)?;
            self.guard.committed().await.map_err(status_of)?;
            Ok(Response::new(alert_to_pb(&alert)))
        })
        .await
    }

    async fn resolve_alert(&self, request: Request<pb::ResolveAlertRequest>) -> Result<Response<pb::Alert>, Status> {
        self.rpc("ResolveAlert", async move {
            let r = request.into_inner();
            let mut v = Violations::default();
            let alert_id = v.id("alert_id", &r.alert_id, 64);
            let officer = v.id("officer_id", &r.officer_id, 64);
            let note = v.text("note", &r.note, 1024);
            let outcome = match pb::Outcome::try_from(r.outcome) {
                Ok(pb::Outcome::Dissuaded) => Some(Outcome::Dissuaded),
                Ok(pb::Outcome::FraudConfirmed) => Some(Outcome::FraudConfirmed),
                Ok(pb::Outcome::FalseAlarm) => Some(Outcome::FalseAlarm),
                Ok(pb::Outcome::CustomerProceeded) => Some(Outcome::CustomerProceeded),
                _ => {
                    v.add("outcome", "required: dissuaded, fraud_confirmed, false_alarm or customer_proceeded");
                    None
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
            let outcome = v.into_result(outcome).map_err(invalid)?.expect("checked");
            let alert = self.guard.resolve_alert(&alert_id, &officer, outcome, decision, &note).map_err(status_of)?;
            self.guard.committed().await.map_err(status_of)?;
            Ok(Response::new(alert_to_pb(&alert)))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::watchlist_server::Watchlist for Api {
    async fn upsert_entry(&self, request: Request<pb::WatchlistEntry>) -> Result<Response<pb::WatchlistEntry>, Status> {
        self.rpc("UpsertEntry", async move {
            let entry = crate::state::WatchEntry::try_from(&request.into_inner()).map_err(invalid)?;
            let entry = self.guard.watchlist_upsert(entry);
            self.guard.committed().await.map_err(status_of)?;
            Ok(Response::new(convert::watch_entry_to_pb(&entry)))
        })
        .await
    }

    async fn remove_entry(
        &self,
        request: Request<pb::RemoveEntryRequest>,
    ) -> Result<Response<pb::RemoveEntryResponse>, Status> {
        self.rpc("RemoveEntry", async move {
            let mut v = Violations::default();
            let account = v.account("account", &request.into_inner().account);
            v.into_result(()).map_err(invalid)?;
            let removed = self.guard.watchlist_remove(&account);
            self.guard.committed().await.map_err(status_of)?;
            Ok(Response::new(pb::RemoveEntryResponse { removed }))
        })
        .await
    }

    async fn list_entries(
        &self,
        _request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.rpc("ListEntries", async move {
            let entries = self.guard.watchlist().iter().map(convert::watch_entry_to_pb).collect();
            Ok(Response::new(pb::ListEntriesResponse { entries }))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::rules_server::Rules for Api {
    async fn get_ruleset(&self, _request: Request<pb::GetRulesetRequest>) -> Result<Response<pb::RulesetInfo>, Status> {
        self.rpc("GetRuleset", async move {
            let rs = self.guard.ruleset();
            Ok(Response::new(pb::RulesetInfo {
                version: rs.version.to_string(),
                name: rs.name.clone(),
                warn_threshold: rs.thresholds.warn,
                hold_threshold: rs.thresholds.hold,
                block_threshold: rs.thresholds.block,
                rules: rs
                    .rules
                    .iter()
                    .map(|r| pb::RuleInfo {
                        id: r.id.to_string(),
                        title: r.title.clone(),
                        when: r.when.clone(),
                        score: r.score,
                        min_action: r.min_action.map_or(pb::Action::Unspecified, convert::action_to_pb) as i32,
                        mode: r.mode.as_str().to_string(),
                        tags: r.tags.clone(),
                        reason_zh: r.reason_zh.to_string(),
                        reason_en: r.reason_en.to_string(),
                        location: r.location.clone(),
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn reload_rules(
        &self,
        _request: Request<pb::ReloadRulesRequest>,
    ) -> Result<Response<pb::ReloadRulesResponse>, Status> {
        self.rpc("ReloadRules", async move {
            let guard = self.guard.clone();
            // Compiling and testing reads files: keep it off the async workers.
            let reload = tokio::task::spawn_blocking(move || guard.reload())
                .await
                .map_err(|e| Status::internal(format!("reload task failed: {e}")))?;
            Ok(Response::new(pb::ReloadRulesResponse {
                reloaded: reload.reloaded,
                version: reload.version,
                errors: reload.errors,
            }))
        })
        .await
    }

    async fn dry_run(&self, request: Request<pb::ScreenRequest>) -> Result<Response<pb::ScreenResponse>, Status> {
        self.rpc("DryRun", async move {
            let transfer =
                convert::transfer(&request.into_inner(), self.guard.ruleset().utc_offset).map_err(invalid)?;
            Ok(Response::new(screened_to_pb(&self.guard.dry_run(&transfer))))
        })
        .await
    }
}
