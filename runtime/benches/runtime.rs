//! Runtime benchmarks; they print numbers (recorded in docs/BENCHMARKS.md).
//!
//!   cargo bench -p cachet-runtime --bench runtime
//!
//! 1. Per-run overhead of a trivial WASI command, module compiled and warm:
//!    WASI setup, a fresh scratch dir, instantiate, run, teardown; and of a
//!    trivial preview 2 component and a libtest binary built for both
//!    targets (issue 18).
//! 2. Cold compile vs warm load-from-disk of a ~2-4 MB libtest module.
//! 3. Re-observing a 50-entry log against unchanged files (the cache-hit path).

use std::time::{Duration, Instant};

use cachet_runtime::{
    reobserve, DigestMemo, Entry, FileId, InputLog, Policy, ReadOp, Runtime, RuntimeConfig,
    Sha256Digest, Status,
};

use cachet_testkit::HELLO_WAT as HELLO;

/// The least a WASI 0.2 command can be: `wasi:cli/run`'s `run`, returning
/// ok, with no imports.
const TRIVIAL_COMPONENT: &str = r#"(component
  (core module $m (func (export "run") (result i32) i32.const 0))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $runner (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $runner)))
"#;

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    format!(
        "n={} median={:.1?} p10={:.1?} p90={:.1?} min={:.1?}",
        samples.len(),
        pct(0.5),
        pct(0.1),
        pct(0.9),
        samples[0]
    )
}

/// Times `n` runs of `module` under `policy`.
fn per_run(
    rt: &Runtime,
    module: &cachet_runtime::Module,
    policy: &Policy,
    n: usize,
) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = rt.run(module, policy).unwrap();
            let d = t.elapsed();
            assert_eq!(out.status, Status::Exited(0));
            d
        })
        .collect()
}

