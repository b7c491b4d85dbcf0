//! The context schema: every field a rule may read, its type, its meaning and how
//! it is read from [`Facts`]. This table is the one place that defines the
//! schema: the type checker, the compiled readers and `docs/rules.md` all come
//! from it.
//!
//! Must not compute facts (the engine fills [`Facts`] from a transfer and state).

use super::text::TextView;
use crate::model::{Channel, Observation};
use std::cell::Cell;

/// A duration field with no value ("never") reads as this: infinitely long ago.
/// So `customer.limit_raised_ago < 24h` is false for a customer who never raised
/// the limit, and `has(customer.limit_raised_ago)` tells the two apart.
pub const NEVER: i64 = i64::MAX;

/// An optional int field with no value reads as this; every comparison with
/// it is false, and `has(field)` tells.
pub const ABSENT: i64 = i64::MIN;

/// Everything a rule can see about one transfer, flattened for fast reads.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub transfer_amount: i64,
    pub transfer_currency: &'a str,
    pub transfer_channel: &'a str,
    /// The memo in all its forms ([`super::text`]).
    pub transfer_memo: TextView<'a>,
    pub transfer_hour: i64,
    pub bank_id: &'a str,
    pub branch_id: &'a str,
    pub customer_age: i64,
    pub customer_account_age_days: i64,
    pub customer_daily_limit: i64,
    pub customer_limit_raised_ago: i64,
    pub customer_limit_raised_to_max: bool,
    pub customer_stopped_ago: i64,
    pub history_young_payee_growing_run: i64,
    pub customer_observations: u8,
    pub payee_account: &'a str,
    pub payee_name: TextView<'a>,
    pub payee_bank: &'a str,
    pub payee_is_new: bool,
    pub payee_first_paid_ago: i64,
    pub payee_watchlisted: bool,
    pub payee_distinct_senders_24h: i64,
    pub payee_new_senders_24h: i64,
    pub payee_first_seen_ago: i64,
    pub history_transfers_1h: i64,
    pub history_transfers_24h: i64,
    pub history_amount_24h: i64,
    pub history_new_payees_24h: i64,
    pub customer_transfers_seen: i64,
    /// [`ABSENT`] while the customer has too little history.
    pub customer_usual_amount: i64,
    pub transfer_amount_vs_usual: i64,
    pub payee_times_paid: i64,
    /// [`ABSENT`] before any payment to this payee.
    pub payee_last_paid: i64,
    pub payee_largest_paid: i64,
    pub payee_growth: i64,
    pub payee_growing_run: i64,
    pub history_new_payees_1h: i64,
    pub history_amount_1h: i64,
    pub history_new_payee_growing_run: i64,
    /// Per-request memo of regex results, one slot per (pattern, field) in the
    /// ruleset: 0 = not computed yet, 1 = no match, 2 = match.
    pub regex_memo: &'a [Cell<u8>],
}

impl Facts<'_> {
    /// Returns the memoised result in `slot`, computing it once per request.
    #[inline]
    pub fn memo(&self, slot: usize, compute: impl FnOnce() -> bool) -> bool {
        match self.regex_memo.get(slot) {
            Some(cell) => match cell.get() {
                0 => {
                    let v = compute();
                    cell.set(1 + u8::from(v));
                    v
                }
                v => v == 2,
            },
            None => compute(),
        }
    }
}

/// The type of a field or expression in the condition language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Int,
    /// Seconds; written `30m`, `24h`, `7d`.
    Duration,
    Str,
    Bool,
    /// The set of teller observations.
    Observations,
    ListInt,
    ListStr,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Int => "int",
            Ty::Duration => "duration",
            Ty::Str => "string",
            Ty::Bool => "bool",
            Ty::Observations => "list of observations",
            Ty::ListInt => "list of int",
            Ty::ListStr => "list of string",
        }
    }
}

