//! Property tests of the condition language: the parser never panics, printing
//! and re-parsing gives the same tree, and the compiled closures give the same
//! answer as a plain tree-walking interpreter (the "simple way") on random
//! well-typed expressions over random facts.

use super::compile::{Compiler, Guard, NamedList};
use super::parser::{parse, BinOp, Expr, ExprKind, UnOp};
use super::schema::{self, Facts, Read, NEVER};
use super::text::{self, FoldedText};
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::HashMap;

/// A tiny deterministic generator: proptest supplies the seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const INT_FIELDS: &[&str] = &[
    "transfer.amount",
    "transfer.hour",
    "customer.age",
    "customer.daily_limit",
    "payee.distinct_senders_24h",
    "history.transfers_1h",
    "history.amount_24h",
];
const DUR_FIELDS: &[&str] = &["customer.limit_raised_ago", "payee.first_paid_ago", "customer.stopped_ago"];
const BOOL_FIELDS: &[&str] = &["payee.is_new", "payee.watchlisted", "customer.limit_raised_to_max"];
const STR_FIELDS: &[&str] = &["transfer.memo", "payee.name", "transfer.currency", "transfer.memo_raw"];
const WORDS: &[&str] = &["", "a", "ab", "刷单", "CNY", "x\"y", "Refund"];
const PATTERNS: &[&str] = &["a+", "^a", "刷.", "(?i)refund", "b$"];

fn lit_str(g: &mut Gen) -> String {
    let w = g.pick(WORDS);
    format!("\"{}\"", w.replace('"', "\\\""))
}

fn gen_int(g: &mut Gen, depth: u32) -> String {
    match if depth == 0 { g.below(2) } else { g.below(5) } {
        0 => g.pick(INT_FIELDS).to_string(),
        1 => (g.below(2001) as i64 - 1000).to_string(),
        2 => format!("({} {} {})", gen_int(g, depth - 1), g.pick(&["+", "-", "*"]), gen_int(g, depth - 1)),
        3 => format!("size({})", g.pick(STR_FIELDS)),
        _ => format!("-({})", gen_int(g, depth - 1)),
    }
}

fn gen_dur(g: &mut Gen, depth: u32) -> String {
    match if depth == 0 { g.below(2) } else { g.below(3) } {
        0 => g.pick(DUR_FIELDS).to_string(),
        1 => format!("{}{}", g.below(100), g.pick(&["s", "m", "h", "d"])),
        _ => format!("({} {} {})", gen_dur(g, depth - 1), g.pick(&["+", "-"]), gen_dur(g, depth - 1)),
    }
}

fn gen_str(g: &mut Gen) -> String {
    if g.below(2) == 0 {
        g.pick(STR_FIELDS).to_string()
    } else {
        lit_str(g)
    }
}

fn gen_bool(g: &mut Gen, depth: u32) -> String {
    let cmp = ["==", "!=", "<", "<=", ">", ">="];
    match if depth == 0 { g.below(3) } else { g.below(13) } {
        0 => g.pick(BOOL_FIELDS).to_string(),
        1 => g.pick(&["true", "false"]).to_string(),
        2 => format!("{}.{}({})", g.pick(STR_FIELDS), g.pick(&["contains", "startsWith", "endsWith"]), lit_str(g)),
        3 => format!("({} {} {})", gen_int(g, depth - 1), g.pick(&cmp), gen_int(g, depth - 1)),
        4 => format!("({} {} {})", gen_dur(g, depth - 1), g.pick(&cmp), gen_dur(g, depth - 1)),
        5 => format!("({} {} {})", gen_str(g), g.pick(&["==", "!="]), gen_str(g)),
        6 => format!("({} in [{}, {}])", gen_str(g), lit_str(g), lit_str(g)),
        7 => format!("(\"{}\" in customer.observations)", g.pick(schema::OBSERVATIONS)),
        8 => format!("{}.matches(r\"{}\")", g.pick(STR_FIELDS), g.pick(PATTERNS)),
        9 => format!("{}(transfer.memo, \"{}\")", g.pick(&["in_list", "matches_list"]), "words"),
        10 => format!("!({})", gen_bool(g, depth - 1)),
        11 => format!("has({})", g.pick(DUR_FIELDS)),
        _ => format!("({} {} {})", gen_bool(g, depth - 1), g.pick(&["&&", "||"]), gen_bool(g, depth - 1)),
    }
}

