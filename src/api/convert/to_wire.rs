//! Domain → wire: decisions, transfer statuses, alerts, their events and the
//! watchlist as the proto messages the API answers with (and the alert sinks
//! deliver).

use super::super::proto as pb;
use crate::alerts::{Alert, AlertEvent, AlertState, HoldDecision, Outcome};
use crate::lifecycle::TransferState;
use crate::model::{Action, Channel, Decision, Hit, Observation, UnixSeconds};
use crate::rules::Ruleset;
use crate::service::{Screened, TransferStatus};
use crate::state::WatchEntry;
use pbjson_types::Timestamp;

pub fn observation_to_pb(o: Observation) -> pb::Observation {
    match o {
        Observation::OnPhoneWithStranger => pb::Observation::OnPhoneWithStranger,
        Observation::Agitated => pb::Observation::Agitated,
        Observation::RefusesToExplain => pb::Observation::RefusesToExplain,
        Observation::AccompaniedByStranger => pb::Observation::AccompaniedByStranger,
        Observation::Coached => pb::Observation::Coached,
        Observation::Urgent => pb::Observation::Urgent,
        Observation::ScreenShared => pb::Observation::ScreenShared,
        Observation::RemoteControl => pb::Observation::RemoteControl,
    }
}

pub fn channel_to_pb(c: Channel) -> pb::Channel {
    match c {
        Channel::Counter => pb::Channel::Counter,
        Channel::Atm => pb::Channel::Atm,
        Channel::Mobile => pb::Channel::Mobile,
        Channel::Online => pb::Channel::Online,
    }
}

pub fn action_to_pb(a: Action) -> pb::Action {
    match a {
        Action::Allow => pb::Action::Allow,
        Action::Warn => pb::Action::Warn,
        Action::Hold => pb::Action::Hold,
        Action::Block => pb::Action::Block,
    }
}

pub fn hit_to_pb(h: &Hit) -> pb::Hit {
    pb::Hit {
        rule_id: h.rule_id().to_string(),
        score: h.score,
        reason_zh: h.reason_zh().to_string(),
        reason_en: h.reason_en().to_string(),
        shadow: h.shadow,
        ask_zh: h.text.ask_zh.iter().map(|q| q.to_string()).collect(),
        ask_en: h.text.ask_en.iter().map(|q| q.to_string()).collect(),
        typology: h.text.typology.to_string(),
    }
}

/// The teller's questions of a decision: on WARN and above, from the active
/// hits, each once, in ruleset order.
pub fn questions_to_pb(d: &Decision) -> Vec<pb::TellerQuestion> {
    let mut out: Vec<pb::TellerQuestion> = Vec::new();
    if d.action < Action::Warn {
        return out;
    }
    for h in d.hits.iter().filter(|h| !h.shadow) {
        for (zh, en) in h.text.ask_zh.iter().zip(h.text.ask_en.iter()) {
            if !out.iter().any(|q| q.zh == **zh) {
                out.push(pb::TellerQuestion { zh: zh.to_string(), en: en.to_string(), rule_id: h.rule_id().into() });
            }
        }
    }
    out
}

pub fn timestamp(at: UnixSeconds) -> Timestamp {
    Timestamp { seconds: at, nanos: 0 }
}

pub fn decision_to_pb(request_id: &str, d: &Decision) -> pb::ScreenResponse {
    pb::ScreenResponse {
        request_id: request_id.to_string(),
        action: action_to_pb(d.action) as i32,
        score: d.score,
        hits: d.hits.iter().map(hit_to_pb).collect(),
        alert_id: String::new(),
        station_id: String::new(),
        ruleset_version: d.ruleset_version.to_string(),
        hold_expires_at: None,
        questions: questions_to_pb(d),
    }
}

pub fn watch_entry_to_pb(e: &WatchEntry) -> pb::WatchlistEntry {
    pb::WatchlistEntry {
        account: e.account.clone(),
        issuer_station_id: e.station_id.clone(),
        reason: e.reason.clone(),
        expires_at: e.expires_at.map(timestamp),
        added_at: Some(timestamp(e.added_at)),
    }
}

pub fn screened_to_pb(s: &Screened) -> pb::ScreenResponse {
    let mut r = decision_to_pb(&s.request_id, &s.decision);
    r.alert_id = s.alert_id.clone().unwrap_or_default();
    r.station_id = s.station_id.clone().unwrap_or_default();
    r.hold_expires_at = s.hold_expires_at.map(timestamp);
    r
}

