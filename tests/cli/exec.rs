//! `cachet exec` (issue 9): a module run as if directly but sandboxed, and
//! the runner behind `go test -exec` and cargo's
//! `CARGO_TARGET_WASM32_WASIP1_RUNNER`, whose second `go test` / `cargo
//! test` is served from cachet's cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use cachet_testkit::{copy_tree, fixture, go_command, repo_root};

use crate::{cachet_bin, cachet_with, stderr, stdout};

/// `cachet exec` in `dir` with `args`, a fresh cache.
fn exec(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["exec"];
    all.extend(args);
    cachet_with(dir, &all, &[])
}

fn probe() -> String {
    fixture("exec_probe").wasm.to_str().unwrap().to_string()
}

#[test]
fn exec_runs_a_module_as_if_directly_but_sandboxed() {
    let dir = &fixture("exec_probe").dir;
    let o = exec(
        dir,
        &[
            "--env",
            "EXEC_PROBE_EXIT=7",
            &probe(),
            "--nocapture",
            "--exact",
            "probe",
        ],
    );
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(7),
        "the exit status passes through\n{out}"
    );
    // stdout and stderr apart, byte for byte.
    assert_eq!(stderr(&o), "to stderr\n");
    let cwd = std::fs::canonicalize(dir).unwrap();
    for line in [
        "env: EXEC_PROBE_EXIT,PWD\n".to_string(),
        format!("pwd: {}\n", cwd.display()),
        "read Cargo.toml: ".into(),
        format!("read {}/Cargo.toml: ", cwd.display()),
        "read /etc/passwd: denied\n".into(),
        "write ./probe-write.txt: denied\n".into(),
        "write /tmp/probe.txt: allowed\n".into(),
    ] {
        assert!(out.contains(&line), "{line:?} in:\n{out}");
    }
    assert!(!out.contains("Cargo.toml: denied"), "{out}");
    assert!(!dir.join("probe-write.txt").exists());
}

#[test]
fn exec_mounts_exactly_what_is_asked() {
    let dir = &fixture("exec_probe").dir;
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f"), "hello").unwrap();
    let host = data.path().to_str().unwrap();
    let read = |mount: &[&str], path: &str| {
        let mut args: Vec<&str> = mount.to_vec();
        let env = format!("EXEC_PROBE_READ={path}");
        args.extend(["--env", &env]);
        let wasm = probe();
        args.extend([wasm.as_str(), "--nocapture", "--exact", "probe"]);
        let o = exec(dir, &args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let want = format!("read {path}: ");
        stdout(&o)
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&want).map(str::to_string))
            .unwrap()
    };
    assert_eq!(read(&[], "/data/f"), "denied");
    let at_data = format!("{host}::/data");
    assert_eq!(read(&["--dir", &at_data], "/data/f"), "5 bytes");
    assert_eq!(read(&["--dir", host], &format!("{host}/f")), "5 bytes");
    // The whole host at `/` only when asked for (read-only).
    assert!(read(&["--dir", "/::/"], "/etc/passwd").contains("bytes"));

    // Mistakes are one line and exit 2.
    for (args, want) in [
        (vec!["--dir", "x::relative"], "invalid --dir"),
        (
            vec![
                "--mount",
                &format!("{host}:/d"),
                "--dir",
                &format!("{host}::/d"),
            ],
            "two mounts at /d",
        ),
    ] {
        let mut all = args.clone();
        all.push("m.wasm");
        let o = exec(dir, &all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// A plain WASI program that prints its environment (`environ_get`, one
/// variable a line) and, for fds 3 to 6, its preopen's name or the errno of
/// `fd_prestat_get` (8 is EBADF), as `fd N: NAME` / `fd N: errno E`.
const SEES: &str = r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 16: nwritten; 32: counts; 64: line "fd N: "; 128: environ
  ;; pointers; 1024: environ strings; 4096: a preopen's name
  (data (i32.const 64) "fd 0: errno 0\0a")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func $strlen (param $at i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $at) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "_start") (local $i i32) (local $at i32) (local $fd i32) (local $err i32)
    (drop (call $sizes (i32.const 32) (i32.const 36)))
    (drop (call $environ (i32.const 128) (i32.const 1024)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 32))))
      (local.set $at (i32.load (i32.add (i32.const 128) (i32.mul (local.get $i) (i32.const 4)))))
      (call $print (local.get $at) (call $strlen (local.get $at)))
      (i32.store8 (i32.const 48) (i32.const 10))
      (call $print (i32.const 48) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.set $fd (i32.const 3))
    (block $done (loop $next
      (br_if $done (i32.gt_u (local.get $fd) (i32.const 6)))
      (i32.store8 (i32.const 67) (i32.add (i32.const 48) (local.get $fd)))
      (local.set $err (call $prestat (local.get $fd) (i32.const 40)))
      (if (i32.eqz (local.get $err))
        (then
          (drop (call $name (local.get $fd) (i32.const 4096) (i32.load (i32.const 44))))
          (call $print (i32.const 64) (i32.const 6))
          (call $print (i32.const 4096) (i32.load (i32.const 44)))
          (call $print (i32.const 77) (i32.const 1)))
        (else
          (i32.store8 (i32.const 76) (i32.add (i32.const 48) (local.get $err)))
          (call $print (i32.const 64) (i32.const 14))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $next)))))
