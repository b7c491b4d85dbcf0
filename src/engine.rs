//! The engine: one transfer, a read-only snapshot of state and a compiled
//! ruleset in; a decision and the state change to apply out.
//!
//! Pure and deterministic: time comes from the transfer, so rule tests and
//! backtests replay exactly. Must not do I/O, apply its own state change (the
//! caller decides when: at once, on release, never), or allocate while
//! evaluating conditions.

use crate::model::{age_on, local_day, Decision, Hit, Transfer};
use crate::rules::schema::{Facts, ABSENT, NEVER};
use crate::rules::text::FoldedText;
use crate::rules::{Mode, Ruleset};
use crate::state::{Snapshot, State, TransferRecord};
use std::cell::{Cell, RefCell};

/// What screening one transfer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// The change that counting this transfer makes to state.
    pub record: TransferRecord,
    /// The customer's age on the transfer's local date (alerts show its band).
    pub customer_age: i64,
}

thread_local! {
    // One regex memo and one set of text buffers per thread, reused: evaluating
    // conditions allocates nothing, normalising the text only while its buffers grow.
    static MEMO: RefCell<(Vec<Cell<u8>>, RequestText)> = RefCell::new(Default::default());
}

/// A transfer's free text (memo, payee name), normalised once per request for
/// every rule to read ([`crate::rules::text`]).
#[derive(Debug, Default)]
pub struct RequestText {
    memo: FoldedText,
    payee_name: FoldedText,
}

impl RequestText {
    /// Normalises the text of `transfer` that `ruleset` reads into these
    /// buffers (the rest is left empty: no rule looks at it).
    pub fn fill(&mut self, ruleset: &Ruleset, transfer: &Transfer) {
        let read = ruleset.text_fields;
        // Clearing is cheaper than normalising an empty text.
        if read.memo {
            self.memo.fill(&transfer.memo);
        } else {
            self.memo.clear();
        }
        if read.payee_name {
            self.payee_name.fill(&transfer.payee.name);
        } else {
            self.payee_name.clear();
        }
    }
}

/// Screens `transfer` against the state as it is now. Does not change state.
///
/// Amounts are compared, and counted in state, in the ruleset's currency: the
/// caller refuses a transfer in a currency the ruleset has no rate for
/// ([`Ruleset::in_base`]) before it gets here; one that slips through is
/// read as if it were in the ruleset's currency.
pub fn screen(ruleset: &Ruleset, transfer: &Transfer, state: &State) -> Evaluation {
    let snapshot = state.snapshot(&transfer.customer.customer_id, &transfer.payee, transfer.requested_at);
    evaluate(ruleset, transfer, &snapshot)
}

/// Evaluates every rule on the facts of `transfer` and `snapshot`.
pub fn evaluate(ruleset: &Ruleset, transfer: &Transfer, snapshot: &Snapshot) -> Evaluation {
    MEMO.with(|cell| {
        let mut buffers = cell.borrow_mut();
        let (memo, text) = &mut *buffers;
        memo.clear();
        memo.resize(ruleset.memo_slots, Cell::new(0));
        text.fill(ruleset, transfer);
        let facts = facts(ruleset, transfer, snapshot, text, memo);
        let decision = decide(ruleset, &facts);
        Evaluation {
            decision,
            record: TransferRecord {
                customer_id: transfer.customer.customer_id.clone(),
                payee: snapshot.payee_key,
                amount: facts.transfer_amount,
                at: transfer.requested_at,
            },
            customer_age: facts.customer_age,
        }
    })
}

/// Applies the thresholds and minimum actions to the matched rules.
pub fn decide(ruleset: &Ruleset, facts: &Facts) -> Decision {
    let mut score = 0i64;
    let mut min_action = None;
    let mut hits = Vec::new();
    for rule in &ruleset.rules {
        if !rule.matches(facts) {
            continue;
        }
        let shadow = rule.mode == Mode::Shadow;
        if !shadow {
            score = score.saturating_add(rule.score);
            min_action = min_action.max(rule.min_action);
        }
        if hits.capacity() == 0 {
            // One allocation for the usual handful of hits.
            hits.reserve_exact(8);
        }
        hits.push(Hit { text: rule.text.clone(), score: rule.score, shadow });
    }
    let by_score = ruleset.thresholds.action_for(score);
    Decision {
        action: min_action.map_or(by_score, |m| m.max(by_score)),
        score,
        hits,
        ruleset_version: ruleset.version.clone(),
    }
}