/// Values of the reference interpreter.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Int(i64),
    /// A string field, read as it is.
    Str(String),
    /// A string literal.
    Lit(String),
    /// A free-text field, read normalised ([`text`]).
    Text(String),
    Bool(bool),
    Obs(u8),
    List(Vec<V>),
}

fn reference(e: &Expr, f: &Facts, words: &[&str]) -> V {
    let int = |v: V| match v {
        V::Int(n) => n,
        other => panic!("not an int: {other:?}"),
    };
    let boolean = |v: V| match v {
        V::Bool(b) => b,
        other => panic!("not a bool: {other:?}"),
    };
    match &e.kind {
        ExprKind::Int(n) | ExprKind::Duration(n) => V::Int(*n),
        ExprKind::Str(s) => V::Lit(s.clone()),
        ExprKind::Bool(b) => V::Bool(*b),
        ExprKind::List(items) => V::List(items.iter().map(|i| reference(i, f, words)).collect()),
        ExprKind::Path(p) => match schema::lookup(&p.join(".")).expect("known field").read {
            Read::Int(r) | Read::Duration(r) | Read::OptInt(r) => V::Int(r(f)),
            Read::Str(r) if schema::lookup(&p.join(".")).unwrap().text.is_some() => V::Text(text::normalise(r(f))),
            Read::Str(r) => V::Str(r(f).to_string()),
            Read::Bool(r) => V::Bool(r(f)),
            Read::Observations(r) => V::Obs(r(f)),
        },
        ExprKind::Unary(UnOp::Not, x) => V::Bool(!boolean(reference(x, f, words))),
        ExprKind::Unary(UnOp::Neg, x) => V::Int(int(reference(x, f, words)).saturating_neg()),
        ExprKind::Binary(BinOp::And, l, r) => {
            V::Bool(boolean(reference(l, f, words)) && boolean(reference(r, f, words)))
        }
        ExprKind::Binary(BinOp::Or, l, r) => {
            V::Bool(boolean(reference(l, f, words)) || boolean(reference(r, f, words)))
        }
        ExprKind::Binary(op, l, r) => {
            let (a, b) = (reference(l, f, words), reference(r, f, words));
            match op {
                BinOp::Add => V::Int(int(a).saturating_add(int(b))),
                BinOp::Sub => V::Int(int(a).saturating_sub(int(b))),
                BinOp::Mul => V::Int(int(a).saturating_mul(int(b))),
                BinOp::Eq => V::Bool(same(&a, &b)),
                BinOp::Ne => V::Bool(!same(&a, &b)),
                BinOp::Lt => V::Bool(int(a) < int(b)),
                BinOp::Le => V::Bool(int(a) <= int(b)),
                BinOp::Gt => V::Bool(int(a) > int(b)),
                BinOp::Ge => V::Bool(int(a) >= int(b)),
                BinOp::In => match (a, b) {
                    (V::Lit(s), V::Obs(bits)) => {
                        let i = schema::OBSERVATIONS.iter().position(|o| *o == s).unwrap();
                        V::Bool(bits & (1 << i) != 0)
                    }
                    (a, V::List(items)) => V::Bool(items.iter().any(|i| same(&a, i))),
                    other => panic!("bad in: {other:?}"),
                },
                _ => unreachable!(),
            }
        }
        ExprKind::Call { target, name, args } => {
            let (subject, rest) = match target {
                Some(t) => (reference(t, f, words), &args[..]),
                None if name == "has" => {
                    let ExprKind::Path(p) = &args[0].kind else { panic!() };
                    let Read::Duration(r) = schema::lookup(&p.join(".")).unwrap().read else { panic!() };
                    return V::Bool(r(f) != NEVER);
                }
                None => (reference(&args[0], f, words), &args[1..]),
            };
            let arg = rest.first().map(|a| match reference(a, f, words) {
                V::Lit(x) => x,
                other => panic!("{other:?}"),
            });
            let arg = arg.unwrap_or_default();
            match subject {
                // Free text: literals normalised.
                V::Text(s) => match name.as_str() {
                    "size" => V::Int(s.chars().count() as i64),
                    "contains" => V::Bool(s.contains(&text::normalise(&arg))),
                    "startsWith" => V::Bool(s.starts_with(&text::normalise(&arg))),
                    "endsWith" => V::Bool(s.ends_with(&text::normalise(&arg))),
                    "matches" => V::Bool(regex::Regex::new(&arg).unwrap().is_match(&s)),
                    "in_list" => V::Bool(words.iter().any(|w| text::normalise(w) == s)),
                    "matches_list" => V::Bool(words.iter().any(|w| s.contains(&text::normalise(w)))),
                    other => panic!("unknown {other}"),
                },
                V::Str(s) | V::Lit(s) => match name.as_str() {
                    "size" => V::Int(s.chars().count() as i64),
                    "contains" => V::Bool(s.contains(&arg)),
                    "startsWith" => V::Bool(s.starts_with(&arg)),
                    "endsWith" => V::Bool(s.ends_with(&arg)),
                    "matches" => V::Bool(regex::Regex::new(&arg).unwrap().is_match(&s)),
                    "in_list" => V::Bool(words.contains(&s.as_str())),
                    "matches_list" => V::Bool(words.iter().any(|w| s.to_lowercase().contains(&w.to_lowercase()))),
                    other => panic!("unknown {other}"),
                },
                other => panic!("not a string: {other:?}"),
            }
        }
    }
}

