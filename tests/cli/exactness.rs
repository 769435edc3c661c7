//! The cache's exactness, round two (issue 8), through the binary. Each test
//! is a case that was served stale (or reran needlessly, or cried wolf)
//! before: run, run again, change the world the way the issue found, and
//! check what runs and what it reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use cachet_testkit::{fixture_for, with_find_dev, TARGET, TARGET_P2};

use crate::{cachet_with, stderr, stdout};

/// A package holding the `suite_exactness` module, its testdata, a
/// read-write `data` dir beside it, and a cache of its own.
struct World {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl World {
    fn new(target: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let pkg = root.path().join("pkg");
        std::fs::create_dir_all(pkg.join("testdata")).unwrap();
        std::fs::create_dir_all(root.path().join("data")).unwrap();
        std::fs::copy(
            &fixture_for("suite_exactness", target).wasm,
            pkg.join("exactness.wasm"),
        )
        .unwrap();
        std::fs::write(pkg.join("testdata/value.txt"), "A").unwrap();
        std::fs::write(root.path().join("data/input.txt"), "input").unwrap();
        World {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn cachet(&self, args: &[&str]) -> Output {
        let mount = format!("{}:/data:rw", self.path("data").display());
        let mut all = vec!["test", "-p", "1", "--explain", "--mount", &mount];
        all.extend(args);
        all.push("pkg");
        cachet_with(
            self.root.path(),
            &all,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }

    /// Runs the cases matching `run`: which ran and why, and the whole output.
    fn ran(&self, run: &str) -> (BTreeMap<String, String>, Output) {
        let o = self.cachet(&["--run", run]);
        let ran = stdout(&o)
            .lines()
            .filter_map(|l| l.strip_prefix("cachet: explain: pkg: "))
            .filter_map(|l| l.split_once(" ran: "))
            .map(|(case, why)| (case.to_string(), why.to_string()))
            .collect();
        (ran, o)
    }
}

/// Each scenario runs with the module built for WASI preview 1 and again
/// with it built as a preview 2 component (issue 18): the cache is as exact
/// for both.
macro_rules! for_both_targets {
    ($($name:ident),* $(,)?) => {
        mod preview1 {
            $( #[test] fn $name() { super::$name(super::TARGET) } )*
        }
        mod preview2 {
            $( #[test] fn $name() { super::$name(super::TARGET_P2) } )*
        }
    };
}

for_both_targets!(
    issue_8_rw_mount_operations_that_restore_the_world_are_cached_and_depend_on_it,
    issue_8_a_run_that_changes_a_rw_mount_is_not_cached,
    issue_8_hard_links_between_a_mount_and_scratch_are_refused,
    issue_8_an_input_changed_and_changed_back_during_the_run_is_not_cached,
    issue_8_symlink_targets_are_logged_byte_for_byte,
    issue_8_a_special_file_swapped_for_another_kind_reruns,
    issue_8_the_module_file_name_is_in_the_key,
    issue_8_two_packages_with_the_same_module_keep_their_own_logs,
    issue_8_verify_compares_whole_outputs_longer_than_the_cache_keeps,
    issue_8_interrupted_saves_and_runs_leave_nothing_behind,
    issue_8_a_fresh_clone_of_a_cargo_package_hits_the_cache,
);

fn case(name: &str) -> String {
    format!("tests::{name}")
}

fn issue_8_rw_mount_operations_that_restore_the_world_are_cached_and_depend_on_it(target: &str) {
    let w = World::new(target);
    for name in [
        "rw_creates_exclusively_and_cleans_up",
        "rw_makes_and_removes_a_dir",
    ] {
        let (ran, o) = w.ran(&format!("^tests::{name}$"));
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        assert_eq!(ran.len(), 1, "{name}: {}", stdout(&o));
        let (ran, o) = w.ran(&format!("^tests::{name}$"));
        assert!(
            ran.is_empty(),
            "{name}: the world is as it was: cached\n{}",
            stdout(&o)
        );
    }
    // What they depended on changes: the lock is taken, the dir exists.
    std::fs::write(w.path("data/lock"), "someone else's").unwrap();
    std::fs::create_dir(w.path("data/work")).unwrap();
    for (name, why) in [
        (
            "rw_creates_exclusively_and_cleans_up",
            "open data/lock: now exists",
        ),
        ("rw_makes_and_removes_a_dir", "lstat data/work: now exists"),
    ] {
        let (ran, o) = w.ran(&format!("^tests::{name}$"));
        assert!(ran[&case(name)].starts_with(why), "{name}: {ran:?}");
        assert_eq!(o.status.code(), Some(1), "a real run fails: {}", stdout(&o));
    }
}

fn issue_8_a_run_that_changes_a_rw_mount_is_not_cached(target: &str) {
    let w = World::new(target);
    let (_, o) = w.ran("^tests::rw_leaves_a_file_behind$");
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("cachet: tests::rw_leaves_a_file_behind: not cached: open data/out.txt: now exists (was notfound, now sha256:"),
        "{}",
        stdout(&o)
    );
    let (ran, _) = w.ran("^tests::rw_leaves_a_file_behind$");
    assert_eq!(ran.len(), 1, "still not cached");
}

fn issue_8_hard_links_between_a_mount_and_scratch_are_refused(target: &str) {
    let w = World::new(target);
    let (ran, o) = w.ran("^tests::rw_hard_links_across_mounts_fail$");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        ran.keys().collect::<Vec<_>>(),
        [&case("rw_hard_links_across_mounts_fail")],
        "the case ran (and passed: both links were refused)"
    );
    assert!(!w.path("data/mine").exists());
}

fn issue_8_an_input_changed_and_changed_back_during_the_run_is_not_cached(target: &str) {
    let w = World::new(target);
    let value = w.path("pkg/testdata/value.txt");
    let mount = format!("{}:/data:rw", w.path("data").display());
    let (mut cmd, _results) = crate::cachet_command(w.root.path(), &[]);
    let mut child = cmd
        .args([
            "test",
            "-v",
            "-p",
            "1",
            "--mount",
            &mount,
            "--run",
            "reads_then_waits",
            "pkg",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the case has read the file: change it, then put it back.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("read A") {
            break;
        }
    }
    std::fs::write(&value, "B").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::write(&value, "A").unwrap();
    std::io::Read::read_to_string(&mut out, &mut seen).unwrap();
    assert!(child.wait().unwrap().success(), "{seen}");
    assert!(
        seen.contains("cachet: not cached: open pkg/testdata/value.txt: changed during the run and changed back"),
        "{seen}"
    );
}

fn issue_8_symlink_targets_are_logged_byte_for_byte(target: &str) {
    use std::os::unix::ffi::OsStrExt;
    let w = World::new(target);
    let link = w.path("pkg/testdata/link");
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"\xff"), &link).unwrap();
    let (ran, _) = w.ran("reads_a_link");
    assert_eq!(ran.len(), 1);
    assert!(w.ran("reads_a_link").0.is_empty(), "cached");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("\u{FFFD}", &link).unwrap();
    let (ran, _) = w.ran("reads_a_link");
    assert!(
        ran[&case("reads_a_link")].starts_with(
            "readlink pkg/testdata/link: target changed (was target=%FF, now target=\u{FFFD})"
        ),
        "{ran:?}"
    );
}

fn issue_8_a_special_file_swapped_for_another_kind_reruns(target: &str) {
    let w = World::new(target);
    let special = w.path("pkg/testdata/special");
    let made = std::process::Command::new("mkfifo")
        .arg(&special)
        .status()
        .unwrap();
    assert!(made.success());
    let (ran, o) = w.ran("opens_a_special_file");
    assert_eq!((ran.len(), o.status.code()), (1, Some(0)), "{}", stdout(&o));
    assert!(w.ran("opens_a_special_file").0.is_empty(), "cached");
    std::fs::remove_file(&special).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(&special).unwrap();
    let (ran, o) = w.ran("opens_a_special_file");
    assert!(
        ran[&case("opens_a_special_file")].starts_with(
            "open pkg/testdata/special: type changed (was fifo size=0, now socket size=0)"
        ),
        "{ran:?}"
    );
    assert_eq!(o.status.code(), Some(0), "a socket is refused too");
    std::fs::remove_file(&special).unwrap();
    std::fs::write(&special, "a plain file opens").unwrap();
    let (ran, o) = w.ran("opens_a_special_file");
    assert_eq!(ran.len(), 1);
    assert_eq!(o.status.code(), Some(1), "it opens now, so the case fails");
}

fn issue_8_the_module_file_name_is_in_the_key(target: &str) {
    let w = World::new(target);
    let (ran, _) = w.ran("knows_its_name");
    assert_eq!(ran.len(), 1);
    assert!(w.ran("knows_its_name").0.is_empty(), "cached");
    std::fs::rename(w.path("pkg/exactness.wasm"), w.path("pkg/renamed.wasm")).unwrap();
    let (ran, o) = w.ran("knows_its_name");
    assert_eq!(
        ran[&case("knows_its_name")],
        "module file name changed (argv[0])",
        "{}",
        stdout(&o)
    );
}

fn issue_8_two_packages_with_the_same_module_keep_their_own_logs(target: &str) {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for (pkg, text) in [("one", "alpha"), ("two", "a different alpha")] {
        let dir = root.path().join(pkg);
        std::fs::create_dir_all(dir.join("testdata")).unwrap();
        std::fs::copy(
            &fixture_for("suite_cachecases", target).wasm,
            dir.join("cases.wasm"),
        )
        .unwrap();
        std::fs::write(dir.join("testdata/a.txt"), text).unwrap();
    }
    let run = |pkg: &str| {
        let o = cachet_with(
            root.path(),
            &["test", "--explain", "--run", "reads_a", pkg],
            &[("CACHET_CACHE", cache.path().to_str().unwrap())],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
        stdout(&o)
    };
    run("one");
    run("two");
    assert_eq!(
        run("one"),
        "ok  \tone\t(cached)\n",
        "two's run kept one's log"
    );
    assert_eq!(run("two"), "ok  \ttwo\t(cached)\n");
    std::fs::write(root.path().join("one/testdata/a.txt"), "changed").unwrap();
    assert!(
        run("one").contains("ran: open pkg/testdata/a.txt: content changed"),
        "explained by its own log"
    );
    assert_eq!(run("two"), "ok  \ttwo\t(cached)\n");
}

fn issue_8_verify_compares_whole_outputs_longer_than_the_cache_keeps(target: &str) {
    let w = World::new(target);
    let (_, o) = w.ran("prints_megabytes");
    assert_eq!(o.status.code(), Some(0));
    let o = w.cachet(&["--verify", "--run", "prints_megabytes$"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "deterministic: verified\n{}",
        &stdout(&o)[..2000.min(stdout(&o).len())]
    );
    // The difference is in the middle, which the cache does not keep.
    let o = w.cachet(&["--verify", "--run", "random_middle"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("cachet: verify: the output differs from the cached result"),
        "{}",
        stdout(&o)
    );
}

fn issue_8_interrupted_saves_and_runs_leave_nothing_behind(target: &str) {
    let w = World::new(target);
    let tmp = w.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let o = cachet_with(
        w.root.path(),
        &["test", "--run", "knows_its_name", "pkg"],
        &[
            ("CACHET_CACHE", w.cache.path().to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "no empty run dir left"
    );
    // What a killed save or compile leaves, an hour old; trimming is due.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    let results = w.cache.path().join("results");
    let compiled = w.cache.path().join("compiled");
    std::fs::create_dir_all(&compiled).unwrap();
    let strays = [
        results.join(".tmpAbCdEf"),
        results.join("tmp/.tmpGhIjKl"),
        compiled.join(".tmpMnOpQr"),
        compiled.join("cachet-compile-XyZ"),
    ];
    for stray in strays.iter().chain([&results.join("trimmed")]) {
        std::fs::write(stray, "partial").unwrap();
        set_mtime(stray, old - std::time::Duration::from_secs(24 * 3600));
    }
    let o = cachet_with(
        w.root.path(),
        &["test", "--run", "knows_its_name", "pkg"],
        &[("CACHET_CACHE", w.cache.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(0));
    for stray in &strays {
        assert!(!stray.exists(), "{} was left", stray.display());
    }
}

fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A cargo package with two tests reading testdata by relative path.
fn cargo_package(dir: &Path, embed: bool) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("testdata")).unwrap();
    std::fs::write(dir.join("testdata/input.txt"), "input").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"portable\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    let source = if embed {
        "#[test]\nfn reads_input() { let d = env!(\"CARGO_MANIFEST_DIR\"); assert_eq!(std::fs::read_to_string(format!(\"{d}/testdata/input.txt\")).unwrap(), \"input\"); }\n"
    } else {
        "#[test]\nfn reads_input() { assert_eq!(std::fs::read_to_string(\"testdata/input.txt\").unwrap(), \"input\"); }\n#[test]\nfn panics_never() { let r = std::panic::catch_unwind(|| 1); assert!(r.is_ok()); }\n"
    };
    std::fs::write(dir.join("src/lib.rs"), source).unwrap();
}

fn issue_8_a_fresh_clone_of_a_cargo_package_hits_the_cache(target: &str) {
    let root = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    cargo_package(&root.path().join("first/clone"), false);
    cargo_package(&root.path().join("first/embeds"), true);
    let o = cachet_with(
        &root.path().join("first"),
        &["test", "--target", target, "./..."],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // Another checkout, elsewhere, built from scratch.
    cargo_package(&root.path().join("elsewhere/deeper/clone"), false);
    cargo_package(&root.path().join("elsewhere/deeper/embeds"), true);
    let o = cachet_with(
        &root.path().join("elsewhere/deeper"),
        &["test", "--target", target, "--explain", "./..."],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("ok  \tclone\t(cached)\n"), "{out}");
    assert!(
        out.contains("cachet: explain: embeds: reads_input ran: module changed (the module embeds its package's absolute path, from env!(\"CARGO_MANIFEST_DIR\"), so its results are valid only in this checkout"),
        "{out}"
    );
}

/// A plain WASI program that finds its package's preopen (`.`) among fds
/// 3 to 8 and prints that directory's listing as `fd_readdir` gives it,
/// one name a line, in the order given.
const LISTS_DOT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 16: nwritten; 32: "\n"; 36: bytes used; 40: prestat;
  ;; 64: a preopen's name; 8192: the listing
  (data (i32.const 32) "\0a")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func (export "_start") (local $fd i32) (local $at i32) (local $end i32) (local $len i32)
    (local.set $fd (i32.const 3))
    (block $found (loop $next
      (if (i32.gt_u (local.get $fd) (i32.const 8)) (then unreachable))
      (if (i32.eqz (call $prestat (local.get $fd) (i32.const 40)))
        (then (if (i32.eq (i32.load (i32.const 44)) (i32.const 1))
          (then
            (drop (call $name (local.get $fd) (i32.const 64) (i32.const 1)))
            (br_if $found (i32.eq (i32.load8_u (i32.const 64)) (i32.const 46)))))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $next)))
    (if (call $readdir (local.get $fd) (i32.const 8192) (i32.const 8192) (i64.const 0) (i32.const 36))
      (then unreachable))
    (local.set $at (i32.const 8192))
    (local.set $end (i32.add (i32.const 8192) (i32.load (i32.const 36))))
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $at) (i32.const 24)) (local.get $end)))
      (local.set $len (i32.load (i32.add (local.get $at) (i32.const 16))))
      (call $print (i32.add (local.get $at) (i32.const 24)) (local.get $len))
      (call $print (i32.const 32) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.add (i32.const 24) (local.get $len))))
      (br $next)))))
