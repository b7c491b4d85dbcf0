//! The board's HTML, rendered on the server with maud (every value escaped):
//! the page frame, the queue and its rows (also sent over SSE), an alert's
//! page, the analysts' page, sign-in and refusals.
//!
//! Takes plain values; decides nothing and reads no state.
//!
//! One cohesive thing, long because every page is here: each `pub fn` is one
//! page or fragment, sharing the frame, the formatting of time (money: `model::money`),
//! and the encoding of links.

use super::hits::HourHits;
use super::words::{Lang, Words};
use crate::alerts::{Alert, AlertEvent, AlertState, HoldDecision, Outcome};
use crate::auth::Caller;
use crate::model::{money, UnixSeconds};
use crate::rules::{Mode, Rule};
use crate::service::Reload;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::collections::{BTreeMap, HashMap};

/// What every page shows around its content.
pub struct Frame<'a> {
    pub lang: Lang,
    pub caller: &'a Caller,
    /// This page's path and query, to come back to after switching language.
    pub here: &'a str,
    pub now: UnixSeconds,
    pub offset: time::UtcOffset,
}

impl Frame<'_> {
    fn w(&self) -> &'static Words {
        self.lang.words()
    }

    pub fn time(&self, t: UnixSeconds) -> String {
        local_time(t, self.offset)
    }
}

/// RFC 3339, for `<time datetime>`.
pub fn iso(t: UnixSeconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub fn local_time(t: UnixSeconds, offset: time::UtcOffset) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.to_offset(offset).format(&format).ok())
        .unwrap_or_else(|| t.to_string())
}

/// `12:05` (minutes and seconds) until `at`, or the word for expired.
pub fn countdown(at: UnixSeconds, now: UnixSeconds, w: &Words) -> String {
    let left = at - now;
    if left <= 0 {
        return w.expired.to_string();
    }
    format!("{}:{:02}", left / 60, left % 60)
}

pub fn page(frame: &Frame, title: &str, main: Markup) -> Markup {
    let w = frame.w();
    let other = frame.lang.other();
    html! {
        (DOCTYPE)
        html lang=(frame.lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (w.title) }
                link rel="stylesheet" href="/assets/board.css";
                script src="/assets/board.js" defer {}
            }
            body data-now=(frame.now) {
                a.skip href="#main" { (w.skip) }
                header.top {
                    span.brand { (w.title) }
                    nav aria-label=(w.title) {
                        ul {
                            li { a href="/" { (w.queue) } }
                            li { a href="/rules" { (w.rules) } }
                        }
                    }
                    span.who {
                        @match frame.caller {
                            Caller::Known(p) => { (w.signed_in_as) ": " strong { (p.to_string()) } }
                            _ => { (w.open_mode) }
                        }
                    }
                    @if matches!(frame.caller, Caller::Known(_)) {
                        form.inline method="post" action="/logout" { button type="submit" { (w.sign_out) } }
                    }
                    a.lang href={ "/lang/" (other.cookie_value()) "?back=" (encode(frame.here)) }
                        lang=(other.code()) hreflang=(other.code()) { (w.other_language) }
                }
                main #main tabindex="-1" { (main) }
            }
        }
    }
}

/// The queue's filters, as the form and the query string give them.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct QueueQuery {
    /// `open` (the default: not resolved), `any`, or a state name.
    pub state: Option<String>,
    pub station: Option<String>,
    /// `YYYY-MM-DD`, local to the branches.
    pub from: Option<String>,
    pub to: Option<String>,
    /// An alert id or a transfer's request id.
    pub q: Option<String>,
    /// The page after this one: `<created_at>.<alert id>`.
    pub after: Option<String>,
    /// Alerts per page (default 50, at most 200).
    pub limit: Option<usize>,
}

impl QueueQuery {
    /// The query string for these filters (without paging), for links and the event stream.
    pub fn filters(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [("state", &self.state), ("station", &self.station), ("from", &self.from), ("to", &self.to)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", encode(v).0));
            }
        }
        if let Some(n) = self.limit {
            parts.push(format!("limit={n}"));
        }
        parts.join("&")
    }
}

pub struct Queue<'a> {
    pub query: &'a QueueQuery,
    /// (id, name) of the stations the viewer may pick from; empty when they see one.
    pub stations: Vec<(String, String)>,
    pub rows: Vec<(Alert, Option<UnixSeconds>)>,
    pub next_page: Option<String>,
    /// The cursor of the newest event when the list was read: the live stream resumes after it.
    pub cursor: u64,
    pub error: Option<String>,
}

