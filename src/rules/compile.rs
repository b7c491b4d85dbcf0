//! Compiler of the condition language: type-checks a syntax tree against the
//! context schema and the named lists, and turns it into a tree of closures.
//!
//! Every name, type, regex and list is resolved here, once, at load; what comes
//! out cannot fail and does not allocate when evaluated. Must not evaluate rules
//! on transfers (the engine does) or read files (the loader does).
//!
//! One cohesive thing, not a hub (nothing else routes through it): the type
//! rules, the specialised closures and the shared keyword scans are one pass
//! over one tree, and read best together (its unit tests are the last part).

use super::diagnostic::one_line;
use super::parser::{BinOp, Expr, ExprKind, UnOp};
use super::schema::{self, Facts, Read, StrRead, TextRead, Ty, ABSENT, NEVER};
use super::text::{self, TextView};
use super::Span;
use aho_corasick::AhoCorasick;
use regex::{Regex, RegexBuilder};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

pub type BoolFn = Box<dyn Fn(&Facts) -> bool + Send + Sync>;
type IntFn = Box<dyn Fn(&Facts) -> i64 + Send + Sync>;

/// Compiled regexes are limited in size so a pathological pattern in a rule file
/// is an error at load rather than memory blown at run time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    pub message: String,
    pub span: Span,
}

fn fail<T>(span: Span, message: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError { message: message.into(), span })
}

/// A named list as the compiler sees it.
#[derive(Debug)]
pub enum NamedList {
    /// Exact values (accounts, names); `in_list`.
    Values(HashSet<String>),
    /// Substrings, found in one pass by an Aho-Corasick automaton;
    /// `matches_list`. `matcher` finds the items as written (ignoring ASCII
    /// case) in raw text; `folded` finds them normalised in normalised text
    /// ([`text`]).
    Keywords { items: HashSet<String>, matcher: Arc<AhoCorasick>, folded: Arc<AhoCorasick> },
    /// Substrings or regexes, joined into one regex; `matches_list` (and
    /// `in_list` for exact equality with an item).
    Patterns { items: HashSet<String>, regex: Arc<Regex> },
}

impl NamedList {
    pub fn values(items: impl IntoIterator<Item = String>) -> NamedList {
        NamedList::Values(items.into_iter().collect())
    }

    /// Keywords match as substrings: of raw text ignoring ASCII case, of
    /// normalised text normalised.
    pub fn keywords(items: &[String]) -> Result<NamedList, aho_corasick::BuildError> {
        let matcher = keyword_automaton(items.iter().map(String::as_str), false)?;
        let normalised = normalised_keywords(items.iter());
        let folded = keyword_automaton(normalised.iter().map(String::as_str), true)?;
        Ok(NamedList::Keywords {
            items: items.iter().cloned().collect(),
            matcher: Arc::new(matcher),
            folded: Arc::new(folded),
        })
    }

    pub fn patterns(items: &[String]) -> Result<NamedList, (usize, regex::Error)> {
        for (i, p) in items.iter().enumerate() {
            build_regex(p).map_err(|e| (i, e))?;
        }
        let joined: Vec<String> = items.iter().map(|p| format!("(?:{p})")).collect();
        NamedList::joined(items, &joined.join("|")).map_err(|e| (0, e))
    }

    fn joined(items: &[String], pattern: &str) -> Result<NamedList, regex::Error> {
        let regex = if items.is_empty() { build_regex("[^\\s\\S]")? } else { build_regex(pattern)? };
        Ok(NamedList::Patterns { items: items.iter().cloned().collect(), regex: Arc::new(regex) })
    }

    fn items(&self) -> &HashSet<String> {
        match self {
            NamedList::Values(items) | NamedList::Keywords { items, .. } | NamedList::Patterns { items, .. } => items,
        }
    }
}

/// An automaton over `keywords`; over raw text it ignores ASCII case, over
/// normalised text (`folded`) there is no upper case left to ignore.
fn keyword_automaton<'k>(
    keywords: impl Iterator<Item = &'k str>,
    folded: bool,
) -> Result<AhoCorasick, aho_corasick::BuildError> {
    AhoCorasick::builder()
        .ascii_case_insensitive(!folded)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(keywords.filter(|k| !k.is_empty()))
}

/// Keywords normalised, without the ones that normalise to nothing.
fn normalised_keywords<'k>(items: impl Iterator<Item = &'k String>) -> Vec<String> {
    items.map(|k| text::normalise(k)).filter(|k| !k.is_empty()).collect()
}

/// Does a keyword automaton over normalised keywords find a whole keyword in `view`?
fn keyword_in(ac: &AhoCorasick, view: &TextView) -> bool {
    ac.find_overlapping_iter(view.text).any(|m| view.whole(m.start(), m.end()))
}

pub fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_SIZE_LIMIT).build()
}

/// Shared across all rules of one ruleset: regexes are deduplicated and each
/// (pattern, field) pair gets one memo slot, so a regex runs at most once per request.
#[derive(Default)]
pub struct Compiler<'l> {
    lists: HashMap<String, &'l NamedList>,
    regexes: HashMap<String, Arc<Regex>>,
    slots: HashMap<(String, &'static str), usize>,
    keyword_scans: HashMap<&'static str, KeywordScanBuilder>,
    /// Every field a condition reads.
    reads: HashSet<&'static str>,
}

/// Every keyword list tested on one field, gathered so that one Aho-Corasick
/// pass over the field answers all of them (and fills all their memo slots).
#[derive(Default)]
struct KeywordScanBuilder {
    cell: Arc<OnceLock<KeywordScan>>,
    /// The field is normalised free text: scan it for normalised keywords.
    folded: bool,
    /// (list name, memo slot), in bit order.
    lists: Vec<(String, usize)>,
}

/// At most this many keyword lists share one pass over a field (a u64 bit set).
const MAX_LISTS_PER_SCAN: usize = 64;

struct KeywordScan {
    /// All keywords of all the lists; `owner[pattern]` is its list's bit.
    combined: Option<AhoCorasick>,
    owner: Vec<u8>,
    /// Fallback when the combined automaton cannot be built.
    per_list: Vec<Arc<AhoCorasick>>,
    slots: Vec<usize>,
}

