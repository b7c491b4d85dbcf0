//! Rule test cases: the analysts' executable examples in `rules/tests/*.toml`.
//!
//! Each case is a transfer, optional prior history (earlier transfers, limit
//! changes, watchlist entries, other customers paying the same payee), and the
//! expected action and rule ids. A case runs on a fresh [`State`] through the
//! same engine the server uses. Must not do I/O beyond reading the case files.
//!
//! ```toml
//! [[case]]
//! name = "a rent payment to a known landlord is allowed"
//! expect = { action = "ALLOW", hits = [] }
//! transfer = { at = "2026-03-01T09:00:00+08:00", amount = 350000, channel = "mobile",
//!              payee = { account = "6222...", name = "王房东", bank = "icbc" } }
//! history = [ { kind = "transfer", ago = "30d", amount = 350000,
//!               payee = { account = "6222...", name = "王房东", bank = "icbc" } } ]
//! ```

use crate::engine;
use crate::model::{Action, Channel, Customer, LimitChange, Observation, Payee, Transfer, UnixSeconds};
use crate::rules::{parse_duration, Diagnostic, Ruleset, Span};
use crate::state::{PayeeKey, State, TransferRecord, WatchEntry};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    expect: RawExpect,
    transfer: RawTransfer,
    #[serde(default)]
    history: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    action: String,
    /// Every rule that must match, active and shadow; no other may.
    hits: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawPayee {
    account: String,
    #[serde(default = "default_payee_name")]
    name: String,
    #[serde(default = "default_bank")]
    bank: String,
}

fn default_payee_name() -> String {
    "收款人".into()
}
fn default_bank() -> String {
    "icbc".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustomer {
    #[serde(default = "default_customer_id")]
    id: String,
    #[serde(default = "default_birth")]
    birth_date: String,
    #[serde(default = "default_opened")]
    account_opened_on: String,
    /// Minor units.
    #[serde(default = "default_limit")]
    daily_limit: i64,
}

impl Default for RawCustomer {
    fn default() -> Self {
        RawCustomer {
            id: default_customer_id(),
            birth_date: default_birth(),
            account_opened_on: default_opened(),
            daily_limit: default_limit(),
        }
    }
}

fn default_customer_id() -> String {
    "customer-1".into()
}
fn default_birth() -> String {
    "1981-06-15".into()
}
fn default_opened() -> String {
    "2015-04-01".into()
}
fn default_limit() -> i64 {
    5_000_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer {
    at: String,
    amount: i64,
    #[serde(default = "default_channel")]
    channel: String,
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default)]
    memo: String,
    #[serde(default = "default_branch")]
    branch: String,
    #[serde(default)]
    observations: Vec<String>,
    #[serde(default)]
    customer: RawCustomer,
    payee: RawPayee,
}

fn default_channel() -> String {
    "mobile".into()
}
fn default_currency() -> String {
    "CNY".into()
}
fn default_branch() -> String {
    "psbc-heshan-zhongshan".into()
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawEvent {
    /// A counted transfer by the case's customer (or `customer`).
    Transfer {
        ago: String,
        amount: i64,
        payee: RawPayee,
        #[serde(default)]
        customer: Option<String>,
    },
    /// A transfer of the customer's was held or blocked `ago`, and no officer
    /// has found it was no fraud.
    Stopped { ago: String },
    /// The customer's daily limit changed.
    LimitChange {
        ago: String,
        old: i64,
        new: i64,
        #[serde(default)]
        maximum: bool,
    },
    /// `senders` other customers each paid `payee` (each a customer of its
    /// own per event); with `since`, each had first paid it that long ago
    /// (returning payers of an account the bank has long known).
    FanIn {
        ago: String,
        payee: RawPayee,
        senders: u32,
        amount: i64,
        #[serde(default)]
        since: Option<String>,
    },
    /// A police watchlist entry.
    Watchlist {
        account: String,
        #[serde(default = "default_station")]
        station: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        expires_in: Option<String>,
    },
}

fn default_station() -> String {
    "heshan-zhongshan-ps".into()
}

/// A prior event, already resolved to absolute times.
#[derive(Debug, Clone)]
pub enum HistoryEvent {
    Transfer(TransferRecord),
    LimitChange { customer_id: String, change: LimitChange },
    Stopped { customer_id: String, at: UnixSeconds },
    Watchlist(WatchEntry),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// `file:line` of the case.
    pub location: String,
    pub transfer: Transfer,
    pub history: Vec<HistoryEvent>,
    pub expect_action: Action,
    pub expect_hits: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub location: String,
    pub action: Action,
    pub score: i64,
    pub hits: BTreeSet<String>,
    /// Empty when the case passed.
    pub failures: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Loads every `*.toml` in `dir`, checking rule ids against `ruleset`.
pub fn load_dir(dir: &Path, ruleset: &Ruleset) -> Result<Vec<Case>, Vec<Diagnostic>> {
    let paths = crate::rules::toml_files(dir)
        .map_err(|e| vec![Diagnostic::file(&dir.display().to_string(), format!("cannot read: {e}"))])?;
    let mut cases = Vec::new();
    let mut diags = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_cases(&shown, &text, ruleset) {
                Ok(mut c) => cases.append(&mut c),
                Err(mut d) => diags.append(&mut d),
            },
            Err(e) => diags.push(Diagnostic::file(&shown, format!("cannot read: {e}"))),
        }
    }
    if diags.is_empty() {
        Ok(cases)
    } else {
        Err(diags)
    }
}