"#;

#[test]
fn issue_16_exec_gives_a_program_exactly_the_flags() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("sees.wasm"), wat::parse_str(SEES).unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let at_data = format!("{}::/data", data.path().display());
    // As `wasmtime run` gives it: no PWD, no TMPDIR, no current directory,
    // no /tmp; the preopens in the order given, from fd 3.
    let o = exec(work.path(), &["sees.wasm"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "fd 3: errno 8\nfd 4: errno 8\nfd 5: errno 8\nfd 6: errno 8\n"
    );
    let o = exec(
        work.path(),
        &[
            "--env",
            "A=1",
            "--env",
            "B=two",
            "--dir",
            &at_data,
            "--dir",
            "/::/",
            "sees.wasm",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // One addition, after the preopens asked for: a program given the
    // host's `/` finds cachet's devices at `/dev` (the host's device files
    // are refused), where `wasmtime run` would give it the host's.
    assert_eq!(
        stdout(&o),
        "A=1\nB=two\nfd 3: /data\nfd 4: /\nfd 5: /dev\nfd 6: errno 8\n"
    );
    let o = exec(
        work.path(),
        &["--env", "A=1", "--dir", &at_data, "sees.wasm"],
    );
    assert_eq!(
        stdout(&o),
        "A=1\nfd 3: /data\nfd 4: errno 8\nfd 5: errno 8\nfd 6: errno 8\n"
    );
}

#[test]
fn mount_names_do_not_collide_and_root_is_refused_clearly() {
    let wasm = fixture("scratch_write_read").wasm.to_str().unwrap();
    let d = tempfile::tempdir().unwrap();
    let host = d.path().to_str().unwrap();
    // Each was a collision of log names before (with the package's `pkg`, and
    // `/a-b` with `/a/b`), which failed every case with exit 1.
    let (pkg, ab, a_b) = (
        format!("{host}:/pkg"),
        format!("{host}:/a-b"),
        format!("{host}:/a/b"),
    );
    let o = cachet_with(
        &repo_root(),
        &[
            "test", "--mount", &pkg, "--mount", &ab, "--mount", &a_b, wasm,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let root = format!("{host}:/");
    let o = cachet_with(&repo_root(), &["test", "--mount", &root, wasm], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is cachet's own"),
        "says why, not 'absolute GUEST path': {}",
        stderr(&o)
    );
}

/// A copy of the Go fixture module and a cache, for `go test -exec`.
struct GoRun {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl GoRun {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("fixtures/go"), &root.path().join("m")).unwrap();
        GoRun {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn go_test(
        &self,
        exec: Option<&str>,
        env: &[(&str, &str)],
    ) -> (Output, BTreeMap<String, String>) {
        let mut cmd = go_command();
        cmd.current_dir(self.root.path().join("m"))
            .args(["test", "-json"])
            .env("CACHET_CACHE", self.cache.path())
            .envs(env.iter().copied());
        if let Some(e) = exec {
            cmd.args(["-exec", e])
                .env("GOOS", "wasip1")
                .env("GOARCH", "wasm");
        }
        let o = cmd.args(["./mixed", "./clean"]).output().unwrap();
        let verdicts = verdicts(&stdout(&o));
        (o, verdicts)
    }
}

/// Each test's final action in a `go test -json` stream, by package.
fn verdicts(json: &str) -> BTreeMap<String, String> {
    crate::json_verdicts(json)
        .into_iter()
        .filter_map(|(package, test, action)| {
            let pkg = package.rsplit('/').next()?.to_string();
            Some((format!("{pkg} {test}"), action))
        })
        .collect()
}

/// The `cachet exec: N of M cases from the cache` line of each package in a
/// `go test -json` stream.
fn summaries(json: &str) -> BTreeMap<String, String> {
    json.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let out = e["Output"].as_str()?;
            let pkg = e["Package"].as_str()?.rsplit('/').next()?;
            (out.starts_with("cachet exec: ") && out.contains("from the cache"))
                .then(|| (pkg.to_string(), out.trim_end().to_string()))
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> BTreeMap<String, String> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn go_test_exec_gains_the_cache_unchanged() {
    let go = GoRun::new();
    let greeting = [("CACHET_GREETING", "hello")];
    let (_, native) = go.go_test(None, &greeting);
    let runner = format!(
        "{} exec --summary --env CACHET_GREETING=hello",
        cachet_bin().display()
    );
    let (first, verdicts) = go.go_test(Some(&runner), &[]);
    // Natively, TestPanics ends the binary and the tests after it never
    // run; under cachet each test has its own instance, so they do. Every
    // verdict native go test has is the same; the rest are `cachet test`'s,
    // which go.rs checks against native runs one test at a time.
    for (test, verdict) in &native {
        assert_eq!(verdicts.get(test), Some(verdict), "{test}");
    }
    let o = cachet_with(
        &go.root.path().join("m"),
        &[
            "test",
            "--json",
            "--env",
            "CACHET_GREETING=hello",
            "./mixed",
            "./clean",
        ],
        &[],
    );
    assert_eq!(verdicts, self::verdicts(&stdout(&o)), "as cachet test");
    assert_eq!(
        summaries(&stdout(&first)),
        pairs(&[
            ("mixed", "cachet exec: 0 of 12 cases from the cache"),
            ("clean", "cachet exec: 0 of 4 cases from the cache")
        ])
    );
    let (second, again) = go.go_test(Some(&runner), &[]);
    assert_eq!(again, verdicts, "the same verdicts from the cache");
    assert_eq!(
        summaries(&stdout(&second)),
        pairs(&[
            ("mixed", "cachet exec: 7 of 12 cases from the cache"),
            ("clean", "cachet exec: 4 of 4 cases from the cache")
        ]),
        "every passing case from cachet's cache (failures always rerun)"
    );

    // A testdata change reruns only the test that reads it.
    let words = go.root.path().join("m/mixed/testdata/words.txt");
    let text = std::fs::read_to_string(&words).unwrap();
    std::fs::write(&words, text.replacen(' ', "_", 1)).unwrap();
    let (third, changed) = go.go_test(Some(&runner), &[]);
    assert_eq!(changed["mixed TestReadsTestdata"], "fail");
    assert_eq!(
        summaries(&stdout(&third))["mixed"],
        "cachet exec: 6 of 12 cases from the cache"
    );
}

/// Under `go test -exec`, a long run goes apart as under `cachet test`:
/// the heavy-init package's cases share one instance, which runs in a
/// child process on code without time checks (`--summary` says so);
/// `--long-runs here` keeps it in cachet's process; the verdicts are the
/// same. The binary is invoked as `go test` invokes it.
#[test]
fn go_test_exec_runs_a_long_run_apart() {
    let go = GoRun::new();
    let bin = go.root.path().join("heavyinit.test");
    let built = go_command()
        .current_dir(go.root.path().join("m"))
        .args(["test", "-c", "-o", bin.to_str().unwrap(), "./heavyinit"])
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    let run = |long_runs: &str| {
        let cache = tempfile::tempdir().unwrap();
        let o = cachet_with(
            &go.root.path().join("m/heavyinit"),
            &[
                "exec",
                "--summary",
                bin.to_str().unwrap(),
                "-test.paniconexit0",
                "-test.timeout=10m0s",
                "-test.v=true",
            ],
            &[
                ("CACHET_CACHE", cache.path().to_str().unwrap()),
                ("CACHET_LONG_RUNS", long_runs),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        let passed: Vec<String> = stdout(&o)
            .lines()
            .filter(|l| l.starts_with("--- ") || *l == "PASS")
            .map(|l| l.split(" (").next().unwrap().to_string())
            .collect();
        (passed, stderr(&o))
    };
    let (apart, said) = run("apart");
    assert!(
        said.contains("cachet exec: 2 runs apart in ")
            && said.contains(" (on code without time checks)"),
        "{said}"
    );
    let (here, said) = run("here");
    assert!(!said.contains("apart"), "{said}");
    assert_eq!(apart, here);
    assert_eq!(apart.len(), 4, "three tests and PASS: {apart:?}");
}

#[test]
fn go_finds_cachet_as_its_wasip1_runner_on_path() {
    let go = GoRun::new();
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(cachet_bin(), bin.path().join("go_wasip1_wasm_exec")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        cachet_testkit::path_with_go()
    );
    let env = [
        ("PATH", path.as_str()),
        ("GOOS", "wasip1"),
        ("GOARCH", "wasm"),
        ("CACHET_EXEC_SUMMARY", "1"),
    ];
    let (first, _) = go.go_test(None, &env);
    assert_eq!(
        summaries(&stdout(&first))["clean"],
        "cachet exec: 0 of 4 cases from the cache",
    );
    let (second, verdicts) = go.go_test(None, &env);
    assert_eq!(
        summaries(&stdout(&second))["clean"],
        "cachet exec: 4 of 4 cases from the cache"
    );
    assert_eq!(verdicts["clean "], "pass");
}

/// The demo `wordcount` crate, copied out of the fixtures workspace as a
/// crate of its own, with its own target dir.
fn wordcount() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&repo_root().join("fixtures/demo/wordcount"), root.path()).unwrap();
    std::fs::write(
        root.path().join("Cargo.toml"),
        "[package]\nname = \"demo-wordcount\"\nedition = \"2021\"\nversion = \"0.0.0\"\n\n[workspace]\n",
    )
    .unwrap();
    (root, tempfile::tempdir().unwrap())
}

/// `cargo test --target TARGET` with cachet as that target's runner.
fn cargo_test_for(root: &Path, cache: &Path, extra: &[&str], target: &str) -> Output {
    let runner = format!(
        "{} exec --summary --env TMPDIR=/tmp",
        cachet_bin().display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(root)
        .args(["test", "--quiet", "--target", target])
        .args(extra)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env(
            format!(
                "CARGO_TARGET_{}_RUNNER",
                target.to_uppercase().replace('-', "_")
            ),
            runner,
        )
        .env("CACHET_CACHE", cache)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap()
}

#[test]
fn cargo_runner_gains_the_cache_unchanged() {
    cargo_runner_gains_the_cache_unchanged_for("wasm32-wasip1");
}

/// Issue 18: cachet exec as `CARGO_TARGET_WASM32_WASIP2_RUNNER`, running
/// the test binaries cargo builds as components.
#[test]
fn cargo_runner_for_wasip2_components_gains_the_cache_unchanged() {
    cargo_runner_gains_the_cache_unchanged_for("wasm32-wasip2");
}

fn cargo_runner_gains_the_cache_unchanged_for(target: &str) {
    let cargo_test =
        |root: &Path, cache: &Path, extra: &[&str]| cargo_test_for(root, cache, extra, target);
    let (root, cache) = wordcount();
    let first = cargo_test(root.path(), cache.path(), &[]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    assert!(stdout(&first)
        .contains("test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"));
    assert!(stderr(&first).contains("cachet exec: 0 of 3 cases from the cache"));
    let second = cargo_test(root.path(), cache.path(), &[]);
    assert!(stderr(&second).contains("cachet exec: 3 of 3 cases from the cache"));
    assert!(stdout(&second).contains("test result: ok. 3 passed;"));

    // A filter selects as libtest does; the rest are `filtered out`.
    let filtered = cargo_test(root.path(), cache.path(), &["counts"]);
    assert!(stdout(&filtered).contains("2 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out"));
    assert!(stderr(&filtered).contains("cachet exec: 2 of 2 cases from the cache"));

    // A changed input reruns the one test that read it, which now fails as a
    // direct run would, with libtest's failure report and status.
    let corpus = root.path().join("testdata/corpus");
    let first_file = std::fs::read_dir(&corpus)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&first_file).unwrap();
    std::fs::write(&first_file, text.replace("wasm", "wasn")).unwrap();
    let changed = cargo_test(root.path(), cache.path(), &[]);
    assert_eq!(changed.status.code(), Some(101));
    let out = stdout(&changed);
    assert!(
        out.contains("---- tests::counts_the_corpus stdout ----"),
        "{out}"
    );
    assert!(
        out.contains("failures:\n    tests::counts_the_corpus\n"),
        "{out}"
    );
    assert!(stderr(&changed).contains("cachet exec: 2 of 3 cases from the cache"));
}
