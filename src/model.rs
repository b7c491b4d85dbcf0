//! Domain types: a transfer, its customer and payee, and the decision made on it.
//!
//! Owns the vocabulary every other module speaks. Must not do I/O, know about
//! wire formats (proto, JSON) or read the clock: time always comes from the
//! transfer itself, so rule tests and backtests replay exactly.

use std::fmt;
use std::sync::Arc;

/// Money in minor units (fen for CNY). Never a float.
pub type Minor = i64;

/// Seconds since the Unix epoch, UTC. Taken from requests, never from the clock.
pub type UnixSeconds = i64;

/// How the customer is sending the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Channel {
    Counter,
    Atm,
    Mobile,
    Online,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Counter, Channel::Atm, Channel::Mobile, Channel::Online];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Counter => "counter",
            Channel::Atm => "atm",
            Channel::Mobile => "mobile",
            Channel::Online => "online",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// What a teller saw at the counter, or what the bank's app saw during a
/// mobile or online session (screen sharing, a remote-control app). Stored as
/// a bit set in [`Observations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Observation {
    OnPhoneWithStranger,
    Agitated,
    RefusesToExplain,
    AccompaniedByStranger,
    Coached,
    Urgent,
    /// The app: the screen was being shared (a call or meeting app) while
    /// the transfer was made.
    ScreenShared,
    /// The app: a remote-control app was running.
    RemoteControl,
}

impl Observation {
    pub const ALL: [Observation; 8] = [
        Observation::OnPhoneWithStranger,
        Observation::Agitated,
        Observation::RefusesToExplain,
        Observation::AccompaniedByStranger,
        Observation::Coached,
        Observation::Urgent,
        Observation::ScreenShared,
        Observation::RemoteControl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Observation::OnPhoneWithStranger => "on_phone_with_stranger",
            Observation::Agitated => "agitated",
            Observation::RefusesToExplain => "refuses_to_explain",
            Observation::AccompaniedByStranger => "accompanied_by_stranger",
            Observation::Coached => "coached",
            Observation::Urgent => "urgent",
            Observation::ScreenShared => "screen_shared",
            Observation::RemoteControl => "remote_control",
        }
    }

    pub fn parse(s: &str) -> Option<Observation> {
        Observation::ALL.into_iter().find(|o| o.as_str() == s)
    }

    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of teller observations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Observations(pub u8);

impl Observations {
    pub fn insert(&mut self, o: Observation) {
        self.0 |= o.bit();
    }
    pub fn contains(self, o: Observation) -> bool {
        self.0 & o.bit() != 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Observation> {
        Observation::ALL.into_iter().filter(move |o| self.contains(*o))
    }
}

impl FromIterator<Observation> for Observations {
    fn from_iter<I: IntoIterator<Item = Observation>>(iter: I) -> Self {
        let mut set = Observations::default();
        for o in iter {
            set.insert(o);
        }
        set
    }
}

/// The screening outcome, ordered from mildest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Proceed.
    Allow,
    /// The teller reads the warning; the customer confirms.
    Warn,
    /// The transfer is paused and the station alerted; an officer's outcome or the
    /// hold's expiry decides it.
    Hold,
    /// Refused; the station is alerted.
    Block,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Allow, Action::Warn, Action::Hold, Action::Block];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Warn => "WARN",
            Action::Hold => "HOLD",
            Action::Block => "BLOCK",
        }
    }

    /// Parses `ALLOW`, `allow`, `Allow`, ...
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether this action raises an alert for the police station.
    pub fn raises_alert(self) -> bool {
        matches!(self, Action::Hold | Action::Block)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A calendar date, validated (no 2023-02-30).
pub type Date = time::Date;

/// A change of the customer's daily transfer limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitChange {
    pub old_limit: Minor,
    pub new_limit: Minor,
    /// The new limit is the highest the bank allows.
    pub is_maximum: bool,
    pub changed_at: UnixSeconds,
}

impl LimitChange {
    pub fn is_raise(&self) -> bool {
        self.new_limit > self.old_limit
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub customer_id: String,
    pub account_id: String,
    pub birth_date: Date,
    pub account_opened_on: Date,
    pub daily_limit: Minor,
    /// Given by callers that know it; merged with the limit changes in state.
    pub last_limit_change: Option<LimitChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payee {
    pub account: String,
    pub name: String,
    pub bank_code: String,
}

/// One outgoing transfer a teller asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Idempotency key.
    pub request_id: String,
    pub requested_at: UnixSeconds,
    pub bank_id: String,
    pub branch_id: String,
    pub teller_id: String,
    pub channel: Channel,
    pub customer: Customer,
    pub payee: Payee,
    pub amount: Minor,
    /// ISO 4217 code, upper case.
    pub currency: String,
    pub memo: String,
    pub observations: Observations,
}

/// A rule's id and the words a clerk reads aloud, shared (one reference count)
/// by every hit of that rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleText {
    pub rule_id: Box<str>,
    pub reason_zh: Box<str>,
    pub reason_en: Box<str>,
    /// What the teller should ask the customer (the rule file's `ask`), in
    /// both languages, the same questions in the same order; often none.
    pub ask_zh: Box<[Box<str>]>,
    pub ask_en: Box<[Box<str>]>,
    /// The scam type the rule points to (the rule file's `typology`); often empty.
    pub typology: Box<str>,
}