/// Parses one case file.
pub fn parse_cases(file: &str, text: &str, ruleset: &Ruleset) -> Result<Vec<Case>, Vec<Diagnostic>> {
    let raw: RawFile = toml::from_str(text).map_err(|e| vec![Diagnostic::toml(file, text, &e)])?;
    let mut cases = Vec::new();
    let mut diags = Vec::new();
    for spanned in raw.case {
        let span = Span { start: spanned.span().start, end: spanned.span().end };
        let location = Diagnostic::at(file, text, span, "");
        let location = format!("{}:{}", location.file, location.line);
        match build_case(spanned.into_inner(), ruleset) {
            Ok(mut case) => {
                case.location = location;
                cases.push(case);
            }
            Err(msg) => diags.push(Diagnostic::at(file, text, span, msg)),
        }
    }
    if diags.is_empty() {
        Ok(cases)
    } else {
        Err(diags)
    }
}

fn parse_time(s: &str) -> Result<UnixSeconds, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("bad time `{s}` ({e}); write RFC 3339, e.g. 2026-03-10T10:20:00+08:00"))
}

fn parse_date(s: &str) -> Result<time::Date, String> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| format!("bad date `{s}`; write YYYY-MM-DD"))
}

fn ago(now: UnixSeconds, s: &str) -> Result<UnixSeconds, String> {
    parse_duration(s).map(|d| now - d).ok_or_else(|| format!("bad duration `{s}`; write e.g. 10m, 2h, 30d"))
}

fn payee(raw: &RawPayee) -> Payee {
    Payee { account: raw.account.clone(), name: raw.name.clone(), bank_code: raw.bank.clone() }
}

