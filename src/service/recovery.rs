//! Recovery from the durable store: what `with_store` reads back into memory
//! at startup (customers, watchlist, screened transfers with their holds, event
//! ids, alerts and their events), and the keys of the `meta` keyspace (boot
//! time, the alert sinks' cursors).
//!
//! Must not decide anything: it only puts back what the service wrote.

use super::*;
use crate::store::records::Unknown;
use crate::store::{AlertEventRec, WatchEntryRec};

/// A stored value that does not map back onto the domain.
fn damaged(space: &'static str, key: &[u8], e: Unknown) -> StoreError {
    StoreError::Damaged { space, key: key_text(key), error: e.to_string() }
}

/// Keys of the `meta` keyspace.
pub(super) const META_BOOT: &[u8] = b"boot";

/// The NATS sink's cursor as written before sinks had cursors of their own.
pub(super) const META_NATS_CURSOR: &[u8] = b"nats_cursor";

/// Key in `meta` of the durable cursor of the alert sink `name`.
pub(super) fn sink_cursor_key(name: &str) -> String {
    format!("sink_cursor/{name}")
}

/// What a restart found in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    pub customers: usize,
    pub payees: usize,
    pub watchlist: usize,
    pub transfers: usize,
    pub held: usize,
    pub event_ids: usize,
    pub alerts: usize,
    pub alert_events: usize,
    pub seconds: f64,
}

/// A store key that is an id (customer, request, event) as text.
pub(super) fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

impl TransferGuard {
    /// Loads what `store` holds, then writes every change to it from now on.
    /// Held transfers come back held (their expiry still running), alerts with
    /// their events and cursors, ids with their answers.
    pub fn with_store(mut self, store: Arc<Store>) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        let mut found = Recovered::default();
        // Customers and transfers are most of a store: read them on two threads.
        let (customers, transfers) = std::thread::scope(|scope| {
            let customers = scope.spawn(|| {
                store.for_each(Space::Customers, |id, image| self.state.restore_customer(&key_text(id), image))
            });
            let transfers = self.restore_transfers(&store);
            (customers.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), transfers)
        });
        found.customers = customers?;
        (found.transfers, found.held) = transfers?;
        self.state.rebuild_fan_in();
        found.payees = self.state.sizes().payees;
        found.watchlist =
            store.for_each(Space::Watchlist, |_, entry: WatchEntryRec| self.state.watchlist_upsert(entry.into()))?;
        found.event_ids = store.for_each(Space::Events, |id, seen| {
            self.events.insert(key_text(id), seen);
        })?;
        let alerts: Vec<(Alert, u32)> = store
            .load::<StoredAlert>(Space::Alerts)?
            .into_iter()
            .map(|(key, a)| Ok((Alert::try_from(a.alert).map_err(|e| damaged("alerts", &key, e))?, a.sequence)))
            .collect::<Result<_, StoreError>>()?;
        let events: Vec<AlertEvent> = store
            .load::<AlertEventRec>(Space::AlertEvents)?
            .into_iter()
            .map(|(key, e)| AlertEvent::try_from(e).map_err(|e| damaged("alert_events", &key, e)))
            .collect::<Result<_, StoreError>>()?;
        (found.alerts, found.alert_events) = (alerts.len(), events.len());
        self.alerts.restore(alerts, events);
        // Alert ids carry the boot time: make it unique even for a restart
        // within the same second.
        let last_boot: UnixSeconds = store.get(Space::Meta, META_BOOT)?.unwrap_or(0);
        self.started_at = self.started_at.max(last_boot + 1);

        self.state.set_log(store.clone());
        self.alerts.set_log(store.clone());
        // Weak: the book holds the store (as its log); a strong reference back
        // would keep both alive, and the store open, after the service is dropped.
        let alerts = Arc::downgrade(&self.alerts);
        store.on_commit(move |cursor, refused| {
            if let Some(alerts) = alerts.upgrade() {
                if !refused.is_empty() {
                    let refused = |id: &str| crate::alerts::partition_of_id(id).is_some_and(|p| refused.contains(&p));
                    let n = alerts.withdraw(cursor, refused);
                    if n > 0 {
                        tracing::warn!(events = n, "alert events withdrawn: their partition's journal refused them");
                    }
                }
                alerts.release(cursor);
            }
        });
        let metrics = self.metrics.clone();
        store.observe_commits(move |secs, n| {
            metrics.store_commit_seconds.observe(secs);
            metrics.store_changes.inc_by(n as u64);
        });
        store.put(Space::Meta, META_BOOT, Some(&self.started_at));
        store.flush()?;
        found.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            customers = found.customers,
            payees = found.payees,
            watchlist = found.watchlist,
            transfers = found.transfers,
            held = found.held,
            alerts = found.alerts,
            alert_events = found.alert_events,
            seconds = found.seconds,
            store = %store.path().display(),
            "state recovered from the store"
        );
        self.store = Some(store);
        self.recovered = found;
        Ok(self)
    }

    /// Screened transfers back from the store, held ones back in the hold
    /// index: (transfers, held).
    pub(super) fn restore_transfers(&self, store: &Store) -> Result<(usize, usize), StoreError> {
        let mut holds = lock(&self.holds);
        let mut rekeyed = Vec::new();
        let n = store.for_each(Space::Transfers, |stored_key, t: StoredTransfer| {
            let request_id = t.answer.request_id.clone();
            let key = TransferKey::of(&request_id);
            let entry = Remembered::from_stored(&self.names, t);
            if entry.state() == TransferState::Held {
                holds.insert((entry.status(&self.names, &request_id).hold_expires_at.unwrap_or(0), request_id.clone()));
            }
            if stored_key != key.to_bytes() {
                // Format 1 keyed transfers by their request id.
                rekeyed.push((stored_key.to_vec(), key, request_id));
            }
            self.screens.insert(key, entry);
        })?;
        for (old, key, request_id) in rekeyed {
            store.put(Space::Transfers, &old, None::<&()>);
            if let Some(entry) = self.screens.get(&key) {
                store.put(Space::Transfers, &key.to_bytes(), Some(&entry.stored(&self.names, &request_id)));
            }
        }
        Ok((n, holds.len()))
    }

    /// What the store gave back at startup.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// The cursor the store remembers for the alert sink `name`: every event up
    /// to it was acknowledged (0 without a store, or for a new sink).
    pub fn sink_cursor(&self, name: &str) -> u64 {
        let Some(store) = &self.store else { return 0 };
        let read = |key: &[u8]| match store.get::<u64>(Space::Meta, key) {
            Ok(cursor) => cursor,
            Err(e) => {
                tracing::error!(sink = name, error = %e, "cannot read the sink's cursor; delivering from the start");
                None
            }
        };
        read(sink_cursor_key(name).as_bytes())
            .or_else(|| (name == "nats").then(|| read(META_NATS_CURSOR)).flatten())
            .unwrap_or(0)
    }

    /// The alert sink `name` acknowledged every event up to `cursor`.
    pub fn sink_delivered(&self, name: &str, cursor: u64) {
        if let Some(store) = &self.store {
            store.put(Space::Meta, sink_cursor_key(name).as_bytes(), Some(&cursor));
        }
    }
}
