//! Admission control and limits at the edge: a bounded number of screens in
//! flight with a bounded wait for a slot (beyond it RESOURCE_EXHAUSTED at
//! once, never a growing queue), calls whose gRPC deadline has passed dropped
//! before any work, officers' calls on a budget of their own, and the fail
//! mode a screen gets while the store cannot commit. The gate
//! (`api::identity`) takes the slot before the request is even decoded.
//!
//! Must not decide transfers: the fail mode only raises the engine's answer.

use crate::auth::Method;
use crate::model::{Action, Minor};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// What a screen is answered while the store cannot commit within
/// [`Limits::commit_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// HOLD at or above the floor, WARN below (the default).
    Floor,
    Hold,
    Warn,
    /// UNAVAILABLE: the teller's system retries or follows its own procedure.
    Unavailable,
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FailMode, String> {
        crate::model::parse_name("fail mode", s, "floor, hold, warn or unavailable")
    }
}

/// Every limit the edge enforces (docs/security.md lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Screens (and customer events) being worked on at once.
    pub screens_in_flight: usize,
    /// How long a screen may wait for a slot before RESOURCE_EXHAUSTED.
    pub screen_queue_wait: Duration,
    /// Officers' and analysts' calls in flight at once (their own budget).
    pub officer_calls_in_flight: usize,
    /// The longest a change-making call waits for the store before the fail mode.
    pub commit_timeout: Duration,
    pub fail_mode: FailMode,
    /// With [`FailMode::Floor`]: amounts at or above this (minor units) get HOLD, below WARN.
    pub fail_floor: Minor,
    /// The largest request message accepted (bytes).
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub streams_per_connection: u32,
    /// WatchAlerts streams open at once per station.
    pub watchers_per_station: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            screens_in_flight: 32 * cores,
            screen_queue_wait: Duration::from_millis(2),
            officer_calls_in_flight: 64,
            commit_timeout: Duration::from_secs(1),
            fail_mode: FailMode::Floor,
            fail_floor: 500_000,
            max_message_bytes: 64 * 1024,
            streams_per_connection: 256,
            watchers_per_station: 64,
        }
    }
}

impl FailMode {
    /// The action a screen of `amount` is answered with while degraded, at
    /// least the engine's own `decided`; None: UNAVAILABLE.
    pub fn answer(self, decided: Action, amount: Minor, floor: Minor) -> Option<Action> {
        let fallback = match self {
            FailMode::Unavailable => return None,
            FailMode::Hold => Action::Hold,
            FailMode::Warn => Action::Warn,
            FailMode::Floor if amount >= floor => Action::Hold,
            FailMode::Floor => Action::Warn,
        };
        Some(decided.max(fallback))
    }
}

/// The slots. One per server.
pub struct Admission {
    screens: Arc<Semaphore>,
    officers: Arc<Semaphore>,
    pub limits: Limits,
}

/// Why a call was turned away (the metric's label and the status).
pub enum Shed {
    Busy(Status),
    Deadline(Status),
}

impl Shed {
    pub fn why(&self) -> &'static str {
        match self {
            Shed::Busy(_) => "busy",
            Shed::Deadline(_) => "deadline",
        }
    }

    pub fn into_status(self) -> Status {
        match self {
            Shed::Busy(s) | Shed::Deadline(s) => s,
        }
    }
}

/// Which budget a call takes a slot from, if any: tellers' and banks' calls
/// that change state share one, officers' calls have their own; reads of a
/// transfer, streams (counted per station) and health take none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Screens,
    Officers,
}

impl Budget {
    pub fn of(method: Method) -> Option<Budget> {
        match method {
            Method::Screen | Method::RecordEvent => Some(Budget::Screens),
            Method::ListAlerts
            | Method::ClaimAlert
            | Method::ResolveAlert
            | Method::UpsertEntry
            | Method::RemoveEntry
            | Method::ListEntries => Some(Budget::Officers),
            Method::GetTransfer
            | Method::WatchTransfer
            | Method::WatchAlerts
            | Method::GetRuleset
            | Method::ReloadRules
            | Method::DryRun
            | Method::ProposeRules
            | Method::ApproveRules => None,
        }
    }
}