impl RuleText {
    /// The teller's questions in English (`en`) or Chinese.
    pub fn questions(&self, en: bool) -> &[Box<str>] {
        if en {
            &self.ask_en
        } else {
            &self.ask_zh
        }
    }
}

/// A rule that matched, with the words a clerk can read aloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub text: Arc<RuleText>,
    pub score: i64,
    /// Shadow hits are reported and counted but never change the action.
    pub shadow: bool,
}

impl Hit {
    pub fn rule_id(&self) -> &str {
        &self.text.rule_id
    }
    pub fn reason_zh(&self) -> &str {
        &self.text.reason_zh
    }
    pub fn reason_en(&self) -> &str {
        &self.text.reason_en
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Sum of the scores of the active rules that matched.
    pub score: i64,
    /// Every matched rule, active and shadow, in ruleset order.
    pub hits: Vec<Hit>,
    /// Content hash of the ruleset that decided.
    pub ruleset_version: Arc<str>,
}

/// A full account number kept for acting on it (never shown to officers'
/// screens): its `Debug` prints it masked, so a record that holds one can
/// be logged whole without the number reaching the log.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FullAccount(pub String);

impl std::fmt::Debug for FullAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&mask_account(&self.0))
    }
}

/// Masks an account number for logs and alerts: the first 4 and last 4 characters
/// stay, the rest become `*`. Short values are masked entirely but for the last 2.
pub fn mask_account(account: &str) -> String {
    let n = account.chars().count();
    let (head, tail) = if n >= 12 {
        (4, 4)
    } else if n >= 6 {
        (0, 4.min(n / 2))
    } else {
        (0, 0)
    };
    // One allocation (this runs for every audited decision).
    let mut masked = String::with_capacity(account.len());
    for (i, c) in account.chars().enumerate() {
        masked.push(if i < head || i >= n - tail { c } else { '*' });
    }
    masked
}

/// Masks a person's name: keeps the first character only (`张**`).
pub fn mask_name(name: &str) -> String {
    let mut masked = String::with_capacity(name.len());
    let mut chars = name.chars();
    if let Some(first) = chars.next() {
        masked.push(first);
        masked.extend(chars.map(|_| '*'));
    }
    masked
}

/// Parses an amount in major units ("400000", "1234.5", "0.01") into minor
/// units exactly, without floats: fen, at most two decimals.
pub fn parse_major_units(s: &str) -> Option<Minor> {
    parse_amount(s, 2)
}

/// Parses an amount in major units of a currency whose minor unit has
/// `digits` digits (2 for yuan, 0 for yen) into minor units exactly; `None`
/// for more decimals than the currency has, a sign, or anything not a number.
pub fn parse_amount(s: &str, digits: u32) -> Option<Minor> {
    let s = s.trim().replace([',', '_'], "");
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    if whole.is_empty()
        || frac.len() > digits as usize
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 =
        if frac.is_empty() { 0 } else { format!("{frac:0<width$}", width = digits as usize).parse().ok()? };
    whole.checked_mul(10i64.checked_pow(digits)?)?.checked_add(frac)
}

/// `400,000.00 CNY` from minor units, in integers only.
pub fn money(minor: Minor, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    // Yen and won have no minor unit; an unknown code is shown as cents.
    let digits_after = minor_digits(currency).unwrap_or(2);
    let scale = 10u64.pow(digits_after);
    let (units, fraction) = (abs / scale, abs % scale);
    let digits = units.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match digits_after {
        0 => format!("{sign}{grouped} {currency}"),
        d => format!("{sign}{grouped}.{fraction:0width$} {currency}", width = d as usize),
    }
}

/// Age band for alerts, so officers see "60-69" rather than a birth date.
/// Every value [`age_band`] returns.
pub const AGE_BANDS: [&str; 7] = ["<18", "18-29", "30-44", "45-59", "60-69", "70-79", "80+"];

