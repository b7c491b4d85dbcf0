//! The fuzz targets' bodies, here so that `cargo test` can replay every
//! crash and the minimised corpus (`tests/fuzz_regressions.rs`) through the
//! same code the fuzzers ran (`fuzz/fuzz_targets/*`).
//!
//! Each takes arbitrary bytes and must return without panicking, whatever
//! they hold. Must not do I/O: the fuzzers run them millions of times.

use crate::api::convert;
use crate::api::proto as pb;
use prost::Message;

/// Rule sources → lex, parse, type check and compile. The first byte picks
/// the kind of file (rule file, lists file, stations file); the rest is its text.
pub fn rule_sources(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match kind % 3 {
        0 => {
            let source = crate::rules::Source { path: "fuzz.toml".into(), text: text.into() };
            let _ = crate::rules::Ruleset::from_sources(vec![source]);
        }
        1 => {
            let lists = crate::rules::Source { path: "lists/fuzz.toml".into(), text: text.into() };
            let rule = crate::rules::Source {
                path: "fuzz-rule.toml".into(),
                text: "[[rule]]\nid = \"r\"\nscore = 10\nwhen = \"transfer.memo in_list fuzz\"\nreason_zh = \"r\"\nreason_en = \"r\"\n".into(),
            };
            let _ = crate::rules::Ruleset::from_sources(vec![lists, rule]);
        }
        _ => {
            let _ = crate::alerts::Routing::parse("stations.toml", text);
        }
    }
}

/// ScreenRequest bytes → protobuf decode → the API's validation and conversion.
pub fn screen_request(data: &[u8]) {
    let Ok(request) = pb::ScreenRequest::decode(data) else { return };
    if let Ok(transfer) = convert::transfer(request, time::UtcOffset::from_hms(8, 0, 0).unwrap()) {
        let clock = convert::LiveClock { now: 1_700_000_000, skew: 300 };
        let _ = clock.check_transfer(&transfer);
    }
    if let Ok(event) = pb::RecordEventRequest::decode(data) {
        let _ = convert::customer_event(&event, convert::LiveClock { now: 1_700_000_000, skew: 300 });
    }
}

/// Stored record bytes → decode as every keyspace's record type → domain.
pub fn store_record(data: &[u8]) {
    for space in ["customers", "watchlist", "transfers", "events", "alerts", "alert_events", "meta"] {
        let _ = crate::store::reencode(space, b"fuzz", data);
    }
    crate::store::records::to_domain_any(data);
}

/// A config file's text → settings → the resolved config (no files read).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(settings) = crate::config::Settings::from_toml("fuzz.toml", text) {
        let _ = crate::config::Config::merge(&crate::config::Settings::default(), settings);
    }
}