fn build_case(raw: RawCase, ruleset: &Ruleset) -> Result<Case, String> {
    let t = raw.transfer;
    let now = parse_time(&t.at)?;
    let channel = Channel::parse(&t.channel).ok_or_else(|| format!("unknown channel `{}`", t.channel))?;
    let observations = t
        .observations
        .iter()
        .map(|o| Observation::parse(o).ok_or_else(|| format!("unknown observation `{o}`")))
        .collect::<Result<_, _>>()?;
    let customer_id = t.customer.id.clone();
    let transfer = Transfer {
        request_id: format!("case:{}", raw.name),
        requested_at: now,
        bank_id: "psbc".into(),
        branch_id: t.branch,
        teller_id: "teller-1".into(),
        channel,
        customer: Customer {
            customer_id: customer_id.clone(),
            account_id: format!("acct-{customer_id}"),
            birth_date: parse_date(&t.customer.birth_date)?,
            account_opened_on: parse_date(&t.customer.account_opened_on)?,
            daily_limit: t.customer.daily_limit,
            last_limit_change: None,
        },
        payee: payee(&t.payee),
        amount: t.amount,
        currency: t.currency,
        memo: t.memo,
        observations,
    };
    let mut history = Vec::new();
    for (n, event) in raw.history.into_iter().enumerate() {
        match event {
            RawEvent::Transfer { ago: a, amount, payee: p, customer } => {
                history.push(HistoryEvent::Transfer(TransferRecord {
                    customer_id: customer.unwrap_or_else(|| customer_id.clone()),
                    payee: PayeeKey::of(&payee(&p)),
                    amount,
                    at: ago(now, &a)?,
                }))
            }
            RawEvent::Stopped { ago: a } => {
                history.push(HistoryEvent::Stopped { customer_id: customer_id.clone(), at: ago(now, &a)? })
            }
            RawEvent::LimitChange { ago: a, old, new, maximum } => history.push(HistoryEvent::LimitChange {
                customer_id: customer_id.clone(),
                change: LimitChange { old_limit: old, new_limit: new, is_maximum: maximum, changed_at: ago(now, &a)? },
            }),
            RawEvent::FanIn { ago: a, payee: p, senders, amount, since } => {
                let at = ago(now, &a)?;
                let first = since.map(|s| ago(now, &s)).transpose()?;
                for i in 0..senders {
                    for at in first.into_iter().chain([at]) {
                        history.push(HistoryEvent::Transfer(TransferRecord {
                            customer_id: format!("other-sender-{n}-{i}"),
                            payee: PayeeKey::of(&payee(&p)),
                            amount,
                            at,
                        }));
                    }
                }
            }
            RawEvent::Watchlist { account, station, reason, expires_in } => {
                let expires_at = match expires_in {
                    Some(d) => Some(now + parse_duration(&d).ok_or_else(|| format!("bad duration `{d}`"))?),
                    None => None,
                };
                history.push(HistoryEvent::Watchlist(WatchEntry {
                    account,
                    station_id: station,
                    reason,
                    added_at: now - 3600,
                    expires_at,
                }))
            }
        }
    }
    if ruleset.in_base(transfer.amount, &transfer.currency).is_none() {
        return Err(format!("currency `{}` has no rate in the ruleset's [ruleset.rates]", transfer.currency));
    }
    let expect_action =
        Action::parse(&raw.expect.action).ok_or_else(|| format!("unknown action `{}`", raw.expect.action))?;
    for id in &raw.expect.hits {
        if ruleset.rule(id).is_none() {
            return Err(format!("expected hit `{id}` is not a rule of this ruleset"));
        }
    }
    Ok(Case {
        name: raw.name,
        location: String::new(),
        transfer,
        history,
        expect_action,
        expect_hits: raw.expect.hits.into_iter().collect(),
    })
}

/// Replays the case's history into a fresh state and screens its transfer.
pub fn run_case(ruleset: &Ruleset, case: &Case) -> CaseResult {
    let state = State::new();
    for event in &case.history {
        match event {
            HistoryEvent::Transfer(r) => state.apply(r),
            HistoryEvent::LimitChange { customer_id, change } => state.record_limit_change(customer_id, *change),
            HistoryEvent::Stopped { customer_id, at } => state.record_stopped(customer_id, *at),
            HistoryEvent::Watchlist(w) => state.watchlist_upsert(w.clone()),
        }
    }
    let decision = engine::screen(ruleset, &case.transfer, &state).decision;
    let hits: BTreeSet<String> = decision.hits.iter().map(|h| h.rule_id().to_string()).collect();
    let mut failures = Vec::new();
    if decision.action != case.expect_action {
        failures.push(format!(
            "action: expected {}, got {} (score {})",
            case.expect_action, decision.action, decision.score
        ));
    }
    let missing: Vec<&String> = case.expect_hits.difference(&hits).collect();
    let extra: Vec<&String> = hits.difference(&case.expect_hits).collect();
    if !missing.is_empty() {
        failures.push(format!("rules expected to hit but did not: {missing:?}"));
    }
    if !extra.is_empty() {
        failures.push(format!("rules that hit but were not expected: {extra:?}"));
    }
    CaseResult {
        name: case.name.clone(),
        location: case.location.clone(),
        action: decision.action,
        score: decision.score,
        hits,
        failures,
    }
}

/// Loads and runs every case under `dir`.
pub fn run_dir(ruleset: &Ruleset, dir: &Path) -> Result<Vec<CaseResult>, Vec<Diagnostic>> {
    Ok(load_dir(dir, ruleset)?.iter().map(|c| run_case(ruleset, c)).collect())
}
