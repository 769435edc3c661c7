//! A module compiles once per process, and a second process loads it from the
//! on-disk cache instead of compiling; a damaged cache file is recompiled.

use std::process::Command;

use cachet_runtime::{LoadStats, Runtime, RuntimeConfig};
use cachet_testkit::fixture;

const CHILD_CACHE: &str = "CACHET_TEST_CHILD_CACHE";
const CHILD_WASM: &str = "CACHET_TEST_CHILD_WASM";

#[test]
fn same_module_compiles_once_per_process() {
    let cache = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig {
        compiled_cache: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let wasm = &fixture("fs_reads_testdata").wasm;
    let a = rt.load_file(wasm).unwrap();
    let b = rt.load_file(wasm).unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_eq!(
        rt.stats(),
        LoadStats {
            compiled: 1,
            loaded_from_disk: 0,
            reused: 1,
            ..Default::default()
        }
    );
}

/// Runs in a child process (see below): loads one module and prints the stats.
#[test]
#[ignore = "run by second_process_loads_the_compiled_module_from_disk"]
fn child_process_load() {
    let (Some(cache), Some(wasm)) = (std::env::var_os(CHILD_CACHE), std::env::var_os(CHILD_WASM))
    else {
        return;
    };
    let rt = Runtime::new(RuntimeConfig {
        compiled_cache: Some(cache.into()),
        ..Default::default()
    })
    .unwrap();
    rt.load_file(wasm.as_ref()).unwrap();
    let s = rt.stats();
    println!(
        "STATS compiled={} loaded_from_disk={}",
        s.compiled, s.loaded_from_disk
    );
}

fn child_stats(cache: &std::path::Path, wasm: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "compile_cache::child_process_load",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_CACHE, cache)
        .env(CHILD_WASM, wasm)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find_map(|l| l.find("STATS").map(|i| l[i..].to_string()))
        .unwrap_or_else(|| panic!("child printed no stats:\n{stdout}"))
}

#[test]
fn second_process_loads_the_compiled_module_from_disk() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = &fixture("fs_stat").wasm;
    assert_eq!(
        child_stats(cache.path(), wasm),
        "STATS compiled=1 loaded_from_disk=0"
    );
    assert_eq!(
        child_stats(cache.path(), wasm),
        "STATS compiled=0 loaded_from_disk=1"
    );

    // Damage every cached file: the next process must recompile, not load it.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(
        child_stats(cache.path(), wasm),
        "STATS compiled=1 loaded_from_disk=0"
    );
    assert_eq!(
        child_stats(cache.path(), wasm),
        "STATS compiled=0 loaded_from_disk=1"
    );
}