pub fn queue(frame: &Frame, q: &Queue) -> Markup {
    let w = frame.w();
    let state = q.query.state.as_deref().unwrap_or("open");
    let first_page = q.query.after.is_none() && q.query.q.as_deref().is_none_or(str::is_empty);
    let main = html! {
        h1 { (w.queue) }
        form.filters method="get" action="/" role="search" aria-label=(w.filters) {
            label { (w.state) " "
                select name="state" {
                    option value="open" selected[state == "open"] { (w.open_alerts) }
                    @for s in [AlertState::New, AlertState::Escalated, AlertState::Claimed, AlertState::Resolved] {
                        @let name = crate::alerts::state_name(s);
                        option value=(name) selected[state == name] { (frame.lang.state(s)) }
                    }
                    option value="any" selected[state == "any"] { (w.any) }
                }
            }
            @if !q.stations.is_empty() {
                label { (w.station) " "
                    select name="station" {
                        option value="" { (w.all_stations) }
                        @for (id, name) in &q.stations {
                            option value=(id) selected[q.query.station.as_deref() == Some(id.as_str())] { (name) }
                        }
                    }
                }
            }
            label { (w.created_from) " " input type="date" name="from" value=[q.query.from.as_deref()]; }
            label { (w.created_to) " " input type="date" name="to" value=[q.query.to.as_deref()]; }
            label { (w.search) " "
                input type="search" name="q" value=[q.query.q.as_deref()] title=(w.search_help) size="28";
            }
            button type="submit" { (w.apply) }
        }
        @if let Some(e) = &q.error { p.error role="alert" { (e) } }
        p.status { span #live role="status" data-live=(w.live) data-reconnecting=(w.reconnecting) { (w.live) } }
        table #queue
            data-cursor=(q.cursor) data-filters=(q.query.filters()) data-first-page=(first_page) {
            caption.visually-hidden { (w.queue) }
            thead { tr {
                th scope="col" { (w.alert) } th scope="col" { (w.created) } th scope="col" { (w.station) }
                th scope="col" { (w.action) } th scope="col" { (w.score) } th scope="col" { (w.amount) }
                th scope="col" { (w.state) } th scope="col" { (w.hold) } th scope="col" { (w.officer) }
            } }
            tbody {
                @for (alert, expires) in &q.rows { (row(frame, alert, *expires)) }
            }
        }
        p #empty hidden[!q.rows.is_empty()] { (w.no_alerts) }
        nav.pager aria-label="pages" {
            @if !first_page {
                a href={ "/?" (q.query.filters()) } { (w.newest) }
            }
            @if let Some(next) = &q.next_page {
                a rel="next" href={ "/?" (q.query.filters()) "&after=" (encode(next)) } { (w.older) }
            }
        }
    };
    page(frame, w.queue, main)
}

/// One alert as a row of the queue.
pub fn row(frame: &Frame, a: &Alert, hold_expires: Option<UnixSeconds>) -> Markup {
    let w = frame.w();
    let escalated = a.escalation_station_id.is_some() && a.state != AlertState::Resolved;
    // The state already says so while it is escalated; the badge marks it once claimed.
    let badge = escalated && a.state != AlertState::Escalated;
    html! {
        tr id={ "alert-" (a.id) } data-alert=(a.id) data-state=(crate::alerts::state_name(a.state))
            class=(if escalated { "escalated" } else { "" }) {
            th scope="row" { a href={ "/alerts/" (encode(&a.id)) } { (a.id) } }
            td { time datetime=(iso(a.created_at)) { (frame.time(a.created_at)) } }
            td { (a.station_id)
                @if let Some(e) = &a.escalation_station_id { " → " (e) }
            }
            td { span class={ "action " (a.action.as_str().to_lowercase()) } { (frame.lang.action(a.action)) } }
            td.num { (a.score) }
            td.num { (money(a.transfer.amount, &a.transfer.currency)) }
            td { (frame.lang.state(a.state))
                @if badge { " " strong.badge { (w.escalated_badge) } }
            }
            td.hold {
                @if let (Some(at), true) = (hold_expires, a.awaiting_decision) {
                    span.countdown data-expires=(at) data-expired=(w.expired) { (countdown(at, frame.now, w)) }
                }
            }
            td { (a.officer_id.as_deref().unwrap_or("")) }
        }
    }
}

pub struct AlertPage<'a> {
    pub alert: &'a Alert,
    pub hold_expires: Option<UnixSeconds>,
    pub history: &'a [AlertEvent],
    /// The newest event cursor when the page was read.
    pub cursor: u64,
    /// Open mode: the officer types their id.
    pub ask_officer_id: bool,
    pub error: Option<String>,
}