impl KeywordScan {
    /// Scans `view.text` (for raw fields, the raw text with no breaks).
    fn scan(&self, view: &TextView, facts: &Facts, bit: usize) -> bool {
        let mut found = 0u64;
        match &self.combined {
            Some(ac) => {
                let all = if self.slots.len() == 64 { u64::MAX } else { (1u64 << self.slots.len()) - 1 };
                for m in ac.find_overlapping_iter(view.text) {
                    if !view.whole(m.start(), m.end()) {
                        continue;
                    }
                    found |= 1 << self.owner[m.pattern().as_usize()];
                    if found == all {
                        break;
                    }
                }
            }
            None => {
                for (i, ac) in self.per_list.iter().enumerate() {
                    found |= u64::from(keyword_in(ac, view)) << i;
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(cell) = facts.regex_memo.get(*slot) {
                cell.set(1 + ((found >> i) & 1) as u8);
            }
        }
        (found >> bit) & 1 == 1
    }
}

/// An integer-valued (or duration-valued) expression, kept specialised so the
/// common `field OP literal` compiles to one closure with no inner dynamic call.
enum IntE {
    Lit(i64),
    Read(fn(&Facts) -> i64),
    /// An optional field: compared (false when absent), never computed with.
    Opt(fn(&Facts) -> i64, &'static str),
    Dyn(IntFn),
}

impl IntE {
    fn into_fn(self) -> IntFn {
        match self {
            IntE::Lit(v) => Box::new(move |_| v),
            IntE::Read(r) | IntE::Opt(r, _) => Box::new(r),
            IntE::Dyn(f) => f,
        }
    }

    /// The optional field this reads, if it is one.
    fn optional(&self) -> Option<&'static str> {
        match self {
            IntE::Opt(_, path) => Some(path),
            _ => None,
        }
    }
}

enum StrE {
    Lit(String),
    Read(StrRead, &'static schema::Field),
}

impl StrE {
    /// The free-text reader when this reads a normalised field.
    fn text(&self) -> Option<TextRead> {
        match self {
            StrE::Read(_, field) => field.text,
            StrE::Lit(_) => None,
        }
    }

    /// A literal as it must be written to be compared with this value: normalised
    /// when this reads a normalised field, as it is otherwise.
    fn literal(&self, lit: &str) -> String {
        match self.text() {
            Some(_) => text::normalise(lit),
            None => lit.to_string(),
        }
    }
}

enum Value {
    Bool(BoolFn),
    Int(IntE),
    Duration(IntE),
    Str(StrE),
    Observations(fn(&Facts) -> u8, &'static schema::Field),
    ListInt(Vec<i64>),
    ListStr(Vec<String>, Vec<Span>),
}

impl Value {
    fn ty(&self) -> Ty {
        match self {
            Value::Bool(_) => Ty::Bool,
            Value::Int(_) => Ty::Int,
            Value::Duration(_) => Ty::Duration,
            Value::Str(_) => Ty::Str,
            Value::Observations(..) => Ty::Observations,
            Value::ListInt(_) => Ty::ListInt,
            Value::ListStr(..) => Ty::ListStr,
        }
    }
}

macro_rules! compare {
    ($op:expr, $a:expr, $b:expr) => {{
        match $op {
            BinOp::Eq => Box::new(move |f: &Facts| $a(f) == $b(f)) as BoolFn,
            BinOp::Ne => Box::new(move |f: &Facts| $a(f) != $b(f)),
            BinOp::Lt => Box::new(move |f: &Facts| $a(f) < $b(f)),
            BinOp::Le => Box::new(move |f: &Facts| $a(f) <= $b(f)),
            BinOp::Gt => Box::new(move |f: &Facts| $a(f) > $b(f)),
            _ => Box::new(move |f: &Facts| $a(f) >= $b(f)),
        }
    }};
}

/// The operands of a chain of `op` (`a && (b && c)` is `a`, `b`, `c`).
fn flatten<'e>(op: BinOp, e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Binary(o, l, r) if *o == op => {
            flatten(op, l, out);
            flatten(op, r, out);
        }
        _ => out.push(e),
    }
}

/// What a condition needs before it can match, read off its top-level `&&`
/// chain: whether the payee must be new (or known), and the least amount.
/// [`super::Rule::matches`] checks it inline before calling the condition,
/// so the many rules an ordinary payment to a known payee cannot match cost
/// a compare each, not calls through their closures. Each part is a conjunct
/// of the chain, so a guard that refuses never changes an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub new_payee: Option<bool>,
    pub min_amount: i64,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard { new_payee: None, min_amount: i64::MIN }
    }
}

impl Guard {
    /// The guard of `condition` and what is left to evaluate once it has
    /// admitted a transfer: the chain without the conjuncts it checks (a
    /// conjunct contradicting it stays, so `payee.is_new && !payee.is_new`
    /// still never matches). `true` when nothing is left.
    pub fn split(condition: &Expr) -> (Guard, Expr) {
        let mut operands = Vec::new();
        flatten(BinOp::And, condition, &mut operands);
        let operands: Vec<(&Expr, Option<Requirement>)> = operands.into_iter().map(|e| (e, requirement(e))).collect();
        let mut guard = Guard::default();
        for (_, required) in &operands {
            match *required {
                Some(Requirement::NewPayee(new)) => guard.new_payee = Some(new),
                Some(Requirement::Amount(least)) => guard.min_amount = guard.min_amount.max(least),
                None => {}
            }
        }
        let rest = operands
            .into_iter()
            .filter(|(_, required)| match *required {
                Some(Requirement::NewPayee(new)) => guard.new_payee != Some(new),
                Some(Requirement::Amount(_)) => false,
                None => true,
            })
            .map(|(e, _)| e.clone())
            .reduce(|l, r| Expr { span: condition.span, kind: ExprKind::Binary(BinOp::And, Box::new(l), Box::new(r)) });
        (guard, rest.unwrap_or(Expr { kind: ExprKind::Bool(true), span: condition.span }))
    }