pub fn age_band(age: i64) -> &'static str {
    match age {
        i64::MIN..=17 => "<18",
        18..=29 => "18-29",
        30..=44 => "30-44",
        45..=59 => "45-59",
        60..=69 => "60-69",
        70..=79 => "70-79",
        _ => "80+",
    }
}

/// Whole years between `birth` and `on`.
/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// The local date and hour of `at` at `utc_offset`, by integer arithmetic (the
/// same as converting through `OffsetDateTime`, at a fraction of the cost: the
/// engine does it for every transfer).
#[inline]
pub fn local_day(at: UnixSeconds, utc_offset: time::UtcOffset) -> (Date, i64) {
    let local = at.saturating_add(i64::from(utc_offset.whole_seconds()));
    let julian = (UNIX_EPOCH_JULIAN_DAY + local.div_euclid(86_400)).clamp(0, i64::from(i32::MAX)) as i32;
    (Date::from_julian_day(julian).unwrap_or(Date::MIN), local.rem_euclid(86_400) / 3600)
}

/// A setting's value chosen by name (`sync`, `required`, `floor`, ...): the
/// enum's own serde names, one parser for every such setting's flag and env var.
pub fn parse_name<T: serde::de::DeserializeOwned>(what: &str, value: &str, choices: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(value))
        .map_err(|_| format!("{what} `{value}` is not {choices}"))
}

/// Bytes as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[inline]
pub fn age_on(birth: Date, on: Date) -> i64 {
    // One calendar conversion per date (month() and day() each redo it).
    let (birth_year, birth_month, birth_day) = birth.to_calendar_date();
    let (year, month, day) = on.to_calendar_date();
    let mut years = i64::from(year) - i64::from(birth_year);
    if (month as u8, day) < (birth_month as u8, birth_day) {
        years -= 1;
    }
    years
}

/// ISO 4217 codes of the currencies a Chinese bank sends abroad or at home,
/// with the digits of their minor unit (fen: 2; yen: 0).
#[rustfmt::skip]
pub const CURRENCIES: &[(&str, u32)] = &[
    ("CNY", 2), ("USD", 2), ("EUR", 2), ("HKD", 2), ("MOP", 2), ("TWD", 2), ("JPY", 0), ("GBP", 2),
    ("AUD", 2), ("CAD", 2), ("CHF", 2), ("SGD", 2), ("KRW", 0), ("NZD", 2), ("THB", 2), ("MYR", 2),
    ("RUB", 2), ("AED", 2), ("SAR", 2), ("SEK", 2), ("NOK", 2), ("DKK", 2), ("INR", 2), ("IDR", 2),
    ("PHP", 2), ("VND", 0), ("ZAR", 2), ("BRL", 2), ("MXN", 2), ("TRY", 2), ("KZT", 2), ("PKR", 2),
];

/// The digits of `code`'s minor unit, if it is one of [`CURRENCIES`].
pub fn minor_digits(code: &str) -> Option<u32> {
    CURRENCIES.iter().find(|(c, _)| *c == code).map(|&(_, d)| d)
}

/// What one unit of a currency is worth in another, exactly: a decimal such as
/// `7.1023` kept as integers (`71023 / 10^4`), never a float, so converting an
/// amount gives the same minor units on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The decimal's digits.
    digits: i128,
    /// How many of them are after the point.
    scale: u32,
}

impl Rate {
    /// Most digits after the point, and before it.
    const MAX_SCALE: u32 = 9;
    const MAX_WHOLE: usize = 9;

    /// A positive decimal written with digits and at most one point
    /// (`"7.10"`, `"0.00027"`, `"130"`); `None` for anything else, zero included.
    pub fn parse(s: &str) -> Option<Rate> {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || whole.len() > Rate::MAX_WHOLE
            || fraction.len() > Rate::MAX_SCALE as usize
        {
            return None;
        }
        let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
        (digits > 0).then_some(Rate { digits, scale: fraction.len() as u32 })
    }