"#;

#[test]
fn issue_16_a_guest_sees_a_directory_in_cachets_order_not_the_hosts() {
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let pkg = work.path().join("order");
    let make = |names: &[&str]| {
        let _ = std::fs::remove_dir_all(&pkg);
        std::fs::create_dir(&pkg).unwrap();
        std::fs::write(pkg.join("lists.wasm"), wat::parse_str(LISTS_DOT).unwrap()).unwrap();
        for n in names {
            std::fs::write(pkg.join(n), n).unwrap();
        }
    };
    let listing = |args: &[&str]| {
        let mut all = vec!["test", "-v"];
        all.extend(args);
        all.push("./order");
        let o = cachet_with(work.path(), &all, &env);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    let sorted = ".\n..\na\nb\nc\nf\nk\nlists.wasm\nm\nq\nx\nz\n";
    // Made in an order that is neither the sorted one nor its reverse (the
    // host lists newest first on tmpfs, in hash order on ext4).
    make(&["m", "c", "x", "a", "q", "f", "z", "b", "k"]);
    let first = listing(&[]);
    assert!(first.contains(sorted), "{first}");
    // The same entries made again in another order: the cached output is
    // what a fresh run prints.
    make(&["k", "z", "a", "f", "b", "x", "c", "q", "m"]);
    assert!(listing(&[]).contains("(cached)"));
    assert!(listing(&["--count", "1"]).contains(sorted));
}

/// A plain WASI program that opens `/dev/null` (through the `/dev`
/// preopen, as wasi-libc and Go resolve it) for reading and writing,
/// writes 5 bytes (all taken), reads (end of file at once) and prints
/// `null: ok`; it traps on anything else.
const DEV_NULL: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 16: count; 20: the opened fd; 40: prestat; 64: a name;
  ;; 128: "null"; 160: "hello"; 192: "null: ok\n"; 256: read buffer
  (data (i32.const 128) "null")
  (data (i32.const 160) "hello")
  (data (i32.const 192) "null: ok\0a")
  ;; FIND_DEV
  (func (export "_start") (local $fd i32) (local $null i32)
    (local.set $fd (call $find_dev))
    ;; O_CREAT|O_TRUNC, rights read and write, as a program writing to it asks
    (if (call $open (local.get $fd) (i32.const 0) (i32.const 128) (i32.const 4)
          (i32.const 9) (i64.const 0x42) (i64.const 0) (i32.const 0) (i32.const 20))
      (then unreachable))
    (local.set $null (i32.load (i32.const 20)))
    (i32.store (i32.const 0) (i32.const 160))
    (i32.store (i32.const 4) (i32.const 5))
    (if (call $write (local.get $null) (i32.const 0) (i32.const 1) (i32.const 16)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 16)) (i32.const 5)) (then unreachable))
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 64))
    (if (call $read (local.get $null) (i32.const 0) (i32.const 1) (i32.const 16)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 16)) (i32.const 0)) (then unreachable))
    (i32.store (i32.const 0) (i32.const 192))
    (i32.store (i32.const 4) (i32.const 9))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"#;

