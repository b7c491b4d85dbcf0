#![no_main]
// The body lives in the library (transfer_guard::fuzzing) so that `cargo test`
// replays the corpus and every crash through the same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| transfer_guard::fuzzing::config_toml(data));
