//! Backtests: replay a history in time order through the engine and a fresh
//! state, exactly as the server would count it (ALLOW and WARN count at once;
//! a HOLD counts only if its expiry action releases it, since no officer
//! decides in a replay; a BLOCK never), and report what the ruleset does.
//!
//! Pure: no clock, no network; the caller reads the file.

use crate::alerts::Routing;
use crate::engine;
use crate::lifecycle::{History, TransferEvent, TransferState};
use crate::model::Action;
use crate::rules::Ruleset;
use crate::simulate::Labelled;
use crate::state::{State, WatchEntry};
use serde::Serialize;
use std::collections::BTreeMap;

/// One replayed transfer's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub request_id: String,
    pub action: Action,
    pub score: i64,
    /// Active and shadow hits, by rule id.
    pub hits: Vec<(String, bool)>,
    pub scam: Option<bool>,
}

/// Precision and recall of "flagged" against the labels.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quality {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub precision: f64,
    pub recall: f64,
}

impl Quality {
    fn of(tp: u64, fp: u64, fn_: u64) -> Quality {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Quality {
            true_positives: tp,
            false_positives: fp,
            false_negatives: fn_,
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, tp + fn_),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleStats {
    pub mode: &'static str,
    pub hits: u64,
    /// Hits on transfers labelled scam / ordinary.
    pub scam_hits: u64,
    pub ordinary_hits: u64,
    /// Of the rule's hits, how many were scams; of all scams, how many it hit.
    pub precision: f64,
    pub recall: f64,
}

/// What a backtest found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub ruleset_version: String,
    pub transfers: u64,
    pub invalid: u64,
    pub actions: BTreeMap<&'static str, u64>,
    pub rules: BTreeMap<String, RuleStats>,
    /// Alerts (HOLD and BLOCK) per station per day ("YYYY-MM-DD", local time).
    pub alerts_per_station_day: BTreeMap<String, BTreeMap<String, u64>>,
    pub labelled: u64,
    pub scams: u64,
    /// Confusion matrix: label → action → count.
    pub confusion: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Flagged meaning "the action is at least …": WARN, HOLD, BLOCK.
    pub by_threshold: BTreeMap<&'static str, Quality>,
    /// Scores of scams and of ordinary transfers, in buckets of 10.
    pub score_histogram: BTreeMap<&'static str, BTreeMap<i64, u64>>,
    /// Scam type → stage (`lead-in`, `decisive`) → how many were warned, held.
    pub typologies: BTreeMap<String, BTreeMap<String, Caught>>,
    /// Ordinary kind → how many were warned, held: the false alarms.
    pub ordinary_kinds: BTreeMap<String, Caught>,
    /// Scores in buckets of 10 per class: each scam type's decisive payments,
    /// and `ordinary`; for the curves of recall and false alarms by threshold.
    pub class_scores: BTreeMap<String, BTreeMap<i64, u64>>,
    /// What the alerts ask of the police.
    pub workload: Workload,
    /// The ruleset's score thresholds: WARN, HOLD, BLOCK.
    pub thresholds: [i64; 3],
    /// With [`Replay::officers_confirm_after`]: receiving accounts the
    /// replayed officers' confirmations put on the watchlist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts_listed_by_officers: Option<u64>,
}

/// How a history is replayed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay {
    /// Count only transfers at or after this time in the report (see [`run_from`]).
    pub measure_from: Option<i64>,
    /// Replay the police's side of the loop from the labels: this many seconds
    /// after a scam payment was held or blocked, its station's officer
    /// confirms the fraud, and the receiving account goes on the watchlist
    /// (as the service does on a `fraud_confirmed` outcome). A false alarm is
    /// never confirmed: as long after, its officer finds no fraud, which
    /// clears the stop it left on the customer (`customer.stopped_ago`), as a
    /// `false_alarm` outcome does. None: no officer acts.
    pub officers_confirm_after: Option<i64>,
}

/// What a replayed officer answers about an alert ([`Replay::officers_confirm_after`]).
enum OfficersAnswer {
    Confirmed { account: String, station_id: String },
    NoFraud { customer_id: String, at: i64 },
}

/// Of some transfers, how many got at least a WARN, at least a HOLD.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Caught {
    pub transfers: u64,
    /// Exactly WARN.
    pub warned: u64,
    /// HOLD or BLOCK.
    pub held: u64,
    /// (warned + held) / transfers: recall at WARN+ for scams.
    pub warn_or_more: f64,
    /// held / transfers: recall at HOLD+ for scams, the false-alarm rate for ordinary ones.
    pub hold_or_more: f64,
    /// warned / transfers.
    pub warn_only: f64,
}

