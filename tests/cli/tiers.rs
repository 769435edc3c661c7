//! Issue 17: the compiler is not part of a verdict. The fixture suites give
//! the same verdict for every case with Winch's code alone, Cranelift's
//! alone, and the default (Winch first, Cranelift in the background); the
//! hostile suite's limits are checked on each in `hostile.rs`, Go's
//! verdicts in `go.rs`.

use std::collections::BTreeMap;

use cachet_testkit::fixture;

use crate::{cachet_with, stderr, stdout};

pub(crate) const SUITES: &[&str] = &[
    "suite_mixed",
    "suite_isolation",
    "suite_cachecases",
    "suite_exactness",
    "suite_spin",
];

/// Each case's final action, by package and case.
fn verdicts(json: &str) -> BTreeMap<(String, String), String> {
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| matches!(e["Action"].as_str(), Some("pass" | "fail" | "skip")))
        .filter_map(|e| {
            let key = (
                e["Package"].as_str()?.to_string(),
                e["Test"].as_str()?.to_string(),
            );
            Some((key, e["Action"].as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn every_tier_gives_every_fixture_case_the_same_verdict() {
    let work = tempfile::tempdir().unwrap();
    for s in SUITES {
        let dir = work.path().join(s);
        std::fs::create_dir_all(dir.join("testdata")).unwrap();
        std::fs::copy(&fixture(s).wasm, dir.join("tests.wasm")).unwrap();
        let testdata = fixture(s).dir.join("testdata");
        if testdata.is_dir() {
            cachet_testkit::copy_tree(&testdata, &dir.join("testdata")).unwrap();
        }
    }
    let mut by_tier = Vec::new();
    for tier in ["cranelift", "winch", "auto"] {
        // An empty cache each: no compiled code, no results.
        let cache = tempfile::tempdir().unwrap();
        let o = cachet_with(
            work.path(),
            &["test", "--json", "--tier", tier, "--timeout", "5s", "./..."],
            &[("CACHET_CACHE", cache.path().to_str().unwrap())],
        );
        assert_eq!(stderr(&o), "", "{tier}");
        let v = verdicts(&stdout(&o));
        assert!(v.len() > 20, "{tier}: {} cases", v.len());
        assert!(v.values().any(|a| a == "fail") && v.values().any(|a| a == "pass"));
        by_tier.push((tier, o.status.code(), v));
    }
    let (_, code, want) = &by_tier[0];
    for (tier, c, v) in &by_tier[1..] {
        assert_eq!(c, code, "{tier}: exit status");
        assert_eq!(v, want, "{tier} against cranelift");
    }
}