pub type StrRead = for<'a, 'b> fn(&'b Facts<'a>) -> &'a str;
pub type TextRead = for<'a, 'b> fn(&'b Facts<'a>) -> TextView<'a>;

/// How a field is read from [`Facts`].
#[derive(Clone, Copy)]
pub enum Read {
    Int(fn(&Facts) -> i64),
    /// Seconds, or [`NEVER`] when absent.
    Duration(fn(&Facts) -> i64),
    Str(StrRead),
    Bool(fn(&Facts) -> bool),
    Observations(fn(&Facts) -> u8),
    /// An int that may be absent ([`ABSENT`]): it can be compared, not computed with.
    OptInt(fn(&Facts) -> i64),
}

impl Read {
    pub fn ty(self) -> Ty {
        match self {
            Read::Int(_) => Ty::Int,
            Read::Duration(_) => Ty::Duration,
            Read::Str(_) => Ty::Str,
            Read::Bool(_) => Ty::Bool,
            Read::Observations(_) => Ty::Observations,
            Read::OptInt(_) => Ty::Int,
        }
    }
}

pub struct Field {
    pub path: &'static str,
    pub read: Read,
    /// May be absent (`has(path)` tells); only durations are.
    pub optional: bool,
    /// The only values a string field takes, checked against literals at load.
    pub values: &'static [&'static str],
    /// Free text read normalised ([`super::text`]): literals and list items
    /// compared with it are normalised at load; keyword lists and `contains`
    /// follow the boundary rule.
    pub text: Option<TextRead>,
    pub doc: &'static str,
}

const CHANNELS: &[&str] = &["counter", "atm", "mobile", "online"];
pub const OBSERVATIONS: &[&str] = &[
    "on_phone_with_stranger",
    "agitated",
    "refuses_to_explain",
    "accompanied_by_stranger",
    "coached",
    "urgent",
    "screen_shared",
    "remote_control",
];

const fn field(path: &'static str, read: Read, doc: &'static str) -> Field {
    Field { path, read, optional: false, values: &[], text: None, doc }
}

/// An int that may be absent.
const fn opt_int(path: &'static str, read: fn(&Facts) -> i64, doc: &'static str) -> Field {
    Field { optional: true, ..field(path, Read::OptInt(read), doc) }
}

/// A free-text field: read normalised.
const fn text(path: &'static str, read: StrRead, text: TextRead, doc: &'static str) -> Field {
    Field { text: Some(text), ..field(path, Read::Str(read), doc) }
}

