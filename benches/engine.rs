//! Engine benchmarks: the shipped ruleset on realistic transfers, with state for
//! 1,000,000 customers warm in memory. Also prints allocations per evaluation,
//! bytes of state per customer and bytes per remembered transfer (from a
//! counting allocator).
//!
//! cargo bench --bench engine

#[path = "../tests/support/bench_transfers.rs"]
mod bench_transfers;
#[path = "../tests/support/counting_alloc.rs"]
mod counting_alloc;

use bench_transfers::{customer_id, payee, transfer, NOW};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::Path;
use transfer_guard::auth::Caller;
use transfer_guard::engine;
use transfer_guard::model::Transfer;
use transfer_guard::rules::Ruleset;
use transfer_guard::service::TransferGuard;
use transfer_guard::state::State;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

const CUSTOMERS: usize = 1_000_000;
fn ruleset() -> Ruleset {
    Ruleset::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("shipped rules compile")
}

/// 1,000,000 customers, each having paid 5 payees (one a week over the last
/// five weeks: the profile filled), with no transfer in the last 24 hours.
fn warm_state() -> (State, f64) {
    let before = counting_alloc::live_bytes();
    let state = State::new();
    for i in 0..CUSTOMERS {
        let id = customer_id(i);
        for j in 0..5 {
            let at = NOW - (35 - 7 * j as i64) * 86_400;
            let key = transfer_guard::state::PayeeKey::of(&payee(i, j));
            state.apply(&transfer_guard::state::TransferRecord {
                customer_id: id.clone(),
                payee: key,
                amount: 50_000 * (j as i64 + 1),
                at,
            });
        }
    }
    // Nothing in the last 24 hours: the windows are pruned, the profile stays.
    state.prune(NOW);
    let bytes = (counting_alloc::live_bytes() - before) as f64 / CUSTOMERS as f64;
    (state, bytes)
}

/// Bytes the service keeps in memory per screened transfer through the
/// idempotency window: live bytes after `n` screens through a `TransferGuard`
/// (no store), less those of the same transfers counted in a bare `State` (the
/// customers' history, which the guard keeps as well). `amount`: of an
/// ordinary payment to a known payee (None), or of a first payment.
fn remembered_bytes(n: usize, amount: Option<i64>) -> (f64, usize) {
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let transfers: Vec<Transfer> = (0..n)
        .map(|i| {
            let mut t = transfer(i, amount.is_none(), false);
            t.amount = amount.unwrap_or(t.amount);
            t
        })
        .collect();
    // The server's clock at the transfers' time, as the API holds live requests to it.
    let clock = transfer_guard::clock::AdjustableClock::new();
    clock.advance(NOW - transfer_guard::clock::wall_clock());
    let guard = TransferGuard::open(&rules_dir).expect("shipped rules").with_clock(std::sync::Arc::new(clock));
    let before = counting_alloc::live_bytes();
    let mut with_hits = 0;
    for (i, t) in transfers.iter().enumerate() {
        let answer = guard.screen(t, i as u64, &Caller::Open).expect("screened");
        assert!(!answer.decision.action.raises_alert(), "no alert: its memory is the alert book's");
        with_hits += usize::from(!answer.decision.hits.is_empty());
    }
    let guarded = counting_alloc::live_bytes() - before;
    let rules = ruleset();
    let state = State::new();
    let before = counting_alloc::live_bytes();
    for t in &transfers {
        state.apply(&engine::screen(&rules, t, &state).record);
    }
    let history = counting_alloc::live_bytes() - before;
    ((guarded as f64 - history as f64) / n as f64, with_hits)
}

fn benches(c: &mut Criterion) {
    for n in [100_000, 200_000, 300_000] {
        for amount in [None, Some(2_500_000)] {
            let (bytes, with_hits) = remembered_bytes(n, amount);
            let kind =
                if amount.is_none() { "ordinary payments to known payees" } else { "first payments of 25,000 CNY" };
            println!("remembered transfers: {n} {kind} ({with_hits} with hits): {bytes:.0} bytes per transfer");
        }
    }
    let rules = ruleset();
    let (state, bytes_per_customer) = warm_state();
    println!(
        "state: {CUSTOMERS} customers with 5 paid payees and their profile: {bytes_per_customer:.0} bytes per customer"
    );

    // Spread requests over the whole keyspace so lookups miss the cache as in production.
    let step = 7919;
    let ordinary: Vec<Transfer> = (0..1024).map(|k| transfer((k * step) % CUSTOMERS, true, false)).collect();
    let seed: Vec<Transfer> = (0..1024).map(|k| transfer((k * step) % CUSTOMERS, false, true)).collect();

    for (name, set) in [("ordinary", &ordinary), ("seed_case", &seed)] {
        let snap = state.snapshot(&set[0].customer.customer_id, &set[0].payee, NOW);
        // The first call warms the regex engines' per-thread caches.
        let before = counting_alloc::allocations();
        black_box(engine::evaluate(&rules, &set[0], &snap));
        let first = counting_alloc::allocations() - before;
        let before = counting_alloc::allocations();
        let ev = engine::evaluate(&rules, &set[0], &snap);
        let steady = counting_alloc::allocations() - before;
        println!(
            "evaluate/{name}: {} hits; allocations: {first} on the first call, {steady} per call after (the hits vector and the state record)",
            ev.decision.hits.len()
        );
    }

    let mut group = c.benchmark_group("engine");
    for (name, set) in [("ordinary", &ordinary), ("seed_case", &seed)] {
        let snap = state.snapshot(&set[0].customer.customer_id, &set[0].payee, NOW);
        group.bench_function(BenchmarkId::new("evaluate", name), |b| {
            b.iter(|| black_box(engine::evaluate(&rules, black_box(&set[0]), black_box(&snap))))
        });
        let mut k = 0;
        group.bench_function(BenchmarkId::new("screen_1m_customers", name), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(engine::screen(&rules, black_box(&set[k]), &state))
            })
        });
    }
    group.finish();

    c.bench_function("rules/compile_shipped", |b| b.iter(|| black_box(ruleset())));
}

criterion_group! {
    name = engine_benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(engine_benches);
