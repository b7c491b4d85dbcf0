//! Evaluating the rule conditions allocates nothing (nor does normalising a
//! request's text once its reused buffers have grown). A separate test binary
//! because it installs a counting global allocator.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::cell::Cell;
use transfer_guard::engine;
use transfer_guard::rules::Ruleset;
use transfer_guard::ruletest;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn evaluating_conditions_allocates_nothing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let ruleset = Ruleset::load_dir(&dir).unwrap();
    let cases = ruletest::load_dir(&dir.join("tests"), &ruleset).unwrap();
    let memo = vec![Cell::new(0u8); ruleset.memo_slots];
    // Normalising a request's text reuses these buffers once they have grown.
    let mut text = engine::RequestText::default();
    // The first run warms the regex engines' per-thread caches; what must not
    // allocate is every evaluation after that.
    for (round, case) in cases.iter().chain(cases.iter()).enumerate() {
        let state = transfer_guard::state::State::new();
        let snapshot =
            state.snapshot(&case.transfer.customer.customer_id, &case.transfer.payee, case.transfer.requested_at);
        let before = counting_alloc::allocations();
        text.fill(&ruleset, &case.transfer);
        let facts = engine::facts(&ruleset, &case.transfer, &snapshot, &text, &memo);
        let mut matched = 0;
        for rule in &ruleset.rules {
            matched += usize::from(rule.matches(&facts));
        }
        let after = counting_alloc::allocations();
        if round >= cases.len() {
            assert_eq!(after - before, 0, "{}: {matched} rules matched", case.name);
        }
        memo.iter().for_each(|c| c.set(0));
    }
}
