//! The shipped ruleset, its test cases, `rules check` errors and the docs.

use crate::harness::{repo, rules_copy, rules_dir, transfer_guard};
use transfer_guard::rules::{schema, Ruleset};
use transfer_guard::ruletest;

#[test]
fn shipped_rule_cases_all_pass() {
    let ruleset = Ruleset::load_dir(&rules_dir()).unwrap_or_else(|d| panic!("{d:#?}"));
    let results = ruletest::run_dir(&ruleset, &rules_dir().join("tests")).unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(results.len() >= 25, "only {} cases", results.len());
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} {}: {:?}", r.location, r.name, r.failures))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let seed = results.iter().find(|r| r.name.starts_with("seed case")).expect("the seed case");
    assert!(seed.action >= transfer_guard::model::Action::Hold);
}

#[test]
fn rules_test_command_reports_and_exits_nonzero_on_a_failing_case() {
    let out = transfer_guard(&["rules", "test", "rules"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains(" passed, 0 failed"));

    let dir = rules_copy();
    let seed = dir.path().join("tests/seed.toml");
    let text = std::fs::read_to_string(&seed).unwrap().replacen("action = \"HOLD\"", "action = \"ALLOW\"", 1);
    std::fs::write(&seed, text).unwrap();
    let out = transfer_guard(&["rules", "test", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("expected ALLOW, got HOLD"), "{stdout}");
}

/// Each kind of mistake an analyst makes is rejected with file:line:col.
#[test]
fn rules_check_rejects_each_kind_of_error_with_location() {
    let cases = [
        ("transfer.amount >= ", "expected a value"),
        ("customer.agee >= 60", "unknown field `customer.agee`"),
        ("customer.age >= \"60\"", "cannot compare int with string"),
        ("transfer.memo.matches(\"(unclosed\")", "bad regex"),
        ("matches_list(transfer.memo, \"no_such_list\")", "unknown list `no_such_list`"),
    ];
    for (when, message) in cases {
        let dir = rules_copy();
        let file = dir.path().join("zz_broken.toml");
        let text = format!(
            "# a rule with a mistake\n[[rule]]\nid = \"broken\"\ntitle = \"t\"\nscore = 1\nreason = {{ zh = \"z\", en = \"e\" }}\nwhen = '{when}'\n"
        );
        std::fs::write(&file, text).unwrap();
        let out = transfer_guard(&["rules", "check", dir.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{when}: {stderr}");
        assert!(stderr.contains("zz_broken.toml:7:"), "{when}: {stderr}");
        assert!(stderr.contains(message), "{when}: {stderr}");
        assert!(stderr.contains('^'), "a caret line: {stderr}");
    }
}

#[test]
fn rules_check_lists_every_error_and_accepts_the_shipped_rules() {
    let out = transfer_guard(&["rules", "check", "rules"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dir = rules_copy();
    let amounts = dir.path().join("amounts.toml");
    let text = std::fs::read_to_string(&amounts).unwrap().replace("transfer.amount >=", "transfer.amont >=");
    std::fs::write(&amounts, text).unwrap();
    let out = transfer_guard(&["rules", "check", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.matches("unknown field `transfer.amont`").count() >= 4, "{stderr}");
}

/// docs/rules.md's field table is generated from the schema; regenerate it with
/// `cargo run -- rules fields` when this fails.
#[test]
fn field_table_in_docs_is_current() {
    let doc = std::fs::read_to_string(repo().join("docs/rules.md")).unwrap();
    let begin = "<!-- fields:begin -->\n";
    let end = "<!-- fields:end -->";
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let stop = doc.find(end).expect("end marker");
    assert_eq!(
        &doc[start..stop],
        schema::field_table_markdown(),
        "docs/rules.md is stale: paste the output of `transfer-guard rules fields`"
    );
}

/// `transfer-guard … | head`: when whoever reads the output has gone, the
/// command stops quietly (exit 0), with no panic and no backtrace.
#[test]
fn a_command_whose_reader_has_gone_stops_quietly() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
        .args(["rules", "fields"])
        .current_dir(repo())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run transfer-guard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