    /// `amount` minor units of a currency with `from_digits` digits, in minor
    /// units of one with `to_digits`, at this rate; rounded half away from
    /// zero, saturating rather than overflowing (any accepted amount times any
    /// rate fits an i128 exactly).
    pub fn convert(self, amount: Minor, from_digits: u32, to_digits: u32) -> Minor {
        let numerator = i128::from(amount).saturating_mul(self.digits).saturating_mul(10i128.pow(to_digits));
        let denominator = 10i128.pow(self.scale + from_digits);
        let rounded = numerator.saturating_add(numerator.signum() * denominator / 2) / denominator;
        rounded.clamp(i128::from(Minor::MIN), i128::from(Minor::MAX)) as Minor
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{:0>width$}", self.digits, width = self.scale as usize + 1);
        let (whole, fraction) = s.split_at(s.len() - self.scale as usize);
        if fraction.is_empty() {
            f.write_str(whole)
        } else {
            write!(f, "{whole}.{fraction}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_full_account_is_printed_masked() {
        let account = FullAccount("6217000099998888777".into());
        let printed = format!("{account:?}");
        assert_eq!(printed, mask_account("6217000099998888777"));
        assert!(!printed.contains("99998888"), "{printed}");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holding {
            payee_account: FullAccount,
        }
        assert!(!format!("{:?}", Holding { payee_account: account }).contains("0000999988"));
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn masks_keep_only_ends() {
        assert_eq!(mask_account("6222021234567890123"), "6222***********0123");
        assert_eq!(mask_account("12345678"), "****5678");
        assert_eq!(mask_account("123"), "***");
        assert_eq!(mask_name("张三丰"), "张**");
        assert_eq!(mask_name(""), "");
    }

    #[test]
    fn age_counts_birthdays() {
        assert_eq!(age_on(date!(1968 - 05 - 10), date!(2026 - 05 - 09)), 57);
        assert_eq!(age_on(date!(1968 - 05 - 10), date!(2026 - 05 - 10)), 58);
        assert_eq!(age_band(58), "45-59");
    }

    #[test]
    fn money_parses_exactly() {
        assert_eq!(parse_major_units("400000"), Some(40_000_000));
        assert_eq!(parse_major_units("1,234.5"), Some(123_450));
        assert_eq!(parse_major_units("0.01"), Some(1));
        assert_eq!(parse_major_units("1.234"), None);
        assert_eq!(parse_major_units("-1"), None);
        assert_eq!(parse_major_units("abc"), None);
        assert_eq!(parse_amount("1,100,000", 0), Some(1_100_000), "yen have no minor unit");
        assert_eq!(parse_amount("1.5", 0), None);
        assert_eq!(parse_amount("6000.5", 2), Some(600_050));
        assert_eq!(money(40_000_050, "CNY"), "400,000.50 CNY");
    }

    #[test]
    fn actions_are_ordered() {
        assert!(Action::Block > Action::Hold && Action::Hold > Action::Warn);
        assert_eq!(Action::parse("hold"), Some(Action::Hold));
        assert!(Action::Hold.raises_alert() && !Action::Warn.raises_alert());
    }

    #[test]
    fn rates_are_exact_decimals_and_convert_between_minor_units() {
        for bad in ["", ".", "0", "0.000", "-7.1", "7,1", "1e3", "7.1.0", " 7.1", "0.0000000001", "1234567890"] {
            assert_eq!(Rate::parse(bad), None, "{bad:?}");
        }
        let usd = Rate::parse("7.10").unwrap();
        assert_eq!(usd.to_string(), "7.10");
        assert_eq!(Rate::parse("0.00027").unwrap().to_string(), "0.00027");
        assert_eq!(Rate::parse("130").unwrap().to_string(), "130");
        // 10,000.00 USD in cents is 71,000.00 CNY in fen.
        assert_eq!(usd.convert(1_000_000, 2, 2), 7_100_000);
        // 1,000,000 yen (no minor unit) at 0.048 is 48,000.00 CNY.
        assert_eq!(Rate::parse("0.048").unwrap().convert(1_000_000, 0, 2), 4_800_000);
        // Rounded half away from zero: 1 cent at 0.005 is half a fen.
        assert_eq!(Rate::parse("0.005").unwrap().convert(1, 2, 2), 0);
        assert_eq!(Rate::parse("0.5").unwrap().convert(1, 2, 2), 1);
        assert_eq!(Rate::parse("0.5").unwrap().convert(-1, 2, 2), -1);
        // The largest amount at the largest rate saturates instead of overflowing.
        let huge = Rate::parse("999999999.999999999").unwrap();
        assert_eq!(huge.convert(i64::MAX, 0, 2), i64::MAX);
        assert_eq!(huge.convert(i64::MIN, 0, 2), i64::MIN);
        assert_eq!(minor_digits("JPY"), Some(0));
        assert_eq!(minor_digits("XXX"), None);
    }

    #[test]
    fn money_in_integers_with_groups() {
        assert_eq!(money(40_000_000, "CNY"), "400,000.00 CNY");
        assert_eq!(money(5, "CNY"), "0.05 CNY");
        assert_eq!(money(-123_456, "CNY"), "-1,234.56 CNY");
        assert_eq!(money(i64::MIN, "CNY"), "-92,233,720,368,547,758.08 CNY");
        assert_eq!(money(1_100_000, "JPY"), "1,100,000 JPY", "no minor unit");
        assert_eq!(money(600_000, "USD"), "6,000.00 USD");
    }
}
