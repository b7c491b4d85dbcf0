//! Wire ↔ domain: validates every proto request field by field and converts it
//! into a domain type; converts decisions, alerts and statuses back.
//!
//! Every problem is collected (not only the first) as a [`FieldViolation`]
//! naming the field by its proto path, e.g. `customer.birth_date`. Must not hold
//! business logic: nothing here decides anything.

mod to_domain;
mod to_wire;

pub use to_domain::*;
pub use to_wire::*;

use super::proto as pb;
use crate::model::{Date, Transfer, UnixSeconds};
use crate::state::normalise_account;
use pbjson_types::Timestamp;
use std::borrow::Cow;

/// The largest amount accepted: 100 billion CNY in fen. Anything above is a
/// typo or an attack, not a transfer.
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000_000;
/// Earliest and latest times accepted (2000-01-01, 2100-01-01 UTC).
const MIN_TIME: i64 = 946_684_800;
const MAX_TIME: i64 = 4_102_444_800;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects field problems while a request is checked.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

/// The path of a field inside a message (`payee.account`), made into a string
/// only when a violation is reported: valid requests build no paths.
#[derive(Debug, Clone, Copy)]
pub struct Nested<'a>(pub &'a str, pub &'static str);

impl From<Nested<'_>> for String {
    fn from(n: Nested<'_>) -> String {
        format!("{}.{}", n.0, n.1)
    }
}

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    /// The value built from the fields, when every field was valid. A value
    /// missing with no violation recorded is reported too, never unwrapped.
    pub fn into_value<T>(self, value: Option<T>) -> Result<T, Vec<FieldViolation>> {
        match (self.into_result(())?, value) {
            ((), Some(value)) => Ok(value),
            ((), None) => Err(vec![FieldViolation { field: String::new(), description: "incomplete request".into() }]),
        }
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// A required identifier: not empty, at most `max` characters, no control characters.
    /// An owned `value` already trimmed is kept, not copied.
    pub fn id(&mut self, field: impl Into<String> + Copy, value: impl AsRef<str> + Into<String>, max: usize) -> String {
        let raw = value.as_ref();
        if raw.trim().is_empty() {
            self.add(field, "required");
        } else {
            self.check_text(field, raw, max);
        }
        trimmed(value)
    }

    /// Free text: at most `max` characters, no control characters but newline.
    pub fn text(
        &mut self,
        field: impl Into<String> + Copy,
        value: impl AsRef<str> + Into<String>,
        max: usize,
    ) -> String {
        self.check_text(field, value.as_ref(), max);
        value.into()
    }

    fn check_text(&mut self, field: impl Into<String> + Copy, value: &str, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.add(field, format!("at most {max} characters, got {n}"));
        } else if value.chars().any(|c| c.is_control() && c != '\n') {
            self.add(field, "contains control characters");
        }
    }

    pub fn time(&mut self, field: impl Into<String> + Copy, ts: Option<&Timestamp>) -> UnixSeconds {
        match ts {
            None => {
                self.add(field, "required");
                0
            }
            Some(t) if !(0..1_000_000_000).contains(&t.nanos) => {
                self.add(field, "nanos must be within 0..1e9");
                0
            }
            Some(t) if !(MIN_TIME..MAX_TIME).contains(&t.seconds) => {
                self.add(field, "must be between 2000-01-01 and 2100-01-01");
                0
            }
            Some(t) => t.seconds,
        }
    }

    pub fn date(&mut self, field: impl Into<String> + Copy, value: &str) -> Option<Date> {
        // The usual case, a valid YYYY-MM-DD, without the general parser.
        if let Some(d) = plain_date(value).filter(|d| (1900..=2100).contains(&d.year())) {
            return Some(d);
        }
        let format = time::macros::format_description!("[year]-[month]-[day]");
        match Date::parse(value, &format) {
            Ok(d) if (1900..=2100).contains(&d.year()) => Some(d),
            Ok(_) => {
                self.add(field, "year must be between 1900 and 2100");
                None
            }
            Err(_) if value.is_empty() => {
                self.add(field, "required, as YYYY-MM-DD");
                None
            }
            Err(_) => {
                self.add(field, format!("not a valid date `{}`; use YYYY-MM-DD", truncate(value)));
                None
            }
        }
    }

    pub fn amount(&mut self, field: impl Into<String> + Copy, value: i64, allow_zero: bool) -> i64 {
        let low = i64::from(!allow_zero);
        if value < low {
            self.add(field, if allow_zero { "must not be negative" } else { "must be positive (minor units)" });
        } else if value > MAX_AMOUNT_MINOR {
            self.add(field, format!("must be at most {MAX_AMOUNT_MINOR} minor units"));
        }
        value
    }

    pub fn account(&mut self, field: impl Into<String> + Copy, value: impl AsRef<str> + Into<String>) -> String {
        let raw = value.as_ref();
        let normal = match normalise_account(raw.trim()) {
            Cow::Borrowed(n) if n.len() == raw.len() => value.into(),
            n => n.into_owned(),
        };
        if normal.is_empty() {
            self.add(field, "required");
        } else if !(4..=34).contains(&normal.len()) || !normal.chars().all(|c| c.is_ascii_alphanumeric()) {
            self.add(field, "4 to 34 letters or digits (spaces and dashes are ignored)");
        }
        normal
    }
}

