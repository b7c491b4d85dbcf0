//! The life of a screened transfer: its states, the legal moves between them,
//! and what each move does to the customer's history. The service, the expiry
//! tick and the backtest all move transfers through [`TransferState::next`], so
//! "what counts in history" is written once.
//!
//! ```text
//!  ALLOW ─▶ Allowed ─┐                 Execute
//!  WARN  ─▶ Warned  ─┼───────────────────────────▶ Executed
//!                    │   Release / Expire(release)   ▲
//!  HOLD  ─▶ Held ────┼──────────────▶ Released ──────┘
//!              │     │ Block  ─▶ Blocked
//!              │     │ Expire(block) ─▶ Expired
//!  BLOCK ─▶ Blocked  │
//!  Cancel: from Allowed, Warned, Released, Executed (leaves history) or Held ─▶ Cancelled
//! ```
//!
//! Must not do I/O, read the clock, or know about locks and storage.

use crate::model::Action;
use crate::rules::ExpiryAction;

/// Where a screened transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferState {
    Allowed,
    Warned,
    Held,
    Released,
    Blocked,
    Expired,
    Cancelled,
    Executed,
}

/// What happens to a transfer after its screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEvent {
    /// An officer released the hold.
    Release,
    /// An officer blocked the hold.
    Block,
    /// The hold expired; the ruleset says what that does.
    Expire(ExpiryAction),
    /// The bank executed it.
    Execute,
    /// The bank cancelled it.
    Cancel,
}

/// What a move does to the customer's history (known payees, windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    Unchanged,
    /// The transfer now counts: apply its record.
    Count,
    /// The transfer no longer counts: revert its record.
    Uncount,
}

/// A legal move: the state after it (the same state for a repeat that changes
/// nothing, such as executing an executed transfer) and its effect on history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: TransferState,
    pub history: History,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a transfer that is {} cannot be {}", from.as_str(), event.as_str())]
pub struct IllegalMove {
    pub from: TransferState,
    pub event: TransferEvent,
}

impl TransferEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferEvent::Release => "released",
            TransferEvent::Block => "blocked",
            TransferEvent::Expire(_) => "expired",
            TransferEvent::Execute => "executed",
            TransferEvent::Cancel => "cancelled",
        }
    }
}

impl TransferState {
    /// The state a fresh decision puts a transfer in, and whether it counts at once.
    pub fn screened(action: Action) -> Transition {
        let (to, history) = match action {
            Action::Allow => (TransferState::Allowed, History::Count),
            Action::Warn => (TransferState::Warned, History::Count),
            Action::Hold => (TransferState::Held, History::Unchanged),
            Action::Block => (TransferState::Blocked, History::Unchanged),
        };
        Transition { to, history }
    }

    /// The transfer is in the customer's history (its payee known, in the windows).
    pub fn counts(self) -> bool {
        matches!(
            self,
            TransferState::Allowed | TransferState::Warned | TransferState::Released | TransferState::Executed
        )
    }

    /// The move `event` makes from this state, or why it cannot be made.
    pub fn next(self, event: TransferEvent) -> Result<Transition, IllegalMove> {
        use History::*;
        use TransferEvent as E;
        use TransferState as S;
        let (to, history) = match (self, event) {
            (S::Held, E::Release | E::Expire(ExpiryAction::Release)) => (S::Released, Count),
            (S::Held, E::Block) => (S::Blocked, Unchanged),
            (S::Held, E::Expire(ExpiryAction::Block)) => (S::Expired, Unchanged),
            (S::Allowed | S::Warned | S::Released, E::Execute) => (S::Executed, Unchanged),
            (S::Executed, E::Execute) | (S::Cancelled, E::Cancel) => (self, Unchanged),
            (S::Allowed | S::Warned | S::Released | S::Executed, E::Cancel) => (S::Cancelled, Uncount),
            (S::Held, E::Cancel) => (S::Cancelled, Unchanged),
            _ => return Err(IllegalMove { from: self, event }),
        };
        Ok(Transition { to, history })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Allowed => "allowed",
            TransferState::Warned => "warned",
            TransferState::Held => "held",
            TransferState::Released => "released",
            TransferState::Blocked => "blocked",
            TransferState::Expired => "expired",
            TransferState::Cancelled => "cancelled",
            TransferState::Executed => "executed",
        }
    }

    pub const ALL: [TransferState; 8] = [
        TransferState::Allowed,
        TransferState::Warned,
        TransferState::Held,
        TransferState::Released,
        TransferState::Blocked,
        TransferState::Expired,
        TransferState::Cancelled,
        TransferState::Executed,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use History::*;
    use TransferEvent as E;
    use TransferState as S;

    /// Every state under every event: the legal moves, with their effect on
    /// history, and every other pair refused.
    #[test]
    fn every_move_legal_and_illegal() {
        let legal: &[(S, E, S, History)] = &[
            (S::Held, E::Release, S::Released, Count),
            (S::Held, E::Block, S::Blocked, Unchanged),
            (S::Held, E::Expire(ExpiryAction::Block), S::Expired, Unchanged),
            (S::Held, E::Expire(ExpiryAction::Release), S::Released, Count),
            (S::Held, E::Cancel, S::Cancelled, Unchanged),
            (S::Allowed, E::Execute, S::Executed, Unchanged),
            (S::Warned, E::Execute, S::Executed, Unchanged),
            (S::Released, E::Execute, S::Executed, Unchanged),
            (S::Executed, E::Execute, S::Executed, Unchanged),
            (S::Allowed, E::Cancel, S::Cancelled, Uncount),
            (S::Warned, E::Cancel, S::Cancelled, Uncount),
            (S::Released, E::Cancel, S::Cancelled, Uncount),
            (S::Executed, E::Cancel, S::Cancelled, Uncount),
            (S::Cancelled, E::Cancel, S::Cancelled, Unchanged),
        ];
        let events = [
            E::Release,
            E::Block,
            E::Expire(ExpiryAction::Block),
            E::Expire(ExpiryAction::Release),
            E::Execute,
            E::Cancel,
        ];
        for from in S::ALL {
            for event in events {
                let got = from.next(event);
                match legal.iter().find(|(f, e, _, _)| *f == from && *e == event) {
                    Some(&(_, _, to, history)) => assert_eq!(got, Ok(Transition { to, history }), "{from:?} {event:?}"),
                    None => assert_eq!(got, Err(IllegalMove { from, event }), "{from:?} {event:?}"),
                }
            }
        }
        // History stays consistent: a move counts exactly when it enters a counting state.
        for &(from, _, to, history) in legal {
            let expected = match (from.counts(), to.counts()) {
                (false, true) => Count,
                (true, false) => Uncount,
                _ => Unchanged,
            };
            assert_eq!(history, expected, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn a_fresh_decision_counts_for_allow_and_warn_only() {
        assert_eq!(TransferState::screened(Action::Allow), Transition { to: S::Allowed, history: Count });
        assert_eq!(TransferState::screened(Action::Warn), Transition { to: S::Warned, history: Count });
        assert_eq!(TransferState::screened(Action::Hold), Transition { to: S::Held, history: Unchanged });
        assert_eq!(TransferState::screened(Action::Block), Transition { to: S::Blocked, history: Unchanged });
    }
}
