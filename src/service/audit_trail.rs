//! The audit trail's records of what the service did: every decision, alert
//! change and transfer state change, masked (no full account or name).
//!
//! Must not log or write anything unmasked.

use super::*;

pub(super) fn decision_record(t: &Transfer, s: &Screened) -> AuditRecord {
    let (shadow, active): (Vec<_>, Vec<_>) = s.decision.hits.iter().partition(|h| h.shadow);
    AuditRecord::Decision {
        at: t.requested_at,
        request_id: t.request_id.clone(),
        bank_id: t.bank_id.clone(),
        branch_id: t.branch_id.clone(),
        channel: t.channel.as_str(),
        amount_minor: t.amount,
        currency: t.currency.clone(),
        customer_account: mask_account(&t.customer.account_id),
        payee_account: mask_account(&t.payee.account),
        payee_name: mask_name(&t.payee.name),
        action: s.decision.action.as_str(),
        score: s.decision.score,
        hits: active.iter().map(|h| h.rule_id().to_string()).collect(),
        shadow_hits: shadow.iter().map(|h| h.rule_id().to_string()).collect(),
        ruleset_version: s.decision.ruleset_version.to_string(),
        alert_id: s.alert_id.clone(),
        station_id: s.station_id.clone(),
    }
}

pub(super) fn summary(t: &Transfer, customer_age: i64) -> TransferSummary {
    TransferSummary {
        request_id: t.request_id.clone(),
        amount: t.amount,
        currency: t.currency.clone(),
        channel: t.channel,
        bank_id: t.bank_id.clone(),
        branch_id: t.branch_id.clone(),
        teller_id: t.teller_id.clone(),
        customer_age_band: age_band(customer_age),
        customer_account_masked: mask_account(&t.customer.account_id),
        payee_account_masked: mask_account(&t.payee.account),
        payee_name_masked: mask_name(&t.payee.name),
        payee_bank_code: t.payee.bank_code.clone(),
        memo: t.memo.clone(),
        observations: t.observations,
    }
}

impl TransferGuard {
    /// Counts and audits a refused call (`reason`: unauthenticated, role,
    /// scope, not_self, busy). Called by the API's gate and handlers.
    pub fn refused(&self, by: &Caller, method: &str, reason: &'static str, message: &str) {
        self.metrics.denied.with_label_values(&[method, reason]).inc();
        tracing::warn!(%by, method, reason, message, "call refused");
        self.audit(by, || AuditRecord::Denied {
            at: self.now(),
            method: method.to_string(),
            reason,
            message: message.to_string(),
        });
    }

    /// Queues the store's image of a remembered transfer.
    pub(super) fn log_transfer(&self, key: TransferKey, (request_id, e): (&str, &Remembered)) {
        if let Some(store) = &self.store {
            store.put_for(e.customer(), Space::Transfers, &key.to_bytes(), Some(&e.stored(&self.names, request_id)));
        }
    }

    /// Queues the forgetting of a remembered transfer of `customer`.
    pub(super) fn unlog_transfer(&self, key: TransferKey, customer: &str) {
        if let Some(store) = &self.store {
            store.put_for(customer, Space::Transfers, &key.to_bytes(), None::<&()>);
        }
    }

    /// [`Self::log_transfer`] for a transfer just screened, from the answer in hand.
    pub(super) fn log_screened(&self, key: TransferKey, entry: &Remembered, answer: &Screened) {
        if let Some(store) = &self.store {
            let image = entry.stored_answering(&self.names, answer);
            store.put_for(entry.customer(), Space::Transfers, &key.to_bytes(), Some(&image));
        }
    }

    pub(super) fn audit(&self, by: &Caller, record: impl FnOnce() -> AuditRecord) {
        if let Some(a) = &self.audit {
            a.record(by, record());
        }
    }

    pub(super) fn audit_alert(&self, by: &Caller, event: &'static str, alert: &Alert) {
        self.audit(by, || AuditRecord::Alert {
            at: alert.updated_at,
            event,
            alert_id: alert.id.clone(),
            station_id: alert.station_id.clone(),
            officer_id: alert.officer_id.clone(),
            outcome: alert.outcome.map(Outcome::as_str),
            hold_decision: alert.hold_decision.map(|d| match d {
                HoldDecision::Release => "release",
                HoldDecision::Block => "block",
            }),
        });
    }
}
