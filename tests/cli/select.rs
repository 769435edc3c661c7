//! Selecting cases: --run, --list, --failfast, --count.

use crate::{cachet, normalize, stdout};

#[test]
fn run_selects_by_unanchored_regex() {
    let o = cachet(&[
        "test",
        "-v",
        "-p",
        "1",
        "--run",
        "plies|add",
        "fixtures/suites/mixed",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        normalize(&stdout(&o)),
        "=== RUN   tests::adds\n--- PASS: tests::adds (X.XXs)\n=== RUN   tests::multiplies\n--- PASS: tests::multiplies (X.XXs)\nPASS\nok  \tfixtures/suites/mixed\tX.XXXs\n"
    );
}

#[test]
fn list_prints_matching_names_without_running() {
    let o = cachet(&["test", "--list", "gcd", "fixtures/demo/calc"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(normalize(&stdout(&o)), "tests::gcd_divides_both\ntests::gcd_of_coprimes_is_one\nok  \tfixtures/demo/calc\tX.XXXs\n");
}

#[test]
fn failfast_starts_no_case_after_a_failure() {
    let o = cachet(&[
        "test",
        "-v",
        "-p",
        "1",
        "--failfast",
        "fixtures/suites/mixed",
        "fixtures/demo/calc",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = normalize(&stdout(&o));
    assert!(out.contains("--- FAIL: tests::breaks"), "{out}");
    for later in [
        "tests::ignored",
        "tests::multiplies",
        "tests::exits_with_status_7",
        "gcd",
    ] {
        assert!(
            !out.contains(later),
            "{later} started after the failure:\n{out}"
        );
    }
    assert!(
        out.contains(
            "FAIL\tfixtures/demo/calc\t[not run: --failfast stopped at an earlier failure]"
        ),
        "{out}"
    );
}

#[test]
fn count_runs_each_case_n_times() {
    let o = cachet(&[
        "test",
        "-v",
        "-p",
        "1",
        "--count",
        "3",
        "--run",
        "fibonacci",
        "fixtures/demo/calc",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o).matches("--- PASS: tests::fibonacci").count(), 3);
}

#[test]
fn env_reaches_the_guest_and_nothing_else_does() {
    let o = cachet(&[
        "test",
        "-v",
        "--run",
        "environment",
        "--env",
        "GREET_NAME=Grace",
        "fixtures/demo/greet",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}