/// Flattens a transfer, its normalised text (filled from it) and a state
/// snapshot into what the rules read.
pub fn facts<'a>(
    ruleset: &Ruleset,
    transfer: &'a Transfer,
    snapshot: &Snapshot,
    text: &'a RequestText,
    memo: &'a [Cell<u8>],
) -> Facts<'a> {
    let now = transfer.requested_at;
    let amount = ruleset.in_base(transfer.amount, &transfer.currency).unwrap_or(transfer.amount);
    let (today, hour) = local_day(now, ruleset.utc_offset);
    let customer = &transfer.customer;

    // The caller may know a later limit change than we recorded; the latest wins.
    let limit = match (snapshot.last_limit_change, customer.last_limit_change) {
        (Some(a), Some(b)) => Some(if b.changed_at >= a.changed_at { b } else { a }),
        (a, b) => a.or(b),
    }
    .filter(|c| c.changed_at <= now);
    let raise = limit.filter(|c| c.is_raise());

    Facts {
        transfer_amount: amount,
        transfer_currency: &transfer.currency,
        transfer_channel: transfer.channel.as_str(),
        transfer_memo: text.memo.view(&transfer.memo),
        transfer_hour: hour,
        bank_id: &transfer.bank_id,
        branch_id: &transfer.branch_id,
        customer_age: age_on(customer.birth_date, today),
        customer_account_age_days: i64::from(today.to_julian_day())
            - i64::from(customer.account_opened_on.to_julian_day()),
        customer_daily_limit: customer.daily_limit,
        customer_limit_raised_ago: raise.map_or(NEVER, |c| now - c.changed_at),
        customer_limit_raised_to_max: raise.is_some_and(|c| c.is_maximum),
        customer_stopped_ago: snapshot.last_stopped.map_or(NEVER, |t| now - t),
        customer_observations: transfer.observations.0,
        payee_account: &transfer.payee.account,
        payee_name: text.payee_name.view(&transfer.payee.name),
        payee_bank: &transfer.payee.bank_code,
        payee_is_new: snapshot.payee_first_paid.is_none(),
        payee_first_paid_ago: snapshot.payee_first_paid.map_or(NEVER, |t| now - t),
        payee_watchlisted: snapshot.payee_watchlisted,
        payee_distinct_senders_24h: snapshot.payee_distinct_senders_24h,
        payee_new_senders_24h: snapshot.payee_new_senders_24h,
        payee_first_seen_ago: snapshot.payee_first_seen.map_or(NEVER, |t| now - t),
        history_transfers_1h: snapshot.transfers_1h,
        history_transfers_24h: snapshot.transfers_24h,
        history_amount_24h: snapshot.amount_24h,
        history_new_payees_24h: snapshot.new_payees_24h,
        customer_transfers_seen: snapshot.transfers_seen,
        customer_usual_amount: snapshot.usual_amount.unwrap_or(ABSENT),
        transfer_amount_vs_usual: snapshot.usual_amount.map_or(ABSENT, |u| per_cent(amount, u)),
        payee_times_paid: snapshot.payee_times_paid,
        payee_last_paid: snapshot.payee_last_paid.unwrap_or(ABSENT),
        payee_largest_paid: snapshot.payee_largest_paid.unwrap_or(ABSENT),
        payee_growth: snapshot.payee_last_paid.map_or(ABSENT, |l| per_cent(amount, l)),
        payee_growing_run: match snapshot.payee_last_paid {
            Some(last) if amount > last => snapshot.payee_growing + 1,
            _ => 0,
        },
        history_young_payee_growing_run: snapshot.young_payee_growing_run,
        history_new_payees_1h: snapshot.new_payees_1h,
        history_amount_1h: snapshot.amount_1h,
        history_new_payee_growing_run: match snapshot.payee_first_paid {
            Some(_) => 0,
            None if snapshot.new_payee_run > 0 && amount > snapshot.new_payee_run_last => snapshot.new_payee_run + 1,
            None => 1,
        },
        regex_memo: memo,
    }
}

