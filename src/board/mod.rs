//! The anti-fraud centre's board: a live web page for officers (the queue,
//! an alert's page, claim and resolve) and analysts (the ruleset in force,
//! hits per hour, alerts per station and day, the last reload), served by
//! axum on its own listener (`serve --board-listen`).
//!
//! An edge like `api`: it identifies the viewer (a signed token in a cookie;
//! nobody in the open loopback mode), applies the role table
//! ([`BoardPage`], and the RPC's own role for an action) and the station
//! scope, then calls `TransferGuard` exactly as the gRPC handlers do, so
//! every action is audited with its principal and committed before the page
//! says it is done. The live queue is the alert book's ordered event log as
//! Server-Sent Events, resumed from the last cursor after a reconnect.
//! Must not decide anything itself or hold state beyond the hits history.
//!
//! A hub: the board's routes and their handlers, a few lines each (viewer,
//! scope, call the service, render), and the live stream; the HTML is in
//! `pages`, the words in `words`, the hits history in `hits`.

pub mod hits;
mod owner;
mod pages;
pub mod words;

use crate::alerts::{Alert, AlertEvent, AlertState, Backlog, HoldDecision, Outcome};
use crate::api::identity::Trust;
use crate::auth::{BoardPage, Caller, Denied, IdentityError, Method, Role};
use crate::model::UnixSeconds;
use crate::service::{Commit, TransferGuard};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hits::HitHistory;
use pages::{Frame, QueueQuery};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use words::Lang;

/// Alerts per page of the queue, unless the query says (`limit`, up to the most).
pub const PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 200;
/// How often the hits history samples the rule counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Days of the alerts-per-station table.
const DAYS_SHOWN: i64 = 14;
const TOKEN_COOKIE: &str = "tg_token";
/// Live streams open at once, all pages together; more are turned away (503)
/// and the browser retries. Each holds a task and a place in the broadcast.
pub const MAX_STREAMS: usize = 512;
const LANG_COOKIE: &str = "tg_lang";

/// What the board needs besides the service.
pub struct BoardConfig {
    /// How viewers are identified: the gRPC API's trust (open, or tokens).
    pub trust: Arc<Trust>,
    /// How long an action waits for the store before it says so.
    pub commit_timeout: Duration,
    /// The clustered mode: where changes to other nodes' alerts are sent.
    pub forward: Option<Arc<crate::api::forward::Forwarder>>,
}

