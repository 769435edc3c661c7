//! Fuzz targets for what cachet reads but did not write: input logs (text
//! from the cache or a user), WebAssembly modules (from anyone), cache
//! entries and the stat memo (files on disk that anything may have changed).
//! Each target must return normally for every input: no panic, no hang.
//!
//! Run by cargo-fuzz from `fuzz/` (`scripts/fuzz`), and for a few thousand
//! deterministic mutations of [`seeds`] by `tests/smoke.rs` in every test
//! run.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use cachet::cache::{Cache, KeyParts, NameKey};
use cachet_runtime::{InputLog, ModuleDigest, Policy, Runtime, RuntimeConfig};

/// A fuzz target: takes any bytes and returns normally.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` calls them.
pub const TARGETS: &[(&str, Target)] = &[
    ("input_log", input_log),
    ("module_load", module_load),
    ("cache_entry", cache_entry),
    ("stat_memo", stat_memo),
];

/// An input log's text: parses or is an error; what parses renders back to
/// text that parses to the same log.
pub fn input_log(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(log) = InputLog::parse(text) {
        let again = InputLog::parse(&log.render()).expect("a rendered log parses");
        assert_eq!(again, log, "parse(render(log)) == log");
        let _ = log.inputs_digest();
    }
}

struct Sandbox {
    runtime: Runtime,
    dir: tempfile::TempDir,
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir_all(dir.path().join("pkg/testdata")).expect("pkg");
        std::fs::write(dir.path().join("pkg/testdata/a.txt"), "alpha").expect("file");
        std::fs::create_dir_all(dir.path().join("scratch")).expect("scratch");
        Sandbox {
            runtime: Runtime::new(RuntimeConfig::default()).expect("a runtime"),
            dir,
        }
    })
}

/// A policy with small limits, for running what the fuzzer made.
fn policy() -> Policy {
    let s = sandbox();
    let mut p = Policy::new();
    p.mount_read_only("pkg", s.dir.path().join("pkg"), &["."])
        .scratch(s.dir.path().join("scratch"))
        .timeout(Duration::from_millis(50))
        .memory_limit(16 << 20)
        .output_limit(64 << 10)
        .scratch_limit(1 << 20)
        .open_files(16);
    p
}

/// Any bytes as a module: loading is an error or a module, and a module
/// runs to an outcome under small limits.
pub fn module_load(data: &[u8]) {
    let s = sandbox();
    if let Ok(module) = s.runtime.load(data) {
        s.runtime
            .run(&module, &policy())
            .expect("a loaded module runs");
    }
}

fn cache() -> (&'static Cache, &'static Path) {
    static C: OnceLock<(Cache, tempfile::TempDir)> = OnceLock::new();
    let (cache, dir) = C.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        (Cache::open(dir.path()).expect("a cache"), dir)
    });
    (cache, dir.path())
}

/// Arbitrary payloads behind valid store entries (the store's checksum
/// catches damage; this is what a bad writer, or another version, leaves):
/// the first half as the log of a test key, the second as its result. A
/// lookup is a hit or a miss with a reason.
pub fn cache_entry(data: &[u8]) {
    let (cache, _) = cache();
    let parts = KeyParts::new(
        ModuleDigest::of(b"fuzz"),
        cachet_runtime::Wasi::P1,
        "libtest",
        "case",
        &[],
        &policy(),
        1 << 20,
    );
    let name = NameKey::new("pkg", "case");
    let (log, result) = data.split_at(data.len() / 2);
    let key = parts.key();
    let _ = cache.store().put("logs", &key.0, log);
    let world = policy().world();
    if let Ok(Some(recorded)) = cache.log(&parts, "pkg") {
        let now = cachet_runtime::reobserve(&recorded, &world);
        let _ = cache
            .store()
            .put("results", &key.result(&now.inputs_digest()).0, result);
    }
    let _ = cache.lookup(name, "pkg", &parts, &world);
    let _ = cache.listing(&parts, "pkg");
}

/// Any file as the stat memo: loads (possibly empty) and answers.
pub fn stat_memo(data: &[u8]) {
    let (_, root) = cache();
    let path = root.join("memo-fuzz");
    std::fs::write(&path, data).expect("write");
    let memo = cachet::cache::memo::StatMemo::load(&path);
    use cachet_runtime::DigestMemo;
    let _ = memo.get(&cachet_runtime::FileId {
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: 4,
        ctime_ns: 5,
    });
}

/// Valid inputs of each target, from which mutations start.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "input_log" => vec![
            include_bytes!("../../runtime/tests/golden/fs_lists_dir.log").to_vec(),
            include_bytes!("../../runtime/tests/golden/escape_symlink_out.log").to_vec(),
            include_bytes!("../../runtime/tests/golden/limit_fifo_open.log").to_vec(),
            b"cachet-input-log v2\nreadlink pkg/l target=../x%20y%0A\nenv A%20B unset\ndenied write pkg/out\n".to_vec(),
        ],
        "module_load" => vec![
            wat::parse_str(cachet_testkit::HELLO_WAT).expect("hello parses"),
            wat::parse_str(include_str!("../../fixtures/wat/trap_unreachable.wat")).expect("wat"),
            wat::parse_str(include_str!("../../fixtures/wat/poll_clock_and_fd.wat")).expect("wat"),
        ],
        "cache_entry" => {
            let log = r#"{"parts":{"module":"ab","framework":"libtest","case":"t","program":"t.wasm","args":[],"mounts":[],"memory":1,"output":2,"stack":3,"scratch":4,"open_files":5,"time":"real"},"logs":[{"package":"pkg","log":{"entries":[{"Read":{"op":"Open","path":"pkg/testdata/a.txt","observation":"NotFound"}},{"Env":{"name":"X","observation":"Unset"}}]}}]}"#;
            let result = r#"{"output":"ok","elapsed":{"secs":0,"nanos":5},"skipped":false,"cases":["a","b"],"output_digest":null}"#;
            vec![[log.as_bytes(), result.as_bytes()].concat()]
        }
        "stat_memo" => {
            let dir = tempfile::tempdir().expect("a temp dir");
            let memo = cachet::cache::memo::StatMemo::load(&dir.path().join("m"));
            use cachet_runtime::DigestMemo;
            memo.put(
                cachet_runtime::FileId {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime_ns: 4,
                    ctime_ns: 5,
                },
                cachet_runtime::Sha256Digest::of(b"x"),
            );
            memo.save().expect("save");
            vec![std::fs::read(dir.path().join("m")).expect("read")]
        }
        other => panic!("no fuzz target {other}"),
    }
}

/// Runs `target` on `count` deterministic mutations of its seeds: flipped,
/// inserted, deleted and duplicated bytes, truncations and splices.
pub fn smoke(target: &str, count: usize) {
    let run = TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a target");
    let seeds = seeds(target);
    for s in &seeds {
        run(s);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    for i in 0..count {
        let mut m = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next(4) {
            let at = next(m.len() + 1);
            match next(6) {
                0 if at < m.len() => m[at] ^= 1 << next(8),
                1 => m.insert(at, next(256) as u8),
                2 if at < m.len() => {
                    m.remove(at);
                }
                3 => m.truncate(at),
                4 if at < m.len() => {
                    let b = m[at];
                    m.insert(at, b);
                }
                _ => {
                    let other = &seeds[next(seeds.len())];
                    let from = next(other.len() + 1);
                    m.splice(at.min(m.len()).., other[from..].iter().copied());
                }
            }
        }
        run(&m);
    }
}