fn main() {
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("pkg");
    std::fs::create_dir_all(pkg.join("testdata")).unwrap();
    std::fs::create_dir_all(work.path().join("scratch")).unwrap();
    let rt = Runtime::new(RuntimeConfig {
        compiled_cache: Some(work.path().join("compiled")),
        ..Default::default()
    })
    .unwrap();

    // 1. Per-run overhead, measured on a guest thread as the host runs cases
    //    (Runtime::spawn), and once from another thread, which switches
    //    threads for each run.
    let rt = std::sync::Arc::new(rt);
    let module = rt.load(&wat::parse_str(HELLO).unwrap()).unwrap();
    let mut policy = Policy::new();
    policy
        .mount_read_only("pkg", &pkg, &["."])
        .scratch(work.path().join("scratch"))
        .env("GREETING", "hello");
    let mut ro = Policy::new();
    ro.mount_read_only("pkg", &pkg, &["."]);
    let mut scratch_only = Policy::new();
    scratch_only.scratch(work.path().join("scratch"));
    let mut bare = Policy::new();
    bare.env("GREETING", "hello");
    let cases = [
        ("1 ro mount + scratch dir", policy.clone()),
        ("1 ro mount, no scratch dir", ro),
        ("scratch dir only", scratch_only),
        ("no mounts, no scratch dir", bare),
    ];
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (rt2, module2) = (rt.clone(), module.clone());
    rt.spawn(move || {
        for (label, p) in cases {
            per_run(&rt2, &module2, &p, 200);
            let samples = per_run(&rt2, &module2, &p, 3000);
            println!(
                "per-run overhead, trivial WASI command ({label}): {}",
                stats(samples)
            );
        }
        done_tx.send(()).unwrap();
    })
    .unwrap();
    done_rx.recv().unwrap();
    let samples = per_run(&rt, &module, &policy, 3000);
    println!(
        "per-run overhead, 1 ro mount + scratch dir, called from a non-guest thread: {}",
        stats(samples)
    );

    // 1b. Preview 2 (issue 18): a trivial component (its `run` returns ok,
    //     no imports) next to the trivial module, and one real libtest
    //     binary built for both targets, each run whole (one test).
    let component = rt
        .load(&wat::parse_str(TRIVIAL_COMPONENT).unwrap())
        .unwrap();
    assert_eq!(component.wasi(), cachet_runtime::Wasi::P2);
    let fixture_dir = cachet_testkit::fixture("fs_reads_testdata").dir.clone();
    let mut libtest = Policy::new();
    libtest
        .mount_read_only("pkg", &fixture_dir, &["."])
        .scratch(work.path().join("scratch"))
        .args(&["--test-threads=1"]);
    let targets = [cachet_testkit::TARGET, cachet_testkit::TARGET_P2];
    let builds: Vec<_> = targets
        .iter()
        .map(|t| {
            let wasm = &cachet_testkit::fixture_for("fs_reads_testdata", t).wasm;
            (*t, rt.load_file(wasm).unwrap())
        })
        .collect();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (rt2, module2, policy2) = (rt.clone(), module.clone(), policy.clone());
    rt.spawn(move || {
        for round in 0..2 {
            for (label, m, p, n) in [
                ("trivial module (writes ok)", &module2, &policy2, 3000),
                ("trivial component (returns ok)", &component, &policy2, 3000),
            ] {
                per_run(&rt2, m, p, 200);
                let samples = per_run(&rt2, m, p, n);
                println!("per-run overhead, {label}, round {round}: {}", stats(samples));
            }
            for (target, m) in &builds {
                per_run(&rt2, m, &libtest, 20);
                let samples = per_run(&rt2, m, &libtest, 300);
                println!(
                    "per-run, fs_reads_testdata (libtest, 1 test) built for {target}, round {round}: {}",
                    stats(samples)
                );
            }
        }
        done_tx.send(()).unwrap();
    })
    .unwrap();
    done_rx.recv().unwrap();

    // 2. Cold compile vs warm load of a libtest module.
    let fixture = cachet_testkit::fixture("fs_reads_testdata");
    let bytes = std::fs::read(&fixture.wasm).unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..5 {
        let cache = work.path().join(format!("compiled-{i}"));
        let rt1 = Runtime::new(RuntimeConfig {
            compiled_cache: Some(cache.clone()),
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        rt1.load(&bytes).unwrap();
        cold.push(t.elapsed());
        assert_eq!(rt1.stats().compiled, 1);
        drop(rt1);
        let rt2 = Runtime::new(RuntimeConfig {
            compiled_cache: Some(cache),
            ..Default::default()
        })
        .unwrap();
        let t = Instant::now();
        rt2.load(&bytes).unwrap();
        warm.push(t.elapsed());
        assert_eq!(rt2.stats().loaded_from_disk, 1);
    }
    println!(
        "libtest module of {:.1} MB: cold compile {}",
        bytes.len() as f64 / 1e6,
        stats(cold)
    );
    println!(
        "libtest module of {:.1} MB: warm load from disk {}",
        bytes.len() as f64 / 1e6,
        stats(warm)
    );

    // 3. Re-observing a 50-entry log: 40 files of 4 KiB, 5 listings, 5 stats.
    let mut entries = Vec::new();
    for i in 0..40 {
        let name = format!("testdata/f{i:02}.txt");
        std::fs::write(pkg.join(&name), vec![b'a' + (i % 26) as u8; 4096]).unwrap();
        entries.push((ReadOp::Open, format!("pkg/{name}")));
    }
    for i in 0..5 {
        std::fs::create_dir_all(pkg.join(format!("testdata/d{i}"))).unwrap();
        entries.push((ReadOp::Readdir, format!("pkg/testdata/d{i}")));
        entries.push((ReadOp::Stat, format!("pkg/testdata/f{i:02}.txt")));
    }
    let world = policy.world();
    let log = InputLog {
        entries: entries
            .into_iter()
            .map(|(op, path)| Entry::Read {
                op,
                observation: world.observe(op, &path),
                path,
            })
            .collect(),
    };
    let digest = log.inputs_digest();
    let samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let world = policy.world();
            let now = reobserve(&log, &world);
            assert_eq!(now.inputs_digest(), digest);
            t.elapsed()
        })
        .collect();
    println!(
        "reobserve 50-entry log (40 x 4 KiB files, 5 dirs, 5 stats), full hashing: {}",
        stats(samples)
    );

    // The same with a digest memo (the host's stat memo without its racy
    // rule): each file costs an open + fstat instead of a read.
    #[derive(Default)]
    struct Memo(std::sync::Mutex<std::collections::HashMap<FileId, Sha256Digest>>);
    impl DigestMemo for Memo {
        fn get(&self, id: &FileId) -> Option<Sha256Digest> {
            self.0.lock().unwrap().get(id).copied()
        }
        fn put(&self, id: FileId, d: Sha256Digest) {
            self.0.lock().unwrap().insert(id, d);
        }
    }
    let mut memo_policy = policy.clone();
    memo_policy.digest_memo(std::sync::Arc::new(Memo::default()));
    reobserve(&log, &memo_policy.world());
    let samples: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let now = reobserve(&log, &memo_policy.world());
            assert_eq!(now.inputs_digest(), digest);
            t.elapsed()
        })
        .collect();
    println!(
        "reobserve 50-entry log, warm digest memo: {}",
        stats(samples)
    );
}
