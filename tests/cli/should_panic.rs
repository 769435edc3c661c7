//! Issue 16: `#[should_panic]` tests run on wasm. cachet builds a cargo
//! package's test crates with `-Zpanic-abort-tests` and runs each case in
//! libtest's own child mode, so libtest judges the panic and its message.

use std::collections::BTreeMap;

use cachet_testkit::{fixture, repo_root};

use crate::{cachet_with, stderr, stdout};

const SUITE: &str = "fixtures/suites/shouldpanic";

/// Every case's final action in a `--json` stream.
fn verdicts(json: &str) -> BTreeMap<String, String> {
    crate::json_verdicts(json)
        .into_iter()
        .filter(|(_, test, _)| !test.is_empty())
        .map(|(_, test, action)| (test.trim_start_matches("tests::").to_string(), action))
        .collect()
}

#[test]
fn issue_16_should_panic_tests_run_and_libtest_judges_them() {
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let run = |args: &[&str]| cachet_with(&repo_root(), args, &env);

    let o = run(&["test", "--json", SUITE]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let want: BTreeMap<String, String> = [
        ("plain_passes", "pass"),
        ("plain_fails", "fail"),
        ("panics_as_expected", "pass"),
        ("panics_with_any_message", "pass"),
        ("panics_with_another_message", "fail"),
        ("does_not_panic", "fail"),
        ("ignored", "skip"),
        ("catches_a_panic", "fail"),
    ]
    .into_iter()
    .map(|(t, v)| (t.to_string(), v.to_string()))
    .collect();
    assert_eq!(verdicts(&stdout(&o)), want);

    // Text: each failure with libtest's own words, or why it failed.
    let o = run(&["test", SUITE]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    for line in [
        "--- FAIL: tests::does_not_panic",
        "    test did not panic as expected at ",
        "--- FAIL: tests::panics_with_another_message",
        "    panic did not contain expected string",
        "     expected substring: \"overflow\"",
        "--- FAIL: tests::plain_fails",
        "six by three",
        "--- FAIL: tests::catches_a_panic",
        "cachet: the test panicked inside catch_unwind, which needs unwinding",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert!(!text.contains("panics_as_expected"), "{text}");
    assert!(!text.contains("wasm `unreachable`"), "no bare trap: {text}");

    // -v: the passing should_panic cases pass, the ignored one is skipped.
    let o = run(&["test", "-v", SUITE]);
    let text = stdout(&o);
    for line in [
        "--- PASS: tests::panics_as_expected",
        "--- PASS: tests::panics_with_any_message",
        "--- PASS: tests::plain_passes",
        "--- SKIP: tests::ignored",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    assert!(!text.contains("an ignored test never runs"), "{text}");

    // JUnit counts them like any other case.
    let xml = cache.path().join("junit.xml");
    run(&["test", "--junit", xml.to_str().unwrap(), SUITE]);
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert!(
        xml.contains("tests=\"8\" failures=\"4\" errors=\"0\" skipped=\"1\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase name=\"tests::panics_as_expected\""),
        "{xml}"
    );

    // And the passing ones are cached like any other.
    let passing = "panics_as_expected|panics_with_any_message|plain_passes|ignored";
    let o = run(&["test", "--explain", "--run", passing, SUITE]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(stdout(&o), format!("ok  \t{SUITE}\t(cached)\n"));
}

#[test]
fn issue_16_a_module_built_without_the_flag_skips_should_panic_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        &fixture("suite_shouldpanic").wasm,
        dir.path().join("shouldpanic.wasm"),
    )
    .unwrap();
    let o = cachet_with(dir.path(), &["test", "-v", "--json", "."], &[]);
    let got = verdicts(&stdout(&o));
    assert_eq!(got["panics_as_expected"], "skip");
    assert_eq!(got["does_not_panic"], "skip");
    assert_eq!(got["ignored"], "skip");
    assert_eq!(got["plain_passes"], "pass");
    let o = cachet_with(dir.path(), &["test", "-v", "."], &[]);
    let text = stdout(&o);
    let skip = "--- SKIP: tests::panics_as_expected (0.00s)\n";
    let at = text.find(skip).unwrap_or_else(|| panic!("{text}"));
    let before = &text[..at];
    assert!(
        before.ends_with("    cachet: a #[should_panic] test: libtest skips these on wasm unless the test binary is built with -Zpanic-abort-tests (cachet builds the cargo packages it runs so; for a prebuilt module, build it with RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Zpanic-abort-tests cargo test --no-run --target wasm32-wasip1)\n"),
        "{text}"
    );
    // An #[ignore]d test is not a should_panic one.
    let ignored = "--- SKIP: tests::ignored (0.00s)\n";
    let at = text.find(ignored).unwrap_or_else(|| panic!("{text}"));
    assert!(!text[..at].ends_with("wasm32-wasip1)\n"), "{text}");
}

/// The suite built as the README tells users to build a prebuilt module so
/// its `#[should_panic]` tests run, into its own target dir.
fn built_for_child_mode(target: &std::path::Path) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "test",
            "--no-run",
            "--quiet",
            "--target",
            "wasm32-wasip1",
            "--message-format=json",
            "--manifest-path",
        ])
        .arg(repo_root().join(SUITE).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-Zpanic-abort-tests")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .expect("a test executable")
}

#[test]
fn issue_16_cachet_exec_as_cargos_runner_runs_should_panic_tests() {
    let target = tempfile::tempdir().unwrap();
    let module = built_for_child_mode(target.path());
    let module = module.to_str().unwrap();
    // As cargo's runner: the binary alone, then with a filter.
    let o = cachet_with(&repo_root(), &["exec", module], &[]);
    assert_eq!(o.status.code(), Some(101), "{}", stderr(&o));
    let text = stdout(&o);
    for line in [
        "test tests::panics_as_expected ... ok\n",
        "test tests::panics_with_any_message ... ok\n",
        "test tests::does_not_panic ... FAILED\n",
        "test tests::panics_with_another_message ... FAILED\n",
        "test tests::ignored ... ignored\n",
        "test did not panic as expected",
        "test result: FAILED. 3 passed; 4 failed; 1 ignored;",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    let o = cachet_with(
        &repo_root(),
        &["exec", module, "tests::panics_as_expected", "--exact"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("test result: ok. 1 passed; 0 failed; 0 ignored;"),
        "{}",
        stdout(&o)
    );
}