#[test]
fn issue_16_dev_null_opens_reads_empty_and_discards_writes() {
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let pkg = work.path().join("devnull");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(
        pkg.join("null.wasm"),
        wat::parse_str(with_find_dev(DEV_NULL)).unwrap(),
    )
    .unwrap();
    let o = cachet_with(work.path(), &["test", "-v", "./devnull"], &env);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("null: ok\n"), "{}", stdout(&o));
    // Each run has its own run directory, and the open reads the same
    // empty file in each: the result is cached.
    let o = cachet_with(work.path(), &["test", "./devnull"], &env);
    assert_eq!(stdout(&o), "ok  \tdevnull\t(cached)\n");
    let o = cachet_with(work.path(), &["inputs", "./devnull"], &env);
    assert!(
        stdout(&o).contains(
            "dev/null sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ),
        "{}",
        stdout(&o)
    );
}

/// A plain WASI program that reads 16 bytes from `/dev/zero` (all zero, or
/// it traps) and 16 from `/dev/urandom`, and prints the latter in hex.
const DEV_ZERO_URANDOM: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 16: count; 20: the opened fd; 40: prestat; 64: a name;
  ;; 128: "zero"; 136: "urandom"; 144: hex digits; 256: read buffer; 300: hex out
  (data (i32.const 128) "zero")
  (data (i32.const 136) "urandom")
  (data (i32.const 144) "0123456789abcdef")
  (func $read16 (param $fd i32)
    (i64.store (i32.const 256) (i64.const -1))
    (i64.store (i32.const 264) (i64.const -1))
    (i32.store (i32.const 0) (i32.const 256))
    (i32.store (i32.const 4) (i32.const 16))
    (if (call $read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16)) (then unreachable))
    (if (i32.ne (i32.load (i32.const 16)) (i32.const 16)) (then unreachable)))
  ;; FIND_DEV
  (func (export "_start") (local $fd i32) (local $i i32) (local $b i32)
    (local.set $fd (call $find_dev))
    (if (call $open (local.get $fd) (i32.const 0) (i32.const 128) (i32.const 4)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 20))
      (then unreachable))
    (call $read16 (i32.load (i32.const 20)))
    (if (i64.ne (i64.or (i64.load (i32.const 256)) (i64.load (i32.const 264))) (i64.const 0))
      (then unreachable))
    (if (call $open (local.get $fd) (i32.const 0) (i32.const 136) (i32.const 7)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 20))
      (then unreachable))
    (call $read16 (i32.load (i32.const 20)))
    (loop $hex
      (local.set $b (i32.load8_u (i32.add (i32.const 256) (local.get $i))))
      (i32.store8 (i32.add (i32.const 300) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 144) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (i32.const 301) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 144) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $hex (i32.lt_u (local.get $i) (i32.const 16))))
    (i32.store8 (i32.const 332) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 300))
    (i32.store (i32.const 4) (i32.const 33))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"#;

