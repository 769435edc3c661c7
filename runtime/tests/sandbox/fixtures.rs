//! Every fixture, its expected outcome and its exact expected input log
//! (`runtime/tests/golden/<fixture>.log`, reviewed by hand; regenerate with
//! `CACHET_BLESS=1` and review the diff). A fixture without an entry fails.

use std::time::Duration;

use cachet_runtime::{Entry, Observation, Status};
use cachet_testkit::{fixture_dirs, repo_root, TARGET, TARGET_P2};

use crate::{text, Sandbox};

#[derive(Clone, Copy, Debug)]
enum Expect {
    Pass,
    Exit(i32),
    /// A trap whose output contains this text.
    Trap(&'static str),
    Timeout,
    MemoryLimit,
    OutputOverflow,
    /// Passes, but an input it read changed before the run ended.
    ChangedDuringRun(&'static str),
    StackOverflow,
    /// Stopped at the scratch quota (set to 8 MiB for it).
    ScratchLimit,
    /// Stopped at the open-files limit (set to 64 for it).
    OpenFilesLimit,
    /// Passes with a read-write mount `/data`.
    PassWithRwMount,
    /// Passes under `--hermetic`, in well under a second.
    PassHermetic,
}

const EXPECTED: &[(&str, Expect)] = &[
    ("env_with_shim", Expect::Pass),
    ("env_without_shim", Expect::Pass),
    ("escape_absolute", Expect::Pass),
    ("escape_dotdot", Expect::Pass),
    ("escape_symlink_out", Expect::Pass),
    ("exec_probe", Expect::Pass),
    ("fails_exit_nonzero", Expect::Exit(3)),
    ("fails_panic", Expect::Trap("the answer is wrong")),
    (
        "fs_changes_input",
        Expect::ChangedDuringRun("open data/state.txt: content changed"),
    ),
    ("fs_lists_dir", Expect::Pass),
    ("fs_readlink_inside", Expect::Pass),
    ("fs_reads_missing", Expect::Pass),
    ("fs_reads_testdata", Expect::Pass),
    ("fs_stat", Expect::Pass),
    ("limit_fd_hog", Expect::OpenFilesLimit),
    ("limit_fifo_open", Expect::Pass),
    ("limit_memory_bomb", Expect::MemoryLimit),
    ("limit_output_flood", Expect::OutputOverflow),
    ("limit_scratch_fill", Expect::ScratchLimit),
    ("limit_sleep_forever", Expect::Timeout),
    ("limit_spin_forever", Expect::Timeout),
    ("limit_stack_recursion", Expect::StackOverflow),
    ("net_refused", Expect::Pass),
    ("rw_symlink_escape", Expect::PassWithRwMount),
    ("scratch_deep_dirs", Expect::Pass),
    ("scratch_then_sleep", Expect::Timeout),
    ("scratch_write_read", Expect::Pass),
    ("uses_clock_random", Expect::Pass),
    ("uses_hermetic_time", Expect::PassHermetic),
    ("write_readonly_pkg", Expect::Pass),
];

#[test]
fn every_fixture_has_an_expected_outcome() {
    let table: Vec<&str> = EXPECTED.iter().map(|(n, _)| *n).collect();
    for dir in fixture_dirs() {
        assert!(
            table.contains(&dir.as_str()),
            "fixture {dir} has no entry in EXPECTED"
        );
    }
    for name in table {
        assert!(
            fixture_dirs().iter().any(|d| d == name),
            "EXPECTED names {name}, which is not a fixture"
        );
    }
}

/// The policy for one fixture: the common one, tightened for the limit tests.
fn run(name: &str, expect: Expect, target: &str) -> (cachet_runtime::RunOutcome, Sandbox) {
    let sb = Sandbox::new(name);
    let mut policy = sb.policy();
    match expect {
        Expect::Timeout => {
            policy.timeout(Duration::from_millis(300));
        }
        Expect::MemoryLimit => {
            policy.memory_limit(64 << 20);
        }
        Expect::OutputOverflow => {
            policy.output_limit(64 << 10);
        }
        Expect::ScratchLimit => {
            policy.scratch_limit(8 << 20);
        }
        Expect::OpenFilesLimit => {
            policy.open_files(64);
        }
        Expect::PassHermetic => {
            policy.hermetic(0);
        }
        Expect::PassWithRwMount => {
            let data = sb.root.path().join("data");
            std::fs::create_dir_all(data.join("sub")).unwrap();
            std::fs::write(data.join("in.txt"), "inside").unwrap();
            policy.mount_read_write("data", data, &["/data"]);
        }
        Expect::ChangedDuringRun(_) => {
            let data = sb.root.path().join("data");
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("state.txt"), "0").unwrap();
            std::fs::write(data.join("rw.txt"), "shared").unwrap();
            policy.mount_read_write("data", data, &["/data"]);
        }
        _ => {}
    }
    if name == "escape_absolute" {
        policy.env("SECRET_PATH", sb.secret_path().to_str().unwrap());
    }
    (sb.run_for(name, &policy, target), sb)
}

fn golden(name: &str, log: &cachet_runtime::InputLog) -> String {
    let mut log = log.clone();
    if name == "escape_absolute" {
        // SECRET_PATH names a fresh temp dir each run, so the digest of the
        // whole environment changes; everything else stays exact.
        for e in &mut log.entries {
            if let Entry::Environ(o) = e {
                *o = Observation::Digest(cachet_runtime::Sha256Digest([0; 32]));
            }
        }
    }
    // Modification times on read-write mounts are those of files the test
    // setup just made; everything else stays exact.
    log.render()
        .lines()
        .map(|l| match l.split_once(" mtime=") {
            Some((head, _)) => format!("{head} mtime=N\n"),
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn fixtures_end_as_expected_with_exact_input_logs() {
    every_fixture_ends_as_expected(TARGET);
}

/// The same fixtures built as preview 2 components: the same outcomes and
/// the same logs, except where `runtime/tests/golden/p2/` holds a log of
/// its own (the differences docs/design/sandbox.md lists).
#[test]
fn components_end_as_the_modules_do_with_the_same_input_logs() {
    every_fixture_ends_as_expected(TARGET_P2);
}

fn every_fixture_ends_as_expected(target: &str) {
    let bless = std::env::var_os("CACHET_BLESS").is_some();
    let only = std::env::var("CACHET_FIXTURE").ok();
    let mut failures = Vec::new();
    for &(name, expect) in EXPECTED {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let (outcome, _sb) = run(name, expect, target);
        let out = text(&outcome);
        let ok = match (expect, &outcome.status) {
            (Expect::Pass, s) => s.passed(),
            // WASI 0.2's `exit` says only success or failure, which the
            // wasmtime CLI reports as status 1 too.
            (Expect::Exit(c), Status::Exited(got)) => {
                c == *got || (target == TARGET_P2 && c != 0 && *got == 1)
            }
            (Expect::Trap(msg), Status::Trapped { .. }) => {
                out.contains(msg) && out.contains("panicked at")
            }
            (Expect::Timeout, Status::Timeout(_)) => true,
            (Expect::MemoryLimit, Status::MemoryLimit(_)) => true,
            (Expect::OutputOverflow, Status::OutputOverflow(_)) => true,
            (Expect::ChangedDuringRun(_), s) => s.passed(),
            (Expect::StackOverflow, Status::StackOverflow { frames, .. }) => {
                frames.iter().any(|f| f.contains("depth"))
            }
            (Expect::ScratchLimit, Status::ScratchLimit(_)) => out.contains("stopped after 7 MiB"),
            (Expect::OpenFilesLimit, Status::OpenFilesLimit(_)) => {
                out.contains("refused after 64 open files")
            }
            (Expect::PassWithRwMount, s) => s.passed(),
            (Expect::PassHermetic, s) => s.passed() && outcome.elapsed < Duration::from_secs(2),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name} ({target}): expected {expect:?}, got {} with output:\n{out}",
                outcome.status
            ));
            continue;
        }
        let change = outcome.changed_during_run.as_ref().map(|c| c.to_string());
        match expect {
            Expect::ChangedDuringRun(want) => {
                let change = change.unwrap_or_default();
                assert!(
                    change.starts_with(want),
                    "{name}: changed_during_run is {change:?}, want {want:?}"
                );
            }
            _ => assert!(change.is_none(), "{name}: {change:?}"),
        }
        let got = golden(name, &outcome.log);
        let p1 = repo_root().join(format!("runtime/tests/golden/{name}.log"));
        let p2 = repo_root().join(format!("runtime/tests/golden/p2/{name}.log"));
        let path = match target {
            TARGET_P2 if p2.exists() => p2.clone(),
            _ => p1.clone(),
        };
        if bless {
            match target {
                TARGET_P2 if std::fs::read_to_string(&p1).ok().as_deref() == Some(&got) => {
                    let _ = std::fs::remove_file(&p2);
                }
                TARGET_P2 => std::fs::write(&p2, &got).unwrap(),
                _ => std::fs::write(&p1, &got).unwrap(),
            }
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{name} ({target}): input log differs from {}\n--- want\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
