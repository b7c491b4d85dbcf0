//! Rule files: load a folder of TOML, parse and type-check every condition,
//! compile them into a [`Ruleset`] with a content-hash version.
//!
//! The front door is [`Ruleset::load_dir`] (or [`Ruleset::from_sources`]): it
//! returns a ruleset or every error found, each with `file:line:col`. Must not
//! evaluate transfers (the engine does), touch state, or know about tokio/tonic.
//!
//! Folder layout:
//! - `ruleset.toml`: name, thresholds, local time offset, hold policy
//! - `*.toml` beside it (but `stations.toml`): `[[rule]]` tables
//! - `lists/*.toml`: `[[list]]` tables (keywords, patterns, values)
//! - `tests/*.toml`: rule test cases (see [`crate::ruletest`])
//!
//! One file on purpose: the folder's layout, its TOML shapes and the checks
//! that turn them into a `Ruleset` are one loader (its tests are the last part).

pub mod compile;
pub mod diagnostic;
pub mod lexer;
pub mod parser;
#[cfg(test)]
mod proptests;
pub mod schema;
pub mod text;

use crate::model::Action;
use compile::{BoolFn, Compiler, Guard, NamedList};
pub use diagnostic::Diagnostic;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;

/// The branches' local time when `ruleset.toml` does not say: China Standard Time.
pub const DEFAULT_UTC_OFFSET: time::UtcOffset = time::macros::offset!(+8);

/// A byte range in a condition or a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Counts towards the score and the action.
    Active,
    /// Evaluated and reported, never changes a decision or raises an alert.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Shadow => "shadow",
        }
    }
}

/// Score thresholds: the action is the highest one the score reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub warn: i64,
    pub hold: i64,
    pub block: i64,
}

impl Thresholds {
    pub fn action_for(&self, score: i64) -> Action {
        if score >= self.block {
            Action::Block
        } else if score >= self.hold {
            Action::Hold
        } else if score >= self.warn {
            Action::Warn
        } else {
            Action::Allow
        }
    }
}

/// What happens to a held transfer nobody resolved in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryAction {
    Block,
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    pub expiry_secs: i64,
    pub expiry_action: ExpiryAction,
}

impl Default for HoldPolicy {
    fn default() -> Self {
        HoldPolicy { expiry_secs: 30 * 60, expiry_action: ExpiryAction::Block }
    }
}

/// One compiled rule.
pub struct Rule {
    pub id: Arc<str>,
    pub title: String,
    /// The condition as written.
    pub when: String,
    pub score: i64,
    pub min_action: Option<Action>,
    pub reason_zh: Arc<str>,
    pub reason_en: Arc<str>,
    pub tags: Vec<String>,
    pub mode: Mode,
    /// `file:line` of the rule, for reports.
    pub location: String,
    /// Shared with every hit of this rule.
    pub text: Arc<crate::model::RuleText>,
    guard: Guard,
    condition: BoolFn,
}

impl Rule {
    #[inline]
    pub fn matches(&self, facts: &schema::Facts) -> bool {
        self.guard.admits(facts) && (self.condition)(facts)
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule").field("id", &self.id).field("when", &self.when).field("score", &self.score).finish()
    }
}