/// `amount` as a whole per cent of `of` (saturating; `of` ≤ 0 counts as 1 fen).
fn per_cent(amount: i64, of: i64) -> i64 {
    (i128::from(amount) * 100 / i128::from(of.max(1))).clamp(i64::MIN as i128 + 1, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, Channel, Customer, LimitChange, Observations, Payee};
    use crate::rules::Source;
    use time::macros::date;

    fn ruleset() -> Ruleset {
        let rules = r#"
[[rule]]
id = "big"
title = "big"
when = "transfer.amount >= 1000"
score = 40
reason = { zh = "大额", en = "large" }

[[rule]]
id = "raised"
title = "raised"
when = "customer.limit_raised_ago < 1h && customer.limit_raised_to_max && payee.is_new"
score = 30
reason = { zh = "刚提额", en = "limit just raised" }

[[rule]]
id = "watch"
title = "watch"
when = "payee.watchlisted"
score = 0
action = "block"
reason = { zh = "名单", en = "watchlist" }

[[rule]]
id = "trial"
title = "trial"
when = "transfer.hour >= 9"
score = 500
mode = "shadow"
reason = { zh = "试", en = "trial" }
"#;
        Ruleset::from_sources(vec![
            Source {
                path: "ruleset.toml".into(),
                text: "[ruleset]\nname = \"t\"\nthresholds = { warn = 30, hold = 60, block = 100 }\n".into(),
            },
            Source { path: "r.toml".into(), text: rules.into() },
        ])
        .unwrap()
    }

    fn transfer(amount: i64) -> Transfer {
        Transfer {
            request_id: "r1".into(),
            requested_at: 1_773_109_200, // 2026-03-10 10:20 +08:00
            bank_id: "psbc".into(),
            branch_id: "b1".into(),
            teller_id: "t1".into(),
            channel: Channel::Counter,
            customer: Customer {
                customer_id: "c1".into(),
                account_id: "a1".into(),
                birth_date: date!(1968 - 01 - 01),
                account_opened_on: date!(2010 - 01 - 01),
                daily_limit: 50_000_000,
                last_limit_change: None,
            },
            payee: Payee { account: "6222000011112222".into(), name: "李四".into(), bank_code: "icbc".into() },
            amount,
            currency: "CNY".into(),
            memo: String::new(),
            observations: Observations::default(),
        }
    }

    #[test]
    fn the_local_day_and_hour_match_the_calendar() {
        let rs = ruleset();
        let snapshot = State::new().snapshot("c1", &transfer(1).payee, 0);
        let text = RequestText::default();
        let memo = [];
        for at in [1_773_109_200, 1_773_162_000, 1_773_158_399, 0, 946_684_799, 4_102_444_799] {
            let mut t = transfer(1);
            t.requested_at = at;
            let f = facts(&rs, &t, &snapshot, &text, &memo);
            let local = time::OffsetDateTime::from_unix_timestamp(at).unwrap().to_offset(rs.utc_offset);
            assert_eq!(f.transfer_hour, i64::from(local.hour()), "{at}");
            assert_eq!(f.customer_account_age_days, (local.date() - t.customer.account_opened_on).whole_days());
            assert_eq!(f.customer_age, age_on(t.customer.birth_date, local.date()));
        }
    }

    #[test]
    fn scores_add_up_and_shadow_hits_do_not_count() {
        let rs = ruleset();
        let state = State::new();
        let mut t = transfer(5000);
        t.customer.last_limit_change =
            Some(LimitChange { old_limit: 1, new_limit: 2, is_maximum: true, changed_at: t.requested_at - 600 });
        let ev = screen(&rs, &t, &state);
        assert_eq!(ev.decision.score, 70);
        assert_eq!(ev.decision.action, Action::Hold);
        let ids: Vec<&str> = ev.decision.hits.iter().map(|h| h.rule_id()).collect();
        assert_eq!(ids, ["big", "raised", "trial"]);
        assert!(ev.decision.hits[2].shadow);
        assert_eq!(ev.customer_age, 58);
    }

    #[test]
    fn minimum_action_overrides_a_low_score() {
        let rs = ruleset();
        let state = State::new();
        state.watchlist_upsert(crate::state::WatchEntry {
            account: "6222000011112222".into(),
            station_id: "ps".into(),
            reason: "mule".into(),
            added_at: 0,
            expires_at: None,
        });
        let ev = screen(&rs, &transfer(10), &state);
        assert_eq!((ev.decision.action, ev.decision.score), (Action::Block, 0));
    }

    #[test]
    fn state_changes_only_when_applied() {
        let rs = ruleset();
        let state = State::new();
        let t = transfer(10);
        let ev = screen(&rs, &t, &state);
        assert_eq!(state.sizes().customers, 0);
        state.apply(&ev.record);
        let again = screen(&rs, &t, &state);
        let snap = state.snapshot("c1", &t.payee, t.requested_at);
        assert_eq!(snap.payee_first_paid, Some(t.requested_at));
        assert_eq!(again.decision.action, Action::Allow);
    }
}