pub fn alert(frame: &Frame, p: &AlertPage) -> Markup {
    let (w, lang, a) = (frame.w(), frame.lang, p.alert);
    let t = &a.transfer;
    let active = a.state != AlertState::Resolved;
    let questions: Vec<&str> = {
        let mut v: Vec<&str> = Vec::new();
        for h in a.hits.iter().filter(|h| !h.shadow) {
            for q in h.text.questions(lang == Lang::En).iter().map(|q| q.as_ref()) {
                if !v.contains(&q) {
                    v.push(q);
                }
            }
        }
        v
    };
    let main = html! {
        h1 { (w.alert) " " (a.id) }
        @if let Some(e) = &p.error { p.error role="alert" { (e) } }
        p #changed.notice role="status" hidden data-alert=(a.id) data-cursor=(p.cursor) {
            a href={ "/alerts/" (encode(&a.id)) } { (w.changed_reload) }
        }
        dl.facts {
            dt { (w.state) } dd { (lang.state(a.state))
                @if a.escalation_station_id.is_some() && a.state == AlertState::Claimed { " " strong.badge { (w.escalated_badge) } } }
            dt { (w.action) } dd { span class={ "action " (a.action.as_str().to_lowercase()) } { (lang.action(a.action)) } " · " (w.score) " " (a.score) }
            dt { (w.station) } dd { (a.station_id) @if let Some(e) = &a.escalation_station_id { " → " (e) } }
            dt { (w.created) } dd { (frame.time(a.created_at)) }
            @if a.state == AlertState::New {
                dt { (w.claim_deadline) } dd { (frame.time(a.claim_deadline)) }
            }
            @if let (Some(at), true) = (p.hold_expires, a.awaiting_decision) {
                dt { (w.hold) } dd { strong { (w.waiting) } " · "
                    span.countdown data-expires=(at) data-expired=(w.expired) { (countdown(at, frame.now, w)) } }
            }
            @if let Some(o) = &a.officer_id { dt { (w.officer) } dd { (o) } }
            @if let Some(o) = a.outcome { dt { (w.outcome) } dd { (lang.outcome(o))
                @match a.hold_decision { Some(HoldDecision::Release) => { " · " (w.release) } Some(HoldDecision::Block) => { " · " (w.block) } None => {} }
            } }
            @if !a.note.is_empty() { dt { (w.note) } dd { (a.note) } }
        }
        section aria-labelledby="h-transfer" {
            h2 #h-transfer { (w.transfer) }
            dl.facts {
                dt { (w.request_id) } dd { code { (t.request_id) } }
                dt { (w.amount) } dd { strong { (money(t.amount, &t.currency)) } }
                dt { (w.bank) " / " (w.branch) " / " (w.teller) } dd { (t.bank_id) " / " (t.branch_id) " / " (t.teller_id) }
                dt { (w.channel) } dd { (t.channel.as_str()) }
                dt { (w.customer_account) } dd { code { (t.customer_account_masked) } " · " (w.age_band) " " (t.customer_age_band) }
                dt { (w.payee) } dd { (t.payee_name_masked) " · " code { (t.payee_account_masked) } }
                dt { (w.payee_bank) } dd { (t.payee_bank_code) }
                dt { (w.memo) } dd { (if t.memo.is_empty() { w.none } else { &t.memo }) }
                dt { (w.ruleset_version) } dd { code { (a.ruleset_version) } }
            }
        }
        section aria-labelledby="h-reasons" {
            h2 #h-reasons { (w.reasons) }
            ul.hits {
                @for h in &a.hits {
                    li {
                        code { (h.rule_id()) } " +" (h.score)
                        @if h.shadow { " (" (w.shadow) ")" }
                        @if !h.text.typology.is_empty() { " · " strong.typology { (h.text.typology) } }
                        br;
                        (if lang == Lang::En { h.reason_en() } else { h.reason_zh() })
                    }
                }
            }
        }
        section aria-labelledby="h-questions" {
            h2 #h-questions { (w.questions) }
            @if questions.is_empty() { p { (w.no_questions) } }
            @else { ol.questions { @for q in &questions { li { (q) } } } }
        }
        section aria-labelledby="h-observations" {
            h2 #h-observations { (w.observations) }
            @if t.observations.is_empty() { p { (w.none) } }
            @else { ul { @for o in t.observations.iter() { li { (lang.observation(o)) } } } }
        }
        @if active {
            section.actions aria-labelledby="h-act" {
                h2 #h-act { (w.claim) " / " (w.resolve) }
                @if matches!(a.state, AlertState::New | AlertState::Escalated) {
                    form method="post" action={ "/alerts/" (encode(&a.id)) "/claim" } {
                        (officer_field(w, p.ask_officer_id, "claim-officer"))
                        button #claim type="submit" { (w.claim) }
                    }
                }
                form method="post" action={ "/alerts/" (encode(&a.id)) "/resolve" } {
                    (officer_field(w, p.ask_officer_id, "resolve-officer"))
                    fieldset {
                        legend { (w.outcome) }
                        @for (i, o) in [Outcome::Dissuaded, Outcome::FraudConfirmed, Outcome::FalseAlarm, Outcome::CustomerProceeded].into_iter().enumerate() {
                            label { input type="radio" name="outcome" value=(o.as_str()) required[i == 0]; " " (lang.outcome(o)) }
                        }
                    }
                    @if a.awaiting_decision {
                        fieldset {
                            legend { (w.decision) }
                            label { input #decision-release type="radio" name="decision" value="release" required; " " (w.release) }
                            label { input #decision-block type="radio" name="decision" value="block"; " " (w.block) }
                        }
                    }
                    label { (w.note) " " textarea name="note" rows="2" cols="40" maxlength="1000" {} }
                    button #resolve type="submit" { (w.resolve) }
                }
            }
        }
        section aria-labelledby="h-history" {
            h2 #h-history { (w.history) }
            ol.history {
                @for e in p.history {
                    li { time datetime=(iso(e.at)) { (frame.time(e.at)) } " · " (lang.event(e.kind))
                        @if let Some(o) = &e.alert.officer_id { @if e.kind != "raised" { " · " (o) } } }
                }
            }
        }
    };
    page(frame, &format!("{} {}", w.alert, a.id), main)
}

fn officer_field(w: &Words, ask: bool, id: &str) -> Markup {
    html! {
        @if ask {
            label for=(id) { (w.officer_id) }
            " "
            input id=(id) type="text" name="officer" required pattern="[A-Za-z0-9._-]{1,64}"
                autocomplete="username" title=(w.officer_id_help) data-remember="officer";
        }
    }
}

pub struct RulesPage<'a> {
    pub version: &'a str,
    pub name: &'a str,
    pub rules: &'a [Rule],
    pub per_hour: Vec<(UnixSeconds, HourHits)>,
    pub per_rule: HashMap<String, HourHits>,
    /// (day, station) → alerts raised, for the last days.
    pub per_day: BTreeMap<(String, String), usize>,
    pub last_reload: Option<(UnixSeconds, Reload)>,
    pub pending: Option<(String, String, UnixSeconds)>,
    pub started_at: UnixSeconds,
}