struct Board {
    guard: Arc<TransferGuard>,
    trust: Arc<Trust>,
    commit_timeout: Duration,
    forward: Option<Arc<crate::api::forward::Forwarder>>,
    hits: Mutex<HitHistory>,
    stop: watch::Receiver<bool>,
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// A place among the [`MAX_STREAMS`], given back when the stream ends.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl StreamSlot {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>) -> Option<StreamSlot> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_STREAMS).then_some(n + 1))
            .ok()
            .map(|_| StreamSlot(count.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Serves the board on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    guard: Arc<TransferGuard>,
    config: BoardConfig,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let board = Arc::new(Board {
        guard,
        trust: config.trust,
        commit_timeout: config.commit_timeout,
        forward: config.forward,
        hits: Mutex::default(),
        stop: stop.clone(),
        streams: Arc::default(),
    });
    let sampler = {
        let board = board.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => board.sample_hits(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    };
    let app = Router::new()
        .route("/", get(queue))
        .route("/alerts/{id}", get(alert_page))
        .route("/alerts/{id}/claim", post(claim))
        .route("/alerts/{id}/resolve", post(resolve))
        .route("/events", get(events))
        .route("/rules", get(rules_page))
        .route("/login", get(sign_in_page).post(sign_in))
        .route("/logout", post(sign_out))
        .route("/lang/{lang}", get(set_lang))
        .route("/assets/board.js", get(|| asset("text/javascript; charset=utf-8", include_str!("assets/board.js"))))
        .route("/assets/board.css", get(|| asset("text/css; charset=utf-8", include_str!("assets/board.css"))))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(board);
    let mut stop = stop;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    sampler.abort();
    served
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Who is looking, in which language, at what.
struct Viewer {
    caller: Caller,
    lang: Lang,
    here: String,
    /// The stations whose alerts they see; None: every station (open mode).
    stations: Option<Vec<String>>,
}

impl Viewer {
    /// Someone not (yet) identified, on the sign-in page: sees no alert.
    fn signing_in(lang: Lang) -> Viewer {
        Viewer { caller: Caller::Open, lang, here: "/login".into(), stations: Some(Vec::new()) }
    }

    fn frame(&self, board: &Board) -> Frame<'_> {
        Frame {
            lang: self.lang,
            caller: &self.caller,
            here: &self.here,
            now: board.guard.now(),
            offset: board.guard.utc_offset(),
        }
    }

    fn sees(&self, alert: &Alert) -> bool {
        self.stations.as_ref().is_none_or(|s| alert.visible_to(s))
    }
}

/// The viewer's token: the Authorization header's, or the sign-in cookie's.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    crate::api::identity::bearer_token(headers).or_else(|| cookie(headers, TOKEN_COOKIE))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn lang_of(headers: &HeaderMap) -> Lang {
    cookie(headers, LANG_COOKIE).and_then(Lang::parse).unwrap_or_default()
}

impl Board {
    fn sample_hits(&self) {
        use prometheus::core::Collector;
        let mut totals = Vec::new();
        for family in self.guard.metrics().rule_hits.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string()).unwrap_or_default()
                };
                totals.push((label("rule"), label("mode") == "shadow", m.get_counter().get_value() as u64));
            }
        }
        self.hits.lock().unwrap_or_else(|e| e.into_inner()).sample(self.guard.now(), totals);
    }

    /// The viewer of a request for `page`, or the answer that turns them away:
    /// to sign in (no or a bad token), or a refusal (the role table), audited.
    fn enter(&self, headers: &HeaderMap, uri: &Uri, page: BoardPage) -> Result<Viewer, Box<Response>> {
        let lang = lang_of(headers);
        let here = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let caller = match self.trust.bearer(bearer(headers)) {
            Ok(c) => c,
            Err(IdentityError::Missing) => return Err(Box::new(Redirect::to("/login").into_response())),
            Err(e) => {
                self.guard.refused(&Caller::Open, page.name(), "unauthenticated", &e.to_string());
                let viewer = Viewer::signing_in(lang);
                let page = pages::sign_in(&viewer.frame(self), Some(&e.to_string()));
                let refused = (StatusCode::UNAUTHORIZED, [(header::SET_COOKIE, clear_token())], Html(page.0));
                return Err(Box::new(refused.into_response()));
            }
        };
        let stations = match &caller {
            Caller::Known(p) if p.role == Role::Officer => Some(vec![p.scope.clone()]),
            _ => None,
        };
        let viewer = Viewer { caller, lang, here, stations };
        if let Caller::Known(p) = &viewer.caller {
            if let Err(d) = p.may_see(page) {
                return Err(Box::new(self.refuse(&viewer, page.name(), d)));
            }
        }
        Ok(viewer)
    }

    /// PERMISSION_DENIED's page: counted and audited like the API's refusals.
    fn refuse(&self, viewer: &Viewer, what: &str, d: Denied) -> Response {
        self.guard.refused(&viewer.caller, what, d.reason(), &d.to_string());
        (StatusCode::FORBIDDEN, Html(pages::refusal(&viewer.frame(self), &d.to_string()).0)).into_response()
    }

    fn hold_expires(&self, alert: &Alert) -> Option<UnixSeconds> {
        if !alert.awaiting_decision {
            return None;
        }
        self.guard.transfer_status(&alert.transfer.request_id).ok().and_then(|s| s.hold_expires_at)
    }

    fn alert_response(&self, viewer: &Viewer, alert: &Alert, status: StatusCode, error: Option<String>) -> Response {
        let history = self.guard.alerts().history(&alert.id);
        let page = pages::AlertPage {
            alert,
            hold_expires: self.hold_expires(alert),
            history: &history,
            cursor: self.guard.alerts().last_cursor(),
            ask_officer_id: !matches!(viewer.caller, Caller::Known(_)),
            error,
        };
        (status, Html(pages::alert(&viewer.frame(self), &page).0)).into_response()
    }
}

/// Which alerts a queue shows: the viewer's stations and the filters.
struct Filter {
    stations: Vec<String>,
    states: Vec<AlertState>,
    created: (Option<UnixSeconds>, Option<UnixSeconds>),
}