impl Caught {
    fn count(&mut self, action: Action) {
        self.transfers += 1;
        match action {
            Action::Warn => self.warned += 1,
            Action::Hold | Action::Block => self.held += 1,
            Action::Allow => {}
        }
    }

    fn finish(&mut self) {
        let n = self.transfers.max(1) as f64;
        self.warn_or_more = (self.warned + self.held) as f64 / n;
        self.hold_or_more = self.held as f64 / n;
        self.warn_only = self.warned as f64 / n;
    }
}

/// Alerts (HOLD and BLOCK) for the police, per station and in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Workload {
    pub customers: u64,
    pub days: u64,
    pub alerts: u64,
    /// All stations: alerts per day per 10,000 customers.
    pub per_day_per_10k_customers: f64,
    /// Station → (customers of its branches, alerts per day, per day per 10,000 of them).
    pub stations: BTreeMap<String, StationLoad>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StationLoad {
    pub customers: u64,
    pub alerts: u64,
    pub per_day: f64,
    pub per_day_per_10k_customers: f64,
}

/// Replays `history` (any order; sorted by time here, stable) through `ruleset`.
pub fn run(
    ruleset: &Ruleset,
    routing: &Routing,
    history: &[Labelled],
    progress: impl FnMut(u64),
) -> (Report, Vec<Replayed>) {
    run_from(ruleset, routing, history, None, progress)
}

/// [`run`], counting in the report only transfers at or after `measure_from`:
/// the earlier ones still build the state (known payees, windows), so a replay
/// that starts from an empty state does not count every usual payee as new.
pub fn run_from(
    ruleset: &Ruleset,
    routing: &Routing,
    history: &[Labelled],
    measure_from: Option<i64>,
    progress: impl FnMut(u64),
) -> (Report, Vec<Replayed>) {
    run_with(ruleset, routing, history, Replay { measure_from, ..Replay::default() }, progress)
}