pub fn rules(frame: &Frame, r: &RulesPage) -> Markup {
    let w = frame.w();
    let days: Vec<&String> = {
        let mut d: Vec<&String> = r.per_day.keys().map(|(d, _)| d).collect();
        d.dedup();
        // Newest day first.
        d.reverse();
        d
    };
    let stations: Vec<&String> = {
        let mut s: Vec<&String> = r.per_day.keys().map(|(_, s)| s).collect();
        s.sort();
        s.dedup();
        s
    };
    let main = html! {
        h1 { (w.rules) }
        section aria-labelledby="h-live" {
            h2 #h-live { (w.live_ruleset) }
            dl.facts {
                dt { (w.ruleset_version) } dd { code #version { (r.version) } " · " (r.name) }
                dt { (w.last_reload) }
                dd #last-reload {
                    @match &r.last_reload {
                        None => { (w.no_reload) " (" (frame.time(r.started_at)) ")" }
                        Some((at, reload)) => {
                            (frame.time(*at)) " · "
                            @if reload.reloaded { (w.reload_ok) } @else { strong { (w.reload_refused) } }
                            @if !reload.errors.is_empty() {
                                ul.errors { @for e in &reload.errors { li { code { (e) } } } }
                            }
                        }
                    }
                }
                @if let Some((version, by, at)) = &r.pending {
                    dt { (w.pending) } dd { code { (version) } " · " (by) " · " (frame.time(*at)) }
                }
            }
        }
        section aria-labelledby="h-hits" {
            h2 #h-hits { (w.hits_per_hour) }
            p.hint { "(" (w.hits_since) ")" }
            (hour_chart(frame, &r.per_hour))
        }
        section aria-labelledby="h-rules" {
            h2 #h-rules { (w.loaded_rules) " (" (r.rules.len()) ")" }
            table.rules {
                thead { tr { th scope="col" { (w.rule) } th scope="col" { (w.mode) } th scope="col" { (w.score) }
                    th scope="col" { (w.hits_24h) } } }
                tbody {
                    @for rule in r.rules {
                        @let hits = r.per_rule.get(rule.id.as_ref()).copied().unwrap_or_default();
                        tr {
                            th scope="row" { code { (rule.id) } br; span.title { (rule.title) } }
                            td { @if rule.mode == Mode::Shadow { (w.shadow) } @else { (w.active) } }
                            td.num { (rule.score) }
                            td.num { (hits.active + hits.shadow) }
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-days" {
            h2 #h-days { (w.alerts_per_day) }
            @if r.per_day.is_empty() { p { (w.no_alerts) } }
            @else {
                table.per-day {
                    thead { tr { th scope="col" { (w.day) } @for s in &stations { th scope="col" { (s) } } } }
                    tbody { @for d in &days { tr {
                        th scope="row" { (d) }
                        @for s in &stations { td.num { (r.per_day.get(&((*d).clone(), (*s).clone())).copied().unwrap_or(0)) } }
                    } } }
                }
            }
        }
    };
    page(frame, w.rules, main)
}

/// Stacked bars (active below, shadow above) with the numbers in a table for screen readers.
fn hour_chart(frame: &Frame, hours: &[(UnixSeconds, HourHits)]) -> Markup {
    let w = frame.w();
    let max = hours.iter().map(|(_, h)| h.active + h.shadow).max().unwrap_or(0).max(1);
    let (bar, gap, height) = (22u64, 6u64, 120u64);
    let width = hours.len() as u64 * (bar + gap);
    let hour_label = |t: UnixSeconds| frame.time(t).get(11..13).unwrap_or("").to_string();
    html! {
        figure.chart {
            svg role="img" aria-labelledby="chart-title" viewBox={ "0 0 " (width) " " (height + 20) } width=(width) height=(height + 20) {
                title #chart-title { (w.hits_per_hour) }
                @for (i, (t, h)) in hours.iter().enumerate() {
                    @let x = i as u64 * (bar + gap);
                    @let a = h.active * height / max;
                    @let s = h.shadow * height / max;
                    rect.active x=(x) y=(height - a) width=(bar) height=(a) {}
                    rect.shadow x=(x) y=(height - a - s) width=(bar) height=(s) {}
                    text x=(x + bar / 2) y=(height + 14) text-anchor="middle" { (hour_label(*t)) }
                }
            }
            figcaption {
                span.key.active { "■" } " " (w.active) " "
                span.key.shadow { "■" } " " (w.shadow)
            }
            details {
                summary { (w.hits_per_hour) }
                table {
                    thead { tr { th scope="col" { (w.hour) } th scope="col" { (w.active) } th scope="col" { (w.shadow) } } }
                    tbody { @for (t, h) in hours { tr { th scope="row" { (frame.time(*t)) } td.num { (h.active) } td.num { (h.shadow) } } } }
                }
            }
        }
    }
}

pub fn sign_in(frame: &Frame, error: Option<&str>) -> Markup {
    let w = frame.w();
    let main = html! {
        h1 { (w.sign_in) }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form method="post" action="/login" {
            label for="token" { (w.token) }
            p.hint #token-help { (w.token_help) }
            textarea #token name="token" rows="4" cols="60" required aria-describedby="token-help" autocomplete="off" {}
            p { button type="submit" { (w.sign_in) } }
        }
    };
    page(frame, w.sign_in, main)
}

pub fn refusal(frame: &Frame, message: &str) -> Markup {
    let w = frame.w();
    page(
        frame,
        w.forbidden,
        html! {
            h1 { (w.forbidden) }
            p role="alert" { (message) }
        },
    )
}

pub fn not_found(frame: &Frame) -> Markup {
    let w = frame.w();
    page(frame, w.not_found, html! { h1 { (w.not_found) } p { a href="/" { (w.queue) } } })
}

/// Percent-encodes a value for a URL's path segment or query.
pub fn encode(s: &str) -> PreEscaped<String> {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // Only unreserved characters and %XX remain: nothing for HTML to escape.
    PreEscaped(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_leaves_only_safe_characters() {
        assert_eq!(encode("a b&c=<d>").0, "a%20b%26c%3D%3Cd%3E");
        assert_eq!(encode("派").0, "%E6%B4%BE");
    }
}
