//! Go's own standard library tests under `cachet test`, with no flags
//! (issues 9 and 16): sixteen packages built for wasip1 by cachet, each passing
//! with the same counts as under Go's stock wasip1 runner (`go test -exec
//! go_wasip1_wasm_exec`, the wasmtime CLI), as `scripts/go-stdlib counts
//! --record` measured them into `tests/data/go-stdlib-stock.txt`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cachet_testkit::{go_command, repo_root};

use crate::{cachet_with, stderr, stdout};

const PACKAGES: [&str; 16] = [
    "strings",
    "sort",
    "strconv",
    "bytes",
    "bufio",
    "encoding/json",
    "encoding/base64",
    "math/big",
    "regexp",
    "text/template",
    "unicode/utf8",
    "container/list",
    "hash/crc32",
    "path",
    "errors",
    // Its TestEmptyTemplateHTML opens /dev/null (issue 16).
    "html/template",
];

/// Top-level tests passed, failed and skipped.
type Counts = [usize; 3];

fn stock() -> BTreeMap<String, Counts> {
    let text = std::fs::read_to_string(repo_root().join("tests/data/go-stdlib-stock.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| w[i].parse::<usize>().unwrap();
            (w[0].to_string(), [n(1), n(2), n(3)])
        })
        .collect()
}

fn counts(json: &str) -> BTreeMap<String, Counts> {
    let mut c: BTreeMap<String, Counts> = BTreeMap::new();
    for e in json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let (Some(pkg), Some(test), Some(action)) = (
            e["Package"].as_str(),
            e["Test"].as_str(),
            e["Action"].as_str(),
        ) else {
            continue;
        };
        let Some(slot) = ["pass", "fail", "skip"].iter().position(|a| *a == action) else {
            continue;
        };
        if !test.contains('/') {
            c.entry(pkg.to_string()).or_default()[slot] += 1;
        }
    }
    c
}

#[test]
fn sixteen_standard_library_packages_pass_as_under_the_stock_runner() {
    let out = go_command().args(["env", "GOROOT"]).output().unwrap();
    let goroot = PathBuf::from(stdout(&out).trim());
    let dirs: Vec<String> = PACKAGES
        .iter()
        .map(|p| goroot.join("src").join(p).to_string_lossy().into_owned())
        .collect();
    let work = tempfile::tempdir().unwrap();
    let mut args = vec!["test", "--json"];
    args.extend(dirs.iter().map(String::as_str));
    let o = cachet_with(work.path(), &args, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = counts(&stdout(&o));
    let want = stock();
    assert_eq!(
        want.len(),
        PACKAGES.len(),
        "the recorded counts cover every package"
    );
    for p in PACKAGES {
        assert_eq!(got.get(p), want.get(p), "{p}: passed, failed, skipped");
    }
}
