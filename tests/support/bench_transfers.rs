//! The transfers the engine is measured on, shared by `benches/engine.rs` and
//! `examples/count_engine.rs` (included with `#[path]`): an ordinary payment to
//! a known payee and the seed case, for customer `i` of a large population.

use time::macros::date;
use transfer_guard::model::{Channel, Customer, LimitChange, Observation, Observations, Payee, Transfer};

pub const NOW: i64 = 1_773_109_200; // 2026-03-10 10:20 +08:00

pub fn customer_id(i: usize) -> String {
    format!("cust-{i:07}")
}

pub fn payee(i: usize, j: usize) -> Payee {
    Payee { account: format!("62220200{i:07}{j}"), name: format!("收款人{j}"), bank_code: "icbc".into() }
}

pub fn transfer(i: usize, known_payee: bool, seed_case: bool) -> Transfer {
    let mut observations = Observations::default();
    if seed_case {
        observations.insert(Observation::OnPhoneWithStranger);
    }
    Transfer {
        request_id: format!("req-{i}"),
        requested_at: NOW,
        bank_id: "psbc".into(),
        branch_id: "psbc-heshan-zhongshan".into(),
        teller_id: "t-01".into(),
        channel: if seed_case { Channel::Counter } else { Channel::Mobile },
        customer: Customer {
            customer_id: customer_id(i),
            account_id: format!("acct-{i}"),
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
        payee: if known_payee { payee(i, 2) } else { payee(i, 9) },
        amount: if seed_case { 40_000_000 } else { 350_000 },
        currency: "CNY".into(),
        memo: if seed_case { "投资理财 导师推荐".into() } else { "房租".into() },
        observations,
    }
}