#[test]
fn issue_16_dev_zero_reads_zeros_and_dev_urandom_follows_the_seed() {
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("devices");
    std::fs::create_dir(&pkg).unwrap();
    let module = wat::parse_str(with_find_dev(DEV_ZERO_URANDOM)).unwrap();
    std::fs::write(pkg.join("devices.wasm"), module).unwrap();
    let bytes = |flags: &[&str]| {
        let mut args = vec!["test", "-v", "--count", "1"];
        args.extend(flags);
        args.push("./devices");
        let o = cachet_with(work.path(), &args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        let out = stdout(&o);
        let line = out
            .lines()
            .find(|l| l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no random bytes in\n{out}"))
            .to_string();
        line
    };
    let seeded = bytes(&["--hermetic", "--seed", "7"]);
    assert_eq!(bytes(&["--hermetic", "--seed", "7"]), seeded);
    assert_ne!(bytes(&["--hermetic", "--seed", "8"]), seeded);
    assert_ne!(bytes(&[]), bytes(&[]), "real randomness otherwise");
}

#[test]
fn issue_16_dev_null_opens_under_a_root_mount() {
    // A program given the host's `/` (as Go's stock runner mounts it) under
    // `cachet exec` opens `/dev/null` too: the longest preopen, `/dev`, is
    // cachet's devices, not the host's device files, which stay refused.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("null.wasm"),
        wat::parse_str(with_find_dev(DEV_NULL)).unwrap(),
    )
    .unwrap();
    let o = cachet_with(work.path(), &["exec", "--dir", "/::/", "null.wasm"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "null: ok\n");
}