/// The caller's deadline, from the `grpc-timeout` header ("100m", "5S", ...).
pub fn deadline_of(headers: &http::HeaderMap, arrived: Instant) -> Option<Instant> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            screens: Arc::new(Semaphore::new(limits.screens_in_flight.max(1))),
            officers: Arc::new(Semaphore::new(limits.officer_calls_in_flight.max(1))),
            limits,
        }
    }

    /// A slot from `budget`, or why not: no slot within the wait, or the
    /// caller's deadline already passed. Officers' calls never wait behind screens.
    pub async fn slot(&self, budget: Budget, deadline: Option<Instant>) -> Result<OwnedSemaphorePermit, Shed> {
        match budget {
            Budget::Screens => self.take(&self.screens, self.limits.screen_queue_wait, deadline, "screens").await,
            Budget::Officers => self.take(&self.officers, Duration::from_secs(1), deadline, "officer calls").await,
        }
    }

    async fn take(
        &self,
        slots: &Arc<Semaphore>,
        wait: Duration,
        deadline: Option<Instant>,
        what: &str,
    ) -> Result<OwnedSemaphorePermit, Shed> {
        let expired = || Shed::Deadline(Status::deadline_exceeded("the call's deadline passed before it could start"));
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(expired());
        }
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tokio::time::timeout(wait, slots.clone().acquire_owned()).await.ok().and_then(Result::ok).ok_or_else(
                    || {
                        Shed::Busy(Status::resource_exhausted(format!(
                            "too many {what} in flight (limit {}); retry shortly",
                            if what == "screens" {
                                self.limits.screens_in_flight
                            } else {
                                self.limits.officer_calls_in_flight
                            }
                        )))
                    },
                )?
            }
        };
        // Work whose caller has given up is not done.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(expired());
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fail_mode_only_raises_the_answer() {
        let floor = 500_000;
        assert_eq!(FailMode::Floor.answer(Action::Allow, 600_000, floor), Some(Action::Hold));
        assert_eq!(FailMode::Floor.answer(Action::Allow, 10_000, floor), Some(Action::Warn));
        assert_eq!(FailMode::Floor.answer(Action::Block, 10_000, floor), Some(Action::Block));
        assert_eq!(FailMode::Warn.answer(Action::Hold, 10, floor), Some(Action::Hold));
        assert_eq!(FailMode::Hold.answer(Action::Allow, 10, floor), Some(Action::Hold));
        assert_eq!(FailMode::Unavailable.answer(Action::Allow, 10, floor), None);
    }

    #[test]
    fn fail_modes_are_chosen_by_name() {
        assert_eq!("unavailable".parse::<FailMode>(), Ok(FailMode::Unavailable));
        assert!("maybe".parse::<FailMode>().unwrap_err().contains("floor, hold, warn or unavailable"));
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let now = Instant::now();
        let mut m = http::HeaderMap::new();
        for (v, d) in [("100m", 100), ("2S", 2000), ("1M", 60_000), ("5000u", 5), ("1H", 3_600_000)] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(deadline_of(&m, now), Some(now + Duration::from_millis(d)), "{v}");
        }
        for bad in ["", "m", "10x", "-1S", "99999999999999999999H"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(deadline_of(&m, now), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn beyond_the_slots_the_answer_is_at_once() {
        let limits = Limits { screens_in_flight: 1, screen_queue_wait: Duration::from_millis(1), ..Limits::default() };
        let admission = Admission::new(limits);
        let held = admission.slot(Budget::Screens, None).await.ok().unwrap();
        assert!(matches!(admission.slot(Budget::Screens, None).await, Err(Shed::Busy(_))));
        assert!(admission.slot(Budget::Officers, None).await.is_ok(), "officers have their own budget");
        drop(held);
        assert!(admission.slot(Budget::Screens, None).await.is_ok());
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(admission.slot(Budget::Screens, Some(past)).await, Err(Shed::Deadline(_))));
    }
}