impl Filter {
    fn new(q: &QueueQuery, viewer: &Viewer, offset: time::UtcOffset) -> Result<Filter, String> {
        let stations = match &viewer.stations {
            Some(own) => own.clone(),
            None => q.station.iter().filter(|s| !s.is_empty()).cloned().collect(),
        };
        let states = match q.state.as_deref().unwrap_or("open") {
            "open" | "" => vec![AlertState::New, AlertState::Escalated, AlertState::Claimed],
            "any" => Vec::new(),
            "new" => vec![AlertState::New],
            "claimed" => vec![AlertState::Claimed],
            "escalated" => vec![AlertState::Escalated],
            "resolved" => vec![AlertState::Resolved],
            other => return Err(format!("state: `{other}` is not open, any, new, claimed, escalated or resolved")),
        };
        let day = |field: &str, v: &Option<String>, next: bool| -> Result<Option<UnixSeconds>, String> {
            match v.as_deref().filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => {
                    let format = time::macros::format_description!("[year]-[month]-[day]");
                    let d = time::Date::parse(v, &format).map_err(|_| format!("{field}: `{v}` is not YYYY-MM-DD"))?;
                    let d = if next { d.next_day().unwrap_or(d) } else { d };
                    Ok(Some(d.midnight().assume_offset(offset).unix_timestamp()))
                }
            }
        };
        Ok(Filter { stations, states, created: (day("from", &q.from, false)?, day("to", &q.to, true)?) })
    }

    fn matches(&self, a: &Alert) -> bool {
        (self.stations.is_empty() || a.visible_to(&self.stations))
            && (self.states.is_empty() || self.states.contains(&a.state))
            && self.created.0.is_none_or(|t| a.created_at >= t)
            && self.created.1.is_none_or(|t| a.created_at < t)
    }
}

async fn queue(State(board): State<Arc<Board>>, headers: HeaderMap, uri: Uri, Query(q): Query<QueueQuery>) -> Response {
    let viewer = match board.enter(&headers, &uri, BoardPage::Queue) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    // Read the cursor first: the live stream replays anything after it.
    let cursor = board.guard.alerts().last_cursor();
    let routing = board.guard.routing();
    let mut stations: Vec<(String, String)> = match viewer.stations {
        Some(_) => Vec::new(),
        None => routing.stations.values().map(|s| (s.id.clone(), s.name.clone())).collect(),
    };
    stations.sort();
    let (mut rows, mut next_page, mut error) = (Vec::new(), None, None);
    match Filter::new(&q, &viewer, board.guard.utc_offset()) {
        Err(e) => error = Some(e),
        Ok(filter) => match q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            // A search finds one alert wherever its state and date; only the viewer's stations.
            Some(id) => rows.extend(board.guard.alerts().find(id).filter(|a| viewer.sees(a))),
            None => {
                let after = q.after.as_deref().and_then(|t| {
                    let (at, id) = t.split_once('.')?;
                    Some((at.parse::<UnixSeconds>().ok()?, id))
                });
                let limit = q.limit.unwrap_or(PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
                let (alerts, more) =
                    board.guard.alerts().list(&filter.stations, &filter.states, filter.created, after, limit);
                if more {
                    next_page = alerts.last().map(|a| format!("{}.{}", a.created_at, a.id));
                }
                rows = alerts;
            }
        },
    }
    let rows: Vec<_> = rows
        .into_iter()
        .map(|a| {
            let expires = board.hold_expires(&a);
            (a, expires)
        })
        .collect();
    let page = pages::Queue { query: &q, stations, rows, next_page, cursor, error };
    Html(pages::queue(&viewer.frame(&board), &page).0).into_response()
}

async fn alert_page(State(board): State<Arc<Board>>, headers: HeaderMap, uri: Uri, Path(id): Path<String>) -> Response {
    let viewer = match board.enter(&headers, &uri, BoardPage::Queue) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match board.guard.alerts().get(&id) {
        Some(alert) if viewer.sees(&alert) => board.alert_response(&viewer, &alert, StatusCode::OK, None),
        // Another station's alert is as absent as a missing one.
        _ => (StatusCode::NOT_FOUND, Html(pages::not_found(&viewer.frame(&board)).0)).into_response(),
    }
}

/// Claim and resolve forms.
#[derive(Debug, Default, serde::Deserialize)]
struct ActionForm {
    /// Open mode only: who is acting (a signed-in officer is their token's subject).
    officer: Option<String>,
    outcome: Option<String>,
    decision: Option<String>,
    note: Option<String>,
}

/// A form posted from this board's own pages: the browser says so in Origin
/// (or Sec-Fetch-Site), which another site cannot forge.
fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host),
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v == "same-origin" || v == "none"),
    }
}

/// The answer to a form posted from another site, if this one was.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    (!same_origin(headers)).then(|| (StatusCode::FORBIDDEN, "cross-site form posts are refused").into_response())
}

