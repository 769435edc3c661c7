//! Go's output format, byte for byte (times normalized), and exit statuses.

use crate::{cachet, normalize, stdout};

#[test]
fn passing_packages() {
    let o = cachet(&["test", "-p", "1", "./fixtures/demo/..."]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        normalize(&stdout(&o)),
        "ok  \tfixtures/demo/calc\tX.XXXs\nok  \tfixtures/demo/greet\tX.XXXs\nok  \tfixtures/demo/wordcount\tX.XXXs\n"
    );
}

#[test]
fn failing_mixed_and_no_tests_packages() {
    let o = cachet(&[
        "test",
        "-p",
        "1",
        "fixtures/suites/mixed",
        "fixtures/suites/notests",
        "fixtures/demo/calc",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        normalize(&stdout(&o)),
        "--- FAIL: tests::breaks (X.XXs)
    about to fail

    thread 'main' (1) panicked at suites/mixed/src/lib.rs:13:9:
    assertion `left == right` failed: three is not four
      left: 3
     right: 4
    note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace
--- FAIL: tests::exits_with_status_7 (X.XXs)
    cachet: exit status 7 (a test libtest runs alone exits 50 when it passes: did it call process::exit?)
FAIL
FAIL\tfixtures/suites/mixed\tX.XXXs
ok  \tfixtures/suites/notests\tX.XXXs [no tests to run]
ok  \tfixtures/demo/calc\tX.XXXs
FAIL
"
    );
}

#[test]
fn verbose_shows_every_case() {
    let o = cachet(&["test", "-v", "-p", "1", "fixtures/suites/mixed"]);
    assert_eq!(o.status.code(), Some(1));
    let out = normalize(&stdout(&o));
    // The ignored case never runs: it is reported first, as it is known
    // from the listing.
    assert!(out.starts_with("=== RUN   tests::ignored\n--- SKIP: tests::ignored (X.XXs)\n=== RUN   tests::adds\n--- PASS: tests::adds (X.XXs)\n=== RUN   tests::breaks\nabout to fail\n"), "{out}");
    assert!(out.contains("=== RUN   tests::exits_with_status_7\n    cachet: exit status 7 (a test libtest runs alone exits 50 when it passes: did it call process::exit?)\n--- FAIL: tests::exits_with_status_7 (X.XXs)\n"), "{out}");
    assert!(out.ends_with("--- PASS: tests::multiplies (X.XXs)\nFAIL\nFAIL\tfixtures/suites/mixed\tX.XXXs\nFAIL\n"), "{out}");
}

#[test]
fn timed_out_case_is_killed_and_fails_the_package() {
    let o = cachet(&[
        "test",
        "-p",
        "1",
        "--timeout",
        "300ms",
        "fixtures/suites/spin",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        normalize(&stdout(&o)),
        "--- FAIL: tests::spins (X.XXs)\n*** Test killed: ran too long (300ms).\nFAIL\nFAIL\tfixtures/suites/spin\tX.XXXs\nFAIL\n"
    );
}

#[test]
fn empty_dir_has_no_test_files() {
    let dir = tempfile::tempdir().unwrap();
    let o = crate::cachet_in(dir.path(), &["test"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "?   \t.\t[no test files]\n");
}

#[test]
fn each_case_has_its_own_scratch_dir() {
    for p in ["1", "2"] {
        let o = cachet(&["test", "-v", "-p", p, "fixtures/suites/isolation"]);
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    }
    // cachet builds the suite for libtest's child mode, one case per
    // instance whatever --isolate says; a module built the plain way can
    // share one instance.
    let o = cachet(&[
        "test",
        "-p",
        "1",
        "--isolate",
        "module",
        "fixtures/suites/isolation",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let prebuilt = tempfile::tempdir().unwrap();
    std::fs::copy(
        &cachet_testkit::fixture("suite_isolation").wasm,
        prebuilt.path().join("isolation.wasm"),
    )
    .unwrap();
    for (isolate, code) in [("test", 0), ("module", 1)] {
        let o = crate::cachet_in(
            prebuilt.path(),
            &["test", "-p", "1", "--isolate", isolate, "."],
        );
        assert_eq!(
            o.status.code(),
            Some(code),
            "--isolate {isolate}: one instance shares /tmp between its cases\n{}",
            stdout(&o)
        );
    }
}

#[test]
fn plain_modules_pass_on_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ok = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
        .unwrap();
    let fail = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
           (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 4))))"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("ok.wasm"), ok).unwrap();
    std::fs::write(dir.path().join("zfail.wasm"), fail).unwrap();
    let o = crate::cachet_in(
        dir.path(),
        &["test", "-v", "-p", "1", "ok.wasm", "zfail.wasm"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        normalize(&stdout(&o)),
        "=== RUN   ok.wasm\n--- PASS: ok.wasm (X.XXs)\nPASS\nok  \tok.wasm\tX.XXXs\n=== RUN   zfail.wasm\n    cachet: exit status 4\n--- FAIL: zfail.wasm (X.XXs)\nFAIL\nFAIL\tzfail.wasm\tX.XXXs\nFAIL\n"
    );
}

#[test]
fn verbose_output_streams_while_the_case_runs() {
    use std::io::{BufRead, BufReader};
    // Make sure the binary is current and the suite is built (this call's output
    // is not used): streaming is then not hidden behind a cargo build.
    let _ = crate::cachet(&["test", "--list", ".", "fixtures/suites/slowprint"]);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cachet"))
        .current_dir(cachet_testkit::repo_root())
        .args([
            "test",
            "--count",
            "1",
            "-v",
            "-p",
            "1",
            "fixtures/suites/slowprint",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        seen.push(line.clone());
        if line == "line 5" {
            break;
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("=== RUN   tests::prints_then_waits"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("line 5"), "{seen:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "line 5 must arrive while the case still sleeps"
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter().any(|l| l == "line 10")
            && rest
                .iter()
                .any(|l| l.starts_with("--- PASS: tests::prints_then_waits")),
        "{rest:?}"
    );
}

#[test]
fn cargo_manifest_dir_works_both_ways() {
    let o = cachet(&["test", "-v", "-p", "1", "fixtures/suites/manifestdir"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(stdout(&o).matches("--- PASS").count(), 2);
}

/// Runs cachet on a pseudo-terminal (util-linux `script`), as a user would.
fn on_a_terminal(ci: bool) -> String {
    let _ = crate::cachet(&["test", "--list", ".", "fixtures/suites/slowprint"]);
    let bin = assert_cmd::cargo::cargo_bin("cachet");
    let mut cmd = std::process::Command::new("script");
    cmd.current_dir(cachet_testkit::repo_root())
        .args([
            "-qec",
            &format!(
                "{} test --count 1 -p 1 fixtures/suites/slowprint",
                bin.display()
            ),
            "/dev/null",
        ])
        .env_remove("CI");
    if ci {
        cmd.env("CI", "true");
    }
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

#[test]
fn progress_line_on_terminals_only_and_never_in_ci() {
    let tty = on_a_terminal(false);
    assert!(tty.contains("1 cases done, 0 failed, running"), "{tty:?}");
    assert!(
        tty.contains("\x1b[2K"),
        "the line is cleared before results print: {tty:?}"
    );
    assert!(tty.contains("ok  \tfixtures/suites/slowprint\t"), "{tty:?}");
    let ci = on_a_terminal(true);
    assert!(!ci.contains("running") && !ci.contains("\x1b["), "{ci:?}");
    let piped = crate::cachet(&["test", "-p", "1", "fixtures/suites/slowprint"]);
    assert!(!crate::stdout(&piped).contains('\x1b') && !crate::stderr(&piped).contains('\x1b'));
}
