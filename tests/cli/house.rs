//! Issue 15: one home per idea, so the audit agrees with the runs. `cachet
//! inputs` takes every flag of `cachet test` (and its profile) and computes
//! keys with the same function, so it finds what a run with those flags
//! stored; every output mode renders one stored result, so switching modes
//! reruns nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

use cachet_testkit::{copy_tree, repo_root};

use crate::{stderr, stdout};

/// A copy of the Go fixture module and a libtest package, with one cache.
struct Work {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Work {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("fixtures/go"), &root.path().join("go")).unwrap();
        let lib = root.path().join("lib");
        std::fs::create_dir_all(lib.join("testdata/listed")).unwrap();
        std::fs::copy(
            &cachet_testkit::fixture("suite_cachecases").wasm,
            lib.join("cachecases.wasm"),
        )
        .unwrap();
        std::fs::write(lib.join("testdata/a.txt"), "alpha").unwrap();
        std::fs::write(lib.join("testdata/b.txt"), "bravo").unwrap();
        std::fs::write(lib.join("testdata/listed/x"), "").unwrap();
        std::os::unix::fs::symlink("a.txt", lib.join("testdata/link")).unwrap();
        Work {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.path().join(sub)
    }

    fn cachet(&self, dir: &Path, args: &[&str]) -> Output {
        crate::cachet_with(
            dir,
            args,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }

    /// `cachet test` with `flags`, which must pass; the cases that ran.
    fn test(&self, dir: &Path, flags: &[&str], pkg: &str) -> Vec<String> {
        let mut args = vec!["test", "--explain"];
        args.extend(flags);
        args.push(pkg);
        let o = self.cachet(dir, &args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{flags:?}\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        let out = stdout(&o);
        out.lines()
            .filter(|l| l.contains("cachet: explain: "))
            .map(str::to_string)
            .collect()
    }

    /// `cachet inputs` with `flags`: every case's block, which must each
    /// hold a recorded log.
    fn inputs(&self, dir: &Path, flags: &[&str], pkg: &str) -> String {
        let mut args = vec!["inputs"];
        args.extend(flags);
        args.push(pkg);
        let o = self.cachet(dir, &args);
        let out = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{flags:?}\n{out}{}", stderr(&o));
        assert!(out.matches("== ").count() > 0, "{flags:?}: {out}");
        assert_eq!(
            out.matches("== ").count(),
            out.matches("cachet-input-log v").count(),
            "{flags:?}: a case without its log:\n{out}"
        );
        out
    }
}

#[test]
fn issue_15_inputs_finds_what_a_go_run_stored_in_every_mode() {
    for flags in [
        &[][..],
        &["-v"],
        &["--json"],
        &["--short"],
        &["--isolate", "module"],
    ] {
        let w = Work::new();
        let go = w.dir("go");
        w.test(&go, flags, "./clean");
        let out = w.inputs(&go, flags, "./clean");
        assert!(out.contains("== example.com/cachetfix/clean Test"), "{out}");
        if flags == ["--isolate", "module"] {
            assert_eq!(out.matches("== ").count(), 1, "one job: {out}");
        }
    }
    // The flags that shape a key matter: a --short run's logs are not the
    // plain run's.
    let w = Work::new();
    let go = w.dir("go");
    w.test(&go, &["--short"], "./clean");
    let o = w.cachet(&go, &["inputs", "./clean"]);
    assert!(
        stdout(&o).contains("(no passing run recorded)"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn issue_15_inputs_reads_the_profile_like_the_run() {
    let w = Work::new();
    let lib = w.dir("lib");
    std::fs::write(
        lib.join("cachet.toml"),
        "[profile.ci]\nmemory = \"256MiB\"\nopen-files = 64\ntmp-limit = \"8MiB\"\nenv = [\"TERM=dumb\"]\n",
    )
    .unwrap();
    w.test(&lib, &["--profile", "ci"], ".");
    let out = w.inputs(&lib, &["--profile", "ci"], ".");
    let dumb = cachet_runtime::Sha256Digest::of(b"dumb");
    assert!(out.contains(&format!("env TERM {dumb}")), "{out}");
    // Without the profile the limits differ, so do the keys: not even the
    // listing is found, and inputs says how to record one.
    let o = w.cachet(&lib, &["inputs", "."]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).contains(
            "no recorded run of this build with these flags; run `cachet test .` with them first"
        ),
        "{}",
        stderr(&o)
    );
    // And under --isolate module, one job's log.
    w.test(&lib, &["--profile", "ci", "--isolate", "module"], ".");
    let out = w.inputs(&lib, &["--profile", "ci", "--isolate", "module"], ".");
    assert_eq!(out.matches("== ").count(), 1, "{out}");
}

#[test]
fn issue_15_switching_output_modes_reruns_nothing() {
    let w = Work::new();
    for (dir, pkg) in [(w.dir("go"), "./clean"), (w.dir("lib"), ".")] {
        let first = w.test(&dir, &[], pkg);
        assert!(!first.is_empty(), "the first run ran its cases");
        for mode in [&["--json"][..], &["-v"], &[]] {
            let ran = w.test(&dir, mode, pkg);
            assert!(ran.is_empty(), "{pkg} {mode:?} reran: {ran:?}");
        }
        let o = w.cachet(&dir, &["test", "-v", pkg]);
        let out = stdout(&o);
        assert!(out.contains("(cached)") && !out.contains("\u{16}"), "{out}");
    }
}