/// `value` without surrounding whitespace; an owned value that has none is
/// kept, not copied.
pub(super) fn trimmed(value: impl AsRef<str> + Into<String>) -> String {
    let raw = value.as_ref();
    let trimmed = raw.trim();
    if trimmed.len() == raw.len() {
        value.into()
    } else {
        trimmed.to_string()
    }
}

/// The server's clock and how far a live request's timestamps may be from it.
///
/// The engine never reads the clock (rule tests and backtests replay exactly),
/// so a live request's own times are all it knows of "now": one stamped years
/// ahead or behind would shift the customer's windows, ages and "first paid"
/// times for everything after it. Live `Screen` and `RecordEvent` calls are
/// therefore held to the server's clock; `DryRun` is not.
#[derive(Debug, Clone, Copy)]
pub struct LiveClock {
    pub now: UnixSeconds,
    /// Seconds either side of `now`.
    pub skew: i64,
}

impl LiveClock {
    /// `at` must lie within `now ± skew`.
    pub fn within(&self, v: &mut Violations, field: &str, at: UnixSeconds) {
        if at == 0 {
            return; // already reported as missing or invalid
        }
        let (earliest, latest) = (self.now - self.skew, self.now + self.skew);
        if !(earliest..=latest).contains(&at) {
            v.add(
                field,
                format!(
                    "{} is not within {} of the server's clock: accepted from {} to {}",
                    rfc3339(at),
                    skew_text(self.skew),
                    rfc3339(earliest),
                    rfc3339(latest)
                ),
            );
        }
    }

    /// `at` (a past event) must not lie beyond `now + skew`.
    pub fn not_after(&self, v: &mut Violations, field: &str, at: UnixSeconds) {
        let latest = self.now + self.skew;
        if at > latest {
            v.add(
                field,
                format!(
                    "{} is in the future: accepted up to {} (server clock + {})",
                    rfc3339(at),
                    rfc3339(latest),
                    skew_text(self.skew)
                ),
            );
        }
    }

    /// A live transfer's times: when it was asked, and the limit change it reports.
    pub fn check_transfer(&self, t: &Transfer) -> Result<(), Vec<FieldViolation>> {
        let mut v = Violations::default();
        self.within(&mut v, "requested_at", t.requested_at);
        if let Some(change) = &t.customer.last_limit_change {
            self.not_after(&mut v, "customer.last_limit_change.changed_at", change.changed_at);
        }
        v.into_result(())
    }
}

fn rfc3339(at: UnixSeconds) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

fn skew_text(secs: i64) -> String {
    if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Where a page of `ListAlerts` ended: the last alert's creation time and id,
/// and a hash of the filters it was read with. Opaque to clients (hex of a
/// versioned text), checked when it comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub created_at: UnixSeconds,
    pub alert_id: String,
    pub filters: u64,
}

impl PageToken {
    /// The token for the page after the one ending with `last`, read with `r`.
    pub fn after(last: &crate::alerts::Alert, r: &pb::ListAlertsRequest) -> PageToken {
        PageToken { created_at: last.created_at, alert_id: last.id.clone(), filters: PageToken::filters_of(r) }
    }

    /// The hash that ties a token to the filters of `r` (not its page size or token).
    pub fn filters_of(r: &pb::ListAlertsRequest) -> u64 {
        let mut key = pb::ListAlertsRequest { limit: 0, page_token: String::new(), ..r.clone() };
        key.station_ids.sort();
        key.states.sort();
        crate::state::stable_hash(&[&prost::Message::encode_to_vec(&key)])
    }

