//! Replays every input the fuzzers kept (the minimised corpus in
//! `fuzz/corpus/<target>/`) and every crash they found (`tests/fuzz/<target>/`)
//! through the same bodies the fuzz targets run: none may panic.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [root.join("fuzz/corpus").join(target), root.join("tests/fuzz").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let ran = std::panic::catch_unwind(|| body(&bytes));
            assert!(ran.is_ok(), "{} panicked", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn rule_sources() {
    assert!(replay("rule_sources", transfer_guard::fuzzing::rule_sources) > 0, "the corpus is missing");
}

#[test]
fn screen_requests() {
    assert!(replay("screen_request", transfer_guard::fuzzing::screen_request) > 0);
}

#[test]
fn store_records() {
    assert!(replay("store_record", transfer_guard::fuzzing::store_record) > 0);
}

#[test]
fn config_files() {
    assert!(replay("config_toml", transfer_guard::fuzzing::config_toml) > 0);
}