/// [`run_from`], replayed as `replay` says.
pub fn run_with(
    ruleset: &Ruleset,
    routing: &Routing,
    history: &[Labelled],
    replay: Replay,
    mut progress: impl FnMut(u64),
) -> (Report, Vec<Replayed>) {
    let measure_from = replay.measure_from;
    // Officers' answers still to come, in time order.
    let mut answers: std::collections::VecDeque<(i64, OfficersAnswer)> = Default::default();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].request.requested_at.as_ref().map_or(0, |t| t.seconds));
    let state = State::new();
    let t = &ruleset.thresholds;
    let mut report = Report {
        ruleset_version: ruleset.version.to_string(),
        thresholds: [t.warn, t.hold, t.block],
        ..Report::default()
    };
    report.accounts_listed_by_officers = replay.officers_confirm_after.map(|_| 0);
    for rule in &ruleset.rules {
        report.rules.insert(rule.id.to_string(), RuleStats { mode: rule.mode.as_str(), ..RuleStats::default() });
    }
    let mut replayed = Vec::with_capacity(history.len());
    // Customer → its station (by its first branch), and the days measured.
    let mut customers: BTreeMap<String, String> = BTreeMap::new();
    let mut days = std::collections::BTreeSet::new();
    for (n, &i) in order.iter().enumerate() {
        if n % 10_000 == 0 {
            progress(n as u64);
        }
        let line = &history[i];
        let transfer = match crate::api::convert::transfer(line.request.clone(), ruleset.utc_offset) {
            // A currency without a rate is refused by the service too.
            Ok(t) if ruleset.in_base(t.amount, &t.currency).is_some() => t,
            _ => {
                report.invalid += 1;
                continue;
            }
        };
        while answers.front().is_some_and(|(due, _)| *due <= transfer.requested_at) {
            match answers.pop_front().expect("checked above") {
                (due, OfficersAnswer::Confirmed { account, station_id }) => {
                    let reason = "fraud confirmed (replayed from the labels)".to_string();
                    if state.watchlist_add(WatchEntry { account, station_id, reason, added_at: due, expires_at: None })
                    {
                        *report.accounts_listed_by_officers.get_or_insert(0) += 1;
                    }
                }
                (_, OfficersAnswer::NoFraud { customer_id, at }) => state.clear_stopped(&customer_id, at),
            }
        }
        let evaluation = engine::screen(ruleset, &transfer, &state);
        let decision = &evaluation.decision;
        if decision.action.raises_alert() {
            let (customer_id, at) = (&transfer.customer.customer_id, transfer.requested_at);
            state.record_stopped(customer_id, at);
            if let Some(after) = replay.officers_confirm_after {
                let answer = if line.is_scam() {
                    let (station, _) = routing.route(&transfer.branch_id);
                    OfficersAnswer::Confirmed {
                        account: transfer.payee.account.clone(),
                        station_id: station.id.clone(),
                    }
                } else {
                    OfficersAnswer::NoFraud { customer_id: customer_id.clone(), at }
                };
                answers.push_back((at + after, answer));
            }
        }
        // No officer acts in a replay: a hold ends as its expiry action says.
        let mut step = TransferState::screened(decision.action);
        if step.to == TransferState::Held {
            step = TransferState::Held.next(TransferEvent::Expire(ruleset.hold.expiry_action)).expect("holds expire");
        }
        if step.history == History::Count {
            state.apply(&evaluation.record);
        }
        if measure_from.is_some_and(|from| transfer.requested_at < from) {
            continue;
        }
        report.transfers += 1;
        *report.actions.entry(decision.action.as_str()).or_default() += 1;
        let bucket = decision.score.div_euclid(10) * 10;
        let scam = (!line.label.is_empty()).then(|| line.is_scam());
        for h in &decision.hits {
            let stats = report.rules.entry(h.rule_id().to_string()).or_default();
            stats.hits += 1;
            match scam {
                Some(true) => stats.scam_hits += 1,
                Some(false) => stats.ordinary_hits += 1,
                None => {}
            }
        }
        if decision.action.raises_alert() {
            let (station, _) = routing.route(&transfer.branch_id);
            let local = transfer.requested_at + i64::from(ruleset.utc_offset.whole_seconds());
            let day =
                time::OffsetDateTime::from_unix_timestamp(local).map_or_else(|_| "?".into(), |t| t.date().to_string());
            *report.alerts_per_station_day.entry(station.id.clone()).or_default().entry(day).or_default() += 1;
        }
        match scam {
            Some(true) => {
                let stage = if line.stage.is_empty() { "decisive" } else { line.stage.as_str() };
                let kind = if line.scam_type.is_empty() { "unnamed" } else { line.scam_type.as_str() };
                report
                    .typologies
                    .entry(kind.into())
                    .or_default()
                    .entry(stage.into())
                    .or_default()
                    .count(decision.action);
                if stage == "decisive" {
                    *report.class_scores.entry(kind.into()).or_default().entry(bucket).or_default() += 1;
                }
            }
            Some(false) => {
                let kind = if line.kind.is_empty() { "unnamed" } else { line.kind.as_str() };
                report.ordinary_kinds.entry(kind.into()).or_default().count(decision.action);
                *report.class_scores.entry("ordinary".into()).or_default().entry(bucket).or_default() += 1;
            }
            None => {}
        }
        let (station, _) = routing.route(&transfer.branch_id);
        customers.entry(transfer.customer.customer_id.clone()).or_insert_with(|| station.id.clone());
        days.insert(transfer.requested_at.div_euclid(86_400));
        if let Some(is_scam) = scam {
            report.labelled += 1;
            report.scams += u64::from(is_scam);
            let label = if is_scam { "scam" } else { "ordinary" };
            *report.confusion.entry(label).or_default().entry(decision.action.as_str()).or_default() += 1;
            *report.score_histogram.entry(label).or_default().entry(decision.score.div_euclid(10) * 10).or_default() +=
                1;
        }
        replayed.push(Replayed {
            request_id: transfer.request_id,
            action: decision.action,
            score: decision.score,
            hits: decision.hits.iter().map(|h| (h.rule_id().to_string(), h.shadow)).collect(),
            scam,
        });
    }
    progress(history.len() as u64);
    for threshold in [Action::Warn, Action::Hold, Action::Block] {
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        for r in &replayed {
            match (r.scam, r.action >= threshold) {
                (Some(true), true) => tp += 1,
                (Some(false), true) => fp += 1,
                (Some(true), false) => fn_ += 1,
                _ => {}
            }
        }
        report.by_threshold.insert(threshold.as_str(), Quality::of(tp, fp, fn_));
    }
    for caught in report.typologies.values_mut().flat_map(|stages| stages.values_mut()) {
        caught.finish();
    }
    for caught in report.ordinary_kinds.values_mut() {
        caught.finish();
    }
    let w = &mut report.workload;
    w.customers = customers.len() as u64;
    w.days = days.len() as u64;
    w.alerts = report.alerts_per_station_day.values().flat_map(|d| d.values()).sum();
    let per = |alerts: u64, customers: u64, days: u64| {
        alerts as f64 / days.max(1) as f64 * 10_000.0 / customers.max(1) as f64
    };
    w.per_day_per_10k_customers = per(w.alerts, w.customers, w.days);
    for station in customers.values() {
        w.stations.entry(station.clone()).or_default().customers += 1;
    }
    for (station, by_day) in &report.alerts_per_station_day {
        w.stations.entry(station.clone()).or_default().alerts = by_day.values().sum();
    }
    for load in w.stations.values_mut() {
        load.per_day = load.alerts as f64 / w.days.max(1) as f64;
        load.per_day_per_10k_customers = per(load.alerts, load.customers, w.days);
    }
    for stats in report.rules.values_mut() {
        let q = Quality::of(stats.scam_hits, stats.ordinary_hits, report.scams.saturating_sub(stats.scam_hits));
        stats.precision = q.precision;
        stats.recall = q.recall;
    }
    (report, replayed)
}

