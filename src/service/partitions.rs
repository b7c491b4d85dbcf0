//! A clustered node's partitions seen from the service: putting back what a
//! partition's journal holds when this node takes it over, and forgetting a
//! partition's customers when it hands one over or loses it. A partition's
//! alerts come with it: adopted into the book, their last event sent again
//! under its own id (sinks drop a repeat).
//!
//! Must not know NATS or leases (`cluster` does); it only maps stored records
//! onto memory, as `recovery` does at startup.

use super::*;
use crate::store::{decode_change, Change};

impl TransferGuard {
    /// Puts back a partition's changes, in the order they were written:
    /// customers' images, screened transfers (held ones back in the hold
    /// index), event ids. Returns how many changes there were.
    pub fn restore_partition(&self, changes: Vec<Change>) -> Result<usize, StoreError> {
        let n = changes.len();
        // The last image of each transfer (None: pruned by its owner past the idempotency window).
        let mut transfers: std::collections::HashMap<TransferKey, Option<(String, Remembered)>> = Default::default();
        // The last image of each alert, and how many events it had.
        let mut alerts: std::collections::HashMap<String, (Alert, u32)> = Default::default();
        for (space, key, value) in changes {
            let id = || recovery::key_text(&key);
            match (space, value) {
                (Space::Customers, Some(v)) => self.state.restore_customer(&id(), decode_change(space, &key, &v)?),
                (Space::Customers, None) => self.state.forget_customers(|c| c == id()),
                (Space::Transfers, Some(v)) => {
                    let stored: StoredTransfer = decode_change(space, &key, &v)?;
                    let request_id = stored.answer.request_id.clone();
                    let entry = Remembered::from_stored(&self.names, stored);
                    transfers.insert(TransferKey::of(&request_id), Some((request_id, entry)));
                }
                (Space::Transfers, None) => {
                    if let Some(k) = TransferKey::from_bytes(&key) {
                        transfers.insert(k, None);
                    }
                }
                (Space::Events, Some(v)) => {
                    self.events.insert(id(), decode_change(space, &key, &v)?);
                }
                (Space::Events, None) => {
                    self.events.remove(&id());
                }
                (Space::Alerts, Some(v)) => {
                    let stored: StoredAlert = decode_change(space, &key, &v)?;
                    let alert = Alert::try_from(stored.alert).map_err(|e| StoreError::Damaged {
                        space: "alerts",
                        key: id(),
                        error: e.to_string(),
                    })?;
                    alerts.insert(alert.id.clone(), (alert, stored.sequence));
                }
                (other, _) => tracing::warn!(space = other.name(), "a partition's journal holds an unexpected record"),
            }
        }
        // Lock order: a `screens` entry before `holds` (a screen holds its
        // entry while it adds a hold), so the holds are added after.
        let mut held = Vec::new();
        for (key, entry) in transfers {
            let Some((request_id, entry)) = entry else {
                self.screens.remove(&key);
                continue;
            };
            if entry.state() == TransferState::Held {
                held.push((entry.status(&self.names, &request_id).hold_expires_at.unwrap_or(0), request_id));
            }
            self.screens.insert(key, entry);
        }
        lock(&self.holds).extend(held);
        for (_, (alert, sequence)) in alerts {
            self.alerts.adopt(alert, sequence);
        }
        self.state.merge_fan_in();
        Ok(n)
    }

    /// Forgets the customers `belongs` picks, with their remembered transfers
    /// and holds: their partition is another node's now.
    pub fn forget_customers(&self, belongs: impl Fn(&str) -> bool) {
        self.screens.retain(|_, e| !belongs(e.customer()));
        // Lock order: a `screens` entry before `holds`, never the other way
        // round (a screen holds its entry while it adds a hold).
        let held: Vec<(UnixSeconds, String)> = lock(&self.holds).iter().cloned().collect();
        let gone: BTreeSet<(UnixSeconds, String)> =
            held.into_iter().filter(|(_, id)| !self.screens.contains_key(&TransferKey::of(id))).collect();
        lock(&self.holds).retain(|h| !gone.contains(h));
        // Their payments stay in the payees' fan-in: they happened, whoever owns them now.
        self.state.forget_customers(&belongs);
    }
}
