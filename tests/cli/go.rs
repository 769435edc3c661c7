//! Go test binaries as first-class guests (issue 9): Go packages built by
//! cachet with the Go toolchain, verdicts equal to native `go test`, output
//! as `go test` prints it, and the cache at Go's test granularity.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cachet_testkit::{copy_tree, go_command, repo_root};

use crate::{cachet_with, normalize, stderr, stdout};

/// The fixture module, copied (so tests may change it) with a cache.
struct GoModule {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl GoModule {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("fixtures/go"), &root.path().join("m")).unwrap();
        GoModule {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("m")
    }

    fn cachet(&self, args: &[&str]) -> std::process::Output {
        cachet_with(
            &self.dir(),
            args,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }

    /// Cases that ran (from --explain) in `pkg`, with why.
    fn ran(&self, extra: &[&str], pkg: &str) -> BTreeMap<String, String> {
        let mut args = vec!["test", "--explain"];
        args.extend(extra);
        args.push(pkg);
        let o = self.cachet(&args);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
            .lines()
            .filter_map(|l| l.strip_prefix("cachet: explain: "))
            .filter_map(|l| l.split_once(" ran: "))
            .map(|(who, why)| {
                (
                    who.rsplit(": ").next().unwrap().to_string(),
                    why.to_string(),
                )
            })
            .collect()
    }
}

/// Every (sub)test's final action in a `go test -json` stream.
fn verdicts(json: &str) -> BTreeMap<String, String> {
    crate::json_verdicts(json)
        .into_iter()
        .filter(|(_, test, _)| !test.is_empty())
        .map(|(_, test, action)| (test, action))
        .collect()
}

#[test]
fn go_verdicts_equal_native_go_test_one_test_at_a_time() {
    let m = GoModule::new();
    let o = m.cachet(&[
        "test",
        "--json",
        "--env",
        "CACHET_GREETING=hello",
        "./mixed",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let cachet = verdicts(&stdout(&o));
    // Natively, one `go test -run '^Name$'` per test: a panic in one test
    // ends go test's process, where cachet runs each test on its own.
    let listed = go_command()
        .current_dir(m.dir().join("mixed"))
        .args(["test", "-list", "."])
        .output()
        .unwrap();
    let mut native = BTreeMap::new();
    for name in String::from_utf8_lossy(&listed.stdout).lines() {
        if name.starts_with("ok") || name.starts_with("Benchmark") {
            continue;
        }
        let out = go_command()
            .current_dir(m.dir().join("mixed"))
            .env("CACHET_GREETING", "hello")
            .args([
                "test",
                "-json",
                "-count=1",
                "-run",
                &format!("^{name}$"),
                ".",
            ])
            .output()
            .unwrap();
        native.extend(verdicts(&String::from_utf8_lossy(&out.stdout)));
    }
    assert_eq!(cachet, native);
    // The same when all cases share one instance (as cachet chooses for a
    // module whose init is slow): the cases after the one that panicked
    // run again in a fresh instance instead of failing unrun.
    let o = m.cachet(&[
        "test",
        "--json",
        "--isolate",
        "module",
        "--env",
        "CACHET_GREETING=hello",
        "./mixed",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(verdicts(&stdout(&o)), native, "one instance");
    // The same on each compiler alone (issue 17).
    for tier in ["winch", "cranelift"] {
        let o = m.cachet(&[
            "test",
            "--json",
            "--count",
            "1",
            "--tier",
            tier,
            "--env",
            "CACHET_GREETING=hello",
            "./mixed",
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(verdicts(&stdout(&o)), native, "--tier {tier}");
    }
    for (test, want) in [
        ("TestPasses", "pass"),
        ("TestFails", "fail"),
        ("TestPanics", "fail"),
        ("TestSkips", "skip"),
        ("TestSubtests/bad", "fail"),
        ("TestParallel/z", "pass"),
        ("TestExitsZero", "fail"),
        ("ExampleAdd", "pass"),
        ("ExampleAdd_wrong", "fail"),
        ("FuzzAdd", "pass"),
    ] {
        assert_eq!(cachet.get(test).map(String::as_str), Some(want), "{test}");
    }
    assert!(
        !cachet.contains_key("BenchmarkAdd"),
        "benchmarks do not run"
    );
}

#[test]
fn go_output_reads_as_go_test_prints_it() {
    let m = GoModule::new();
    let run = "^(TestFails|TestSubtests|TestPasses)$";
    let o = m.cachet(&["test", "-p", "1", "--run", run, "./mixed"]);
    let native = go_command()
        .current_dir(m.dir())
        .args(["test", "-count=1", "-run", run, "./mixed"])
        .output()
        .unwrap();
    assert_eq!(
        normalize(&stdout(&o)),
        normalize(&String::from_utf8_lossy(&native.stdout))
    );
    // -v, one test at a time: the same lines as go test -v.
    let o = m.cachet(&["test", "-v", "-p", "1", "--run", run, "./mixed"]);
    let native = go_command()
        .current_dir(m.dir())
        .args(["test", "-v", "-count=1", "-run", run, "./mixed"])
        .output()
        .unwrap();
    assert_eq!(
        normalize(&stdout(&o)),
        normalize(&String::from_utf8_lossy(&native.stdout))
    );
}

#[test]
fn go_packages_without_tests_and_broken_builds_read_as_go_test_says() {
    let m = GoModule::new();
    let o = m.cachet(&["test", "./notests"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "?   \texample.com/cachetfix/notests\t[no test files]\n"
    );
    let broken = repo_root().join("fixtures/go-broken");
    let o = cachet_with(&broken, &["test", "./..."], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stdout(&o),
        "FAIL\texample.com/broken/bad [build failed]\nFAIL\n"
    );
    let err = stderr(&o);
    assert!(err.contains("undefined: undefinedFunction"), "{err}");
    assert!(
        err.ends_with("cachet: example.com/broken/bad: build failed (errors above)\n"),
        "{err}"
    );
}

#[test]
fn go_without_a_toolchain_says_how_to_get_one() {
    let m = GoModule::new();
    let o = cachet_with(&m.dir(), &["test", "./clean"], &[("PATH", "/usr/bin:/bin")]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "cachet: clean: a Go package, but no Go toolchain is on PATH; install Go 1.21 or newer (GOOS=wasip1) and put `go` on PATH\n"
    );
}

#[test]
fn go_cache_reruns_exactly_the_tests_whose_inputs_changed() {
    let m = GoModule::new();
    let all = m.ran(&[], "./clean");
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(m.ran(&[], "./clean").is_empty(), "run again: cached");
    // A testdata change reruns the test that read it.
    std::fs::write(m.dir().join("clean/testdata/one.txt"), "one").unwrap();
    std::fs::write(m.dir().join("clean/testdata/two.txt"), "TWO").unwrap();
    let o = m.cachet(&["test", "--explain", "./clean"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the real run fails: {}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("cachet: explain: example.com/cachetfix/clean: TestReadsTwo ran: open mod/clean/testdata/two.txt: content changed"), "{}", stdout(&o));
    std::fs::write(m.dir().join("clean/testdata/two.txt"), "two").unwrap();
    assert!(
        m.ran(&[], "./clean").is_empty(),
        "changed back: cached again"
    );
    // A variable no test reads reruns nothing; one a test reads reruns it.
    assert!(m.ran(&["--env", "UNREAD=1"], "./clean").is_empty());
    let ran = m.ran(&["--env", "CACHET_MODE=fine"], "./clean");
    assert_eq!(ran.keys().collect::<Vec<_>>(), ["TestReadsEnv"], "{ran:?}");
    assert_eq!(
        ran["TestReadsEnv"],
        format!(
            "env CACHET_MODE: now set (was unset, now {})",
            cachet_runtime::Sha256Digest::of(b"fine")
        )
    );
}

#[test]
fn go_modules_with_an_expensive_init_share_one_instance() {
    let m = GoModule::new();
    let o = m.cachet(&["test", "--explain", "./heavyinit"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("TestFirst ran: no cache entry (with TestSecond, TestThird in one instance: the module's init took "),
        "{out}"
    );
    let o = m.cachet(&["test", "./heavyinit"]);
    assert_eq!(
        stdout(&o),
        "ok  \texample.com/cachetfix/heavyinit\t(cached)\n"
    );
    // Asked for, each case gets its own instance.
    let o = m.cachet(&["test", "--explain", "--isolate", "test", "./heavyinit"]);
    assert_eq!(stdout(&o).matches(" ran: ").count(), 3, "{}", stdout(&o));
}

/// Go's runs go apart, to run servers reused from run to run: with `-p 1`,
/// a package's listing and its four cases in one child process, its module
/// compiled once (by Cranelift, without time checks; nothing on Winch). A
/// case killed at its time limit takes its server with it; the next case
/// starts another.
#[test]
fn go_runs_go_apart_to_one_run_server_per_runner() {
    let m = GoModule::new();
    let o = m.cachet(&["test", "--explain", "-p", "1", "./clean"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(
        out.contains(
            "cachet: explain: runs apart: 5 in 1 child process (on code without time checks)"
        ),
        "{out}"
    );
    assert!(
        out.contains("cachet: explain: modules: 1 compiled by Cranelift (0 after starting on Winch), 0 by Winch,"),
        "{out}"
    );

    let dir = m.dir().join("spins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("spins_test.go"),
        "package spins\n\nimport \"testing\"\n\nfunc TestSpins(t *testing.T) {\n\tfor {\n\t}\n}\n\nfunc TestQuick(t *testing.T) {}\n\nfunc TestQuickToo(t *testing.T) {}\n",
    )
    .unwrap();
    let o = m.cachet(&[
        "test",
        "-v",
        "--explain",
        "-p",
        "1",
        "--timeout",
        "2s",
        "./spins",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    for verdict in [
        "--- FAIL: TestSpins",
        "--- PASS: TestQuick ",
        "--- PASS: TestQuickToo ",
    ] {
        assert!(out.contains(verdict), "{verdict}: {out}");
    }
    assert!(out.contains("ran too long (2s)"), "{out}");
    assert!(
        out.contains(
            "cachet: explain: runs apart: 4 in 2 child processes (on code without time checks)"
        ),
        "{out}"
    );
}

/// Sets every file's and directory's modification time below `dir` an hour back.
fn backdate(dir: &std::path::Path) {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            backdate(&entry.path());
        }
        std::fs::File::open(entry.path())
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
    std::fs::File::open(dir)
        .unwrap()
        .set_modified(past)
        .unwrap();
}

#[test]
fn a_fully_cached_go_run_starts_no_go_tool_until_a_source_changes() {
    let m = GoModule::new();
    backdate(&m.dir());
    // A `go` that logs how it is called, then is the real one.
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    let real = cachet_testkit::go_bin_dir().unwrap().join("go");
    let wrapper = bin.path().join("go");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let go = wrapper.to_str().unwrap();
    let run = || {
        let o = cachet_with(
            &m.dir(),
            &["test", "./clean"],
            &[
                ("CACHET_CACHE", m.cache.path().to_str().unwrap()),
                ("CACHET_GO", go),
            ],
        );
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (o, calls)
    };
    let (first, calls) = run();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(calls.contains("list") && calls.contains("test"), "{calls}");
    let (second, calls) = run();
    assert_eq!(
        stdout(&second),
        "ok  \texample.com/cachetfix/clean\t(cached)\n"
    );
    assert_eq!(
        calls, "env\n",
        "only the version check, no go list or build"
    );
    // A new test file: go list and the build run again, and the new test runs.
    std::fs::write(
        m.dir().join("clean/extra_test.go"),
        "package clean\n\nimport \"testing\"\n\nfunc TestExtra(t *testing.T) {}\n",
    )
    .unwrap();
    let (third, calls) = run();
    assert_eq!(third.status.code(), Some(0));
    assert!(calls.contains("list"), "{calls}");
    let o = m.cachet(&["test", "-v", "--run", "TestExtra", "./clean"]);
    assert!(stdout(&o).contains("TestExtra"), "{}", stdout(&o));
}

/// Each package goes through build, compile, listing and runs on its own:
/// the first package's tests run while a later one is still being listed
/// (its init sleeps for 4 s when asked to list). Before, no case ran until
/// every package was listed.
#[test]
fn a_package_runs_while_a_later_one_is_still_listed() {
    let m = GoModule::new();
    let slow = m.dir().join("slowlist");
    std::fs::create_dir(&slow).unwrap();
    std::fs::write(
        slow.join("slow_test.go"),
        r#"package slowlist

import (
	"os"
	"strings"
	"testing"
	"time"
)

func init() {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.list") {
			time.Sleep(4 * time.Second)
		}
	}
}

func TestQuick(t *testing.T) {}
"#,
    )
    .unwrap();
    let o = m.cachet(&["test", "--json", "-p", "2", "./clean", "./slowlist"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |package: &str, action: &str| -> Vec<f64> {
        events
            .iter()
            .filter(|e| e["Package"] == package && e["Action"] == action && e["Test"].is_string())
            .map(|e| seconds_of_day(e["Time"].as_str().unwrap()))
            .collect()
    };
    let clean_done = at("example.com/cachetfix/clean", "pass");
    let slow_started = at("example.com/cachetfix/slowlist", "run");
    assert!(
        !clean_done.is_empty() && !slow_started.is_empty(),
        "{}",
        stdout(&o)
    );
    let clean_done = clean_done.iter().copied().fold(f64::MIN, f64::max);
    let slow_started = slow_started.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        clean_done + 2.0 < slow_started,
        "clean's tests ended at {clean_done}, slowlist's started at {slow_started}: \
         clean waited for slowlist's listing"
    );
}

/// Seconds since midnight of an RFC 3339 time (`...T12:34:56.789Z`).
fn seconds_of_day(time: &str) -> f64 {
    let clock = time.split('T').nth(1).unwrap().trim_end_matches('Z');
    clock
        .split(':')
        .map(|p| p.parse::<f64>().unwrap())
        .fold(0.0, |acc, p| acc * 60.0 + p)
}