    #[inline]
    pub fn admits(&self, facts: &Facts) -> bool {
        facts.transfer_amount >= self.min_amount && self.new_payee.is_none_or(|new| new == facts.payee_is_new)
    }
}

/// What one conjunct asks of a transfer that a [`Guard`] can check.
#[derive(Clone, Copy)]
enum Requirement {
    NewPayee(bool),
    Amount(i64),
}

/// `payee.is_new`, `!payee.is_new`, `transfer.amount >= n` (or `> n`, or
/// either written the other way round).
fn requirement(e: &Expr) -> Option<Requirement> {
    let is = |e: &Expr, path: &str| matches!(&e.kind, ExprKind::Path(p) if p.join(".") == path);
    match &e.kind {
        _ if is(e, "payee.is_new") => Some(Requirement::NewPayee(true)),
        ExprKind::Unary(UnOp::Not, inner) if is(inner, "payee.is_new") => Some(Requirement::NewPayee(false)),
        ExprKind::Binary(op, l, r) => {
            let least = match (op, &l.kind, &r.kind) {
                (BinOp::Ge, _, ExprKind::Int(n)) | (BinOp::Le, ExprKind::Int(n), _) => Some(*n),
                (BinOp::Gt, _, ExprKind::Int(n)) | (BinOp::Lt, ExprKind::Int(n), _) => n.checked_add(1),
                _ => None,
            };
            let amount = if matches!(l.kind, ExprKind::Int(_)) { r } else { l };
            least.filter(|_| is(amount, "transfer.amount")).map(Requirement::Amount)
        }
        _ => None,
    }
}

/// A rough cost of evaluating `e`, for ordering a chain's operands: reading
/// a field is one, scanning free text many (a keyword list is scanned once
/// per request, then remembered; a regex costs more).
fn cost(e: &Expr) -> u32 {
    match &e.kind {
        ExprKind::Int(_) | ExprKind::Duration(_) | ExprKind::Str(_) | ExprKind::Bool(_) | ExprKind::List(_) => 0,
        ExprKind::Path(_) => 1,
        ExprKind::Unary(_, inner) => cost(inner),
        ExprKind::Binary(op, l, r) => {
            let own = match op {
                BinOp::In => 2,
                BinOp::And | BinOp::Or => 0,
                _ => 1,
            };
            own + cost(l) + cost(r)
        }
        ExprKind::Call { target, name, args } => {
            let own = match name.as_str() {
                "matches" => 50,
                "contains" | "matches_list" => 20,
                "startsWith" | "endsWith" | "in_list" => 5,
                _ => 1,
            };
            own + target.as_deref().map_or(0, cost) + args.iter().map(cost).sum::<u32>()
        }
    }
}

fn compare_ints(op: BinOp, l: IntE, r: IntE) -> BoolFn {
    if l.optional().is_some() || r.optional().is_some() {
        // An absent value makes every comparison false, `!=` included.
        let (a, b) = (l.into_fn(), r.into_fn());
        let both = move |f: &Facts| {
            let (x, y) = (a(f), b(f));
            (x != ABSENT && y != ABSENT).then_some((x, y))
        };
        return match op {
            BinOp::Eq => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x == y)),
            BinOp::Ne => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x != y)),
            BinOp::Lt => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x < y)),
            BinOp::Le => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x <= y)),
            BinOp::Gt => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x > y)),
            _ => Box::new(move |f: &Facts| both(f).is_some_and(|(x, y)| x >= y)),
        };
    }
    match (l, r) {
        (IntE::Read(a), IntE::Lit(b)) => compare!(op, a, |_| b),
        (IntE::Lit(a), IntE::Read(b)) => compare!(op, |_| a, b),
        (IntE::Read(a), IntE::Read(b)) => compare!(op, a, b),
        (l, r) => {
            let (a, b) = (l.into_fn(), r.into_fn());
            compare!(op, a, b)
        }
    }
}