/// The context schema.
pub static FIELDS: &[Field] = &[
    field(
        "transfer.amount",
        Read::Int(|f| f.transfer_amount),
        "Amount in minor units of the ruleset's currency (fen for CNY): 400,000 CNY is `40000000`; a transfer in another currency is converted at the ruleset's rate (*Amounts and currencies*).",
    ),
    field("transfer.currency", Read::Str(|f| f.transfer_currency), "The currency the customer sends, ISO 4217 upper case, e.g. `\"USD\"`; `transfer.amount` is already in the ruleset's."),
    Field {
        values: CHANNELS,
        ..field(
            "transfer.channel",
            Read::Str(|f| f.transfer_channel),
            "How the customer sends: `counter`, `atm`, `mobile` or `online`.",
        )
    },
    text(
        "transfer.memo",
        |f| f.transfer_memo.text,
        |f| f.transfer_memo,
        "The customer's stated purpose (free text, may be empty), normalised: see *Matching text*.",
    ),
    field(
        "transfer.memo_raw",
        Read::Str(|f| f.transfer_memo.raw),
        "The memo exactly as sent, for the rare rule that must see it unnormalised.",
    ),
    field(
        "transfer.hour",
        Read::Int(|f| f.transfer_hour),
        "Local hour of the request, 0-23, in the ruleset's `utc_offset`.",
    ),
    field("bank.id", Read::Str(|f| f.bank_id), "The bank's id."),
    field("branch.id", Read::Str(|f| f.branch_id), "The branch the request came from."),
    field(
        "customer.age",
        Read::Int(|f| f.customer_age),
        "Whole years from the birth date to the transfer's local date.",
    ),
    field(
        "customer.account_age_days",
        Read::Int(|f| f.customer_account_age_days),
        "Days since the account was opened.",
    ),
    field(
        "customer.daily_limit",
        Read::Int(|f| f.customer_daily_limit),
        "The customer's daily transfer limit, in minor units of the ruleset's currency (as the bank sets it: not converted).",
    ),
    Field {
        optional: true,
        ..field(
            "customer.limit_raised_ago",
            Read::Duration(|f| f.customer_limit_raised_ago),
            "Time since the last raise of the daily limit; absent (never) compares as infinitely long ago.",
        )
    },
    field(
        "customer.limit_raised_to_max",
        Read::Bool(|f| f.customer_limit_raised_to_max),
        "The last limit change raised the limit to the bank's maximum.",
    ),
    Field {
        optional: true,
        ..field(
            "customer.stopped_ago",
            Read::Duration(|f| f.customer_stopped_ago),
            "Time since the first of this customer's transfers held or blocked in the last day, until an officer finds that one was no fraud (a transfer held because of it does not renew it); absent (none) compares as infinitely long ago.",
        )
    },
    Field {
        values: OBSERVATIONS,
        ..field(
            "customer.observations",
            Read::Observations(|f| f.customer_observations),
            "What the teller saw, or the bank's app reported for a mobile or online transfer (`screen_shared`, `remote_control`); test with `\"coached\" in customer.observations`.",
        )
    },
    field(
        "payee.account",
        Read::Str(|f| f.payee_account),
        "The payee's account number (compare with lists; never logged in full).",
    ),
    text("payee.name", |f| f.payee_name.text, |f| f.payee_name, "The payee's name, normalised like the memo."),
    field("payee.name_raw", Read::Str(|f| f.payee_name.raw), "The payee's name exactly as sent."),
    field("payee.bank", Read::Str(|f| f.payee_bank), "The payee's bank code."),
    field(
        "payee.is_new",
        Read::Bool(|f| f.payee_is_new),
        "This customer has never paid this payee (by bank and account).",
    ),
    Field {
        optional: true,
        ..field(
            "payee.first_paid_ago",
            Read::Duration(|f| f.payee_first_paid_ago),
            "Time since this customer first paid this payee; absent for a new payee.",
        )
    },
    field(
        "payee.watchlisted",
        Read::Bool(|f| f.payee_watchlisted),
        "The account is on an unexpired police watchlist entry.",
    ),
    field(
        "payee.distinct_senders_24h",
        Read::Int(|f| f.payee_distinct_senders_24h),
        "Different customers who paid this account in the last 24 h, this one included (fan-in: the mule signal); counts stop at 129.",
    ),
    field(
        "payee.new_senders_24h",
        Read::Int(|f| f.payee_new_senders_24h),
        "Of `payee.distinct_senders_24h`, those to whom the account was a new payee when they paid it, this one included if it is new to them. A collection account is new to everyone who pays it; a utility or a landlord is mostly paid by people who paid it before.",
    ),
    Field {
        optional: true,
        ..field(
            "payee.first_seen_ago",
            Read::Duration(|f| f.payee_first_seen_ago),
            "Time since a customer of the bank first paid this account, this transfer aside: the first of a run of first payments, remembered a week after an account's only first payment and four weeks after the last of several (a payee imported as known counts from its date). Absent when none did, and then, like every absent duration, compares as infinitely long ago: `has(payee.first_seen_ago) && payee.first_seen_ago >= 14d` is an account of standing. A collection account is hours old; a hospital or a school has been paid for months.",
        )
    },
    field(
        "history.transfers_1h",
        Read::Int(|f| f.history_transfers_1h),
        "This customer's counted transfers in the hour before this one.",
    ),
    field(
        "history.transfers_24h",
        Read::Int(|f| f.history_transfers_24h),
        "This customer's counted transfers in the 24 h before this one.",
    ),
    field("history.amount_24h", Read::Int(|f| f.history_amount_24h), "Sum of those transfers' amounts, minor units."),
    field(
        "history.new_payees_24h",
        Read::Int(|f| f.history_new_payees_24h),
        "How many of those went to a payee that was new at the time.",
    ),
    field(
        "history.new_payees_1h",
        Read::Int(|f| f.history_new_payees_1h),
        "Counted transfers to then-new payees in the hour before this one (a burst of new payees).",
    ),
    field("history.amount_1h", Read::Int(|f| f.history_amount_1h), "Sum of the hour's counted transfers, minor units."),
    field(
        "history.new_payee_growing_run",
        Read::Int(|f| f.history_new_payee_growing_run),
        "When this payee is new: how many payments to successive new payees in the last 24 h each grew on the one before, this one included (1: no run); 0 for a known payee.",
    ),
    field(
        "history.young_payee_growing_run",
        Read::Int(|f| f.history_young_payee_growing_run),
        "When this payee is new: the longest run of growing payments (each larger than the one before, ending with the latest; 2 for three payments) to any payee first paid in the last 60 days; 0 for a known payee.",
    ),
    field(
        "customer.transfers_seen",
        Read::Int(|f| f.customer_transfers_seen),
        "Transfers in the customer's profile: the last ~90 days, older ones fading by halves (0: no history at all).",
    ),
    opt_int(
        "customer.usual_amount",
        |f| f.customer_usual_amount,
        "The amount 80 % of the customer's profiled transfers stay under (rounded up to a power of two in fen); absent with fewer than 5.",
    ),
    opt_int(
        "transfer.amount_vs_usual",
        |f| f.transfer_amount_vs_usual,
        "This amount as a per cent of `customer.usual_amount` (500: five times the usual); absent with it.",
    ),
    field(
        "payee.times_paid",
        Read::Int(|f| f.payee_times_paid),
        "Counted payments from this customer to this payee before this one (0 for a new payee).",
    ),
    opt_int(
        "payee.last_paid",
        |f| f.payee_last_paid,
        "The amount of the last payment to this payee, minor units; absent before any.",
    ),
    opt_int(
        "payee.largest_paid",
        |f| f.payee_largest_paid,
        "The largest payment to this payee so far, minor units; absent before any.",
    ),
    opt_int(
        "payee.growth",
        |f| f.payee_growth,
        "This amount as a per cent of `payee.last_paid` (300: three times the last); absent before any payment.",
    ),
    field(
        "payee.growing_run",
        Read::Int(|f| f.payee_growing_run),
        "Payments to this payee in a row that each grew on the one before, this one included (0 when this one does not grow or the payee is new).",
    ),
];

pub fn lookup(path: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.path == path)
}

/// The field table of `docs/rules.md`, generated from [`FIELDS`].
pub fn field_table_markdown() -> String {
    let mut out = String::from("| field | type | meaning |\n|---|---|---|\n");
    for f in FIELDS {
        let mut ty = f.read.ty().name().to_string();
        if f.optional {
            ty.push_str(" (optional)");
        }
        out.push_str(&format!("| `{}` | {} | {} |\n", f.path, ty, f.doc));
    }
    out
}

// Keep the observation names in the schema in step with the model.
const _: () = assert!(OBSERVATIONS.len() == Observation::ALL.len());
const _: () = assert!(CHANNELS.len() == Channel::ALL.len());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_match_the_model() {
        for (name, o) in OBSERVATIONS.iter().zip(Observation::ALL) {
            assert_eq!(*name, o.as_str());
        }
        for (name, c) in CHANNELS.iter().zip(Channel::ALL) {
            assert_eq!(*name, c.as_str());
        }
        let mut paths: Vec<_> = FIELDS.iter().map(|f| f.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), FIELDS.len(), "duplicate field path");
    }
}
