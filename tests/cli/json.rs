//! `--json` is `go test -json`: checked field by field, and read by a real
//! consumer, gotestsum (installed by scripts/test; its absence fails here).

use crate::{cachet, stdout};

#[test]
fn events_have_go_fields_and_order() {
    let o = cachet(&[
        "test",
        "--json",
        "-p",
        "1",
        "fixtures/suites/mixed",
        "fixtures/demo/calc",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("{\"Time\":\"")
            && first.ends_with("\",\"Action\":\"start\",\"Package\":\"fixtures/suites/mixed\"}"),
        "{first}"
    );
    let actions = |pkg: &str, test: Option<&str>| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["Package"] == pkg && e["Test"].as_str() == test)
            .map(|e| e["Action"].as_str().unwrap().to_string())
            .filter(|a| a != "output")
            .collect()
    };
    assert_eq!(
        actions("fixtures/suites/mixed", Some("tests::breaks")),
        ["run", "fail"]
    );
    assert_eq!(
        actions("fixtures/suites/mixed", Some("tests::ignored")),
        ["run", "skip"]
    );
    assert_eq!(actions("fixtures/suites/mixed", None), ["start", "fail"]);
    assert_eq!(actions("fixtures/demo/calc", None), ["start", "pass"]);
    let out_of = |test: &str| -> String {
        events
            .iter()
            .filter(|e| e["Test"] == test && e["Action"] == "output")
            .map(|e| e["Output"].as_str().unwrap())
            .collect()
    };
    assert!(out_of("tests::breaks").contains("three is not four\n"));
    let pass = events
        .iter()
        .find(|e| e["Action"] == "pass" && e["Test"] == "tests::adds")
        .unwrap();
    assert!(pass["Elapsed"].is_f64());
}

#[test]
fn gotestsum_reads_the_stream() {
    let o = cachet(&[
        "test",
        "--json",
        "-p",
        "1",
        "fixtures/suites/mixed",
        "fixtures/demo/calc",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.json");
    std::fs::write(&events, &o.stdout).unwrap();
    let junit = dir.path().join("junit.xml");
    let run = std::process::Command::new("gotestsum")
        .arg("--format=standard-verbose")
        .arg(format!("--junitfile={}", junit.display()))
        .args(["--raw-command", "--", "cat"])
        .arg(&events)
        .output()
        .expect("gotestsum is installed by scripts/test (Debian package gotestsum)");
    let text = String::from_utf8_lossy(&run.stdout);
    // gotestsum exits with the raw command's status (cat's); what it read
    // from the events is in its summary and the JUnit file.
    assert!(
        text.contains("DONE 8 tests, 1 skipped, 2 failures"),
        "{text}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testcase classname=\"fixtures/suites/mixed\" name=\"tests::breaks\""),
        "{xml}"
    );
    assert!(xml.contains("three is not four"), "{xml}");
    assert!(
        xml.contains("<testsuite tests=\"3\" failures=\"0\""),
        "{xml}"
    );
}
