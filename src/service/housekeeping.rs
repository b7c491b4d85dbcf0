//! The service's timer work, on the server's clock: holds that expire, alerts
//! that pass their claim deadline, and pruning (ids and statuses past the
//! idempotency window, state windows, alerts past their retention).
//!
//! Must not be called with a time from a request: it runs on the server's clock.

use super::*;

impl TransferGuard {
    /// Forgets ids and statuses older than [`IDEMPOTENCY_SECS`] (never a
    /// transfer still held) and drops window entries that can no longer count.
    /// Also forgets resolved alerts and alert events past their retention.
    pub fn prune(&self, now: UnixSeconds) {
        let forgotten = self.alerts.forget_before(now - self.alert_retention_secs);
        if forgotten > 0 {
            tracing::info!(alerts = forgotten, "resolved alerts past their retention forgotten");
        }
        let cutoff = now - IDEMPOTENCY_SECS;
        self.screens.retain(|key, e| {
            let keep = e.answered_at() >= cutoff || e.state() == TransferState::Held;
            if !keep {
                self.unlog_transfer(*key, e.customer());
            }
            keep
        });
        self.watchers.retain(|_, w| w.receiver_count() > 0);
        self.events.retain(|id, (_, at)| {
            let keep = *at >= cutoff;
            if let (false, Some(store)) = (keep, &self.store) {
                store.put(Space::Events, id.as_bytes(), None::<&()>);
            }
            keep
        });
        self.state.prune(now);
    }

    /// Escalates overdue alerts and ends expired holds; prunes once a minute.
    /// Called by a timer.
    pub fn tick(&self, now: UnixSeconds) {
        let last = self.last_prune.load(Ordering::Relaxed) as i64;
        if now - last >= PRUNE_EVERY_SECS {
            self.last_prune.store(now as u64, Ordering::Relaxed);
            if last != 0 {
                self.prune(now);
            }
        }
        let routing = self.routing.load();
        for alert in self.alerts.escalate_overdue(&routing, now) {
            self.metrics.alerts.with_label_values(&[&alert.station_id, "escalated"]).inc();
            self.audit_alert(&Caller::Service, "escalated", &alert);
        }
        let due: Vec<String> = {
            let mut holds = lock(&self.holds);
            let mut due = Vec::new();
            while let Some(first) = holds.first() {
                if first.0 > now {
                    break;
                }
                let (_, id) = holds.pop_first().expect("first exists");
                due.push(id);
            }
            due
        };
        let expiry = self.ruleset.load().hold.expiry_action;
        for request_id in due {
            let key = TransferKey::of(&request_id);
            let Some(mut entry) = self.screens.get_mut(&key) else { continue };
            if entry.state() != TransferState::Held {
                continue;
            }
            let step = TransferState::Held.next(TransferEvent::Expire(expiry)).expect("a held transfer can expire");
            self.change_history(step.history, &entry.record());
            let (decision, outcome_label) = match expiry {
                ExpiryAction::Block => (HoldDecision::Block, "expired_block"),
                ExpiryAction::Release => (HoldDecision::Release, "expired_release"),
            };
            self.metrics.hold_outcomes.with_label_values(&[outcome_label]).inc();
            if let Some(alert_id) = entry.alert_id() {
                if let Ok(alert) = self.alerts.hold_expired(alert_id, decision, now) {
                    self.metrics.alerts.with_label_values(&[&alert.station_id, "expired"]).inc();
                    self.audit_alert(&Caller::Service, "expired", &alert);
                }
            }
            entry.end_hold(step.to, None, "hold expired", now);
            self.publish(key, &request_id, &entry);
            self.log_transfer(key, (&request_id, &entry));
        }
    }
}