/// One measured transfer's decision as a JSON line, with its labels: what an
/// analyst reads to see which scams slipped through and which ordinary
/// payments were stopped, and by which rules.
#[derive(Serialize)]
struct DecisionLine<'a> {
    request_id: &'a str,
    label: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scam_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    stage: &'a str,
    action: &'static str,
    score: i64,
    hits: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadow_hits: Vec<&'a str>,
}

/// [`DecisionLine`]s for every replayed transfer, in replay order.
pub fn decision_lines(replayed: &[Replayed], history: &[Labelled]) -> String {
    let labels: std::collections::HashMap<&str, &Labelled> =
        history.iter().map(|l| (l.request.request_id.as_str(), l)).collect();
    let mut out = String::new();
    for r in replayed {
        let label = labels.get(r.request_id.as_str());
        let field = |f: fn(&Labelled) -> &str| label.map_or("", |l| f(l));
        let line = DecisionLine {
            request_id: &r.request_id,
            label: field(|l| &l.label),
            kind: field(|l| &l.kind),
            scam_type: field(|l| &l.scam_type),
            stage: field(|l| &l.stage),
            action: r.action.as_str(),
            score: r.score,
            hits: r.hits.iter().filter(|(_, shadow)| !shadow).map(|(id, _)| id.as_str()).collect(),
            shadow_hits: r.hits.iter().filter(|(_, shadow)| *shadow).map(|(id, _)| id.as_str()).collect(),
        };
        out.push_str(&serde_json::to_string(&line).expect("a decision line serialises"));
        out.push('\n');
    }
    out
}

/// Decisions that differ between two replays of the same history, with the
/// rules that hit in one and not the other.
pub fn diff(current: &[Replayed], baseline: &[Replayed]) -> Vec<String> {
    let base: BTreeMap<&str, &Replayed> = baseline.iter().map(|r| (r.request_id.as_str(), r)).collect();
    let mut out = Vec::new();
    for r in current {
        let Some(b) = base.get(r.request_id.as_str()) else { continue };
        if r.action != b.action {
            let ids = |x: &Replayed| x.hits.iter().map(|(id, _)| id.clone()).collect::<std::collections::BTreeSet<_>>();
            let (now, before) = (ids(r), ids(b));
            let added: Vec<_> = now.difference(&before).cloned().collect();
            let removed: Vec<_> = before.difference(&now).cloned().collect();
            out.push(format!(
                "{}: {} ({}) → {} ({}); hits added {:?}, removed {:?}",
                r.request_id, b.action, b.score, r.action, r.score, added, removed
            ));
        }
    }
    out
}

