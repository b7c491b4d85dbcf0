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

use std::hint::black_box;
use std::path::Path;
use time::macros::date;
use transfer_guard::engine;
use transfer_guard::model::{Channel, Customer, LimitChange, Observation, Observations, Payee, Transfer};
use transfer_guard::rules::Ruleset;
use transfer_guard::state::State;

const NOW: i64 = 1_773_109_200; // 2026-03-10 10:20 +08:00
/// Evaluations of each transfer; callgrind's total divided by this is one.
const ROUNDS: usize = 1000;

fn transfer(seed_case: bool) -> Transfer {
    let mut observations = Observations::default();
    if seed_case {
        observations.insert(Observation::OnPhoneWithStranger);
    }
    Transfer {
        request_id: "req-1".into(),
        requested_at: NOW,
        bank_id: "psbc".into(),
        branch_id: "psbc-heshan-zhongshan".into(),
        teller_id: "t-01".into(),
        channel: if seed_case { Channel::Counter } else { Channel::Mobile },
        customer: Customer {
            customer_id: "cust-0000001".into(),
            account_id: "acct-1".into(),
            birth_date: date!(1968 - 05 - 10),
            account_opened_on: date!(2008 - 01 - 01),
            daily_limit: 50_000_000,
            last_limit_change: seed_case.then_some(LimitChange {
                old_limit: 5_000_000,
                new_limit: 50_000_000,
                is_maximum: true,
                changed_at: NOW - 900,
            }),
        },
        payee: Payee {
            account: format!("622202000000001{}", if seed_case { 9 } else { 2 }),
            name: format!("收款人{}", if seed_case { 9 } else { 2 }),
            bank_code: "icbc".into(),
        },
        amount: if seed_case { 40_000_000 } else { 350_000 },
        currency: "CNY".into(),
        memo: if seed_case { "投资理财 导师推荐".into() } else { "房租".into() },
        observations,
    }
}

fn main() {
    let rules = Ruleset::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).expect("shipped rules");
    let state = State::new();
    let known = transfer(false);
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
    let t = transfer(which == "seed_case");
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