enum Act {
    Claim,
    Resolve { outcome: Outcome, decision: Option<HoldDecision>, note: String },
}

impl Act {
    fn method(&self) -> Method {
        match self {
            Act::Claim => Method::ClaimAlert,
            Act::Resolve { .. } => Method::ResolveAlert,
        }
    }
}

async fn claim(
    State(board): State<Arc<Board>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&board, &headers, &uri, &id, &form, Ok(Act::Claim)).await
}

async fn resolve(
    State(board): State<Arc<Board>>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let outcome = match form.outcome.as_deref() {
        Some("dissuaded") => Ok(Outcome::Dissuaded),
        Some("fraud_confirmed") => Ok(Outcome::FraudConfirmed),
        Some("false_alarm") => Ok(Outcome::FalseAlarm),
        Some("customer_proceeded") => Ok(Outcome::CustomerProceeded),
        other => Err(format!(
            "outcome: `{}` is not dissuaded, fraud_confirmed, false_alarm or customer_proceeded",
            other.unwrap_or("")
        )),
    };
    let decision = match form.decision.as_deref() {
        None | Some("") => Ok(None),
        Some("release") => Ok(Some(HoldDecision::Release)),
        Some("block") => Ok(Some(HoldDecision::Block)),
        Some(other) => Err(format!("decision: `{other}` is not release or block")),
    };
    let note = form.note.clone().unwrap_or_default();
    let act_ = match (outcome, decision) {
        (Ok(outcome), Ok(decision)) if note.chars().count() <= 1000 => Ok(Act::Resolve { outcome, decision, note }),
        (Ok(_), Ok(_)) => Err("note: at most 1000 characters".to_string()),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    act(&board, &headers, &uri, &id, &form, act_).await
}

/// Claims or resolves as the viewer, with the same checks, audit and commit
/// as the gRPC handlers; back to the alert's page (with what went wrong).
async fn act(
    board: &Board,
    headers: &HeaderMap,
    uri: &Uri,
    id: &str,
    form: &ActionForm,
    act: Result<Act, String>,
) -> Response {
    if let Some(refused) = cross_site(headers) {
        return refused;
    }
    let mut viewer = match board.enter(headers, uri, BoardPage::Queue) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    viewer.here = format!("/alerts/{}", pages::encode(id).0);
    let Some(alert) = board.guard.alerts().get(id).filter(|a| viewer.sees(a)) else {
        return (StatusCode::NOT_FOUND, Html(pages::not_found(&viewer.frame(board)).0)).into_response();
    };
    let act = match act {
        Ok(a) => a,
        Err(e) => return board.alert_response(&viewer, &alert, StatusCode::BAD_REQUEST, Some(e)),
    };
    let officer = match &viewer.caller {
        Caller::Known(p) => match p.may_call(act.method()) {
            Ok(()) => p.subject.clone(),
            Err(d) => return board.refuse(&viewer, act.method().name(), d),
        },
        _ => match form.officer.as_deref().map(str::trim) {
            Some(o)
                if !o.is_empty()
                    && o.len() <= 64
                    && o.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
            {
                o.to_string()
            }
            _ => {
                let e = "officer: your id (letters, digits, . _ -; up to 64) is required".to_string();
                return board.alert_response(&viewer, &alert, StatusCode::BAD_REQUEST, Some(e));
            }
        },
    };
    if let Some(f) = &board.forward {
        match f.place_alert(id, &tonic::metadata::MetadataMap::new()) {
            Ok(crate::api::forward::Place::Here) => {}
            Ok(crate::api::forward::Place::There(owner)) => {
                return board.act_on_owner(f, owner, &viewer, &alert, officer, bearer(headers), act).await;
            }
            Err(status) => {
                let e = status.message().to_string();
                return board.alert_response(&viewer, &alert, StatusCode::SERVICE_UNAVAILABLE, Some(e));
            }
        }
    }
    let done = match act {
        Act::Claim => board.guard.claim_alert(id, &officer, &viewer.caller),
        Act::Resolve { outcome, decision, note } => {
            board.guard.resolve_alert(id, &officer, outcome, decision, &note, &viewer.caller)
        }
    };
    let alert = match done {
        Ok(a) => a,
        Err(e) => return board.alert_response(&viewer, &alert, StatusCode::CONFLICT, Some(e.to_string())),
    };
    match board.guard.committed_within(board.commit_timeout).await {
        Ok(Commit::Durable) => Redirect::to(&viewer.here).into_response(),
        Ok(Commit::Stalled) | Err(_) => {
            let e = "the store cannot commit right now; the change is queued and will be written when it recovers";
            board.alert_response(&viewer, &alert, StatusCode::SERVICE_UNAVAILABLE, Some(e.into()))
        }
    }
}

/// The live stream's query: the queue's filters and the cursor to resume after.
#[derive(Debug, Default, serde::Deserialize)]
struct EventsQuery {
    cursor: Option<u64>,
    state: Option<String>,
    station: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Server-Sent Events: every change of an alert the viewer may see after the
/// cursor (`Last-Event-ID` on a reconnect), each with its row rendered and
/// whether it still passes the queue's filters; `reset` when the cursor is
/// no longer in the log (the page reloads).
async fn events(
    State(board): State<Arc<Board>>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<EventsQuery>,
) -> Response {
    let viewer = match board.enter(&headers, &uri, BoardPage::Queue) {
        Ok(v) => v,
        Err(_) => return (StatusCode::UNAUTHORIZED, "sign in again").into_response(),
    };
    let query = QueueQuery { state: q.state, station: q.station, from: q.from, to: q.to, ..QueueQuery::default() };
    let filter = match Filter::new(&query, &viewer, board.guard.utc_offset()) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let Some(slot) = StreamSlot::take(&board.streams) else {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], "too many live pages open")
            .into_response();
    };
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let after = resume.or(q.cursor).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(256);
    // Subscribe before reading the backlog so no event falls in between.
    let live = board.guard.subscribe_alerts();
    let stop = board.stop.clone();
    tokio::spawn(async move {
        let _slot = slot;
        stream_events(board, viewer, filter, after, live, tx, stop).await
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response()
}

async fn stream_events(
    board: Arc<Board>,
    viewer: Viewer,
    filter: Filter,
    mut last: u64,
    mut live: broadcast::Receiver<AlertEvent>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    mut stop: watch::Receiver<bool>,
) {
    let reset = || Ok(Event::default().event("reset").data("resume from the page"));
    if last > board.guard.alerts().last_cursor() {
        // A cursor from the future: this server lost events the page saw (a memory-only restart).
        let _ = tx.send(reset()).await;
        return;
    }
    let send = |e: &AlertEvent| {
        let frame = viewer.frame(&board);
        let row = pages::row(&frame, &e.alert, board.hold_expires(&e.alert));
        let data = serde_json::json!({
            "cursor": e.cursor,
            "alert": e.alert.id,
            "kind": e.kind,
            "matches": filter.matches(&e.alert),
            "row": row.0,
        });
        Ok(Event::default()
            .id(e.cursor.to_string())
            .event("alert")
            .retry(Duration::from_secs(1))
            .data(data.to_string()))
    };
    let mut catch_up = true;
    loop {
        if catch_up {
            let backlog = match &viewer.stations {
                Some(stations) => board.guard.alerts().backlog(stations, last),
                None => board.guard.alerts().events_after(last),
            };
            match backlog {
                Backlog::Events(events) => {
                    for e in &events {
                        last = e.cursor;
                        if tx.send(send(e)).await.is_err() {
                            return;
                        }
                    }
                }
                Backlog::TooOld { .. } => {
                    let _ = tx.send(reset()).await;
                    return;
                }
            }
            catch_up = false;
        }
        let next = tokio::select! {
            next = live.recv() => next,
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
        };
        match next {
            Ok(e) if e.cursor <= last => {}
            Ok(e) => {
                last = e.cursor;
                if viewer.sees(&e.alert) && tx.send(send(&e)).await.is_err() {
                    return;
                }
            }
            // Fell behind the live buffer: read the log again from the last cursor.
            Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn rules_page(State(board): State<Arc<Board>>, headers: HeaderMap, uri: Uri) -> Response {
    let viewer = match board.enter(&headers, &uri, BoardPage::Rules) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    board.sample_hits();
    let now = board.guard.now();
    let offset = board.guard.utc_offset();
    let ruleset = board.guard.ruleset();
    let (per_hour, per_rule) = {
        let hits = board.hits.lock().unwrap_or_else(|e| e.into_inner());
        (hits.per_hour(now), hits.per_rule())
    };
    let since = now - DAYS_SHOWN * 86_400;
    let per_day = board.guard.alerts().tally(|a| {
        (a.created_at >= since).then(|| {
            let day = pages::local_time(a.created_at, offset);
            (day.get(..10).unwrap_or("").to_string(), a.station_id.clone())
        })
    });
    let page = pages::RulesPage {
        version: &ruleset.version,
        name: &ruleset.name,
        rules: &ruleset.rules,
        per_hour,
        per_rule,
        per_day,
        last_reload: board.guard.last_reload(),
        pending: board.guard.pending_proposal(),
        started_at: board.guard.started_at(),
    };
    Html(pages::rules(&viewer.frame(&board), &page).0).into_response()
}

fn clear_token() -> &'static str {
    "tg_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
}

async fn sign_in_page(State(board): State<Arc<Board>>, headers: HeaderMap) -> Response {
    let viewer = Viewer::signing_in(lang_of(&headers));
    Html(pages::sign_in(&viewer.frame(&board), None).0).into_response()
}

#[derive(serde::Deserialize)]
struct SignInForm {
    token: String,
}

/// Checks the pasted token and keeps it in an HttpOnly, same-site cookie.
async fn sign_in(State(board): State<Arc<Board>>, headers: HeaderMap, Form(form): Form<SignInForm>) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let token = form.token.trim();
    let viewer = Viewer::signing_in(lang_of(&headers));
    match board.trust.bearer(Some(token)) {
        Ok(Caller::Known(p)) => {
            tracing::info!(principal = %p, "signed in to the board");
            let home = if p.may_see(BoardPage::Queue).is_ok() { "/" } else { "/rules" };
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
            match HeaderValue::from_str(&cookie) {
                Ok(cookie) => ([(header::SET_COOKIE, cookie)], Redirect::to(home)).into_response(),
                Err(_) => (StatusCode::BAD_REQUEST, "the token has characters a cookie cannot carry").into_response(),
            }
        }
        Ok(_) => Redirect::to("/").into_response(),
        Err(e) => {
            board.guard.refused(&Caller::Open, "board:sign-in", "unauthenticated", &e.to_string());
            (StatusCode::UNAUTHORIZED, Html(pages::sign_in(&viewer.frame(&board), Some(&e.to_string())).0))
                .into_response()
        }
    }
}

async fn sign_out(headers: HeaderMap) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    ([(header::SET_COOKIE, clear_token())], Redirect::to("/login")).into_response()
}

#[derive(serde::Deserialize)]
struct Back {
    back: Option<String>,
}

/// Switches the language (a cookie) and goes back to the page, on this site only.
async fn set_lang(Path(lang): Path<String>, Query(back): Query<Back>) -> Response {
    let Some(lang) = Lang::parse(&lang) else { return (StatusCode::NOT_FOUND, "no such language").into_response() };
    let back = back.back.filter(|b| is_local_path(b));
    let cookie = format!("{LANG_COOKIE}={}; Path=/; SameSite=Lax; Max-Age=31536000", lang.cookie_value());
    let cookie = HeaderValue::from_str(&cookie).expect("ascii");
    ([(header::SET_COOKIE, cookie)], Redirect::to(back.as_deref().unwrap_or("/"))).into_response()
}

/// A path on this site to send the browser back to: no scheme, no host, and
/// nothing a browser would strip or bend into one (`//`, `\\`, tabs, spaces).
fn is_local_path(back: &str) -> bool {
    back.starts_with('/') && !back.starts_with("//") && back.bytes().all(|c| c.is_ascii_graphic() && c != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_streams_are_bounded_and_give_their_place_back() {
        let count = Arc::default();
        let slots: Vec<StreamSlot> = (0..MAX_STREAMS).map(|_| StreamSlot::take(&count).unwrap()).collect();
        assert!(StreamSlot::take(&count).is_none());
        drop(slots);
        assert!(StreamSlot::take(&count).is_some());
    }

    #[test]
    fn the_language_switch_only_goes_back_to_this_site() {
        assert!(is_local_path("/alerts/al-1?state=any"));
        for bad in ["//evil.example", "/\t/evil.example", "/\\evil.example", "https://evil.example", "", "/ x", "/\n/x"]
        {
            assert!(!is_local_path(bad), "{bad:?}");
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_this_sites_forms_act() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080.evil.example")])));
        assert!(!same_origin(&headers(&[host, ("sec-fetch-site", "cross-site")])));
        // Tools (curl) send neither.
        assert!(same_origin(&headers(&[host])));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; tg_lang=en"), ("cookie", "tg_token=v4.public.x")]);
        assert_eq!(cookie(&h, "tg_lang"), Some("en"));
        assert_eq!(cookie(&h, "tg_token"), Some("v4.public.x"));
        assert_eq!(lang_of(&HeaderMap::new()), Lang::Zh);
    }
}