impl<'l> Compiler<'l> {
    pub fn new(lists: &'l HashMap<String, NamedList>) -> Compiler<'l> {
        Compiler { lists: lists.iter().map(|(k, v)| (k.clone(), v)).collect(), ..Compiler::default() }
    }

    /// How many regex memo slots the compiled rules use.
    pub fn memo_slots(&self) -> usize {
        self.slots.len()
    }

    /// Does any compiled condition read the field at `path`?
    pub fn reads(&self, path: &str) -> bool {
        self.reads.contains(path)
    }

    /// Builds the shared keyword automata; call once after the last condition
    /// and before evaluating any. Returns the memo slots needed.
    pub fn finish(&mut self) -> usize {
        for builder in self.keyword_scans.values() {
            let mut keywords = Vec::new();
            let mut owner = Vec::new();
            let mut per_list = Vec::new();
            for (bit, (name, _)) in builder.lists.iter().enumerate() {
                if let Some(NamedList::Keywords { items, matcher, folded }) = self.lists.get(name.as_str()) {
                    let words = if builder.folded {
                        normalised_keywords(items.iter())
                    } else {
                        items.iter().cloned().collect()
                    };
                    for k in words.into_iter().filter(|k| !k.is_empty()) {
                        keywords.push(k);
                        owner.push(bit as u8);
                    }
                    per_list.push(if builder.folded { folded.clone() } else { matcher.clone() });
                }
            }
            let combined = keyword_automaton(keywords.iter().map(String::as_str), builder.folded).ok();
            let slots = builder.lists.iter().map(|(_, slot)| *slot).collect();
            let _ = builder.cell.set(KeywordScan { combined, owner, per_list, slots });
        }
        self.slots.len()
    }

    /// Compiles a rule condition, which must be a bool.
    pub fn condition(&mut self, expr: &Expr) -> Result<BoolFn, CompileError> {
        match self.value(expr)? {
            Value::Bool(f) => Ok(f),
            other => fail(expr.span, format!("a condition must be a bool, but this is {}", other.ty().name())),
        }
    }

    fn slot(&mut self, key: String, field: &'static str) -> usize {
        let next = self.slots.len();
        *self.slots.entry((key, field)).or_insert(next)
    }

    fn regex(&mut self, pattern: &str, span: Span) -> Result<Arc<Regex>, CompileError> {
        if let Some(re) = self.regexes.get(pattern) {
            return Ok(re.clone());
        }
        match build_regex(pattern) {
            Ok(re) => {
                let re = Arc::new(re);
                self.regexes.insert(pattern.to_string(), re.clone());
                Ok(re)
            }
            Err(e) => fail(span, format!("bad regex: {}", one_line(&e.to_string()))),
        }
    }

    fn value(&mut self, expr: &Expr) -> Result<Value, CompileError> {
        let span = expr.span;
        Ok(match &expr.kind {
            ExprKind::Int(n) => Value::Int(IntE::Lit(*n)),
            ExprKind::Duration(s) => Value::Duration(IntE::Lit(*s)),
            ExprKind::Str(s) => Value::Str(StrE::Lit(s.clone())),
            ExprKind::Bool(b) => {
                let b = *b;
                Value::Bool(Box::new(move |_| b))
            }
            ExprKind::List(items) => self.list(items, span)?,
            ExprKind::Path(parts) => {
                let (field, value) = field_value(&parts.join("."), span)?;
                self.reads.insert(field.path);
                value
            }
            ExprKind::Unary(UnOp::Not, inner) => match self.value(inner)? {
                Value::Bool(f) => Value::Bool(Box::new(move |x| !f(x))),
                other => return fail(inner.span, format!("`!` needs a bool, found {}", other.ty().name())),
            },
            ExprKind::Unary(UnOp::Neg, inner) => match self.value(inner)? {
                Value::Int(IntE::Lit(n)) => Value::Int(IntE::Lit(n.saturating_neg())),
                Value::Int(IntE::Opt(_, path)) => {
                    return fail(inner.span, format!("`{path}` may be absent: compare it, do not negate it"))
                }
                Value::Int(e) => {
                    let f = e.into_fn();
                    Value::Int(IntE::Dyn(Box::new(move |x| f(x).saturating_neg())))
                }
                other => return fail(inner.span, format!("`-` needs an int, found {}", other.ty().name())),
            },
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r, span)?,
            ExprKind::Call { target, name, args } => self.call(target.as_deref(), name, args, span)?,
        })
    }

    fn list(&mut self, items: &[Expr], span: Span) -> Result<Value, CompileError> {
        let mut ints = Vec::new();
        let mut strs = Vec::new();
        let mut spans = Vec::new();
        for item in items {
            match &item.kind {
                ExprKind::Int(n) if strs.is_empty() => ints.push(*n),
                ExprKind::Str(s) if ints.is_empty() => {
                    strs.push(s.clone());
                    spans.push(item.span);
                }
                ExprKind::Int(_) | ExprKind::Str(_) => {
                    return fail(item.span, "a list mixes ints and strings; use one type")
                }
                _ => return fail(item.span, "list items must be int or string literals"),
            }
        }
        if items.is_empty() {
            return fail(span, "an empty list never matches; remove the test");
        }
        Ok(if ints.is_empty() { Value::ListStr(strs, spans) } else { Value::ListInt(ints) })
    }

    /// A chain of `&&` (or of `||`) as one closure over its operands, the
    /// cheapest first: conditions are pure and total, so the order changes
    /// only how soon the chain is decided (a known payee ends `payee.is_new
    /// && matches_list(transfer.memo, ..)` before the memo is scanned).
    /// Operands are compiled in the written order, so errors are reported
    /// in it; equal costs keep it.
    fn chain(&mut self, op: BinOp, l: &Expr, r: &Expr) -> Result<Value, CompileError> {
        let mut operands = Vec::new();
        flatten(op, l, &mut operands);
        flatten(op, r, &mut operands);
        let mut parts = Vec::with_capacity(operands.len());
        for e in operands {
            match self.value(e)? {
                Value::Bool(f) => parts.push((cost(e), f)),
                other => {
                    return fail(
                        e.span,
                        format!("`{}` needs bools on both sides, found {}", op.symbol(), other.ty().name()),
                    )
                }
            }
        }
        parts.sort_by_key(|(c, _)| *c);
        let mut fns = parts.into_iter().map(|(_, f)| f);
        let (Some(a), Some(b)) = (fns.next(), fns.next()) else { unreachable!("a chain has two sides") };
        let rest: Box<[BoolFn]> = fns.collect();
        let all = op == BinOp::And;
        Ok(Value::Bool(match (rest.len(), all) {
            (0, true) => Box::new(move |f| a(f) && b(f)),
            (0, false) => Box::new(move |f| a(f) || b(f)),
            (_, true) => Box::new(move |f| a(f) && b(f) && rest.iter().all(|c| c(f))),
            (_, false) => Box::new(move |f| a(f) || b(f) || rest.iter().any(|c| c(f))),
        }))
    }