/// `==` in the reference: free text against a literal compares the normalised
/// literal; two fields compare as each reads.
fn same(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::Text(t), V::Lit(s)) | (V::Lit(s), V::Text(t)) => *t == text::normalise(s),
        (V::Text(x) | V::Str(x) | V::Lit(x), V::Text(y) | V::Str(y) | V::Lit(y)) => x == y,
        (a, b) => a == b,
    }
}

fn facts_strategy() -> impl Strategy<Value = (Vec<i64>, Vec<i64>, Vec<bool>, Vec<usize>, u8)> {
    (
        prop::collection::vec(-5000i64..5000, INT_FIELDS.len()),
        prop::collection::vec(prop_oneof![Just(NEVER), 0i64..400_000], 3),
        prop::collection::vec(any::<bool>(), 3),
        prop::collection::vec(0..WORDS.len(), 3),
        any::<u8>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_any_text(src in "\\PC{0,80}") {
        let _ = parse(&src);
    }

    #[test]
    fn parser_never_panics_on_token_soup(parts in prop::collection::vec(
        prop_oneof![Just("&&"), Just("||"), Just("!"), Just("("), Just(")"), Just("["), Just("]"), Just(","),
                    Just("."), Just("=="), Just("<"), Just(">="), Just("in"), Just("a"), Just("b.c"), Just("1"),
                    Just("2h"), Just("'s'"), Just("f"), Just("-"), Just("*")], 0..40)) {
        let src = parts.join(" ");
        if let Ok(e) = parse(&src) {
            let lists = HashMap::new();
            let _ = Compiler::new(&lists).condition(&e);
        }
    }

    #[test]
    fn compiled_matches_reference_interpreter(seed in 1u64.., depth in 0u32..5, facts in facts_strategy()) {
        let mut g = Gen(seed);
        let src = gen_bool(&mut g, depth);
        let expr = parse(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
        // Printing and parsing again gives the same tree.
        let printed = expr.to_string();
        let reparsed = parse(&printed).unwrap_or_else(|e| panic!("{printed}: {e}"));
        prop_assert_eq!(printed.clone(), reparsed.to_string());

        let words = ["刷单", "refund"];
        let lists = HashMap::from([(
            "words".to_string(),
            NamedList::keywords(&words.map(String::from)).unwrap(),
        )]);
        let mut compiler = Compiler::new(&lists);
        let compiled = compiler.condition(&expr).unwrap_or_else(|e| panic!("{src}: {e}"));
        let memo = vec![Cell::new(0u8); compiler.finish()];
        let (ints, durs, bools, strs, obs) = facts;
        let (memo_text, name_text) = (FoldedText::new(WORDS[strs[0]]), FoldedText::new(WORDS[strs[1]]));
        let f = Facts {
            transfer_amount: ints[0],
            transfer_hour: ints[1],
            customer_age: ints[2],
            customer_daily_limit: ints[3],
            payee_distinct_senders_24h: ints[4],
            history_transfers_1h: ints[5],
            history_amount_24h: ints[6],
            customer_limit_raised_ago: durs[0],
            payee_first_paid_ago: durs[1],
            customer_stopped_ago: durs[2],
            payee_is_new: bools[0],
            payee_watchlisted: bools[1],
            customer_limit_raised_to_max: bools[2],
            transfer_memo: memo_text.view(WORDS[strs[0]]),
            payee_name: name_text.view(WORDS[strs[1]]),
            transfer_currency: WORDS[strs[2]],
            customer_observations: obs & 0b11_1111,
            regex_memo: &memo,
            ..Facts::default()
        };
        let expected = reference(&expr, &f, &words) == V::Bool(true);
        prop_assert_eq!(compiled(&f), expected, "{}", src);
        // A rule's guard, then the rest of its chain, answers as the whole condition.
        let (guard, rest) = Guard::split(&expr);
        let mut compiler = Compiler::new(&lists);
        let rest = compiler.condition(&rest).unwrap_or_else(|e| panic!("{src} without its guard: {e}"));
        compiler.finish();
        memo.iter().for_each(|c| c.set(0));
        prop_assert_eq!(guard.admits(&f) && rest(&f), expected, "{} as guard {:?} and the rest", src, guard);
        // Memoised regex results give the same answer a second time.
        prop_assert_eq!(compiled(&f), expected, "{} (memoised)", src);
    }
}

proptest! {
    /// A rate setting never panics; what parses prints back as written
    /// (bar leading zeros) and is positive.
    #[test]
    fn rates_parse_without_panicking(s in "[0-9.]{0,22}|\\PC{0,12}") {
        if let Some(rate) = crate::model::Rate::parse(&s) {
            prop_assert_eq!(crate::model::Rate::parse(&rate.to_string()), Some(rate));
            prop_assert!(rate.convert(1_000_000_000, 2, 2) > 0);
        }
    }

    /// Converting keeps order (a larger amount never becomes smaller), keeps
    /// the sign, and a rate of one between currencies of the same minor unit
    /// changes nothing; no amount overflows.
    #[test]
    fn converting_keeps_order_and_sign(
        a in any::<i64>(),
        b in any::<i64>(),
        whole in 0u32..1_000_000,
        fraction in 0u32..1_000_000,
        from in 0u32..4,
        to in 0u32..4,
    ) {
        let Some(rate) = crate::model::Rate::parse(&format!("{whole}.{fraction:06}")) else {
            return Ok(());
        };
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(rate.convert(lo, from, to) <= rate.convert(hi, from, to));
        prop_assert!(rate.convert(a, from, to).signum() * a.signum() >= 0);
        let one = crate::model::Rate::parse("1").unwrap();
        prop_assert_eq!(one.convert(a, from, from), a);
    }
}
