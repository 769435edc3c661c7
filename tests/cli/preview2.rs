//! Issue 18: WASI preview 2. The same cargo packages built for
//! `wasm32-wasip2` (components) run through the binary with the same
//! verdicts, the same input logs (but for the differences
//! docs/design/sandbox.md lists), the same cache and the same devices as
//! their `wasm32-wasip1` builds. The exactness scenarios run for both
//! targets in `exactness.rs`, and cargo's runner for both in `exec.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use cachet_testkit::{copy_tree, fixture_for, repo_root, TARGET, TARGET_P2};

use crate::{cachet_with, stderr, stdout};

/// Guest packages that run under `cachet test` as they are.
const GUESTS: &[&str] = &[
    "env_with_shim",
    "env_without_shim",
    "escape_dotdot",
    "fails_exit_nonzero",
    "fails_panic",
    "fs_lists_dir",
    "fs_readlink_inside",
    "fs_reads_missing",
    "fs_reads_testdata",
    "fs_stat",
    "net_refused",
    "scratch_write_read",
    "uses_clock_random",
    "write_readonly_pkg",
];

fn guest_dirs() -> Vec<String> {
    GUESTS
        .iter()
        .map(|g| format!("fixtures/guests/{g}"))
        .collect()
}

/// Every package's and case's final action in a `--json` stream.
fn verdicts(json: &str) -> BTreeMap<String, String> {
    crate::json_verdicts(json)
        .into_iter()
        .map(|(package, test, action)| (format!("{package} {test}"), action))
        .collect()
}

#[test]
fn issue_18_guests_built_as_components_end_as_their_modules_do_with_the_same_logs() {
    let cache = tempfile::tempdir().unwrap();
    let env = [
        ("CACHET_CACHE", cache.path().to_str().unwrap()),
        ("GREETING", "hello"),
    ];
    let dirs = guest_dirs();
    let run = |target: &str| {
        let mut args = vec!["test", "--json", "--env", "GREETING", "--target", target];
        args.extend(dirs.iter().map(String::as_str));
        let o = cachet_with(&repo_root(), &args, &env);
        assert_eq!(o.status.code(), Some(1), "two guests fail: {}", stderr(&o));
        verdicts(&stdout(&o))
    };
    let p1 = run(TARGET);
    let p2 = run(TARGET_P2);
    assert_eq!(p1.len(), 2 * GUESTS.len(), "{p1:#?}");
    assert_eq!(p2, p1);
    assert_eq!(p1["fixtures/guests/fails_panic "], "fail");

    // The logs each target's runs stored, found by `cachet inputs` with
    // the same flags.
    let inputs = |dir: &str, target: &str| {
        let o = cachet_with(
            &repo_root(),
            &["inputs", "--env", "GREETING", "--target", target, dir],
            &env,
        );
        assert_eq!(o.status.code(), Some(0), "{dir}: {}", stderr(&o));
        stdout(&o)
    };
    for dir in &dirs {
        if dir.ends_with("fails_panic") || dir.ends_with("fails_exit_nonzero") {
            continue; // failures store no log
        }
        let (one, two) = (inputs(dir, TARGET), inputs(dir, TARGET_P2));
        if dir.ends_with("env_with_shim") {
            // cachet-guest's `cachet.getenv` is a core import a component
            // cannot have: the whole environment is the input.
            assert!(one.contains("env GREETING sha256:"), "{one}");
            assert!(two.contains("\nenviron sha256:"), "{two}");
            assert!(!two.contains("env GREETING"), "{two}");
        } else if dir.ends_with("fs_stat") {
            // wasi-libc asks a path's identity (not following links) before
            // its stat: an lstat of the same path comes first.
            let without_lstat: String = two
                .lines()
                .filter(|l| !l.starts_with("lstat pkg/testdata/data.bin"))
                .filter(|l| !l.starts_with("lstat pkg/testdata dir"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .replace(
                    "lstat pkg/testdata/absent.bin notfound",
                    "stat pkg/testdata/absent.bin notfound",
                );
            assert_eq!(without_lstat, one);
        } else {
            assert_eq!(two, one, "{dir}");
        }
    }
}

#[test]
fn issue_18_a_component_is_cached_and_reruns_exactly_when_an_input_changes() {
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    // The built component, as a prebuilt package with its testdata.
    let pkg = work.path().join("reads");
    copy_tree(&fixture_for("fs_reads_testdata", TARGET_P2).dir, &pkg).unwrap();
    std::fs::copy(
        &fixture_for("fs_reads_testdata", TARGET_P2).wasm,
        pkg.join("reads.wasm"),
    )
    .unwrap();
    let run = || {
        let o = cachet_with(
            work.path(),
            &["test", "--prebuilt", "--explain", "./reads/reads.wasm"],
            &env,
        );
        (o.status.code(), stdout(&o))
    };
    let (code, out) = run();
    assert_eq!(code, Some(0), "{out}");
    let (_, out) = run();
    assert!(out.ends_with("ok  \treads/reads.wasm\t(cached)\n"), "{out}");
    std::fs::write(pkg.join("testdata/unread.txt"), "not read").unwrap();
    assert!(
        run().1.contains("(cached)"),
        "an unread file changes nothing"
    );
    std::fs::write(pkg.join("testdata/words.txt"), "alpha\nbeta\ndelta\n").unwrap();
    let (code, out) = run();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("reads_testdata ran: open pkg/testdata/words.txt: content changed"),
        "{out}"
    );
}

/// A cargo package whose test opens the devices as a program would.
fn devices_package(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"devices\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"
#[test]
fn devices() {
    use std::io::{Read, Write};
    let mut null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").unwrap();
    null.write_all(b"taken and dropped").unwrap();
    let mut rest = Vec::new();
    null.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let mut zero = [1u8; 16];
    std::fs::File::open("/dev/zero").unwrap().read_exact(&mut zero).unwrap();
    assert_eq!(zero, [0u8; 16]);
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    println!("random {hex}");
}
"#,
    )
    .unwrap();
}

