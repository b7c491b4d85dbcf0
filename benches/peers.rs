//! The engine against the peers a Rust shop would pick instead, side by side
//! in one process (issue: lean hot path, item 5): GoRules ZEN's
//! `zen-expression` and `cel-interpreter` (our condition language is a CEL
//! subset) evaluate the shipped rules' conditions, translated mechanically,
//! over the same facts. Each peer gets its best case: conditions compiled
//! once, the context built once, keyword lists precomputed as booleans. Ours
//! is the whole `engine::evaluate`: facts from the transfer and the customer's
//! state, free text normalised, every condition, the decision and its hits.
//! Before timing, every rule's result is checked to agree across the three.
//!
//! cargo bench --bench peers --features peers

#[path = "../tests/support/bench_transfers.rs"]
mod bench_transfers;

use bench_transfers::{customer_id, payee, transfer, NOW};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use transfer_guard::engine::{self, RequestText};
use transfer_guard::model::{Observations, Transfer};
use transfer_guard::rules::schema::{Read, ABSENT, FIELDS, NEVER};
use transfer_guard::rules::{read_sources, Ruleset, Source};
use transfer_guard::state::{PayeeKey, Snapshot, State, TransferRecord};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// The customer as in the engine bench: five payees paid over five weeks.
fn snapshot(t: &Transfer) -> Snapshot {
    let state = State::new();
    for j in 0..5 {
        state.apply(&TransferRecord {
            customer_id: customer_id(0),
            payee: PayeeKey::of(&payee(0, j)),
            amount: 50_000 * (j as i64 + 1),
            at: NOW - (35 - 7 * j as i64) * 86_400,
        });
    }
    state.snapshot(&t.customer.customer_id, &t.payee, NOW)
}

/// A keyword-list call in a condition: `matches_list(FIELD, "LIST")`.
fn list_call() -> regex::Regex {
    regex::Regex::new(r#"matches_list\(\s*([a-z_.]+)\s*,\s*"([a-z_]+)"\s*\)"#).unwrap()
}

/// Every list call in the conditions: (call, field, list).
fn list_calls(rules: &Ruleset) -> Vec<(String, String, String)> {
    let call = list_call();
    let mut calls: Vec<(String, String, String)> = rules
        .rules
        .iter()
        .flat_map(|r| call.captures_iter(&r.when).map(|c| (c[0].to_string(), c[1].to_string(), c[2].to_string())))
        .collect();
    calls.sort();
    calls.dedup();
    calls
}

/// The boolean a peer is handed for a list call.
fn list_var(field: &str, list: &str) -> String {
    format!("{list}__{}", field.replace('.', "_"))
}

/// The keyword lists, precomputed for the peers by our own engine: the
/// shipped lists with one probe rule per call.
fn precomputed_lists(rules: &Ruleset, t: &Transfer, snap: &Snapshot) -> Map<String, Value> {
    let calls = list_calls(rules);
    let mut sources: Vec<Source> =
        read_sources(&rules_dir()).expect("rules").into_iter().filter(|s| !s.text.contains("[[rule]]")).collect();
    let probes: String = calls
        .iter()
        .enumerate()
        .map(|(i, (call, _, _))| {
            format!("[[rule]]\nid = \"probe_{i}\"\ntitle = \"p\"\nwhen = '{call}'\nscore = 1\nreason.zh = \"p\"\nreason.en = \"p\"\n\n")
        })
        .collect();
    sources.push(Source { path: "probes.toml".into(), text: probes });
    let probe = Ruleset::from_sources(sources).unwrap_or_else(|e| panic!("probe rules: {e:?}"));
    let hits = engine::evaluate(&probe, t, snap).decision.hits;
    calls
        .iter()
        .enumerate()
        .map(|(i, (_, field, list))| {
            let hit = hits.iter().any(|h| h.rule_id() == format!("probe_{i}"));
            (list_var(field, list), Value::Bool(hit))
        })
        .collect()
}

/// The facts the rules read, as one JSON object (absent optional values left out).
fn context(rules: &Ruleset, t: &Transfer, snap: &Snapshot) -> Value {
    let mut text = RequestText::default();
    text.fill(rules, t);
    let memo = vec![Cell::new(0); rules.memo_slots];
    let facts = engine::facts(rules, t, snap, &text, &memo);
    let mut root = Map::new();
    for f in FIELDS {
        let value = match f.read {
            Read::Int(r) => json!(r(&facts)),
            Read::Duration(r) | Read::OptInt(r) => match r(&facts) {
                NEVER | ABSENT => continue,
                v => json!(v),
            },
            Read::Str(r) => json!(f.text.map_or_else(|| r(&facts), |text| text(&facts).text)),
            Read::Bool(r) => json!(r(&facts)),
            Read::Observations(r) => json!(Observations(r(&facts)).iter().map(|o| o.as_str()).collect::<Vec<_>>()),
        };
        let mut node = &mut root;
        let mut parts = f.path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.insert(part.to_string(), value.clone());
            } else {
                node = node.entry(part).or_insert_with(|| json!({})).as_object_mut().expect("an object");
            }
        }
    }
    root.insert("lists".into(), Value::Object(precomputed_lists(rules, t, snap)));
    Value::Object(root)
}

