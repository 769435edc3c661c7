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

/// With `-p 1` and `--failfast`, the first package's failure stops the
/// second before its cases start. Both listings cached first: a fresh
/// listing lets runners take whichever package is listed first, and on a
/// loaded machine `calc`'s cases ran before `mixed`'s (a full run saw it).
#[test]
fn failfast_starts_no_case_after_a_failure() {
    let root = cachet_testkit::repo_root();
    let (_, cache) = crate::cachet_command(&root, &[]);
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let packages = ["fixtures/suites/mixed", "fixtures/demo/calc"];
    let listed = crate::cachet_with(
        &root,
        &[&["test", "--list", "."][..], &packages].concat(),
        &env,
    );
    assert_eq!(listed.status.code(), Some(0), "{}", stdout(&listed));
    let o = crate::cachet_with(
        &root,
        &[&["test", "-v", "-p", "1", "--failfast"][..], &packages].concat(),
        &env,
    );
    assert_eq!(o.status.code(), Some(1));
    let out = normalize(&stdout(&o));
    assert!(out.contains("--- FAIL: tests::breaks"), "{out}");
    // (`tests::ignored` never runs; it is reported from the listing.)
    for later in ["tests::multiplies", "tests::exits_with_status_7", "gcd"] {
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
    // The case falls back to "world" without the variable, so its verdict
    // proves nothing: its recorded log says what it saw.
    let cache = tempfile::tempdir().unwrap();
    let root = cachet_testkit::repo_root();
    let env = |host: &str| {
        [
            ("CACHET_CACHE", cache.path().to_str().unwrap().to_string()),
            ("GREET_NAME", host.to_string()),
        ]
    };
    let case = "tests::greets_the_user_from_the_environment";
    let seen = |flags: &[&str], host: &str| {
        let e = env(host);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut args = vec!["test", "--run", "environment"];
        args.extend(flags);
        args.push("fixtures/demo/greet");
        let o = crate::cachet_with(&root, &args, &e);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}{}",
            stdout(&o),
            crate::stderr(&o)
        );
        let mut args = vec!["inputs"];
        args.extend(flags);
        args.extend(["fixtures/demo/greet", case]);
        stdout(&crate::cachet_with(&root, &args, &e))
    };
    let grace = cachet_runtime::Sha256Digest::of(b"Grace");
    let log = seen(&["--env", "GREET_NAME=Grace"], "Host");
    assert!(log.contains(&format!("env GREET_NAME {grace}\n")), "{log}");
    // The host's own value never reaches the guest unless passed.
    let log = seen(&[], "Host");
    assert!(log.contains("env GREET_NAME unset\n"), "{log}");
    let host = cachet_runtime::Sha256Digest::of(b"Host");
    let log = seen(&["--env", "GREET_NAME"], "Host");
    assert!(log.contains(&format!("env GREET_NAME {host}\n")), "{log}");
}

/// With `-p 2`, the cases that took longest last time start first: here a
/// 3 s case listed after seven of 150 ms, in one package, or in a package
/// of its own after the quick ones' package (runners wait for both to be
/// planned; two packages go side by side from the first run on). Its rank:
/// how many quick cases ended before it started. In
/// one package that is read from the order of the live `-v` stream (a
/// case's `=== RUN` is written as its job starts, before its module loads;
/// a start computed back from its end and its elapsed time once counted
/// its module's load on a loaded CI machine, and all seven ended first).
/// Across packages the second one is buffered: its `start` event's time.
#[test]
fn the_slowest_cases_of_the_last_run_start_first() {
    for packages in [&["p", "p"], &["p", "q"]] {
        let work = tempfile::tempdir().unwrap();
        for (f, name, pkg) in [
            ("suite_paced", "a_quick.wasm", packages[0]),
            ("suite_slowprint", "b_slow.wasm", packages[1]),
        ] {
            let pkg = work.path().join(pkg);
            std::fs::create_dir_all(&pkg).unwrap();
            std::fs::copy(&cachet_testkit::fixture(f).wasm, pkg.join(name)).unwrap();
        }
        let (_, cache) = crate::cachet_command(work.path(), &[]);
        let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
        let mut names = vec!["p"];
        if packages[1] != "p" {
            names.push(packages[1]);
        }
        // Every listing cached first: then runners wait until both
        // packages are queued, whichever is planned first. Cranelift only,
        // so both modules' code is on disk from here on: no run waits for a
        // background compile, which on a loaded machine let all seven quick
        // cases end before the slow one started (a full run saw it). Every
        // run here: a long case's first run apart compiles its code without
        // epoch checks first, which let all seven end too (a full run saw it).
        let listed = crate::cachet_with(
            work.path(),
            &[&["test", "--tier", "cranelift", "--list", "."][..], &names].concat(),
            &env,
        );
        assert_eq!(listed.status.code(), Some(0), "{}", stdout(&listed));
        let one_package = packages[1] == "p";
        let rank_of_slow = || {
            let format = if one_package { "-v" } else { "--json" };
            let args = [
                &[
                    "test",
                    "--tier",
                    "cranelift",
                    "--long-runs",
                    "here",
                    format,
                    "--count",
                    "1",
                    "-p",
                    "2",
                ][..],
                &names,
            ]
            .concat();
            let o = crate::cachet_with(work.path(), &args, &env);
            let out = stdout(&o);
            if one_package {
                let lines: Vec<&str> = out.lines().collect();
                let quick_done = |l: &&&str| l.starts_with("--- PASS: tests::q");
                assert_eq!(lines.iter().filter(quick_done).count(), 7, "{out}");
                let slow_started = lines
                    .iter()
                    .position(|l| *l == "=== RUN   tests::prints_then_waits")
                    .unwrap_or_else(|| panic!("{out}"));
                return lines[..slow_started].iter().filter(quick_done).count();
            }
            let events: Vec<(f64, serde_json::Value)> = out
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|e| {
                    let time = e["Time"].as_str().unwrap();
                    let clock = time.split('T').nth(1).unwrap().trim_end_matches('Z');
                    let secs = clock
                        .split(':')
                        .map(|p| p.parse::<f64>().unwrap())
                        .fold(0.0, |acc, p| acc * 60.0 + p);
                    (secs, e)
                })
                .collect();
            let slow_started = events
                .iter()
                .find(|(_, e)| e["Action"] == "start" && e["Package"] == packages[1])
                .unwrap_or_else(|| panic!("{out}"))
                .0;
            let quick_done: Vec<f64> = events
                .iter()
                .filter(|(_, e)| e["Action"] == "pass" && e["Test"].is_string())
                .filter(|(_, e)| e["Test"] != "tests::prints_then_waits")
                .map(|(t, _)| *t)
                .collect();
            assert_eq!(quick_done.len(), 7, "{out}");
            quick_done.iter().filter(|t| **t < slow_started).count()
        };
        // Nothing is known of the cases' times yet: in one package, the
        // listed order; two packages go side by side, a runner each.
        let first = rank_of_slow();
        if one_package {
            assert!(
                first >= 6,
                "first run: in listed order, among the last two ({first})"
            );
        } else {
            assert!(first <= 3, "first run: two packages side by side ({first})");
        }
        // Taken first, while the other slot starts quick cases: at most
        // three of them (450 ms) end before it starts, even on a loaded
        // machine; in listed order six or seven would.
        let second = rank_of_slow();
        assert!(
            second <= 3,
            "{packages:?}, second run: started early, not last ({second})"
        );
    }
}
