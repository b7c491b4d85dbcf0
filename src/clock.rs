//! The server's clock: what hold expiry, claim deadlines, idempotency windows,
//! pruning, audit times and the live-request time window read. One [`Clock`] is
//! held by the service; nothing else in the core reads the time (the engine
//! takes "now" from the request).
//!
//! Must not be read by `engine`, `rules` or `state`: their time comes from the
//! request, so rule tests and backtests replay exactly.

use crate::model::UnixSeconds;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where the server reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> UnixSeconds;
}

/// The system's real time, in whole seconds since the Unix epoch.
pub fn wall_clock() -> UnixSeconds {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Real time: what `serve` runs on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSeconds {
        wall_clock()
    }
}

/// Real time moved by an offset that can be advanced: tests of expiry and
/// escalation jump ahead instead of sleeping, and everything else still sees
/// time pass.
#[derive(Debug, Default)]
pub struct AdjustableClock {
    offset: AtomicI64,
}

impl AdjustableClock {
    pub fn new() -> AdjustableClock {
        AdjustableClock::default()
    }

    /// Moves the clock `secs` ahead.
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for AdjustableClock {
    fn now(&self) -> UnixSeconds {
        wall_clock() + self.offset.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_follows_real_time_plus_what_it_was_advanced() {
        let clock = AdjustableClock::new();
        let before = wall_clock();
        clock.advance(1800);
        let now = clock.now();
        assert!(now >= before + 1800 && now <= wall_clock() + 1800);
    }
}
