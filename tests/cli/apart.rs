//! Issue 17, the cold goal: a long run goes apart, to a child process on
//! code without epoch checks, and its time limit is the child's kill
//! (`--long-runs apart`, the default). Everything a run here gives comes
//! back the same: verdicts, time limits, output shown live, Ctrl-C; and
//! nothing of a killed child is left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cachet_testkit::fixture;

use crate::tiers::SUITES;
use crate::{cachet_command, cachet_with, stderr, stdout};

/// The fixture suites in `dir`, a package each.
fn suites_in(dir: &Path) {
    for s in SUITES {
        let dir = dir.join(s);
        std::fs::create_dir_all(dir.join("testdata")).unwrap();
        std::fs::copy(&fixture(s).wasm, dir.join("tests.wasm")).unwrap();
        let testdata = fixture(s).dir.join("testdata");
        if testdata.is_dir() {
            cachet_testkit::copy_tree(&testdata, &dir.join("testdata")).unwrap();
        }
    }
}

/// Each case's verdict line (`-v`), without its time, sorted.
fn verdicts(out: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("--- "))
        .map(|l| l.split(" (").next().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// How many runs went apart, as `--explain` says.
pub(crate) fn runs_apart(out: &str) -> usize {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("cachet: explain: runs apart: "))
        .unwrap_or_else(|| panic!("no line of runs apart in {out}"));
    line.split(' ').next().unwrap().parse().unwrap()
}

/// The pid of the first run server (`cachet __run-apart`) whose parent is
/// `parent`, once there is one (at most a minute).
fn server_of(parent: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = std::process::Command::new("pgrep")
            .args(["-P", &parent.to_string(), "-f", "__run-apart"])
            .output()
            .unwrap();
        if let Some(pid) = String::from_utf8_lossy(&o.stdout).lines().next() {
            return pid.to_string();
        }
        assert!(Instant::now() < deadline, "no run apart started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is still there (and no zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn long_runs_apart_and_here_give_every_fixture_case_the_same_verdict() {
    let work = tempfile::tempdir().unwrap();
    suites_in(work.path());
    let mut by_mode = Vec::new();
    for mode in ["here", "apart"] {
        // An empty cache each; every module's cases in one instance, which
        // is what makes a run long before it was ever timed.
        let cache = tempfile::tempdir().unwrap();
        let o = cachet_with(
            work.path(),
            &[
                "test",
                "-v",
                "--explain",
                "--isolate",
                "module",
                "--long-runs",
                mode,
                "--timeout",
                "5s",
                "./...",
            ],
            &[("CACHET_CACHE", cache.path().to_str().unwrap())],
        );
        assert_eq!(stderr(&o), "", "{mode}");
        let out = stdout(&o);
        let v = verdicts(&out);
        assert!(v.len() >= 20, "{mode}: {} cases", v.len());
        assert!(v.iter().any(|l| l.starts_with("--- FAIL")), "{out}");
        assert!(v.iter().any(|l| l.starts_with("--- PASS")), "{out}");
        by_mode.push((mode, o.status.code(), v, runs_apart(&out)));
    }
    let (_, code, want, here) = &by_mode[0];
    let (_, c, v, apart) = &by_mode[1];
    assert_eq!(*here, 0, "--long-runs here runs nothing apart");
    assert!(*apart >= SUITES.len(), "{apart} runs apart");
    assert_eq!(c, code, "exit status");
    assert_eq!(v, want, "apart against here");
}

#[test]
fn a_run_apart_is_killed_at_its_time_limit_and_by_ctrl_c_leaving_nothing() {
    let work = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spin = work.path().join("spin");
    std::fs::create_dir(&spin).unwrap();
    std::fs::copy(&fixture("suite_spin").wasm, spin.join("spin.wasm")).unwrap();
    let env = [("TMPDIR", tmp.path().to_str().unwrap())];

    let (mut cmd, _cache) = cachet_command(work.path(), &env);
    let start = Instant::now();
    let o = cmd
        .args([
            "test",
            "-v",
            "--explain",
            "--isolate",
            "module",
            "--timeout",
            "2s",
            "spin",
        ])
        .output()
        .unwrap();
    let took = start.elapsed();
    let out = stdout(&o);
    assert_eq!(runs_apart(&out), 1, "{out}");
    assert!(out.contains("--- PASS: tests::finishes"), "{out}");
    assert!(
        out.contains("*** Test killed: ran too long (2s).\n--- FAIL: tests::spins"),
        "{out}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new(), "{out}");

    // Ctrl-C, under the default 10-minute limit: the child is killed at
    // once, though the guest is in a loop without a host call.
    let (child, _cache, server) = spinning_apart(work.path(), &env);
    let start = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(!alive(&server), "the run server outlived Ctrl-C");
    assert_eq!(entries(tmp.path()), Vec::<PathBuf>::new());

    // kill -9: nothing stops a loop without epoch checks but the child's
    // own death with its parent.
    let (mut child, _cache, server) = spinning_apart(work.path(), &env);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(&server) {
        assert!(
            Instant::now() < deadline,
            "the run server {server} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `cachet test` on the spinning suite, once its run server is in the
/// guest's loop, past its check of its parent; and the server's pid.
fn spinning_apart(
    work: &Path,
    env: &[(&str, &str)],
) -> (std::process::Child, tempfile::TempDir, String) {
    let (mut cmd, cache) = cachet_command(work, env);
    let child = cmd
        .args(["test", "--isolate", "module", "spin"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let server = server_of(child.id());
    std::thread::sleep(Duration::from_secs(1));
    (child, cache, server)
}

/// A case that took 3 s last time runs apart, its output shown live; with
/// its child killed from outside, it runs again here, with one warning.
#[test]
fn a_case_that_took_long_last_time_runs_apart_and_is_shown_live() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("slowprint");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&fixture("suite_slowprint").wasm, dir.join("tests.wasm")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    // Its first run times it (3 s): here, one case, never timed before.
    let o = cachet_with(work.path(), &["test", "--explain", "slowprint"], &env);
    assert_eq!(runs_apart(&stdout(&o)), 0, "{}", stdout(&o));

    use std::io::{BufRead, BufReader};
    let (mut cmd, _fresh) = cachet_command(work.path(), &env);
    let mut child = cmd
        .args(["test", "--count", "1", "-v", "--explain", "slowprint"])
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
    assert_eq!(seen.last().map(String::as_str), Some("line 5"), "{seen:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "line 5 must arrive while the case still sleeps"
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.iter().any(|l| l == "line 10"), "{rest:?}");
    assert_eq!(runs_apart(&rest.join("\n")), 1, "{rest:?}");

    // Its child killed from outside: one warning saying how, and the case
    // runs again in cachet's process, and passes.
    let (mut cmd, _fresh) = cachet_command(work.path(), &env);
    let child = cmd
        .args(["test", "--count", "1", "--explain", "slowprint"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let apart = server_of(child.id());
    let killed = std::process::Command::new("kill")
        .args(["-9", &apart])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = child.wait_with_output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("ok  \tslowprint\t")),
        "{out}"
    );
    assert_eq!(runs_apart(&out), 0, "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("a run apart ended without an outcome (signal: 9 (SIGKILL)")
            && warnings[0].contains("it runs again in cachet's process"),
        "{err}"
    );
}