/// A compiled, immutable ruleset. Swapped whole on reload, never edited.
#[derive(Debug)]
pub struct Ruleset {
    /// `sha256:` and 16 hex digits of the hash of every file's path and content.
    pub version: Arc<str>,
    pub name: String,
    pub thresholds: Thresholds,
    pub utc_offset: time::UtcOffset,
    pub hold: HoldPolicy,
    pub currencies: Currencies,
    pub rules: Vec<Rule>,
    pub lists: HashMap<String, NamedList>,
    /// Regex memo slots the conditions need per evaluation.
    pub memo_slots: usize,
    /// Which free-text fields the conditions read normalised: only those are
    /// normalised per request.
    pub text_fields: TextFields,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextFields {
    pub memo: bool,
    pub payee_name: bool,
}

/// One file's text and the name it is reported under.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Settings,
    Rules,
    Lists,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettingsFile {
    ruleset: RawSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    name: String,
    #[serde(default)]
    utc_offset: Option<Spanned<String>>,
    thresholds: Spanned<RawThresholds>,
    #[serde(default)]
    hold: Option<RawHold>,
    /// The currency the rules' amounts are written in (default CNY).
    #[serde(default)]
    currency: Option<Spanned<String>>,
    /// What one unit of each other currency is worth in it, as a decimal string.
    #[serde(default)]
    rates: std::collections::BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    warn: i64,
    hold: i64,
    block: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHold {
    expiry: Spanned<String>,
    expiry_action: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    title: String,
    when: Spanned<String>,
    score: Spanned<i64>,
    #[serde(default)]
    action: Option<Spanned<String>>,
    reason: RawReason,
    /// What the teller should ask the customer when this rule is hit.
    #[serde(default)]
    ask: Option<Spanned<RawAsk>>,
    /// The scam type this rule points to (hits are grouped by it).
    #[serde(default)]
    typology: Option<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReason {
    zh: Spanned<String>,
    en: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsk {
    zh: Vec<String>,
    en: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListFile {
    #[serde(default)]
    list: Vec<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    items: Vec<Spanned<String>>,
}

/// Files in the rules folder that are configuration for other modules.
const NOT_RULE_FILES: &[&str] = &["ruleset.toml", "stations.toml"];

impl Ruleset {
    /// Reads and compiles the rules folder.
    pub fn load_dir(dir: &Path) -> Result<Ruleset, Vec<Diagnostic>> {
        Ruleset::from_sources(read_sources(dir)?)
    }

    /// Compiles from file texts; paths decide each file's role: `ruleset.toml`,
    /// `lists/*.toml`, and any other `*.toml` holds rules.
    pub fn from_sources(mut sources: Vec<Source>) -> Result<Ruleset, Vec<Diagnostic>> {
        // The text tables are built at load, not on the first request.
        text::warm_up();
        sources.sort_by(|a, b| a.path.cmp(&b.path));
        let mut diags = Vec::new();
        let kind_of = |s: &Source| {
            let p = Path::new(&s.path);
            if p.file_name().is_some_and(|n| n == "ruleset.toml") {
                SourceKind::Settings
            } else if p.parent().and_then(Path::file_name).is_some_and(|n| n == "lists") {
                SourceKind::Lists
            } else {
                SourceKind::Rules
            }
        };

        let settings = match sources.iter().find(|s| kind_of(s) == SourceKind::Settings) {
            Some(src) => parse_settings(src, &mut diags),
            None => {
                diags.push(Diagnostic::file("ruleset.toml", "missing: the rules folder needs a ruleset.toml"));
                None
            }
        };

        let mut lists = HashMap::new();
        let mut list_sites: HashMap<String, String> = HashMap::new();
        for src in sources.iter().filter(|s| kind_of(s) == SourceKind::Lists) {
            let Some(file) = parse_toml::<RawListFile>(src, &mut diags) else { continue };
            for raw in file.list {
                let name = raw.name.get_ref().clone();
                let at = |span: std::ops::Range<usize>, msg: String| {
                    Diagnostic::at(&src.path, &src.text, Span { start: span.start, end: span.end }, msg)
                };
                if let Some(first) = list_sites.get(&name) {
                    diags.push(at(raw.name.span(), format!("list `{name}` is defined twice (first at {first})")));
                    continue;
                }
                let items: Vec<String> = raw.items.iter().map(|i| i.get_ref().clone()).collect();
                let list = match raw.kind.get_ref().as_str() {
                    "values" => Ok(NamedList::values(items)),
                    "keywords" => NamedList::keywords(&items).map_err(|e| (0, e.to_string())),
                    "patterns" => NamedList::patterns(&items).map_err(|(i, e)| (i, e.to_string())),
                    other => {
                        diags.push(at(
                            raw.kind.span(),
                            format!("unknown list kind `{other}`; use values, keywords or patterns"),
                        ));
                        continue;
                    }
                };
                match list {
                    Ok(list) => {
                        let site = at(raw.name.span(), String::new()).location();
                        list_sites.insert(name.clone(), site);
                        lists.insert(name, list);
                    }
                    Err((i, e)) => {
                        let span = raw.items.get(i).map_or(raw.kind.span(), |s| s.span());
                        diags.push(at(span, format!("bad regex in list `{name}`: {}", diagnostic::one_line(&e))));
                    }
                }
            }
        }

        let mut compiler = Compiler::new(&lists);
        let mut rules = Vec::new();
        let mut rule_sites: HashMap<String, String> = HashMap::new();
        for src in sources.iter().filter(|s| kind_of(s) == SourceKind::Rules) {
            if NOT_RULE_FILES.iter().any(|n| Path::new(&src.path).file_name().is_some_and(|f| f == *n)) {
                continue;
            }
            let Some(file) = parse_toml::<RawRuleFile>(src, &mut diags) else { continue };
            for raw in file.rule {
                if let Some(rule) = compile_rule(src, raw, &mut compiler, &mut rule_sites, &mut diags) {
                    rules.push(rule);
                }
            }
        }
        let memo_slots = compiler.finish();
        let text_fields =
            TextFields { memo: compiler.reads("transfer.memo"), payee_name: compiler.reads("payee.name") };
        drop(compiler);

        match settings {
            Some(Settings { name, thresholds, utc_offset, hold, currencies }) if diags.is_empty() => Ok(Ruleset {
                version: version_of(&sources).into(),
                name,
                thresholds,
                utc_offset,
                hold,
                currencies,
                rules,
                lists,
                memo_slots,
                text_fields,
            }),
            _ => Err(diags),
        }
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }

    /// `amount` minor units of `currency` in minor units of the ruleset's
    /// currency, which every amount the rules read is in; `None` when the
    /// ruleset has no rate for it.
    #[inline]
    pub fn in_base(&self, amount: crate::model::Minor, currency: &str) -> Option<crate::model::Minor> {
        self.currencies.in_base(amount, currency)
    }
}

/// The currency a ruleset's amounts are written in, and the reference rates
/// that bring a transfer in another currency to it (`[ruleset] currency`,
/// `[ruleset.rates]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies {
    pub base: String,
    base_digits: u32,
    /// Code, its minor unit's digits, and what one unit is worth in the base.
    rates: Vec<(String, u32, crate::model::Rate)>,
}

impl Default for Currencies {
    fn default() -> Currencies {
        Currencies { base: "CNY".into(), base_digits: 2, rates: Vec::new() }
    }
}

impl Currencies {
    #[inline]
    pub fn in_base(&self, amount: crate::model::Minor, currency: &str) -> Option<crate::model::Minor> {
        // Every code is three letters: compared inline, not through memcmp.
        if let (Ok(code), Ok(base)) =
            (<[u8; 3]>::try_from(currency.as_bytes()), <[u8; 3]>::try_from(self.base.as_bytes()))
        {
            if code == base {
                return Some(amount);
            }
        }
        let (_, digits, rate) = self.rates.iter().find(|(code, ..)| code == currency)?;
        Some(rate.convert(amount, *digits, self.base_digits))
    }

    /// The currencies with a rate, the base first.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.base.as_str()).chain(self.rates.iter().map(|(code, ..)| code.as_str()))
    }
}

fn version_of(sources: &[Source]) -> String {
    let mut hasher = Sha256::new();
    for s in sources {
        hasher.update(s.path.as_bytes());
        hasher.update([0]);
        hasher.update(s.text.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex = crate::model::hex(&digest[..8]);
    format!("sha256:{hex}")
}

/// Reads `ruleset.toml`, the rule files and `lists/*.toml` of `dir`; skips `tests/`.
pub fn read_sources(dir: &Path) -> Result<Vec<Source>, Vec<Diagnostic>> {
    let mut sources = Vec::new();
    let mut diags = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("lists")] {
        let paths = match toml_files(&sub) {
            Ok(paths) => paths,
            Err(e) if sub != dir && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                diags.push(Diagnostic::file(&sub.display().to_string(), format!("cannot read the rules folder: {e}")));
                continue;
            }
        };
        for path in paths {
            let shown = path.strip_prefix(dir).map_or(path.clone(), |p| p.to_path_buf());
            let shown = shown.to_string_lossy().replace('\\', "/");
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push(Source { path: shown, text }),
                Err(e) => diags.push(Diagnostic::file(&path.display().to_string(), format!("cannot read: {e}"))),
            }
        }
    }
    if diags.is_empty() {
        Ok(sources)
    } else {
        Err(diags)
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(src: &Source, diags: &mut Vec<Diagnostic>) -> Option<T> {
    toml::from_str::<T>(&src.text).map_err(|e| diags.push(Diagnostic::toml(&src.path, &src.text, &e))).ok()
}

/// The `*.toml` files directly in `dir`, sorted by name.
pub fn toml_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    Ok(paths)
}

struct Settings {
    name: String,
    thresholds: Thresholds,
    utc_offset: time::UtcOffset,
    hold: HoldPolicy,
    currencies: Currencies,
}

fn parse_settings(src: &Source, diags: &mut Vec<Diagnostic>) -> Option<Settings> {
    let raw = parse_toml::<RawSettingsFile>(src, diags)?.ruleset;
    let before = diags.len();
    let at = |span: std::ops::Range<usize>, msg: &str| {
        Diagnostic::at(&src.path, &src.text, Span { start: span.start, end: span.end }, msg)
    };
    let t = raw.thresholds.get_ref();
    if !(0 < t.warn && t.warn <= t.hold && t.hold <= t.block) {
        diags.push(at(raw.thresholds.span(), "thresholds must satisfy 0 < warn <= hold <= block"));
    }
    let thresholds = Thresholds { warn: t.warn, hold: t.hold, block: t.block };
    let utc_offset = match &raw.utc_offset {
        None => DEFAULT_UTC_OFFSET,
        Some(s) => match parse_offset(s.get_ref()) {
            Some(o) => o,
            None => {
                diags.push(at(s.span(), "utc_offset must look like \"+08:00\""));
                time::UtcOffset::UTC
            }
        },
    };
    let mut hold = HoldPolicy::default();
    if let Some(h) = &raw.hold {
        match parse_duration(h.expiry.get_ref()) {
            Some(secs) if secs > 0 => hold.expiry_secs = secs,
            _ => diags.push(at(h.expiry.span(), "hold expiry must be a positive duration such as \"30m\"")),
        }
        hold.expiry_action = match h.expiry_action.get_ref().as_str() {
            "block" => ExpiryAction::Block,
            "release" => ExpiryAction::Release,
            _ => {
                diags.push(at(h.expiry_action.span(), "expiry_action must be \"block\" or \"release\""));
                ExpiryAction::Block
            }
        };
    }
    let mut currencies = Currencies::default();
    if let Some(code) = &raw.currency {
        match crate::model::minor_digits(code.get_ref()) {
            Some(digits) => (currencies.base, currencies.base_digits) = (code.get_ref().clone(), digits),
            None => diags.push(at(code.span(), "currency must be an upper-case ISO 4217 code such as \"CNY\"")),
        }
    }
    for (code, rate) in &raw.rates {
        let Some(digits) = crate::model::minor_digits(code) else {
            diags.push(at(rate.span(), &format!("`{code}` is not an ISO 4217 code this service knows")));
            continue;
        };
        if *code == currencies.base {
            diags.push(at(rate.span(), &format!("`{code}` is the ruleset's own currency; it needs no rate")));
            continue;
        }
        match crate::model::Rate::parse(rate.get_ref()) {
            Some(r) => currencies.rates.push((code.clone(), digits, r)),
            None => diags.push(at(
                rate.span(),
                &format!("the rate of `{code}` must be a positive decimal in quotes, such as \"7.10\" (at most 9 digits either side of the point)"),
            )),
        }
    }
    (diags.len() == before).then_some(Settings { name: raw.name, thresholds, utc_offset, hold, currencies })
}

fn parse_offset(s: &str) -> Option<time::UtcOffset> {
    let format = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
    time::UtcOffset::parse(s, &format).ok()
}

/// `90s`, `30m`, `24h`, `7d` to seconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    match lexer::lex(s).ok()?.as_slice() {
        [(lexer::Tok::Duration(secs), _), (lexer::Tok::Eof, _)] => Some(*secs),
        _ => None,
    }
}

fn compile_rule(
    src: &Source,
    raw: Spanned<RawRule>,
    compiler: &mut Compiler,
    sites: &mut HashMap<String, String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let before = diags.len();
    let rule_span = raw.span();
    let raw = raw.into_inner();
    let at = |span: std::ops::Range<usize>, msg: String| {
        Diagnostic::at(&src.path, &src.text, Span { start: span.start, end: span.end }, msg)
    };
    let id = raw.id.get_ref().clone();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.') {
        diags.push(at(raw.id.span(), "a rule id is lower-case ascii letters, digits, `_` and `.`".into()));
    }
    let location = at(rule_span.clone(), String::new());
    let site = format!("{}:{}", location.file, location.line);
    if let Some(first) = sites.get(&id) {
        diags.push(at(raw.id.span(), format!("rule id `{id}` is used twice (first at {first})")));
    } else {
        sites.insert(id.clone(), site.clone());
    }
    let score = *raw.score.get_ref();
    if !(-1000..=1000).contains(&score) {
        diags.push(at(raw.score.span(), "score must be between -1000 and 1000".into()));
    }
    let min_action = raw.action.as_ref().and_then(|a| {
        let parsed = Action::parse(a.get_ref());
        if parsed.is_none() {
            diags.push(at(a.span(), "action must be one of allow, warn, hold, block".into()));
        }
        parsed
    });
    let mode = match raw.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("active", _)) => Mode::Active,
        Some(("shadow", _)) => Mode::Shadow,
        Some((_, span)) => {
            diags.push(at(span, "mode must be \"active\" or \"shadow\"".into()));
            Mode::Active
        }
    };
    for reason in [&raw.reason.zh, &raw.reason.en] {
        if reason.get_ref().trim().is_empty() {
            diags.push(at(reason.span(), "a reason a clerk can read aloud is required".into()));
        }
    }
    let (ask_zh, ask_en) = match &raw.ask {
        None => (Vec::new(), Vec::new()),
        Some(ask) => {
            let a = ask.get_ref();
            if a.zh.len() != a.en.len() || a.zh.is_empty() {
                diags.push(at(
                    ask.span(),
                    "ask.zh and ask.en give the same questions, one or more, in each language".into(),
                ));
            }
            if a.zh.iter().chain(&a.en).any(|q| q.trim().is_empty() || q.len() > 500) {
                diags.push(at(ask.span(), "a question is 1 to 500 bytes of text".into()));
            }
            (a.zh.clone(), a.en.clone())
        }
    };
    if let Some(t) = &raw.typology {
        let name = t.get_ref();
        if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            diags.push(at(t.span(), "a typology is a short name (1 to 64 bytes), e.g. \"刷单返利\"".into()));
        }
    }
    let when = raw.when.get_ref();
    let offset = string_content_offset(&src.text, raw.when.span(), when);
    let condition = match parser::parse(when).map_err(|e| (e.message, e.span)).and_then(|expr| {
        // The guard's conjuncts are checked before the condition is called, not in it.
        let (guard, rest) = Guard::split(&expr);
        compiler.condition(&rest).map(|c| (c, guard)).map_err(|e| (e.message, e.span))
    }) {
        Ok(c) => Some(c),
        Err((message, span)) => {
            let span = match offset {
                Some(base) => Span { start: base + span.start, end: base + span.end },
                None => Span { start: raw.when.span().start, end: raw.when.span().end },
            };
            diags.push(Diagnostic::at(&src.path, &src.text, span, message));
            None
        }
    };
    let (condition, guard) = condition?;
    if diags.len() != before {
        return None;
    }
    let text = Arc::new(crate::model::RuleText {
        rule_id: id.as_str().into(),
        reason_zh: raw.reason.zh.get_ref().as_str().into(),
        reason_en: raw.reason.en.get_ref().as_str().into(),
        ask_zh: ask_zh.into_iter().map(Into::into).collect(),
        ask_en: ask_en.into_iter().map(Into::into).collect(),
        typology: raw.typology.map(|t| t.into_inner()).unwrap_or_default().into(),
    });
    Some(Rule {
        text,
        id: id.into(),
        title: raw.title,
        when: when.clone(),
        score,
        min_action,
        reason_zh: raw.reason.zh.into_inner().into(),
        reason_en: raw.reason.en.into_inner().into(),
        tags: raw.tags,
        mode,
        location: site,
        guard,
        condition,
    })
}

