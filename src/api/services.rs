//! The tonic services. Each handler: take the request, validate and convert it
//! (`convert`), make its one scope check (`Api::check`), call the
//! [`TransferGuard`], map the answer or the one error type back ([`status_of`]).
//! No business logic here.
//!
//! A hub, not one thing: one short handler per RPC of the four services, side
//! by side because they share the same few helpers (check, commit, status
//! mapping); the logic of each lives in `service`, `convert` and `identity`.

use super::admission::Admission;
use super::convert::{self, FieldViolation};
use super::forward::{Forwarder, Place};
use super::identity::{caller_of, denied};
use super::proto as pb;
use crate::alerts::{self, Backlog};
use crate::auth::{Caller, Denied, Method, Principal, Role};
use crate::model::mask_account;
use crate::service::{ApprovalError, Commit, ServiceError, TransferGuard, TransferState};
use dashmap::DashMap;
use pb::screening_client::ScreeningClient;
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
    /// Slots for screens and officers' calls, and the limits.
    pub admission: Arc<Admission>,
    /// WatchAlerts streams open now, by station.
    pub watchers: Arc<DashMap<String, usize>>,
    /// In the clustered mode: where customers' calls run.
    pub forward: Option<Arc<Forwarder>>,
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

    /// The scope check for an identified caller (open callers pass): a
    /// refusal is PERMISSION_DENIED naming what was needed, counted and audited.
    fn check(
        &self,
        caller: &Caller,
        method: Method,
        rule: impl FnOnce(&Principal) -> Result<(), Denied>,
    ) -> Result<(), Status> {
        match caller {
            Caller::Known(p) => rule(p).map_err(|d| denied(&self.guard, caller, method.name(), d)),
            Caller::Open | Caller::Service => Ok(()),
        }
    }

    /// In the clustered mode, names this node as the one that answered.
    fn answered<T>(&self, response: Response<T>) -> Response<T> {
        match &self.forward {
            Some(f) => f.mark(response),
            None => response,
        }
    }

    /// In the clustered mode, where the calls of `customer_id` run.
    fn place<T>(&self, customer_id: &str, request: &Request<T>) -> Result<Place, Status> {
        match &self.forward {
            Some(f) => f.place(customer_id, request.metadata()),
            None => Ok(Place::Here),
        }
    }

    /// `e` (a transfer unknown here), unless in the clustered mode another
    /// node knows the transfer: then its answer to `call`.
    async fn elsewhere<T: Clone, R, F, Fut>(
        &self,
        e: ServiceError,
        request: &Request<T>,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        F: Fn(tonic::transport::Channel, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>> + Send,
        R: Send,
    {
        if let Some(f) = &self.forward {
            if let Some(answer) = f.ask_peers(request, call).await {
                return answer;
            }
        }
        Err(status_of(e))
    }

    /// In the clustered mode, where changes to the alert `alert_id` are made.
    fn place_alert<T>(&self, alert_id: &str, request: &Request<T>) -> Result<Place, Status> {
        match &self.forward {
            Some(f) => f.place_alert(alert_id, request.metadata()),
            None => Ok(Place::Here),
        }
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
        ServiceError::NoRate(_) => {
            return invalid(vec![FieldViolation { field: "currency".into(), description: e.to_string() }])
        }
    };
    Status::new(code, e.to_string())
}

fn approval_status(e: ApprovalError) -> Status {
    match e {
        ApprovalError::OwnProposal(_) | ApprovalError::Anonymous => Status::permission_denied(e.to_string()),
        ApprovalError::NothingPending | ApprovalError::OtherVersion { .. } => {
            Status::failed_precondition(e.to_string())
        }
    }
}

/// Identifies a request's body for idempotency. Kept in the store, so it
/// must not change across builds: the stable hash of the protobuf encoding.
fn fingerprint<M: Message>(m: &M) -> u64 {
    crate::state::stable_hash(&[&m.encode_to_vec()])
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
            let customer = request.get_ref().customer.as_ref().map_or("", |c| c.customer_id.as_str());
            if let Place::There(owner) = self.place(customer, &request)? {
                let f = self.forward.as_ref().expect("placed elsewhere only in a cluster");
                return f.call(pb::screening_client::ScreeningClient::new(owner).screen(f.outgoing(&request))).await;
            }
            let caller = caller_of(&request);
            let request = request.into_inner();
            let fingerprint = fingerprint(&request);
            let transfer = convert::transfer(request, self.guard.utc_offset())
                .and_then(|t| self.live_clock().check_transfer(&t).map(|()| t))
                .map_err(|v| {
                    // Field names only: a bad value may be an account number.
                    let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
                    tracing::debug!(method = "Screen", ?fields, "invalid request");
                    invalid(v)
                })?;
            self.check(&caller, Method::Screen, |p| p.require_bank("Screen", &transfer.bank_id))?;
            let screened = self.guard.screen(&transfer, fingerprint, &caller).map_err(status_of)?;
            // Answer only once the decision, its state change and its alert are
            // on disk; a store that cannot commit in time gets the fail mode.
            let limits = &self.admission.limits;
            if self.guard.committed_within(limits.commit_timeout).await.map_err(status_of)? == Commit::Stalled {
                return self.fail_safe(&transfer, &screened, &caller);
            }
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
            Ok(self.answered(Response::new(convert::screened_to_pb(&screened))))
        })
        .await
    }

    async fn record_event(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        self.rpc("RecordEvent", async move {
            use pb::record_event_request::Event;
            let customer = match &request.get_ref().event {
                Some(Event::LimitChanged(e)) => Some(e.customer_id.as_str()),
                Some(Event::PayeeAdded(e)) => Some(e.customer_id.as_str()),
                _ => None,
            };
            if let Some(customer) = customer {
                if let Place::There(owner) = self.place(customer, &request)? {
                    let f = self.forward.as_ref().expect("placed elsewhere only in a cluster");
                    let mut owner = pb::screening_client::ScreeningClient::new(owner);
                    return f.call(owner.record_event(f.outgoing(&request))).await;
                }
            }
            let original = self.forward.is_some().then(|| (request.metadata().clone(), request.get_ref().clone()));
            let caller = caller_of(&request);
            let request = request.into_inner();
            let event = convert::customer_event(&request, self.live_clock()).map_err(invalid)?;
            if !request.bank_id.is_empty() {
                self.check(&caller, Method::RecordEvent, |p| p.require_bank("RecordEvent", &request.bank_id))?;
            }
            if let Some(id) = event.request_id() {
                if let Ok(status) = self.guard.transfer_status(id) {
                    self.check(&caller, Method::RecordEvent, |p| p.require_bank("RecordEvent", &status.bank_id))?;
                }
            }
            let duplicate = match self.guard.record_event(&request.event_id, fingerprint(&request), event) {
                // A transfer screened on another node (by its request id alone): ask them.
                Err(e @ ServiceError::UnknownTransfer(_)) => {
                    let Some((metadata, message)) = original else { return Err(status_of(e)) };
                    let asked = Request::from_parts(metadata, Default::default(), message);
                    return self
                        .elsewhere(e, &asked, |c, r| async move { ScreeningClient::new(c).record_event(r).await })
                        .await;
                }
                other => other.map_err(status_of)?,
            };
            self.commit().await?;
            Ok(self.answered(Response::new(pb::RecordEventResponse { event_id: request.event_id, duplicate })))
        })
        .await
    }

    async fn get_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<pb::TransferStatus>, Status> {
        self.rpc("GetTransfer", async move {
            let caller = caller_of(&request);
            let id = convert::request_id(request.get_ref()).map_err(invalid)?;
            let status = match self.guard.transfer_status(&id) {
                Err(e @ ServiceError::UnknownTransfer(_)) => {
                    return self
                        .elsewhere(e, &request, |c, r| async move { ScreeningClient::new(c).get_transfer(r).await })
                        .await;
                }
                other => other.map_err(status_of)?,
            };
            self.check(&caller, Method::GetTransfer, |p| p.require_bank("GetTransfer", &status.bank_id))?;
            Ok(self.answered(Response::new(convert::status_to_pb(&status))))
        })
        .await
    }

    type WatchTransferStream = Stream<pb::TransferStatus>;

    async fn watch_transfer(
        &self,
        request: Request<pb::GetTransferRequest>,
    ) -> Result<Response<Self::WatchTransferStream>, Status> {
        self.rpc("WatchTransfer", async move {
            let caller = caller_of(&request);
            let id = convert::request_id(request.get_ref()).map_err(invalid)?;
            let mut updates = match self.guard.watch_transfer(&id) {
                Err(e @ ServiceError::UnknownTransfer(_)) => {
                    let watched = self
                        .elsewhere(e, &request, |c, r| async move { ScreeningClient::new(c).watch_transfer(r).await });
                    return watched.await.map(|r| r.map(|s| Box::pin(s) as Self::WatchTransferStream));
                }
                other => other.map_err(status_of)?,
            };
            let bank = updates.borrow().bank_id.clone();
            self.check(&caller, Method::WatchTransfer, |p| p.require_bank("WatchTransfer", &bank))?;
            let (tx, rx) = mpsc::channel(8);
            let mut shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let status = updates.borrow_and_update().clone();
                    if tx.send(Ok(convert::status_to_pb(&status))).await.is_err() || status.state != TransferState::Held
                    {
                        break;
                    }
                    tokio::select! {
                        changed = updates.changed() => if changed.is_err() { break },
                        _ = tx.closed() => break,
                        _ = stopped(&mut shutdown) => {
                            let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                            break;
                        }
                    }
                }
            });
            Ok(self.answered(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::WatchTransferStream)))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::alerts_server::Alerts for Api {
    type WatchAlertsStream = Stream<pb::AlertEvent>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        self.rpc("WatchAlerts", async move {
            let caller = caller_of(&request);
            let r = request.into_inner();
            let stations = convert::watched_stations(&r).map_err(invalid)?;
            for station in &stations {
                self.check(&caller, Method::WatchAlerts, |p| p.require_station("WatchAlerts", station))?;
            }
            let newest = self.guard.alerts().last_cursor();
            if r.after_cursor > newest {
                // Another node's cursor, or one this node lost in a restart without a store.
                let msg = format!("after_cursor {} was not given by this node (its newest is {newest}); list alerts, then resume from {newest}", r.after_cursor);
                return Err(Status::out_of_range(msg));
            }
            let watching = self.watching(&stations)?;
            let guard = self.guard.clone();
            // Subscribe before reading the backlog so no event falls in between.
            let mut live = guard.subscribe_alerts();
            let (tx, rx) = mpsc::channel(256);
            let mut shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let _watching = watching;
                let mut last = r.after_cursor;
                let mut catch_up = true;
                loop {
                    if catch_up {
                        match guard.backlog(&stations, last) {
                            Backlog::Events(events) => {
                                for e in events {
                                    last = e.cursor;
                                    if tx.send(Ok(convert::event_to_pb(&e))).await.is_err() {
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
                        // The watcher went away: give its place back now, not at the next event.
                        _ = tx.closed() => return,
                        _ = stopped(&mut shutdown) => {
                            let _ = tx.send(Err(Status::unavailable(format!("server shutting down; resume after cursor {last}")))).await;
                            return;
                        }
                    };
                    match next {
                        Ok(e) if e.cursor > last && e.alert.visible_to(&stations) => {
                            last = e.cursor;
                            if tx.send(Ok(convert::event_to_pb(&e))).await.is_err() {
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
            let caller = caller_of(&request);
            let original = self.forward.is_some().then(|| (request.metadata().clone(), request.get_ref().clone()));
            let r = request.into_inner();
            let mut q = convert::alert_query(&r).map_err(invalid)?;
            match &caller {
                // An officer sees their own station's alerts: none named means theirs.
                Caller::Known(p) if p.role == Role::Officer && q.stations.is_empty() => {
                    q.stations = vec![p.scope.clone()]
                }
                _ => {}
            }
            for station in &q.stations {
                self.check(&caller, Method::ListAlerts, |p| p.require_station("ListAlerts", station))?;
            }
            let cursor = q.page.as_ref().map(|t| (t.created_at, t.alert_id.as_str()));
            let created = (q.created_after, q.created_before);
            let (alerts, more) = self.guard.alerts().list(&q.stations, &q.states, created, cursor, q.limit);
            let (Some(f), Some((metadata, message))) = (&self.forward, original) else {
                let next_page_token = match alerts.last() {
                    Some(last) if more => convert::PageToken::after(last, &r).encode(),
                    _ => String::new(),
                };
                let alerts = alerts.iter().map(convert::alert_to_pb).collect();
                return Ok(Response::new(pb::ListAlertsResponse { alerts, next_page_token }));
            };
            // The clustered mode: each node's book holds its partitions'
            // alerts and copies of the others' (a moment behind); the page is
            // the newest of every node's pages (each node checks the caller as
            // this one did), each alert as its most advanced copy.
            let asked = Request::from_parts(metadata, Default::default(), message);
            let pages =
                f.gather(&asked, |c, r| async move { pb::alerts_client::AlertsClient::new(c).list_alerts(r).await });
            let mut more = more;
            let mut merged: Vec<pb::Alert> = alerts.iter().map(convert::alert_to_pb).collect();
            for page in pages.await {
                more |= !page.next_page_token.is_empty();
                merged.extend(page.alerts);
            }
            let key = |a: &pb::Alert| (a.created_at.as_ref().map_or(0, |t| t.seconds), a.alert_id.clone());
            merged.sort_by_key(|a| std::cmp::Reverse((key(a), progress(a))));
            merged.dedup_by(|a, b| a.alert_id == b.alert_id);
            if merged.len() > q.limit {
                merged.truncate(q.limit);
                more = true;
            }
            let next_page_token = match merged.last() {
                Some(last) if more => {
                    let (created_at, alert_id) = key(last);
                    convert::PageToken { created_at, alert_id, filters: convert::PageToken::filters_of(&r) }.encode()
                }
                _ => String::new(),
            };
            Ok(self.answered(Response::new(pb::ListAlertsResponse { alerts: merged, next_page_token })))
        })
        .await
    }

    async fn claim_alert(&self, request: Request<pb::ClaimAlertRequest>) -> Result<Response<pb::Alert>, Status> {
        self.rpc("ClaimAlert", async move {
            if let Place::There(owner) = self.place_alert(&request.get_ref().alert_id, &request)? {
                let f = self.forward.as_ref().expect("placed elsewhere only in a cluster");
                return f.call(pb::alerts_client::AlertsClient::new(owner).claim_alert(f.outgoing(&request))).await;
            }
            let caller = caller_of(&request);
            let (alert_id, officer) = convert::claim(&request.into_inner()).map_err(invalid)?;
            self.check_officer(&caller, Method::ClaimAlert, &alert_id, &officer)?;
            let alert = self.guard.claim_alert(&alert_id, &officer, &caller).map_err(status_of)?;
            self.commit().await?;
            Ok(self.answered(Response::new(convert::alert_to_pb(&alert))))
        })
        .await
    }

    async fn resolve_alert(&self, request: Request<pb::ResolveAlertRequest>) -> Result<Response<pb::Alert>, Status> {
        self.rpc("ResolveAlert", async move {
            if let Place::There(owner) = self.place_alert(&request.get_ref().alert_id, &request)? {
                let f = self.forward.as_ref().expect("placed elsewhere only in a cluster");
                return f.call(pb::alerts_client::AlertsClient::new(owner).resolve_alert(f.outgoing(&request))).await;
            }
            let caller = caller_of(&request);
            let r = convert::resolution(&request.into_inner()).map_err(invalid)?;
            self.check_officer(&caller, Method::ResolveAlert, &r.alert_id, &r.officer)?;
            let alert = self
                .guard
                .resolve_alert(&r.alert_id, &r.officer, r.outcome, r.decision, &r.note, &caller)
                .map_err(status_of)?;
            self.commit().await?;
            Ok(self.answered(Response::new(convert::alert_to_pb(&alert))))
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::watchlist_server::Watchlist for Api {
    async fn upsert_entry(&self, request: Request<pb::WatchlistEntry>) -> Result<Response<pb::WatchlistEntry>, Status> {
        self.rpc("UpsertEntry", async move {
            let caller = caller_of(&request);
            let entry = crate::state::WatchEntry::try_from(&request.into_inner()).map_err(invalid)?;
            // The issuer is the caller's own station; replacing another station's entry is removing it.
            self.check(&caller, Method::UpsertEntry, |p| p.require_station("UpsertEntry", &entry.station_id))?;
            if let Some(existing) = self.guard.watchlist_entry(&entry.account) {
                let issuer = existing.station_id;
                self.check(&caller, Method::UpsertEntry, |p| p.require_station("replacing this entry", &issuer))?;
            }
            let entry = self.guard.watchlist_upsert(entry, &caller);
            self.commit().await?;
            Ok(Response::new(convert::watch_entry_to_pb(&entry)))
        })
        .await
    }

    async fn remove_entry(
        &self,
        request: Request<pb::RemoveEntryRequest>,
    ) -> Result<Response<pb::RemoveEntryResponse>, Status> {
        self.rpc("RemoveEntry", async move {
            let caller = caller_of(&request);
            let account = convert::removed_account(&request.into_inner()).map_err(invalid)?;
            if let Some(existing) = self.guard.watchlist_entry(&account) {
                let issuer = existing.station_id;
                self.check(&caller, Method::RemoveEntry, |p| p.require_station("RemoveEntry", &issuer))?;
            }
            let removed = self.guard.watchlist_remove(&account, &caller);
            self.commit().await?;
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
            let ruleset = self.guard.ruleset();
            let mut info = convert::ruleset_to_pb(&ruleset);
            info.approval = format!("{:?}", self.guard.approval()).to_lowercase();
            info.pending =
                self.guard.pending_proposal().map(|p| convert::proposal_to_pb(Some(p), &ruleset.version, Vec::new()));
            Ok(Response::new(info))
        })
        .await
    }

    async fn reload_rules(
        &self,
        request: Request<pb::ReloadRulesRequest>,
    ) -> Result<Response<pb::ReloadRulesResponse>, Status> {
        self.rpc("ReloadRules", async move {
            let caller = caller_of(&request);
            let guard = self.guard.clone();
            // Compiling and testing reads files: keep it off the async workers.
            let reload = tokio::task::spawn_blocking(move || guard.reload(&caller))
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
            let transfer = convert::transfer(request.into_inner(), self.guard.utc_offset()).map_err(invalid)?;
            Ok(Response::new(convert::screened_to_pb(&self.guard.dry_run(&transfer).map_err(status_of)?)))
        })
        .await
    }

    async fn propose_rules(
        &self,
        request: Request<pb::ProposeRulesRequest>,
    ) -> Result<Response<pb::RulesProposal>, Status> {
        self.rpc("ProposeRules", async move {
            let caller = caller_of(&request);
            let guard = self.guard.clone();
            let proposed = tokio::task::spawn_blocking(move || guard.propose(&caller))
                .await
                .map_err(|e| Status::internal(format!("propose task failed: {e}")))?;
            let running = self.guard.ruleset().version.to_string();
            Ok(Response::new(match proposed {
                Ok(_) => convert::proposal_to_pb(self.guard.pending_proposal(), &running, Vec::new()),
                Err(errors) => convert::proposal_to_pb(None, &running, errors),
            }))
        })
        .await
    }

    async fn approve_rules(
        &self,
        request: Request<pb::ApproveRulesRequest>,
    ) -> Result<Response<pb::ReloadRulesResponse>, Status> {
        self.rpc("ApproveRules", async move {
            let caller = caller_of(&request);
            let r = request.into_inner();
            let mut v = convert::Violations::default();
            let version = v.id("version", &r.version, 128);
            v.into_result(()).map_err(invalid)?;
            let reload = self.guard.approve(&version, &caller).map_err(approval_status)?;
            Ok(Response::new(pb::ReloadRulesResponse {
                reloaded: reload.reloaded,
                version: reload.version,
                errors: reload.errors,
            }))
        })
        .await
    }
}

impl Api {
    /// Waits for the store like every change-making call; past the commit
    /// bound, UNAVAILABLE (the change is queued and written on recovery).
    async fn commit(&self) -> Result<(), Status> {
        match self.guard.committed_within(self.admission.limits.commit_timeout).await.map_err(status_of)? {
            Commit::Durable => Ok(()),
            Commit::Stalled => Err(Status::unavailable(
                "the store cannot commit right now; the change is queued and will be written when it recovers",
            )),
        }
    }

    /// An officer claims or resolves only as themself and only their
    /// station's alerts (or those escalated to it).
    fn check_officer(&self, caller: &Caller, method: Method, alert_id: &str, officer: &str) -> Result<(), Status> {
        self.check(caller, method, |p| p.require_self("officer_id", officer))?;
        if let (Caller::Known(p), Some(alert)) = (caller, self.guard.alerts().get(alert_id)) {
            if p.role == Role::Officer && !alert.visible_to(std::slice::from_ref(&p.scope)) {
                return self.check(caller, method, |p| p.require_station(method.name(), &alert.station_id));
            }
        }
        Ok(())
    }

    /// Counts a WatchAlerts stream against each station's limit; the guard
    /// gives the places back when the stream ends.
    fn watching(&self, stations: &[String]) -> Result<Watching, Status> {
        let limit = self.admission.limits.watchers_per_station;
        let mut taken = Vec::new();
        for s in stations {
            let mut n = self.watchers.entry(s.clone()).or_insert(0);
            if *n >= limit {
                drop(n);
                drop(Watching { watchers: self.watchers.clone(), stations: taken });
                self.guard.metrics().shed.with_label_values(&["WatchAlerts", "busy"]).inc();
                return Err(Status::resource_exhausted(format!(
                    "station `{s}` already has {limit} WatchAlerts streams open (the limit)"
                )));
            }
            *n += 1;
            taken.push(s.clone());
        }
        Ok(Watching { watchers: self.watchers.clone(), stations: taken })
    }

    /// The answer while the store cannot commit: the fail mode, never a hang.
    fn fail_safe(
        &self,
        transfer: &crate::model::Transfer,
        screened: &crate::service::Screened,
        caller: &Caller,
    ) -> Result<Response<pb::ScreenResponse>, Status> {
        let limits = &self.admission.limits;
        // The floor is in the ruleset's currency, like every amount the rules read.
        let amount = self.guard.ruleset().in_base(transfer.amount, &transfer.currency).unwrap_or(transfer.amount);
        let answer = limits.fail_mode.answer(screened.decision.action, amount, limits.fail_floor);
        let label = answer.map_or("unavailable", |a| a.as_str());
        self.guard.metrics().fail_mode_answers.with_label_values(&[label]).inc();
        self.guard.fail_mode_answered(&transfer.request_id, screened.decision.action, label, caller);
        let Some(action) = answer else {
            return Err(Status::unavailable(
                "the store cannot commit right now (fail mode: unavailable); retry shortly",
            ));
        };
        let mut response = convert::screened_to_pb(screened);
        response.action = convert::action_to_pb(action) as i32;
        response.hits.push(pb::Hit {
            rule_id: "fail-safe".into(),
            score: 0,
            reason_zh: "系统暂时无法记录决定，按安全模式处理：请暂停本笔转账，稍后重试或人工复核".into(),
            reason_en: "The service cannot record decisions right now (fail-safe mode): pause this transfer, retry shortly or review it by hand".into(),
            shadow: false,
            ..Default::default()
        });
        Ok(Response::new(response))
    }
}

/// A WatchAlerts stream's places in the per-station count, given back on drop.
struct Watching {
    watchers: Arc<DashMap<String, usize>>,
    stations: Vec<String>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for s in &self.stations {
            if let Some(mut n) = self.watchers.get_mut(s) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// How far an alert's copy has come: later changes first, then (within a
/// second) the later state; the lifecycle only moves forward.
fn progress(a: &pb::Alert) -> (i64, u8) {
    let rank = match a.state() {
        pb::AlertState::Resolved => 3,
        pb::AlertState::Claimed => 2,
        pb::AlertState::Escalated => 1,
        _ => 0,
    };
    (a.updated_at.as_ref().map_or(0, |t| t.seconds), rank)
}