/// A readable summary.
pub fn text(report: &Report) -> String {
    let mut s = format!("ruleset {}\n{} transfers replayed", report.ruleset_version, report.transfers);
    if report.invalid > 0 {
        s.push_str(&format!(" ({} invalid lines skipped)", report.invalid));
    }
    s.push_str("\n\nactions:\n");
    for (action, n) in &report.actions {
        s.push_str(&format!("  {action:<6} {n:>10}  {:>6.2}%\n", 100.0 * *n as f64 / report.transfers.max(1) as f64));
    }
    if report.labelled > 0 {
        s.push_str(&format!(
            "\nlabelled {} transfers, {} scams\nflagged at least … precision recall\n",
            report.labelled, report.scams
        ));
        for (t, q) in &report.by_threshold {
            s.push_str(&format!(
                "  {t:<6}            {:>8.3} {:>6.3}  (tp {}, fp {}, fn {})\n",
                q.precision, q.recall, q.true_positives, q.false_positives, q.false_negatives
            ));
        }
        if let Some(listed) = report.accounts_listed_by_officers {
            s.push_str(&format!("  (officers' confirmations replayed: {listed} receiving accounts watchlisted)\n"));
        }
        s.push_str("confusion (label → action):\n");
        for (label, row) in &report.confusion {
            let cells: Vec<String> = row.iter().map(|(a, n)| format!("{a} {n}")).collect();
            s.push_str(&format!("  {label:<9} {}\n", cells.join(", ")));
        }
    }
    if !report.typologies.is_empty() {
        s.push_str("\nscams by type and stage: transfers, WARN+ recall, HOLD+ recall\n");
        for (kind, stages) in &report.typologies {
            for (stage, c) in stages {
                s.push_str(&format!(
                    "  {:<14} {stage:<9} {:>6}  {:>6.3}  {:>6.3}\n",
                    kind, c.transfers, c.warn_or_more, c.hold_or_more
                ));
            }
        }
    }
    if !report.ordinary_kinds.is_empty() {
        s.push_str("\nordinary transfers by kind: transfers, WARN, HOLD+ (false alarms)\n");
        for (kind, c) in &report.ordinary_kinds {
            s.push_str(&format!(
                "  {kind:<24} {:>8}  {:>6.2}%  {:>6.3}%\n",
                c.transfers,
                100.0 * c.warn_only,
                100.0 * c.hold_or_more
            ));
        }
        let all = report.ordinary_kinds.values().fold(Caught::default(), |mut a, c| {
            a.transfers += c.transfers;
            a.warned += c.warned;
            a.held += c.held;
            a
        });
        let mut all = all;
        all.finish();
        s.push_str(&format!(
            "  {:<24} {:>8}  {:>6.2}%  {:>6.3}%\n",
            "all ordinary",
            all.transfers,
            100.0 * all.warn_only,
            100.0 * all.hold_or_more
        ));
    }
    let w = &report.workload;
    if w.customers > 0 {
        s.push_str(&format!(
            "\npolice workload: {} alerts over {} days for {} customers = {:.2} alerts a day per 10,000 customers\n",
            w.alerts, w.days, w.customers, w.per_day_per_10k_customers
        ));
        for (station, l) in &w.stations {
            s.push_str(&format!(
                "  {station:<30} {:>7} customers {:>6.2} alerts a day ({:.2} per 10,000 customers)\n",
                l.customers, l.per_day, l.per_day_per_10k_customers
            ));
        }
    }
    s.push_str("\nrule hits (mode, hits, scam hits, precision, recall):\n");
    let mut rules: Vec<_> = report.rules.iter().collect();
    rules.sort_by_key(|r| std::cmp::Reverse(r.1.hits));
    for (id, r) in rules {
        s.push_str(&format!(
            "  {id:<40} {:<6} {:>8} {:>8} {:>7.3} {:>7.3}\n",
            r.mode, r.hits, r.scam_hits, r.precision, r.recall
        ));
    }
    s.push_str("\nalerts per station per day:\n");
    for (station, days) in &report.alerts_per_station_day {
        let total: u64 = days.values().sum();
        s.push_str(&format!(
            "  {station:<30} {total:>6} over {} days, most {} in a day\n",
            days.len(),
            days.values().max().unwrap_or(&0)
        ));
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Horizontal bars as an inline SVG: `(label, value, colour)`.
fn bars(rows: &[(String, u64, &str)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1) as f64;
    let height = 22 * rows.len() + 10;
    let mut svg = format!(
        r#"<svg width="760" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="12">"#
    );
    for (i, (label, value, colour)) in rows.iter().enumerate() {
        let y = 5 + i * 22;
        let w = (*value as f64 / max * 420.0).max(1.0);
        svg.push_str(&format!(
            r#"<text x="0" y="{}" >{}</text><rect x="290" y="{}" width="{w:.1}" height="16" fill="{colour}"/><text x="{:.1}" y="{}">{value}</text>"#,
            y + 13,
            escape(label),
            y,
            296.0 + w,
            y + 13
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// Recall per scam type and stage, false alarms per ordinary kind, the police workload.
fn typology_tables(report: &Report) -> String {
    let pct = |x: f64| format!("{:.1} %", 100.0 * x);
    let mut page = String::from(
        "<h2>Scams by type and stage</h2><p>Recall: the share of each type's payments the rules warned about or held.          The decisive payments are the ones that take the money.</p>\
         <table><tr><th>scam type</th><th>stage</th><th>payments</th><th>WARN or more</th><th>HOLD or more</th></tr>",
    );
    for (kind, stages) in &report.typologies {
        for (stage, c) in stages {
            page.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(kind),
                escape(stage),
                c.transfers,
                pct(c.warn_or_more),
                pct(c.hold_or_more)
            ));
        }
    }
    page.push_str(
        "</table><h2>False alarms by kind of ordinary transfer</h2>\
         <table><tr><th>kind</th><th>transfers</th><th>WARN</th><th>HOLD or more</th></tr>",
    );
    for (kind, c) in &report.ordinary_kinds {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.2} %</td><td>{:.3} %</td></tr>",
            escape(kind),
            c.transfers,
            100.0 * c.warn_only,
            100.0 * c.hold_or_more
        ));
    }
    let w = &report.workload;
    page.push_str(&format!(
        "</table><h2>Police workload</h2><p>{} alerts over {} days for {} customers: <b>{:.2} alerts a day per 10,000 customers</b>.</p>\
         <table><tr><th>station</th><th>customers</th><th>alerts a day</th><th>per 10,000 customers</th></tr>",
        w.alerts, w.days, w.customers, w.per_day_per_10k_customers
    ));
    for (station, l) in &w.stations {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            escape(station),
            l.customers,
            l.per_day,
            l.per_day_per_10k_customers
        ));
    }
    page.push_str("</table>");
    page
}