/// Where a TOML string's content starts in the file, when the content is written
/// there verbatim (no escapes), so expression offsets map to file offsets exactly.
fn string_content_offset(text: &str, span: std::ops::Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    let mut start = span.start;
    if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
        start += 3;
        if text[start..].starts_with("\r\n") {
            start += 2;
        } else if text[start..].starts_with('\n') {
            start += 1;
        }
    } else if raw.starts_with('\'') || raw.starts_with('"') {
        start += 1;
    } else {
        return None;
    }
    (text.get(start..start + value.len()) == Some(value)).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn src(path: &str, text: &str) -> Source {
        Source { path: path.into(), text: text.into() }
    }

    const SETTINGS: &str = "[ruleset]\nname = \"t\"\nthresholds = { warn = 30, hold = 60, block = 100 }\n";

    fn errors(rule_file: &str) -> Vec<Diagnostic> {
        Ruleset::from_sources(vec![
            src("ruleset.toml", SETTINGS),
            src("lists/l.toml", "[[list]]\nname = \"kw\"\nkind = \"keywords\"\nitems = [\"a\"]\n"),
            src("r.toml", rule_file),
        ])
        .unwrap_err()
    }

    fn rule(when: &str) -> String {
        format!(
            "[[rule]]\nid = \"x\"\ntitle = \"t\"\nscore = 1\nreason = {{ zh = \"z\", en = \"e\" }}\nwhen = {when}\n"
        )
    }

    fn settings(extra: &str) -> Result<Ruleset, Vec<Diagnostic>> {
        Ruleset::from_sources(vec![
            src("ruleset.toml", &format!("{SETTINGS}{extra}")),
            src("r.toml", &rule("\"true\"")),
        ])
    }

    #[test]
    fn amounts_in_other_currencies_are_brought_to_the_rulesets_at_its_rates() {
        let r = settings("[ruleset.rates]\nUSD = \"7.10\"\nJPY = \"0.048\"\n").unwrap();
        assert_eq!(r.currencies.base, "CNY");
        assert_eq!(r.in_base(5_000_000, "CNY"), Some(5_000_000));
        assert_eq!(r.in_base(1_000_000, "USD"), Some(7_100_000), "10,000 USD is 71,000 CNY");
        assert_eq!(r.in_base(1_000_000, "JPY"), Some(4_800_000), "1,000,000 yen is 48,000 CNY");
        assert_eq!(r.in_base(1_000_000, "HKD"), None, "no rate, no guess");
        assert_eq!(r.currencies.codes().collect::<Vec<_>>(), ["CNY", "JPY", "USD"]);
        let usd = settings("currency = \"USD\"\n[ruleset.rates]\nCNY = \"0.14\"\n").unwrap();
        assert_eq!(usd.in_base(700, "CNY"), Some(98));
        assert_eq!(usd.in_base(700, "USD"), Some(700));
    }

    #[test]
    fn a_bad_rate_is_refused_with_file_line_col() {
        let cases = [
            ("[ruleset.rates]\nUSD = 7.1\n", "ruleset.toml:5:7", "expected a string"),
            ("[ruleset.rates]\nUSD = \"seven\"\n", "ruleset.toml:5:7", "positive decimal"),
            ("[ruleset.rates]\nUSD = \"0\"\n", "ruleset.toml:5:7", "positive decimal"),
            ("[ruleset.rates]\nXYZ = \"1\"\n", "ruleset.toml:5:7", "not an ISO 4217 code"),
            ("[ruleset.rates]\nCNY = \"1\"\n", "ruleset.toml:5:7", "own currency"),
            ("currency = \"RMB\"\n", "ruleset.toml:4:12", "ISO 4217"),
        ];
        for (extra, location, message) in cases {
            let diags = settings(extra).unwrap_err();
            assert_eq!(diags.len(), 1, "{extra}: {diags:?}");
            assert_eq!(diags[0].location(), location, "{extra}: {}", diags[0]);
            assert!(diags[0].message.contains(message), "{extra}: {}", diags[0]);
        }
    }

    #[test]
    fn each_kind_of_error_has_file_line_col() {
        let cases = [
            (rule("\"customer.age >= \""), "r.toml:6:25", "expected a value"),
            (rule("\"customer.agee >= 60\""), "r.toml:6:9", "unknown field"),
            (rule("'customer.age >= \"60\"'"), "r.toml:6:9", "cannot compare"),
            (rule("'transfer.memo.matches(\"(\")'"), "r.toml:6:31", "bad regex"),
            (rule("'matches_list(transfer.memo, \"nope\")'"), "r.toml:6:37", "unknown list"),
            (rule("'''\ntransfer.amount > 1 &&\n  payee.isnew'''"), "r.toml:8:3", "unknown field"),
            ("[[rule]]\nid = \"x\"\n".to_string(), "r.toml:1:1", "missing field"),
        ];
        for (file, location, message) in cases {
            let diags = errors(&file);
            assert_eq!(diags.len(), 1, "{diags:?}");
            assert_eq!(diags[0].location(), location, "{}", diags[0]);
            assert!(diags[0].message.contains(message), "{}", diags[0]);
        }
    }

    #[test]
    fn the_tellers_questions_come_in_both_languages() {
        let good = format!("{}ask.zh = [\"问？\"]\nask.en = [\"Ask?\"]\n", rule("'transfer.amount > 100'"));
        let set = Ruleset::from_sources(vec![src("ruleset.toml", SETTINGS), src("r.toml", &good)]).unwrap();
        assert_eq!((&*set.rules[0].text.ask_zh[0], &*set.rules[0].text.ask_en[0]), ("问？", "Ask?"));
        let uneven =
            format!("{}ask.zh = [\"问？\", \"再问？\"]\nask.en = [\"Ask?\"]\n", rule("'transfer.amount > 100'"));
        let diags = errors(&uneven);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].location(), "r.toml:7:1", "{}", diags[0]);
        assert!(diags[0].message.contains("the same questions"), "{}", diags[0]);
        let blank = format!("{}ask.zh = [\" \"]\nask.en = [\"Ask?\"]\n", rule("'transfer.amount > 100'"));
        assert!(errors(&blank)[0].message.contains("1 to 500 bytes"));
        let typed = format!("{}typology = \"刷单返利\"\n", rule("'transfer.amount > 100'"));
        let set = Ruleset::from_sources(vec![src("ruleset.toml", SETTINGS), src("r.toml", &typed)]).unwrap();
        assert_eq!(&*set.rules[0].text.typology, "刷单返利");
        let untyped = format!("{}typology = \"\"\n", rule("'transfer.amount > 100'"));
        assert_eq!(errors(&untyped)[0].location(), "r.toml:7:12");
    }

    #[test]
    fn all_errors_are_listed_at_once() {
        let file = format!("{}{}", rule("'a.b'"), rule("'c'"));
        let diags = errors(&file);
        assert_eq!(diags.len(), 3, "{diags:?}"); // two unknown fields and a duplicate id
    }

    #[test]
    fn compiles_and_versions_by_content() {
        let good = rule("'transfer.amount > 100'");
        let a = Ruleset::from_sources(vec![src("ruleset.toml", SETTINGS), src("r.toml", &good)]).unwrap();
        let b = Ruleset::from_sources(vec![src("r.toml", &good), src("ruleset.toml", SETTINGS)]).unwrap();
        let c = Ruleset::from_sources(vec![src("ruleset.toml", SETTINGS), src("r.toml", &good.replace("100", "101"))])
            .unwrap();
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, c.version);
        assert!(a.version.starts_with("sha256:"));
        assert_eq!(a.rules[0].location, "r.toml:1");
        assert_eq!(a.thresholds.action_for(60), Action::Hold);
        assert_eq!(a.hold, HoldPolicy::default());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("30m x"), None);
    }
}