/// A condition in the peer's syntax: list calls become the precomputed
/// booleans, durations seconds; for ZEN also `and`/`or`/`not`, `len` and
/// `!= null` for `has`.
fn translate(when: &str, zen: bool) -> String {
    let mut out =
        list_call().replace_all(when, |c: &regex::Captures| format!("lists.{}", list_var(&c[1], &c[2]))).into_owned();
    let duration = regex::Regex::new(r"\b(\d+)([smhd])\b").unwrap();
    out = duration
        .replace_all(&out, |c: &regex::Captures| {
            let n: i64 = c[1].parse().unwrap();
            let unit = match &c[2] {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                _ => 86_400,
            };
            (n * unit).to_string()
        })
        .into_owned();
    if zen {
        let has = regex::Regex::new(r"has\(\s*([a-z_.]+)\s*\)").unwrap();
        out = has.replace_all(&out, "($1 != null)").into_owned();
        out = out.replace("&&", " and ").replace("||", " or ").replace("size(", "len(");
        out = regex::Regex::new(r"!([^=])").unwrap().replace_all(&out, "not $1").into_owned();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Zen {
    conditions: Vec<zen_expression::Expression<zen_expression::expression::Standard>>,
    context: zen_expression::Variable,
}

impl Zen {
    fn new(rules: &Ruleset, context: &Value) -> Zen {
        let conditions = rules
            .rules
            .iter()
            .map(|r| {
                let source = translate(&r.when, true);
                zen_expression::compile_expression(&source).unwrap_or_else(|e| panic!("zen: {source}: {e:?}"))
            })
            .collect();
        Zen { conditions, context: context.clone().into() }
    }

    /// Which rules match (an error, e.g. an absent value compared, is no match).
    fn matches(&self) -> Vec<bool> {
        self.conditions
            .iter()
            .map(|c| matches!(c.evaluate(self.context.clone()), Ok(zen_expression::Variable::Bool(true))))
            .collect()
    }
}

struct Cel {
    conditions: Vec<cel_interpreter::Program>,
    context: cel_interpreter::Context<'static>,
}

impl Cel {
    fn new(rules: &Ruleset, context: &Value) -> Cel {
        let conditions = rules
            .rules
            .iter()
            .map(|r| {
                let source = translate(&r.when, false);
                cel_interpreter::Program::compile(&source).unwrap_or_else(|e| panic!("cel: {source}: {e:?}"))
            })
            .collect();
        let mut ctx = cel_interpreter::Context::default();
        for (name, value) in context.as_object().expect("an object") {
            ctx.add_variable(name.as_str(), value.clone()).expect("a CEL value");
        }
        Cel { conditions, context: ctx }
    }

    fn matches(&self) -> Vec<bool> {
        self.conditions
            .iter()
            .map(|c| matches!(c.execute(&self.context), Ok(cel_interpreter::Value::Bool(true))))
            .collect()
    }
}

fn benches(c: &mut Criterion) {
    let rules = Ruleset::load_dir(&rules_dir()).expect("shipped rules compile");
    let mut group = c.benchmark_group("peers");
    for (name, t) in [("ordinary", transfer(0, true, false)), ("seed_case", transfer(0, false, true))] {
        let snap = snapshot(&t);
        let context = context(&rules, &t, &snap);
        let (zen, cel) = (Zen::new(&rules, &context), Cel::new(&rules, &context));
        let hits = engine::evaluate(&rules, &t, &snap).decision.hits;
        let ours: Vec<bool> = rules.rules.iter().map(|r| hits.iter().any(|h| h.rule_id() == &*r.id)).collect();
        for (peer, theirs) in [("zen-expression", zen.matches()), ("cel-interpreter", cel.matches())] {
            for ((rule, a), b) in rules.rules.iter().zip(&ours).zip(&theirs) {
                assert_eq!(
                    a,
                    b,
                    "{name}: rule {} ({}) differs under {peer}",
                    rule.id,
                    translate(&rule.when, peer == "zen-expression")
                );
            }
        }
        println!(
            "{name}: {} rules, {} match; the same under zen-expression and cel-interpreter",
            rules.rules.len(),
            ours.iter().filter(|m| **m).count()
        );
        group.bench_function(BenchmarkId::new("transfer_guard_evaluate", name), |b| {
            b.iter(|| black_box(engine::evaluate(&rules, black_box(&t), black_box(&snap))))
        });
        group.bench_function(BenchmarkId::new("zen_expression", name), |b| b.iter(|| black_box(zen.matches())));
        group.bench_function(BenchmarkId::new("cel_interpreter", name), |b| b.iter(|| black_box(cel.matches())));
    }
    group.finish();
}

criterion_group! {
    name = peer_benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(peer_benches);