#[test]
fn issue_18_devices_behave_the_same_for_components() {
    let work = tempfile::tempdir().unwrap();
    devices_package(&work.path().join("devices"));
    let random = |target: &str, flags: &[&str]| {
        let mut args = vec!["test", "-v", "--count", "1", "--target", target];
        args.extend(flags);
        args.push("./devices");
        let o = cachet_with(work.path(), &args, &[]);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        let out = stdout(&o);
        out.lines()
            .find_map(|l| l.strip_prefix("random "))
            .unwrap_or_else(|| panic!("no random bytes in\n{out}"))
            .to_string()
    };
    for target in [TARGET, TARGET_P2] {
        let seeded = random(target, &["--hermetic", "--seed", "7"]);
        assert_eq!(random(target, &["--hermetic", "--seed", "7"]), seeded);
        assert_ne!(random(target, &["--hermetic", "--seed", "8"]), seeded);
        assert_ne!(random(target, &[]), random(target, &[]), "{target}");
    }
}

#[test]
fn issue_18_should_panic_tests_get_the_same_verdicts_as_components() {
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let run = |target: &str| {
        let o = cachet_with(
            &repo_root(),
            &[
                "test",
                "--json",
                "--target",
                target,
                "fixtures/suites/shouldpanic",
            ],
            &env,
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        verdicts(&stdout(&o))
    };
    let p1 = run(TARGET);
    assert_eq!(p1.len(), 9, "8 cases and the package: {p1:#?}");
    assert_eq!(run(TARGET_P2), p1);
}

#[test]
fn issue_18_a_packages_cargo_config_chooses_its_target_and_the_flag_overrides_it() {
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let pkg = work.path().join("p2");
    devices_package(&pkg);
    std::fs::create_dir(pkg.join(".cargo")).unwrap();
    std::fs::write(
        pkg.join(".cargo/config.toml"),
        "[build]\ntarget = \"wasm32-wasip2\"\n",
    )
    .unwrap();
    let built = |target: &str| pkg.join("target/cachet").join(target).exists();
    let o = cachet_with(work.path(), &["test", "./p2"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(built(TARGET_P2) && !built(TARGET));
    let o = cachet_with(work.path(), &["test", "./p2"], &env);
    assert_eq!(stdout(&o), "ok  \tp2\t(cached)\n");
    let o = cachet_with(work.path(), &["test", "--target", TARGET, "./p2"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(built(TARGET), "--target wins over the package's config");
    assert!(
        !stdout(&o).contains("(cached)"),
        "another module, another key"
    );

    let o = cachet_with(
        work.path(),
        &["test", "--target", "wasm32-unknown-unknown", "./p2"],
        &env,
    );
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("cachet runs tests built for wasm32-wasip1 or wasm32-wasip2, not wasm32-unknown-unknown"),
        "{err}"
    );
    assert!(err.trim().lines().count() <= 3, "{err}");
}