    fn binary(&mut self, op: BinOp, l: &Expr, r: &Expr, span: Span) -> Result<Value, CompileError> {
        if matches!(op, BinOp::And | BinOp::Or) {
            return self.chain(op, l, r);
        }
        let lv = self.value(l)?;
        let rv = self.value(r)?;
        let mismatch = |lv: &Value, rv: &Value| {
            fail(span, format!("`{}` cannot compare {} with {}", op.symbol(), lv.ty().name(), rv.ty().name()))
        };
        match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul => {
                let (a, b, duration) = match (lv, rv) {
                    (Value::Int(a), Value::Int(b)) if a.optional().or(b.optional()).is_some() => {
                        let path = a.optional().or(b.optional()).unwrap_or_default();
                        return fail(
                            span,
                            format!(
                                "`{path}` may be absent: compare it (false when absent), but do not compute with it"
                            ),
                        );
                    }
                    (Value::Int(a), Value::Int(b)) => (a, b, false),
                    (Value::Duration(a), Value::Duration(b)) if op != BinOp::Mul => (a, b, true),
                    (lv, rv) => {
                        return fail(
                            span,
                            format!("`{}` cannot combine {} with {}", op.symbol(), lv.ty().name(), rv.ty().name()),
                        )
                    }
                };
                let (a, b) = (a.into_fn(), b.into_fn());
                let f: IntFn = match op {
                    BinOp::Add => Box::new(move |x| a(x).saturating_add(b(x))),
                    BinOp::Sub => Box::new(move |x| a(x).saturating_sub(b(x))),
                    _ => Box::new(move |x| a(x).saturating_mul(b(x))),
                };
                Ok(if duration { Value::Duration(IntE::Dyn(f)) } else { Value::Int(IntE::Dyn(f)) })
            }
            BinOp::In => self.membership(lv, rv, l, r, span),
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ordering = !matches!(op, BinOp::Eq | BinOp::Ne);
                Ok(Value::Bool(match (lv, rv) {
                    (Value::Int(a), Value::Int(b)) | (Value::Duration(a), Value::Duration(b)) => compare_ints(op, a, b),
                    (Value::Bool(a), Value::Bool(b)) if !ordering => compare!(op, a, b),
                    (Value::Str(a), Value::Str(b)) if !ordering => {
                        check_str_values(&a, &b, r.span)?;
                        check_str_values(&b, &a, l.span)?;
                        compare_strs(op == BinOp::Eq, a, b)
                    }
                    (Value::Str(_), Value::Str(_)) | (Value::Bool(_), Value::Bool(_)) => {
                        return fail(span, format!("`{}` does not order strings or bools; use == or !=", op.symbol()))
                    }
                    (lv, rv) => return mismatch(&lv, &rv),
                }))
            }
            BinOp::And | BinOp::Or => unreachable!("handled above"),
        }
    }

    fn membership(&mut self, lv: Value, rv: Value, l: &Expr, r: &Expr, span: Span) -> Result<Value, CompileError> {
        Ok(Value::Bool(match (lv, rv) {
            (Value::Int(a), Value::ListInt(items)) => {
                let a = a.into_fn();
                Box::new(move |f| items.contains(&a(f)))
            }
            (Value::Str(a), Value::ListStr(items, spans)) => {
                if let StrE::Read(_, field) = &a {
                    for (item, item_span) in items.iter().zip(spans) {
                        check_value(field, item, item_span)?;
                    }
                }
                match a {
                    StrE::Lit(s) => {
                        let hit = items.contains(&s);
                        Box::new(move |_| hit)
                    }
                    a @ StrE::Read(read, _) => {
                        let set: HashSet<String> = items.iter().map(|i| a.literal(i)).collect();
                        if set.len() <= 8 {
                            let items: Vec<String> = set.into_iter().collect();
                            Box::new(move |f| {
                                let v = read(f);
                                items.iter().any(|i| i == v)
                            })
                        } else {
                            Box::new(move |f| set.contains(read(f)))
                        }
                    }
                }
            }
            (Value::Str(StrE::Lit(name)), Value::Observations(read, field)) => {
                check_value(field, &name, l.span)?;
                let bit = 1u8 << field.values.iter().position(|v| *v == name).unwrap_or(0);
                Box::new(move |f| read(f) & bit != 0)
            }
            (Value::Str(_), Value::Observations(..)) => {
                return fail(
                    l.span,
                    "test observations with a string literal, e.g. `\"coached\" in customer.observations`",
                )
            }
            (lv, rv) => {
                return fail(span.to(r.span), format!("`in` cannot look for {} in {}", lv.ty().name(), rv.ty().name()))
            }
        }))
    }

    fn call(&mut self, target: Option<&Expr>, name: &str, args: &[Expr], span: Span) -> Result<Value, CompileError> {
        // Global functions, and `size` in both spellings.
        let (subject, rest): (&Expr, &[Expr]) = match target {
            Some(t) => (t, args),
            None => match name {
                "has" => return has(args, span),
                "size" | "in_list" | "matches_list" => match args.split_first() {
                    Some((first, rest)) => (first, rest),
                    None => return fail(span, format!("`{name}` needs an argument")),
                },
                _ => return fail(span, unknown_function(name)),
            },
        };
        let arity = |n: usize| {
            if rest.len() == n {
                Ok(())
            } else {
                fail(
                    span,
                    format!(
                        "`{name}` takes {} argument(s), got {}",
                        n + usize::from(target.is_none()),
                        rest.len() + usize::from(target.is_none())
                    ),
                )
            }
        };
        match name {
            "size" => {
                arity(0)?;
                return Ok(Value::Int(match self.value(subject)? {
                    Value::Str(StrE::Lit(s)) => IntE::Lit(s.chars().count() as i64),
                    Value::Str(StrE::Read(read, _)) => IntE::Dyn(Box::new(move |f| read(f).chars().count() as i64)),
                    Value::Observations(read, _) => IntE::Dyn(Box::new(move |f| i64::from(read(f).count_ones()))),
                    Value::ListInt(v) => IntE::Lit(v.len() as i64),
                    Value::ListStr(v, _) => IntE::Lit(v.len() as i64),
                    other => {
                        return fail(
                            subject.span,
                            format!("`size` needs a string or a list, found {}", other.ty().name()),
                        )
                    }
                }));
            }
            "matches" | "contains" | "startsWith" | "endsWith" | "in_list" | "matches_list" => {}
            _ if target.is_some() => return fail(span, unknown_function(name)),
            _ => unreachable!("global functions matched above"),
        }
        let Value::Str(s) = self.value(subject)? else {
            return fail(subject.span, format!("`{name}` needs a string to work on"));
        };
        arity(1)?;
        let arg = &rest[0];
        let ExprKind::Str(lit) = &arg.kind else {
            return fail(arg.span, format!("the argument of `{name}` must be a string literal"));
        };
        match name {
            "matches" => {
                let re = self.regex(lit, arg.span)?;
                Ok(Value::Bool(self.memoised(s, format!("re:{lit}"), move |v| re.is_match(v))))
            }
            "contains" => match (s.text(), &s) {
                (Some(read_text), StrE::Read(_, field)) => {
                    // Free text: a keyword of one, matched as keyword lists are.
                    let needle = text::normalise(lit);
                    let slot = self.slot(format!("contains:{lit}"), field.path);
                    Ok(Value::Bool(Box::new(move |f| f.memo(slot, || read_text(f).contains(&needle)))))
                }
                _ => {
                    let needle = lit.clone();
                    Ok(Value::Bool(self.memoised(s, format!("contains:{lit}"), move |v| v.contains(needle.as_str()))))
                }
            },
            "startsWith" => {
                let p = s.literal(lit);
                Ok(Value::Bool(str_test(s, move |v| v.starts_with(p.as_str()))))
            }
            "endsWith" => {
                let p = s.literal(lit);
                Ok(Value::Bool(str_test(s, move |v| v.ends_with(p.as_str()))))
            }
            _ => {
                let Some(list) = self.lists.get(lit.as_str()).copied() else {
                    let mut known: Vec<&str> = self.lists.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return fail(arg.span, format!("unknown list `{lit}`; known lists: {}", known.join(", ")));
                };
                if name == "in_list" {
                    let set: HashSet<String> = list.items().iter().map(|i| s.literal(i)).collect();
                    return Ok(Value::Bool(str_test(s, move |v| set.contains(v))));
                }
                let key = format!("list:{lit}");
                match list {
                    NamedList::Patterns { regex, .. } => {
                        let re = regex.clone();
                        Ok(Value::Bool(self.memoised(s, key, move |v| re.is_match(v))))
                    }
                    NamedList::Keywords { matcher, folded, .. } => match s {
                        StrE::Read(read, field) if self.scan_has_room(field.path, lit) => {
                            let slot = self.slot(key, field.path);
                            let builder = self.keyword_scans.entry(field.path).or_default();
                            builder.folded = field.text.is_some();
                            let bit = match builder.lists.iter().position(|(n, _)| n == lit) {
                                Some(bit) => bit,
                                None => {
                                    builder.lists.push((lit.clone(), slot));
                                    builder.lists.len() - 1
                                }
                            };
                            let cell = builder.cell.clone();
                            Ok(Value::Bool(match field.text {
                                Some(read_text) => Box::new(move |f| {
                                    f.memo(slot, || cell.get().is_some_and(|scan| scan.scan(&read_text(f), f, bit)))
                                }),
                                None => Box::new(move |f| {
                                    let view = TextView { text: read(f), ..TextView::default() };
                                    f.memo(slot, || cell.get().is_some_and(|scan| scan.scan(&view, f, bit)))
                                }),
                            }))
                        }
                        StrE::Read(_, field) if field.text.is_some() => {
                            let (read_text, ac) = (field.text.expect("checked"), folded.clone());
                            let slot = self.slot(key, field.path);
                            Ok(Value::Bool(Box::new(move |f| f.memo(slot, || keyword_in(&ac, &read_text(f))))))
                        }
                        s => {
                            let ac = matcher.clone();
                            Ok(Value::Bool(self.memoised(s, key, move |v| ac.is_match(v))))
                        }
                    },
                    NamedList::Values(_) => {
                        fail(arg.span, format!("list `{lit}` holds exact values; use in_list(.., \"{lit}\")"))
                    }
                }
            }
        }
    }

    fn scan_has_room(&self, field: &str, list: &str) -> bool {
        self.keyword_scans
            .get(field)
            .is_none_or(|b| b.lists.len() < MAX_LISTS_PER_SCAN || b.lists.iter().any(|(n, _)| n == list))
    }

    /// A string test whose result is memoised per request when it reads a field.
    fn memoised(&mut self, s: StrE, key: String, test: impl Fn(&str) -> bool + Send + Sync + 'static) -> BoolFn {
        match s {
            StrE::Read(read, field) => {
                let slot = self.slot(key, field.path);
                Box::new(move |f| f.memo(slot, || test(read(f))))
            }
            lit => str_test(lit, test),
        }
    }
}