/// The share of a class scoring at least each threshold.
fn at_least(scores: &BTreeMap<i64, u64>, threshold: i64) -> f64 {
    let total: u64 = scores.values().sum();
    let above: u64 = scores.range(threshold..).map(|(_, n)| n).sum();
    above as f64 / total.max(1) as f64
}

/// Recall of the decisive scam payments and the false-alarm rate of ordinary
/// transfers against the score threshold, on a log scale (false alarms are
/// fractions of a per cent), with the ruleset's thresholds marked.
fn curves(report: &Report) -> String {
    let ordinary = report.class_scores.get("ordinary").cloned().unwrap_or_default();
    let mut scams: BTreeMap<i64, u64> = BTreeMap::new();
    for (class, scores) in report.class_scores.iter().filter(|(c, _)| c.as_str() != "ordinary") {
        let _ = class;
        for (b, n) in scores {
            *scams.entry(*b).or_default() += n;
        }
    }
    let max_score = report.class_scores.values().flat_map(|s| s.keys()).copied().max().unwrap_or(100).max(100);
    let (w, h, left, top) = (760.0, 300.0, 60.0, 10.0);
    let x = |score: i64| left + (score as f64 / max_score as f64) * (w - left - 10.0);
    // log10 from 1e-5 (0.001 %) to 1.
    let y = |v: f64| top + (-(v.max(1e-5)).log10() / 5.0) * (h - top - 30.0);
    let line = |scores: &BTreeMap<i64, u64>| -> String {
        (0..=max_score)
            .step_by(10)
            .map(|t| format!("{:.1},{:.1}", x(t), y(at_least(scores, t))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        r#"<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11" role="img" aria-label="recall and false alarms by score threshold">"#
    );
    for (k, label) in [(0, "100 %"), (1, "10 %"), (2, "1 %"), (3, "0.1 %"), (4, "0.01 %"), (5, "0.001 %")] {
        let yy = y(10f64.powi(-k));
        svg.push_str(&format!(
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="2" y="{:.1}">{label}</text>"##,
            w - 10.0,
            yy + 4.0
        ));
    }
    for t in (0..=max_score).step_by(50) {
        svg.push_str(&format!(r#"<text x="{:.1}" y="{}" text-anchor="middle">{t}</text>"#, x(t), h - 8.0));
    }
    for (name, t) in ["WARN", "HOLD", "BLOCK"].iter().zip(report.thresholds) {
        if t <= max_score {
            svg.push_str(&format!(
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#888" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3}">{name} {t}</text>"##,
                x(t),
                h - 30.0,
                x(t) + 3.0,
                top + 10.0
            ));
        }
    }
    svg.push_str(&format!(
        r##"<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{}"/><polyline fill="none" stroke="#27ae60" stroke-width="2" points="{}"/></svg>"##,
        line(&scams),
        line(&ordinary)
    ));
    format!(
        "<h2>Recall and false alarms by score threshold</h2><figure>{svg}<figcaption>\
         <span style=\"color:#c0392b\">■</span> decisive scam payments scoring at least the threshold (recall); \
         <span style=\"color:#27ae60\">■</span> ordinary transfers scoring at least it (false alarms). \
         Log scale; minimum actions (a watchlisted payee, a held seed pattern) act beyond the score.</figcaption></figure>"
    )
}

/// Each class's score distribution on its own scale: ordinary transfers and
/// each scam type's decisive payments, bars in buckets of 10.
fn class_distributions(report: &Report) -> String {
    let max_score = report.class_scores.values().flat_map(|s| s.keys()).copied().max().unwrap_or(100).max(100);
    let buckets = (max_score / 10 + 1) as usize;
    let bar = (640.0 / buckets as f64).max(2.0);
    let mut page = String::from(
        "<h2>Score distributions, each class on its own scale</h2><p>Bars are scaled to each class's largest          bucket, so 200,000 ordinary transfers do not flatten 50 scams; the number is the class's size.</p>",
    );
    let mut classes: Vec<(&String, &BTreeMap<i64, u64>)> = report.class_scores.iter().collect();
    classes.sort_by_key(|(c, _)| c.as_str() != "ordinary");
    for (class, scores) in classes {
        let top = scores.values().copied().max().unwrap_or(1).max(1) as f64;
        let total: u64 = scores.values().sum();
        let colour = if class.as_str() == "ordinary" { "#27ae60" } else { "#c0392b" };
        let mut svg = format!(
            r#"<svg width="780" height="46" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11" role="img" aria-label="score distribution of {}"><text x="0" y="26">{} ({total})</text>"#,
            escape(class),
            escape(class)
        );
        for (b, n) in scores {
            let hgt = (*n as f64 / top * 36.0).max(1.0);
            svg.push_str(&format!(
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{hgt:.1}" fill="{colour}"><title>score {b}-{}: {n}</title></rect>"#,
                140.0 + (*b / 10) as f64 * bar,
                40.0 - hgt,
                (bar - 1.0).max(1.0),
                b + 9
            ));
        }
        for (name, t) in ["W", "H"].iter().zip(report.thresholds) {
            let xx = 140.0 + (t / 10) as f64 * bar;
            svg.push_str(&format!(
                r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="2" y2="42" stroke="#555" stroke-dasharray="3 2"/><text x="{:.1}" y="10">{name}</text>"##,
                xx + 2.0
            ));
        }
        svg.push_str("</svg><br>");
        page.push_str(&svg);
    }
    page
}

/// A self-contained HTML page (inline CSS and SVG; opens offline).
pub fn html(report: &Report, changes: &[String]) -> String {
    let mut rules: Vec<_> = report.rules.iter().collect();
    rules.sort_by_key(|r| std::cmp::Reverse(r.1.hits));
    let rule_rows: Vec<(String, u64, &str)> = rules
        .iter()
        .map(|(id, r)| (format!("{id} ({})", r.mode), r.hits, if r.mode == "shadow" { "#b0b0b0" } else { "#3b6ea5" }))
        .collect();
    let mut page = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>transfer-guard backtest</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1000px}.bad{color:#b00020;font-weight:bold}.good{color:#1d6b2f}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>"#,
    );
    page.push_str(&format!(
        "<h1>Backtest</h1><p>Ruleset <code>{}</code>: {} transfers replayed, {} labelled, {} scams.</p>",
        escape(&report.ruleset_version),
        report.transfers,
        report.labelled,
        report.scams
    ));
    page.push_str("<h2>Actions</h2><table><tr><th>action</th><th>count</th><th>share</th></tr>");
    for (a, n) in &report.actions {
        page.push_str(&format!(
            "<tr><td>{a}</td><td>{n}</td><td>{:.2} %</td></tr>",
            100.0 * *n as f64 / report.transfers.max(1) as f64
        ));
    }
    page.push_str("</table>");
    if report.labelled > 0 {
        page.push_str("<h2>Precision and recall</h2><table><tr><th>flagged at least</th><th>precision</th><th>recall</th><th>tp</th><th>fp</th><th>fn</th></tr>");
        for (t, q) in &report.by_threshold {
            page.push_str(&format!(
                "<tr><td>{t}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q.precision, q.recall, q.true_positives, q.false_positives, q.false_negatives
            ));
        }
        page.push_str("</table>");
        page.push_str(&typology_tables(report));
        page.push_str(&curves(report));
        page.push_str(&class_distributions(report));
    }
    page.push_str("<h2>Rule hits</h2>");
    page.push_str(&bars(&rule_rows));
    page.push_str(
        "<table><tr><th>rule</th><th>mode</th><th>hits</th><th>scam hits</th><th>precision</th><th>recall</th></tr>",
    );
    for (id, r) in &rules {
        page.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape(id),
            r.mode,
            r.hits,
            r.scam_hits,
            r.precision,
            r.recall
        ));
    }
    page.push_str(
        "</table><h2>Alerts per station per day</h2><table><tr><th>station</th><th>day</th><th>alerts</th></tr>",
    );
    for (station, days) in &report.alerts_per_station_day {
        for (day, n) in days {
            page.push_str(&format!("<tr><td>{}</td><td>{day}</td><td>{n}</td></tr>", escape(station)));
        }
    }
    page.push_str("</table>");
    if !changes.is_empty() {
        page.push_str(&format!("<h2>Decisions that differ from the baseline ({})</h2><ul>", changes.len()));
        for c in changes.iter().take(500) {
            page.push_str(&format!("<li>{}</li>", escape(c)));
        }
        page.push_str("</ul>");
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The shipped ruleset and routing.
    fn shipped() -> (Ruleset, Routing) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        (Ruleset::load_dir(&dir).unwrap(), Routing::load_dir(&dir).unwrap())
    }

    #[test]
    fn a_backtest_accounts_for_every_transfer_and_is_deterministic() {
        let (ruleset, routing) = shipped();
        let history = crate::simulate::generate(2_000, 7, 3);
        let (report, replayed) = run(&ruleset, &routing, &history, |_| {});
        assert_eq!(report.transfers as usize, history.len());
        assert_eq!(report.actions.values().sum::<u64>(), report.transfers);
        assert_eq!(report.labelled, report.transfers);
        let (again, replayed_again) = run(&ruleset, &routing, &history, |_| {});
        assert_eq!(replayed, replayed_again);
        assert_eq!(again.by_threshold, report.by_threshold);
        assert!(diff(&replayed, &replayed_again).is_empty());
    }

    #[test]
    fn replayed_confirmations_list_the_accounts_and_stop_their_later_victims() {
        let (ruleset, routing) = shipped();
        let history = crate::simulate::generate(1_500, 20, 5);
        let (alone, plain) = run(&ruleset, &routing, &history, |_| {});
        assert_eq!(alone.accounts_listed_by_officers, None);
        let replay = Replay { measure_from: None, officers_confirm_after: Some(3_600) };
        let (looped, confirmed) = run_with(&ruleset, &routing, &history, replay, |_| {});
        let listed = looped.accounts_listed_by_officers.expect("counted when replayed");
        assert!(listed > 0, "held scams are confirmed");
        let held = |r: &Report, label: &str| {
            r.confusion[label].iter().filter(|(a, _)| ["HOLD", "BLOCK"].contains(a)).map(|(_, n)| n).sum::<u64>()
        };
        assert!(held(&looped, "scam") > held(&alone, "scam"), "later payments into confirmed accounts are stopped");
        let listed_ordinary =
            |r: &&Replayed| r.scam == Some(false) && r.hits.iter().any(|(id, _)| id == "payee_watchlisted");
        assert_eq!(confirmed.iter().filter(listed_ordinary).count(), 0, "no ordinary payee was ever confirmed");
        // Officers find the false alarms were no fraud: the stops they left are cleared.
        let after_a_stop = |r: &[Replayed]| {
            r.iter()
                .filter(|r| r.scam == Some(false) && r.hits.iter().any(|(id, _)| id == "new_payee_after_a_stop"))
                .count()
        };
        assert!(
            after_a_stop(&confirmed) < after_a_stop(&plain),
            "{} {}",
            after_a_stop(&confirmed),
            after_a_stop(&plain)
        );
        assert!(confirmed.iter().any(|r| r.hits.iter().any(|(id, _)| id == "payee_watchlisted")));
        assert!(!plain.iter().any(|r| r.hits.iter().any(|(id, _)| id == "payee_watchlisted")));
    }

    #[test]
    fn the_decision_lines_carry_each_transfers_labels_and_hits() {
        let (ruleset, routing) = shipped();
        let history = crate::simulate::generate(2_000, 7, 3);
        let (_, replayed) = run(&ruleset, &routing, &history, |_| {});
        let text = decision_lines(&replayed, &history);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), replayed.len());
        let scam = lines.iter().find(|l| l["label"] == "scam").expect("the simulator makes scams");
        assert!(scam["scam_type"].as_str().is_some_and(|t| !t.is_empty()), "{scam}");
        let flagged = lines.iter().find(|l| l["action"] != "ALLOW").expect("something is flagged");
        assert!(!flagged["hits"].as_array().unwrap().is_empty(), "{flagged}");
        let ordinary = lines.iter().find(|l| l["label"] == "ordinary").unwrap();
        assert!(ordinary.get("scam_type").is_none() && ordinary["kind"].is_string(), "{ordinary}");
    }

    #[test]
    fn measuring_from_a_date_counts_only_later_transfers_on_a_warm_state() {
        let (ruleset, routing) = shipped();
        let history = crate::simulate::generate(2_000, 10, 3);
        let from = crate::simulate::START + 5 * 86_400;
        let later = history.iter().filter(|l| l.request.requested_at.unwrap().seconds >= from).count();
        let (cold, _) = run(&ruleset, &routing, &history, |_| {});
        let (warm, replayed) = run_from(&ruleset, &routing, &history, Some(from), |_| {});
        assert_eq!((warm.transfers as usize, replayed.len()), (later, later));
        // In the warm-up the first payment to each usual payee is to a new payee;
        // measured from later, no usual payment is.
        let usual: std::collections::HashSet<&str> =
            history.iter().filter(|l| l.kind == "usual").map(|l| l.request.request_id.as_str()).collect();
        let new_payee_hits = |replayed: &[Replayed]| {
            replayed
                .iter()
                .filter(|r| usual.contains(r.request_id.as_str()))
                .filter(|r| r.hits.iter().any(|(id, _)| id == "elderly_new_payee" || id == "new_payee_large"))
                .count()
        };
        let (_, cold_replayed) = run(&ruleset, &routing, &history, |_| {});
        assert!(new_payee_hits(&cold_replayed) > 0, "the warm-up pays usual payees for the first time");
        assert_eq!(new_payee_hits(&replayed), 0, "usual payees are known by then");
        assert!(cold.transfers > warm.transfers);
    }
}
