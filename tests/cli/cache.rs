//! The result cache, tested as Go's test_cache_inputs.txt does: run, run
//! again -> (cached), change one input -> exactly the cases that read it run.
//! `--explain` names each case that ran, so "which ran" is exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{stderr, stdout};

/// A package dir with two prebuilt test modules, testdata, and its own cache.
struct Project {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Project {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("proj");
        std::fs::create_dir_all(p.join("testdata/listed")).unwrap();
        std::fs::copy(
            &cachet_testkit::fixture("suite_cachecases").wasm,
            p.join("cachecases.wasm"),
        )
        .unwrap();
        std::fs::copy(
            &cachet_testkit::fixture("suite_cachenoshim").wasm,
            p.join("noshim.wasm"),
        )
        .unwrap();
        std::fs::write(p.join("testdata/a.txt"), "alpha").unwrap();
        std::fs::write(p.join("testdata/b.txt"), "bravo").unwrap();
        std::fs::write(p.join("testdata/unread.txt"), "never read").unwrap();
        std::fs::write(p.join("testdata/listed/x"), "").unwrap();
        std::os::unix::fs::symlink("a.txt", p.join("testdata/link")).unwrap();
        Project {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("proj")
    }

    fn run_in(&self, dir: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["test", "-p", "1", "--explain"];
        args.extend(extra);
        crate::cachet_with(
            dir,
            &args,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }

    /// Runs and returns each case that ran, with why.
    fn ran(&self, extra: &[&str]) -> BTreeMap<String, String> {
        let o = self.run_in(&self.dir(), extra);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        ran_of(&stdout(&o))
    }
}

fn ran_of(out: &str) -> BTreeMap<String, String> {
    out.lines()
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

fn names(m: &BTreeMap<String, String>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

const ALL: [&str; 8] = [
    "tests::lists_dir",
    "tests::reads_a",
    "tests::reads_b",
    "tests::reads_env",
    "tests::reads_env_coarsely",
    "tests::reads_link",
    "tests::reads_maybe_missing",
    "tests::reads_nothing",
];

/// First run: every case runs, with "no cache entry"; second: none.
fn warmed() -> Project {
    let p = Project::new();
    let first = p.ran(&[]);
    assert_eq!(names(&first), ALL);
    assert!(
        first.values().all(|why| why == "no cache entry"),
        "{first:?}"
    );
    let o = p.run_in(&p.dir(), &[]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n");
    p
}

#[test]
fn same_size_content_change_with_mtime_put_back_reruns_its_reader() {
    let p = warmed();
    let a = p.dir().join("testdata/a.txt");
    let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
    std::fs::write(&a, "ALPHA").unwrap();
    std::fs::File::options()
        .append(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let ran = p.ran(&[]);
    assert_eq!(names(&ran), ["tests::reads_a"]);
    assert!(
        ran["tests::reads_a"].starts_with("open pkg/testdata/a.txt: content changed"),
        "{ran:?}"
    );
}

#[test]
fn directory_listing_missing_file_and_symlink_changes_rerun_their_readers() {
    let p = warmed();
    std::fs::write(p.dir().join("testdata/listed/y"), "").unwrap();
    let ran = p.ran(&[]);
    assert_eq!(names(&ran), ["tests::lists_dir"]);
    assert!(
        ran["tests::lists_dir"].starts_with("readdir pkg/testdata/listed: listing changed"),
        "{ran:?}"
    );

    std::fs::write(p.dir().join("testdata/maybe.txt"), "here now").unwrap();
    let ran = p.ran(&[]);
    assert_eq!(names(&ran), ["tests::reads_maybe_missing"]);
    assert!(
        ran["tests::reads_maybe_missing"].starts_with("open pkg/testdata/maybe.txt: now exists"),
        "{ran:?}"
    );

    let link = p.dir().join("testdata/link");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("b.txt", &link).unwrap();
    let ran = p.ran(&[]);
    assert_eq!(names(&ran), ["tests::reads_link"]);
    assert!(
        ran["tests::reads_link"].starts_with("readlink pkg/testdata/link: target changed"),
        "{ran:?}"
    );
}

#[test]
fn env_changes_rerun_precise_readers_with_the_shim_and_all_without() {
    let p = warmed();
    let ran = p.ran(&["--env", "CACHE_VAR=1"]);
    assert_eq!(
        names(&ran),
        ["tests::reads_env", "tests::reads_env_coarsely"]
    );
    assert!(
        ran["tests::reads_env"].starts_with("env CACHE_VAR: now set"),
        "{ran:?}"
    );
    assert!(
        ran["tests::reads_env_coarsely"].starts_with("environ: value changed"),
        "{ran:?}"
    );
    assert!(p.ran(&["--env", "CACHE_VAR=1"]).is_empty());
    let ran = p.ran(&["--env", "CACHE_VAR=2"]);
    assert!(
        ran["tests::reads_env"].starts_with("env CACHE_VAR: value changed"),
        "{ran:?}"
    );
    // A variable no shimmed case reads only reruns the module without the shim.
    let ran = p.ran(&["--env", "CACHE_VAR=2", "--env", "UNRELATED=x"]);
    assert_eq!(names(&ran), ["tests::reads_env_coarsely"]);
}

#[test]
fn module_mount_layout_and_args_are_in_the_key() {
    let p = warmed();
    // A rebuilt module with a real change: a custom section appended.
    let wasm = p.dir().join("cachecases.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(&[0, 6, 5, b'c', b'h', b'a', b'n', b'g']);
    std::fs::write(&wasm, bytes).unwrap();
    let ran = p.ran(&[]);
    assert_eq!(ran.len(), 7, "every case of the rebuilt module: {ran:?}");
    assert!(!ran.contains_key("tests::reads_env_coarsely"));
    assert!(ran.values().all(|why| why == "module changed"), "{ran:?}");

    let data = tempfile::tempdir().unwrap();
    let mount = format!("{}:/data", data.path().display());
    let ran = p.ran(&["--mount", &mount]);
    assert_eq!(names(&ran), ALL);
    assert!(
        ran.values().all(|why| why == "mount layout changed"),
        "{ran:?}"
    );

    let ran = p.ran(&["--", "--color", "never"]);
    assert_eq!(names(&ran), ALL);
    assert!(ran.values().all(|why| why == "args changed"), "{ran:?}");

    // Flags that are not in the key do not rerun anything.
    assert!(p.ran(&["--timeout", "1m", "--failfast", "-v"]).is_empty());
    // --count bypasses the cache, as go test -count=1.
    assert_eq!(p.ran(&["--count", "1"]).len(), ALL.len());
}

#[test]
fn no_needless_reruns() {
    let p = warmed();
    std::fs::write(
        p.dir().join("testdata/unread.txt"),
        "changed, but nobody reads it",
    )
    .unwrap();
    assert!(p.ran(&[]).is_empty(), "an unread file");

    std::fs::write(p.dir().join("testdata/b.txt"), "BRAVO!").unwrap();
    assert_eq!(
        names(&p.ran(&[])),
        ["tests::reads_b"],
        "only the reader of b"
    );

    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for f in ["a.txt", "b.txt", "unread.txt", "listed/x", "listed", "."] {
        std::fs::File::open(p.dir().join("testdata").join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    assert!(p.ran(&[]).is_empty(), "mtimes are not inputs");

    // The whole project copied elsewhere: new paths, new mtimes.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("moved/proj");
    cachet_testkit::copy_tree(&p.dir(), &copy).unwrap();
    let o = p.run_in(&copy, &[]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n", "{}", stderr(&o));
}

#[test]
fn damaged_entries_are_misses_with_a_warning() {
    let p = warmed();
    let mut flipped = 0;
    for kind in ["logs", "results"] {
        for shard in std::fs::read_dir(p.cache.path().join("results").join(kind)).unwrap() {
            for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                let mut bytes = std::fs::read(&path).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 0x40;
                std::fs::write(&path, bytes).unwrap();
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0);
    let o = p.run_in(&p.dir(), &[]);
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains("cachet: warning: cache entry") && err.contains("is corrupt"),
        "{err}"
    );
    assert_eq!(
        ran_of(&stdout(&o)).len(),
        ALL.len(),
        "every damaged entry is a miss"
    );
    // Replaced by the reruns: cached again, with no warning.
    let o = p.run_in(&p.dir(), &[]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn verify_reruns_cached_cases_and_agrees() {
    let p = warmed();
    let ran = p.ran(&["--verify"]);
    assert!(ran.is_empty(), "verify reports no miss: {ran:?}");
    let o = p.run_in(&p.dir(), &["--verify", "-v"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // Every case ran again (a cached result would say `(cached)`) and agreed.
    let out = stdout(&o);
    assert!(!out.contains("(cached)"), "{out}");
    let verdicts = out.matches("--- PASS: ").count() + out.matches("--- SKIP: ").count();
    assert_eq!(verdicts, ALL.len(), "{out}");
}

#[test]
fn concurrent_processes_share_one_cache() {
    let p = Project::new();
    let bin = assert_cmd::cargo::cargo_bin("cachet");
    let _ = p.run_in(&p.dir(), &["--list", "."]); // binary current, modules compiled
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&bin)
                .current_dir(p.dir())
                .env("CACHET_CACHE", p.cache.path())
                .args(["test", "-p", "2", "."])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        let out = stdout(&o);
        assert!(out.starts_with("ok  \t.\t"), "{out}");
    }
    let o = p.run_in(&p.dir(), &[]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n", "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_wrong_or_corrupt_result() {
    let p = Project::new();
    let bin = assert_cmd::cargo::cargo_bin("cachet");
    let _ = p.run_in(&p.dir(), &["--list", "."]);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..50 {
        // Alternate inputs so that kills land in saves of different entries.
        std::fs::write(p.dir().join("testdata/a.txt"), format!("alpha {}", i % 3)).unwrap();
        let mut child = std::process::Command::new(&bin)
            .current_dir(p.dir())
            .env("CACHET_CACHE", p.cache.path())
            .args(["test", "-p", "2", "."])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(seed % 120));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    std::fs::write(p.dir().join("testdata/a.txt"), "alpha 1").unwrap();
    let o = p.run_in(&p.dir(), &["-v"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(stderr(&o), "", "no corrupt entry after 50 kills");
    assert_eq!(stdout(&o).matches("--- PASS").count(), ALL.len());
    // Whatever came from the cache agrees with a fresh run.
    let o = p.run_in(&p.dir(), &["--verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn verify_catches_a_nondeterministic_test() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    std::fs::copy(
        &cachet_testkit::fixture("suite_nondet").wasm,
        root.path().join("nondet.wasm"),
    )
    .unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let run = |args: &[&str]| crate::cachet_with(root.path(), args, &env);
    assert_eq!(run(&["test", "."]).status.code(), Some(0));
    assert_eq!(stdout(&run(&["test", "."])), "ok  \t.\t(cached)\n");
    let o = run(&["test", "--verify", "."]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("--- FAIL: tests::prints_the_time"), "{out}");
    assert!(
        out.contains("cachet: verify: the output differs from the cached result: the test is nondeterministic or read an input cachet did not record"),
        "{out}"
    );
}

#[test]
fn inputs_prints_the_recorded_log_and_clean_forgets_results() {
    let p = warmed();
    let env = [("CACHET_CACHE", p.cache.path().to_str().unwrap())];
    let o = crate::cachet_with(&p.dir(), &["inputs", ".", "tests::reads_a"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let a = cachet_runtime::Sha256Digest::of(b"alpha");
    assert_eq!(
        out,
        format!(
            "== . tests::reads_a\ncachet-input-log v2\nenv TERM unset\nuses clock\nopen pkg/testdata/a.txt {a}\nstat pkg/testdata/a.txt file size=5\n"
        )
    );
    let all = stdout(&crate::cachet_with(&p.dir(), &["inputs", "."], &env));
    assert_eq!(all.matches("== . ").count(), ALL.len(), "{all}");
    assert!(
        all.contains("readdir pkg/testdata/listed sha256:")
            && all.contains("readlink pkg/testdata/link target=a.txt"),
        "{all}"
    );

    // Cranelift's code is kept on disk (the default tier keeps it only for
    // modules whose runs outlast its compile).
    let o = crate::cachet_with(
        &p.dir(),
        &["test", "--tier", "cranelift", "--count", "1", "."],
        &env,
    );
    assert_eq!(o.status.code(), Some(0));
    let o = crate::cachet_with(&p.dir(), &["clean", "--results"], &env);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        std::fs::read_dir(p.cache.path().join("compiled"))
            .unwrap()
            .count()
            > 0,
        "compiled modules are kept"
    );
    assert_eq!(p.ran(&[]).len(), ALL.len(), "every result is gone");
    let o = crate::cachet_with(&p.dir(), &["clean"], &env);
    assert_eq!(o.status.code(), Some(0));
    assert!(!p.cache.path().exists());
}

#[test]
fn a_result_whose_input_changed_during_the_run_is_not_cached() {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("state.txt"), "0").unwrap();
    std::fs::write(data.join("rw.txt"), "shared").unwrap();
    std::fs::copy(
        &cachet_testkit::fixture("fs_changes_input").wasm,
        root.path().join("changes.wasm"),
    )
    .unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let mount = format!("{}:/data:rw", data.display());
    for _ in 0..2 {
        let o = crate::cachet_with(
            root.path(),
            &["test", "--mount", &mount, "changes.wasm"],
            &env,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.starts_with(
                "cachet: changes_its_own_input: not cached: open data/state.txt: content changed"
            ),
            "{out}"
        );
        assert!(
            out.contains(" during the run\n") && !out.contains("(cached)"),
            "{out}"
        );
    }
}

#[test]
fn json_reports_cached_packages() {
    let p = warmed();
    let env = [("CACHET_CACHE", p.cache.path().to_str().unwrap())];
    let o = crate::cachet_with(&p.dir(), &["test", "--json", "."], &env);
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outputs: String = events
        .iter()
        .filter(|e| e["Test"].is_null())
        .filter_map(|e| e["Output"].as_str())
        .collect();
    assert!(outputs.contains("ok  \t.\t(cached)\n"), "{outputs}");
    let passed = events
        .iter()
        .filter(|e| e["Action"] == "pass" && !e["Test"].is_null())
        .count();
    assert_eq!(passed, ALL.len(), "an event for every cached case");
}