fn str_test(s: StrE, test: impl Fn(&str) -> bool + Send + Sync + 'static) -> BoolFn {
    match s {
        StrE::Lit(v) => {
            let hit = test(&v);
            Box::new(move |_| hit)
        }
        StrE::Read(read, _) => Box::new(move |f| test(read(f))),
    }
}

fn compare_strs(eq: bool, a: StrE, b: StrE) -> BoolFn {
    match (a, b) {
        (read @ StrE::Read(r, _), StrE::Lit(v)) | (StrE::Lit(v), read @ StrE::Read(r, _)) => {
            let v = read.literal(&v);
            Box::new(move |f| (r(f) == v) == eq)
        }
        (StrE::Read(r1, _), StrE::Read(r2, _)) => Box::new(move |f| (r1(f) == r2(f)) == eq),
        (StrE::Lit(a), StrE::Lit(b)) => {
            let v = (a == b) == eq;
            Box::new(move |_| v)
        }
    }
}

/// `transfer.channel == "countr"` is a load error, not a rule that never fires.
fn check_str_values(field_side: &StrE, other: &StrE, other_span: Span) -> Result<(), CompileError> {
    if let (StrE::Read(_, field), StrE::Lit(v)) = (field_side, other) {
        check_value(field, v, other_span)?;
    }
    Ok(())
}

fn check_value(field: &schema::Field, value: &str, span: Span) -> Result<(), CompileError> {
    if field.values.is_empty() || field.values.contains(&value) {
        return Ok(());
    }
    fail(span, format!("`{}` is never \"{value}\"; it is one of: {}", field.path, field.values.join(", ")))
}

fn has(args: &[Expr], span: Span) -> Result<Value, CompileError> {
    let [arg] = args else {
        return fail(span, "`has` takes one field, e.g. has(customer.limit_raised_ago)");
    };
    let ExprKind::Path(parts) = &arg.kind else {
        return fail(arg.span, "`has` takes a field name");
    };
    let path = parts.join(".");
    let field = lookup_field(&path, arg.span)?;
    match field.read {
        Read::Duration(read) if field.optional => Ok(Value::Bool(Box::new(move |f| read(f) != NEVER))),
        Read::OptInt(read) => Ok(Value::Bool(Box::new(move |f| read(f) != ABSENT))),
        _ => fail(arg.span, format!("`{path}` is always present; `has` is for optional fields")),
    }
}