    pub fn encode(&self) -> String {
        let text = format!("p1:{}:{:016x}:{}", self.created_at, self.filters, self.alert_id);
        crate::model::hex(text.as_bytes())
    }

    /// The token of `r`, if any, checked against its filters.
    pub fn decode(v: &mut Violations, r: &pb::ListAlertsRequest) -> Option<PageToken> {
        if r.page_token.is_empty() {
            return None;
        }
        let parsed = (r.page_token.len() <= 512 && r.page_token.len().is_multiple_of(2))
            .then(|| {
                (0..r.page_token.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(r.page_token.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                let mut parts = text.strip_prefix("p1:")?.splitn(3, ':');
                let created_at = parts.next()?.parse().ok()?;
                let filters = u64::from_str_radix(parts.next()?, 16).ok()?;
                let alert_id = parts.next()?.to_string();
                Some(PageToken { created_at, alert_id, filters })
            });
        match parsed {
            None => {
                v.add("page_token", "not a token this server gave out");
                None
            }
            Some(t) if t.filters != PageToken::filters_of(r) => {
                v.add("page_token", "was given for other filters (stations, states or times); start again without it");
                None
            }
            Some(t) => Some(t),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The local date of `at` where the branches are (the ruleset's `utc_offset`).
fn local_date(at: UnixSeconds, utc_offset: time::UtcOffset) -> Date {
    crate::model::local_day(at, utc_offset).0
}

/// `YYYY-MM-DD` of ASCII digits naming a real day; anything else is None
/// (and goes to the general parser, which says what is wrong).
fn plain_date(value: &str) -> Option<Date> {
    let b = value.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    Date::from_calendar_date(num(0..4)? as i32, month, u8::try_from(num(8..10)?).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Observation;
    use proptest::prelude::*;

    proptest! {
        /// An owned value is kept when it is already clean, and cleaned
        /// otherwise, exactly as a borrowed one is copied and cleaned.
        #[test]
        fn owned_and_borrowed_values_validate_alike(value in "[ \\-a-zA-Z0-9\u{1}\u{4e00}\n]{0,40}") {
            let (mut owned, mut borrowed) = (Violations::default(), Violations::default());
            prop_assert_eq!(owned.id("f", value.clone(), 16), borrowed.id("f", value.as_str(), 16));
            prop_assert_eq!(owned.text("g", value.clone(), 16), borrowed.text("g", value.as_str(), 16));
            prop_assert_eq!(owned.account("h", value.clone()), borrowed.account("h", value.as_str()));
            prop_assert_eq!(owned.0, borrowed.0);
            let account: String = value.trim().chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
            prop_assert_eq!(Violations::default().id("f", value.clone(), 16), value.trim());
            prop_assert_eq!(Violations::default().account("h", value.clone()), account);
        }
    }

    proptest! {
        /// The fast path agrees with the general parser on every string of ten characters it accepts.
        #[test]
        fn plain_dates_read_as_the_parser_reads_them(y in 0u32..10_000, m in 0u32..14, d in 0u32..33, sep in "[-/]") {
            let s = format!("{y:04}{sep}{m:02}{sep}{d:02}");
            let format = time::macros::format_description!("[year]-[month]-[day]");
            prop_assert_eq!(plain_date(&s), Date::parse(&s, &format).ok());
        }
    }

    #[test]
    fn only_plain_dates_take_the_fast_path() {
        assert_eq!(plain_date("2026-02-28"), Some(time::macros::date!(2026 - 02 - 28)));
        for s in ["2026-02-30", "2026-2-28", "２０２６-02-28", "+026-01-01", "2026-01-01 ", ""] {
            assert_eq!(plain_date(s), None, "{s}");
        }
    }

    pub fn valid() -> pb::ScreenRequest {
        pb::ScreenRequest {
            request_id: "r-1".into(),
            requested_at: Some(Timestamp { seconds: 1_773_109_200, nanos: 0 }),
            bank_id: "psbc".into(),
            branch_id: "psbc-heshan-zhongshan".into(),
            teller_id: "t-1".into(),
            channel: pb::Channel::Counter as i32,
            customer: Some(pb::Customer {
                customer_id: "c-1".into(),
                account_id: "6210000000000001".into(),
                birth_date: "1968-05-10".into(),
                account_opened_on: "2008-01-01".into(),
                daily_limit_minor: 50_000_000,
                last_limit_change: None,
            }),
            payee: Some(pb::Payee {
                account: "6217 0000 9999 8888".into(),
                name: "陈某".into(),
                bank_code: "ccb".into(),
            }),
            amount_minor: 40_000_000,
            currency: "CNY".into(),
            memo: "投资".into(),
            observations: vec![pb::Observation::OnPhoneWithStranger as i32],
        }
    }

    fn fields(r: &pb::ScreenRequest) -> Vec<String> {
        Transfer::try_from(r).unwrap_err().into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn a_valid_request_converts() {
        let t = Transfer::try_from(&valid()).unwrap();
        assert_eq!(t.payee.account, "6217000099998888");
        assert!(t.observations.contains(Observation::OnPhoneWithStranger));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Breaker = Box<dyn Fn(&mut pb::ScreenRequest)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("request_id", Box::new(|r| r.request_id.clear())),
            ("requested_at", Box::new(|r| r.requested_at = None)),
            ("bank_id", Box::new(|r| r.bank_id = " ".into())),
            ("branch_id", Box::new(|r| r.branch_id = "x".repeat(65))),
            ("teller_id", Box::new(|r| r.teller_id.clear())),
            ("channel", Box::new(|r| r.channel = 0)),
            ("channel", Box::new(|r| r.channel = 99)),
            ("customer", Box::new(|r| r.customer = None)),
            ("customer.customer_id", Box::new(|r| r.customer.as_mut().unwrap().customer_id.clear())),
            ("customer.birth_date", Box::new(|r| r.customer.as_mut().unwrap().birth_date = "1968-02-30".into())),
            ("customer.birth_date", Box::new(|r| r.customer.as_mut().unwrap().birth_date = "2030-01-01".into())),
            ("customer.account_opened_on", Box::new(|r| r.customer.as_mut().unwrap().account_opened_on = "x".into())),
            ("customer.daily_limit_minor", Box::new(|r| r.customer.as_mut().unwrap().daily_limit_minor = 0)),
            ("payee", Box::new(|r| r.payee = None)),
            ("payee.account", Box::new(|r| r.payee.as_mut().unwrap().account = "12".into())),
            ("payee.name", Box::new(|r| r.payee.as_mut().unwrap().name.clear())),
            ("amount_minor", Box::new(|r| r.amount_minor = 0)),
            ("amount_minor", Box::new(|r| r.amount_minor = -5)),
            ("amount_minor", Box::new(|r| r.amount_minor = MAX_AMOUNT_MINOR + 1)),
            ("currency", Box::new(|r| r.currency = "XXX".into())),
            ("memo", Box::new(|r| r.memo = "字".repeat(257))),
            ("observations[0]", Box::new(|r| r.observations = vec![42])),
        ];
        for (field, break_it) in cases {
            let mut r = valid();
            break_it(&mut r);
            assert_eq!(fields(&r), vec![field.to_string()], "{field}");
        }
    }

    #[test]
    fn dates_are_checked_on_the_rulesets_local_date() {
        // 17:00 UTC on 10 March is already 11 March in Beijing.
        let mut r = valid();
        r.requested_at = Some(Timestamp { seconds: 1_773_162_000, nanos: 0 });
        r.customer.as_mut().unwrap().account_opened_on = "2026-03-11".into();
        assert!(transfer(r.clone(), crate::rules::DEFAULT_UTC_OFFSET).is_ok());
        let at_utc = transfer(r.clone(), time::UtcOffset::UTC).unwrap_err();
        assert_eq!(at_utc[0].field, "customer.account_opened_on");
    }

    proptest! {
        #[test]
        fn conversion_never_panics(
            request_id in "\\PC{0,140}", secs in any::<i64>(), nanos in any::<i32>(), channel in any::<i32>(),
            birth in "\\PC{0,12}", account in "\\PC{0,40}", amount in any::<i64>(), currency in "\\PC{0,4}",
            observations in prop::collection::vec(any::<i32>(), 0..4),
        ) {
            let mut r = valid();
            r.request_id = request_id;
            r.requested_at = Some(Timestamp { seconds: secs, nanos });
            r.channel = channel;
            r.customer.as_mut().unwrap().birth_date = birth;
            r.payee.as_mut().unwrap().account = account;
            r.amount_minor = amount;
            r.currency = currency;
            r.observations = observations;
            if let Ok(t) = Transfer::try_from(&r) {
                prop_assert!(t.amount > 0 && t.amount <= MAX_AMOUNT_MINOR);
                prop_assert!(!t.request_id.is_empty());
            }
        }
    }
}
