//! Writes a starting corpus for each fuzz target from the project's own files
//! (rules, stations, example requests, the golden store). Run from the root.

use prost::Message;
use std::path::Path;
use transfer_guard::api::proto as pb;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    for entry in std::fs::read_dir("rules").unwrap().chain(std::fs::read_dir("rules/lists").unwrap()) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read(&path).unwrap();
            let kind = if path.ends_with("stations.toml") {
                2
            } else if path.parent().is_some_and(|p| p.ends_with("lists")) {
                1
            } else {
                0
            };
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            write("rule_sources", &name, &[&[kind][..], &text].concat());
        }
    }
    for example in ["examples/seed-case.json", "examples/rent.json"] {
        let json = std::fs::read_to_string(example).unwrap();
        let request: pb::ScreenRequest = serde_json::from_str(&json).unwrap();
        let name = Path::new(example).file_stem().unwrap().to_string_lossy().into_owned();
        write("screen_request", &name, &request.encode_to_vec());
    }
    let golden: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string("tests/golden/store-v1.json").unwrap()).unwrap();
    for (n, record) in golden.iter().enumerate() {
        let value = record["value"].as_str().unwrap();
        write("store_record", &format!("golden-{n}-{}", record["space"].as_str().unwrap()), value.as_bytes());
    }
    write(
        "config_toml",
        "full",
        br#"listen = "127.0.0.1:50051"
rules = "rules"
data_dir = "data"
durability = "sync"
max_clock_skew = "5m"
alert_retention = "30d"
nats_url = "nats://127.0.0.1:4222"
webhook_url = "http://127.0.0.1:9/alerts"
webhook_secret = "s"
"#,
    );
}