fn lookup_field(path: &str, span: Span) -> Result<&'static schema::Field, CompileError> {
    match schema::lookup(path) {
        Some(field) => Ok(field),
        None => {
            let mut msg = format!("unknown field `{path}`");
            if let Some(best) = closest(path) {
                msg.push_str(&format!("; did you mean `{best}`?"));
            }
            fail(span, msg)
        }
    }
}

fn field_value(path: &str, span: Span) -> Result<(&'static schema::Field, Value), CompileError> {
    let field = lookup_field(path, span)?;
    Ok((
        field,
        match field.read {
            Read::Int(r) => Value::Int(IntE::Read(r)),
            Read::OptInt(r) => Value::Int(IntE::Opt(r, field.path)),
            Read::Duration(r) => Value::Duration(IntE::Read(r)),
            Read::Str(r) => Value::Str(StrE::Read(r, field)),
            Read::Bool(r) => Value::Bool(Box::new(r)),
            Read::Observations(r) => Value::Observations(r, field),
        },
    ))
}

fn unknown_function(name: &str) -> String {
    format!(
        "unknown function `{name}`; functions are has, size, in_list, matches_list and the string methods matches, contains, startsWith, endsWith"
    )
}

/// The schema field nearest to a misspelt one, if any is close.
fn closest(path: &str) -> Option<&'static str> {
    schema::FIELDS
        .iter()
        .map(|f| (edit_distance(path, f.path), f.path))
        .filter(|(d, p)| *d <= 3.max(p.len() / 4))
        .min()
        .map(|(_, p)| p)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parser::parse;

    fn compile(src: &str) -> Result<BoolFn, CompileError> {
        let lists = HashMap::from([
            ("mules".to_string(), NamedList::values(["123".to_string()])),
            ("scam_words".to_string(), NamedList::keywords(&["刷单".to_string(), "Refund".to_string()]).unwrap()),
        ]);
        let mut c = Compiler::new(&lists);
        let f = c.condition(&parse(src).unwrap());
        c.finish();
        f
    }

    fn eval(src: &str, facts: &Facts) -> bool {
        // Each condition is compiled on its own: its memo slots start afresh.
        facts.regex_memo.iter().for_each(|c| c.set(0));
        compile(src).unwrap_or_else(|e| panic!("{src}: {e}"))(facts)
    }

    #[test]
    fn a_guard_is_read_off_the_top_level_chain() {
        let guard = |src: &str| Guard::split(&parse(src).unwrap()).0;
        let g = guard("payee.is_new && customer.age >= 60 && transfer.amount >= 200000");
        assert_eq!(g, Guard { new_payee: Some(true), min_amount: 200_000 });
        let g = guard("!payee.is_new && (100 < transfer.amount && transfer.amount > 50)");
        assert_eq!(g, Guard { new_payee: Some(false), min_amount: 101 });
        // Nothing is required of an `||` or of an amount under a `!`.
        assert_eq!(guard("payee.is_new || transfer.amount >= 5"), Guard::default());
        assert_eq!(guard("!(transfer.amount >= 5) && payee.watchlisted"), Guard::default());
        let facts = Facts { transfer_amount: 150, payee_is_new: false, ..Facts::default() };
        assert!(guard("!payee.is_new && transfer.amount > 100").admits(&facts));
        assert!(!guard("payee.is_new && transfer.amount > 100").admits(&facts));
        assert!(!guard("transfer.amount >= 151").admits(&facts));
    }

    #[test]
    fn evaluates_fields_literals_and_functions() {
        let memo = vec![std::cell::Cell::new(0u8); 8];
        let raw = "帮忙刷单 please REFUND";
        let text = text::FoldedText::new(raw);
        let f = Facts {
            transfer_amount: 40_000_000,
            transfer_channel: "counter",
            transfer_memo: text.view(raw),
            customer_age: 58,
            customer_limit_raised_ago: 600,
            customer_observations: 0b1,
            payee_account: "123",
            payee_first_paid_ago: NEVER,
            regex_memo: &memo,
            ..Facts::default()
        };
        assert!(eval("transfer.amount >= 40000000 && customer.age < 60", &f));
        assert!(eval("customer.limit_raised_ago <= 24h && has(customer.limit_raised_ago)", &f));
        assert!(!eval("has(payee.first_paid_ago)", &f));
        assert!(!eval("payee.first_paid_ago < 3650d", &f));
        assert!(eval("transfer.channel in ['counter', 'atm']", &f));
        assert!(eval("\"on_phone_with_stranger\" in customer.observations", &f));
        assert!(!eval("'coached' in customer.observations", &f));
        assert!(eval("size(customer.observations) == 1 && customer.observations.size() == 1", &f));
        assert!(eval("in_list(payee.account, 'mules') && matches_list(transfer.memo, 'scam_words')", &f));
        assert!(eval("transfer.memo.matches(r'刷.') && transfer.memo.contains('please')", &f));
        assert!(eval("transfer.amount * 10 >= 400000000 - 1 && -1 < 0", &f));
        assert!(eval("!(transfer.channel == 'atm') && transfer.channel != 'atm'", &f));
        // Free text is compared normalised on both sides; the raw field opts out.
        assert!(eval("transfer.memo == '幫忙刷單  PLEASE refund' && transfer.memo.startsWith('帮忙')", &f));
        assert!(eval("transfer.memo.contains('刷 单') && transfer.memo.contains('please-refund')", &f));
        assert!(eval("transfer.memo.matches('^帮忙刷单please')", &f));
        assert!(eval("transfer.memo_raw == '帮忙刷单 please REFUND' && transfer.memo_raw.contains('REFUND')", &f));
        assert!(!eval("transfer.memo_raw.contains('refund') || transfer.memo_raw.contains('刷 单')", &f));
        assert!(eval(
            "matches_list(transfer.memo_raw, 'scam_words') && transfer.memo_raw.matches('^帮忙刷单 please')",
            &f
        ));
    }

    #[test]
    fn an_absent_int_compares_false_every_way() {
        let absent = Facts { transfer_amount_vs_usual: ABSENT, payee_growth: 250, ..Facts::default() };
        for op in ["==", "!=", "<", "<=", ">", ">="] {
            assert!(!eval(&format!("transfer.amount_vs_usual {op} 100"), &absent), "{op}");
            assert!(!eval(&format!("100 {op} transfer.amount_vs_usual"), &absent), "{op}");
        }
        assert!(!eval("has(transfer.amount_vs_usual)", &absent));
        assert!(eval("!has(transfer.amount_vs_usual) && has(payee.growth) && payee.growth >= 200", &absent));
        assert!(eval("payee.growth != 100 && payee.growth in [250, 300]", &absent));
        let present = Facts { transfer_amount_vs_usual: 0, ..absent };
        assert!(eval("transfer.amount_vs_usual == 0 && transfer.amount_vs_usual < 1", &present));
    }

    #[test]
    fn rejects_what_would_silently_be_false() {
        let cases = [
            ("customer.agee >= 60", "did you mean `customer.age`"),
            ("customer.age >= '60'", "cannot compare int with string"),
            ("customer.limit_raised_ago < 24", "cannot compare duration with int"),
            ("transfer.memo.matches('(')", "bad regex"),
            ("in_list(payee.account, 'nope')", "unknown list `nope`"),
            ("transfer.channel == 'countr'", "never \"countr\""),
            ("'on_phone' in customer.observations", "never \"on_phone\""),
            ("customer.age", "must be a bool"),
            ("has(customer.age)", "always present"),
            ("transfer.memo.lower() == 'x'", "unknown function"),
            ("matches_list(payee.account, 'mules')", "exact values"),
            ("transfer.memo < 'a'", "does not order"),
            ("transfer.amount_vs_usual * 2 > 10", "may be absent"),
            ("-payee.growth < 0", "may be absent"),
        ];
        for (src, want) in cases {
            match compile(src) {
                Ok(_) => panic!("{src} compiled"),
                Err(e) => assert!(e.message.contains(want), "{src}: {}", e.message),
            }
        }
    }

    /// Conditions of every cost class (field, comparison, keyword list, regex)
    /// with their truth value on the test's facts.
    const ATOMS: [(&str, bool); 6] = [
        ("transfer.amount >= 100", true),
        ("customer.age > 200", false),
        ("transfer.memo.matches('刷.')", true),
        ("matches_list(transfer.memo, 'scam_words')", true),
        ("transfer.channel == 'atm'", false),
        ("transfer.memo.contains('nowhere')", false),
    ];

    #[derive(Debug, Clone)]
    enum Tree {
        Atom(usize),
        Not(Box<Tree>),
        And(Box<Tree>, Box<Tree>),
        Or(Box<Tree>, Box<Tree>),
    }

    impl Tree {
        fn source(&self) -> String {
            match self {
                Tree::Atom(i) => ATOMS[*i].0.to_string(),
                Tree::Not(t) => format!("!({})", t.source()),
                Tree::And(l, r) => format!("({} && {})", l.source(), r.source()),
                Tree::Or(l, r) => format!("({} || {})", l.source(), r.source()),
            }
        }

        fn truth(&self) -> bool {
            match self {
                Tree::Atom(i) => ATOMS[*i].1,
                Tree::Not(t) => !t.truth(),
                Tree::And(l, r) => l.truth() && r.truth(),
                Tree::Or(l, r) => l.truth() || r.truth(),
            }
        }
    }

    fn tree() -> impl proptest::strategy::Strategy<Value = Tree> {
        use proptest::prelude::*;
        (0..ATOMS.len()).prop_map(Tree::Atom).prop_recursive(5, 40, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| Tree::Not(Box::new(t))),
                (inner.clone(), inner.clone()).prop_map(|(l, r)| Tree::And(Box::new(l), Box::new(r))),
                (inner.clone(), inner).prop_map(|(l, r)| Tree::Or(Box::new(l), Box::new(r))),
            ]
        })
    }

    proptest::proptest! {
        /// Chains are evaluated cheapest operand first; the answer must be
        /// the one the written order gives.
        #[test]
        fn reordering_a_chain_never_changes_its_answer(t in tree()) {
            let memo = vec![std::cell::Cell::new(0u8); 8];
            let raw = "帮忙刷单 please";
            let text = text::FoldedText::new(raw);
            let f = Facts {
                transfer_amount: 500,
                transfer_channel: "counter",
                transfer_memo: text.view(raw),
                customer_age: 40,
                regex_memo: &memo,
                ..Facts::default()
            };
            for (src, truth) in ATOMS {
                proptest::prop_assert_eq!(eval(src, &f), truth, "{}", src);
            }
            proptest::prop_assert_eq!(eval(&t.source(), &f), t.truth(), "{}", t.source());
        }
    }

    #[test]
    fn a_chain_reports_its_first_written_bad_operand() {
        let src = "transfer.memo.matches('a') && customer.age && transfer.amount";
        let e = compile(src).err().expect("a non-bool operand");
        assert_eq!(&src[e.span.start..e.span.end], "customer.age");
        assert!(e.message.contains("`&&` needs bools on both sides, found int"), "{}", e.message);
    }

    #[test]
    fn regexes_are_shared_and_memoised_once_per_request() {
        let lists = HashMap::new();
        let mut c = Compiler::new(&lists);
        let a = c.condition(&parse("transfer.memo.matches('a+')").unwrap()).unwrap();
        let b = c.condition(&parse("transfer.memo.matches('a+') && payee.name.matches('a+')").unwrap()).unwrap();
        assert_eq!(c.regexes.len(), 1);
        assert_eq!(c.memo_slots(), 2);
        let memo = vec![std::cell::Cell::new(0u8); 2];
        let (memo_text, name_text) = (text::FoldedText::new("aaa"), text::FoldedText::new("b"));
        let f = Facts {
            transfer_memo: memo_text.view("aaa"),
            payee_name: name_text.view("b"),
            regex_memo: &memo,
            ..Facts::default()
        };
        assert!(a(&f));
        assert_eq!(memo[0].get(), 2);
        assert!(!b(&f));
        assert_eq!(memo[1].get(), 1);
    }
}
