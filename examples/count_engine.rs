//! One screen through the engine, for counting instructions (`valgrind
//! --tool=callgrind`), which a busy machine does not disturb. The transfers are
//! those of `benches/engine.rs`.
//!
//! cargo build --release --example count_engine
//! valgrind --tool=callgrind --toggle-collect='transfer_guard::engine::evaluate*' \
//!     target/release/examples/count_engine ordinary|seed_case
//! valgrind --tool=callgrind --toggle-collect='transfer_guard::engine::screen*' \
//!     target/release/examples/count_engine ordinary|seed_case 100000
//!
//! The total divided by 1,001 is one evaluation (or one screen: the state
//! lookup too, among the given number of customers with 5 known payees each).
//! A third number has that many other customers pay the transfer's payee
//! first, earlier the same day (a popular account: the power company):
//!
//! valgrind --tool=callgrind --toggle-collect='transfer_guard::engine::screen*' \
//!     target/release/examples/count_engine ordinary 1000 4096

#[path = "../tests/support/bench_transfers.rs"]
mod bench_transfers;

use bench_transfers::{transfer, NOW};
use std::hint::black_box;
use std::path::Path;
use transfer_guard::engine;
use transfer_guard::model::Payee;
use transfer_guard::rules::Ruleset;
use transfer_guard::state::State;

/// Evaluations of each transfer; callgrind's total divided by this is one.
const ROUNDS: usize = 1000;

fn main() {
    let rules = Ruleset::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("shipped rules");
    let state = State::new();
    let known = transfer(1, true, false);
    state.record_known_payee(&known.customer.customer_id, &known.payee, NOW - 30 * 86_400);
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "ordinary".into());
    let customers: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    for i in 0..customers {
        for j in 0..5 {
            let payee =
                Payee {
                    account: format!("62220300{i:07}{j}"), name: format!("收款人{j}"), bank_code: "icbc".into()
                };
            state.record_known_payee(&format!("cust-{i:07}"), &payee, NOW - 30 * 86_400);
        }
    }
    let seed_case = which == "seed_case";
    let t = transfer(1, !seed_case, seed_case);
    let senders: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    for i in 0..senders {
        let record = transfer_guard::state::TransferRecord {
            customer_id: format!("payer-{i:07}"),
            payee: transfer_guard::state::PayeeKey::of(&t.payee),
            amount: 20_000,
            at: NOW - 3_600 + (i % 3_000) as i64,
        };
        state.apply(&record);
    }
    let snap = state.snapshot(&t.customer.customer_id, &t.payee, NOW);
    // Warm the regex engines' per-thread caches and the text buffers.
    black_box(engine::evaluate(&rules, &t, &snap));
    for _ in 0..ROUNDS {
        if customers > 0 {
            black_box(engine::screen(&rules, black_box(&t), &state));
        } else {
            black_box(engine::evaluate(&rules, black_box(&t), black_box(&snap)));
        }
    }
}