pub fn state_to_pb(s: TransferState) -> pb::TransferState {
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

pub fn status_to_pb(s: &TransferStatus) -> pb::TransferStatus {
    pb::TransferStatus {
        request_id: s.request_id.clone(),
        state: state_to_pb(s.state) as i32,
        action: action_to_pb(s.action) as i32,
        alert_id: s.alert_id.clone().unwrap_or_default(),
        station_id: s.station_id.clone().unwrap_or_default(),
        hold_expires_at: s.hold_expires_at.map(timestamp),
        outcome: s.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
        officer_id: s.officer_id.clone().unwrap_or_default(),
        note: s.note.clone(),
        updated_at: Some(timestamp(s.updated_at)),
    }
}

pub fn alert_state_to_pb(s: AlertState) -> pb::AlertState {
    match s {
        AlertState::New => pb::AlertState::New,
        AlertState::Claimed => pb::AlertState::Claimed,
        AlertState::Escalated => pb::AlertState::Escalated,
        AlertState::Resolved => pb::AlertState::Resolved,
    }
}

pub fn outcome_to_pb(o: Outcome) -> pb::Outcome {
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
        action: action_to_pb(a.action) as i32,
        score: a.score,
        hits: a.hits.iter().map(hit_to_pb).collect(),
        ruleset_version: a.ruleset_version.clone(),
        transfer: Some(pb::TransferSummary {
            request_id: t.request_id.clone(),
            amount_minor: t.amount,
            currency: t.currency.clone(),
            channel: channel_to_pb(t.channel) as i32,
            bank_id: t.bank_id.clone(),
            branch_id: t.branch_id.clone(),
            teller_id: t.teller_id.clone(),
            customer_age_band: t.customer_age_band.to_string(),
            customer_account_masked: t.customer_account_masked.clone(),
            payee_account_masked: t.payee_account_masked.clone(),
            payee_name_masked: t.payee_name_masked.clone(),
            payee_bank_code: t.payee_bank_code.clone(),
            memo: t.memo.clone(),
            observations: t.observations.iter().map(|o| observation_to_pb(o) as i32).collect(),
        }),
        created_at: Some(timestamp(a.created_at)),
        claim_deadline: Some(timestamp(a.claim_deadline)),
        officer_id: a.officer_id.clone().unwrap_or_default(),
        outcome: a.outcome.map_or(pb::Outcome::Unspecified, outcome_to_pb) as i32,
        hold_decision: hold_decision_to_pb(a.hold_decision) as i32,
        note: a.note.clone(),
        updated_at: Some(timestamp(a.updated_at)),
    }
}

pub fn event_to_pb(e: &AlertEvent) -> pb::AlertEvent {
    pb::AlertEvent {
        cursor: e.cursor,
        event_id: e.event_id.clone(),
        kind: e.kind.to_string(),
        alert: Some(alert_to_pb(&e.alert)),
        at: Some(timestamp(e.at)),
    }
}

pub fn hold_decision_to_pb(d: Option<HoldDecision>) -> pb::HoldDecision {
    match d {
        None => pb::HoldDecision::Unspecified,
        Some(HoldDecision::Release) => pb::HoldDecision::Release,
        Some(HoldDecision::Block) => pb::HoldDecision::Block,
    }
}

pub fn ruleset_to_pb(rs: &Ruleset) -> pb::RulesetInfo {
    pb::RulesetInfo {
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
                min_action: r.min_action.map_or(pb::Action::Unspecified, action_to_pb) as i32,
                mode: r.mode.as_str().to_string(),
                tags: r.tags.clone(),
                reason_zh: r.reason_zh.to_string(),
                reason_en: r.reason_en.to_string(),
                location: r.location.clone(),
            })
            .collect(),
        pending: None,
        approval: String::new(),
    }
}

/// A ruleset proposed for approval (or why it could not be).
pub fn proposal_to_pb(
    pending: Option<(String, String, UnixSeconds)>,
    running: &str,
    errors: Vec<String>,
) -> pb::RulesProposal {
    match pending {
        Some((version, proposed_by, at)) if errors.is_empty() => pb::RulesProposal {
            proposed: true,
            version,
            proposed_by,
            proposed_at: Some(timestamp(at)),
            errors,
            running_version: running.to_string(),
        },
        _ => pb::RulesProposal { running_version: running.to_string(), errors, ..Default::default() },
    }
}
