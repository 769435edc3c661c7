//! Beyond one machine (issue 10): a remote cache on a real nginx (Debian's,
//! WebDAV `PUT`), started here on 127.0.0.1; sharding; JUnit validated
//! against the schema CI tools read; retries and flaky cases; cachet.toml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cachet_testkit::{fixture, repo_root};

use crate::{cachet_with, stderr, stdout};

/// An nginx serving `root` on a free port of 127.0.0.1: a WebDAV store
/// (`GET`/`PUT`), or a server answering 500 to everything.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

enum Serve<'a> {
    Dav,
    Errors,
    ReadOnly(&'a Path),
}

impl Nginx {
    fn start(serve: Serve) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let location = match serve {
            Serve::Dav => format!(
                "root {}; dav_methods PUT; create_full_put_path on; dav_access user:rw;",
                data.display()
            ),
            Serve::Errors => "return 500;".to_string(),
            Serve::ReadOnly(root) => format!("root {};", root.display()),
        };
        let root_user = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        let conf = format!(
            "{user}daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log {d}/access.log; default_type application/octet-stream;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_max_body_size 256m; keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}
}}",
            user = if root_user { "user root; " } else { "" },
            d = dir.path().display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|n| Path::new(n).is_file() || which(n))
            .expect("nginx is installed (scripts/test installs Debian's nginx)");
        let child = Command::new(nginx)
            .args(["-p", dir.path().to_str().unwrap(), "-e", "stderr", "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}/cachet"),
        }
    }

    fn data(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// The requests served so far with `method`.
    fn requests(&self, method: &str) -> usize {
        let log = std::fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(&format!("\"{method} ")))
            .count()
    }

    /// The action-cache entries stored, by the kind of cachet entry they hold.
    fn entries(&self, kind: &str) -> Vec<PathBuf> {
        walk(&self.data().join("cachet/ac"))
            .into_iter()
            .filter(|f| {
                let bytes = std::fs::read(f).unwrap();
                bytes.windows(kind.len()).any(|w| w == kind.as_bytes())
            })
            .collect()
    }

    /// SIGTERM: nginx stops its workers too (SIGKILL would leave them serving).
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A "machine": a project copied to its own path, with its own cache.
struct Machine {
    root: tempfile::TempDir,
    path: String,
    cache: tempfile::TempDir,
}

impl Machine {
    /// The project at `<tmp>/<path>`: two prebuilt test modules, testdata.
    fn new(path: &str, slow: bool) -> Machine {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join(path);
        std::fs::create_dir_all(p.join("testdata/listed")).unwrap();
        let mut modules = vec![
            ("suite_cachecases", "cachecases.wasm"),
            ("suite_cachenoshim", "noshim.wasm"),
        ];
        if slow {
            modules.push(("suite_slowprint", "slowprint.wasm"));
        }
        for (f, name) in modules {
            std::fs::copy(&fixture(f).wasm, p.join(name)).unwrap();
        }
        std::fs::write(p.join("testdata/a.txt"), "alpha").unwrap();
        std::fs::write(p.join("testdata/b.txt"), "bravo").unwrap();
        std::fs::write(p.join("testdata/listed/x"), "").unwrap();
        std::os::unix::fs::symlink("a.txt", p.join("testdata/link")).unwrap();
        Machine {
            root,
            path: path.to_string(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join(&self.path)
    }

    fn test(&self, extra: &[&str]) -> Output {
        let mut args = vec!["test", "-p", "2", "--explain"];
        args.extend(extra);
        cachet_with(
            &self.dir(),
            &args,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }
}

/// Cases that ran, from `--explain`.
fn ran(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cachet: explain: "))
        .filter_map(|l| l.split_once(" ran: "))
        .map(|(who, _)| who.rsplit(": ").next().unwrap().to_string())
        .collect()
}

const CASES: usize = 8;

#[test]
fn a_remote_cache_on_nginx_serves_another_machine_exactly() {
    let nginx = Nginx::start(Serve::Dav);
    let a = Machine::new("a/project", false);
    let first = a.test(&["--remote-cache", &nginx.url]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    assert_eq!(stderr(&first), "", "no warning");
    assert_eq!(ran(&stdout(&first)).len(), CASES);
    // What was uploaded names no host path, user or secret.
    let home = std::env::var("HOME").unwrap_or_default();
    let mut entries = 0;
    for f in walk(&nginx.data()) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for leak in [a.root.path().to_str().unwrap(), "/tmp/", &home, "alpha"] {
            assert!(
                leak.is_empty() || !text.contains(leak),
                "{leak:?} in {}",
                f.display()
            );
        }
        entries += 1;
    }
    assert!(entries >= CASES, "{entries} entries uploaded");

    // Each module's selected cases went up as one pack too.
    assert_eq!(
        nginx.entries("cachet-pack v1").len(),
        2,
        "a pack per module"
    );

    // Machine B: another path, an empty local cache: every case from the
    // remote, with two requests per module (its listing, its pack).
    let b = Machine::new("elsewhere/b/checkout", false);
    let gets = nginx.requests("GET");
    let o = b.test(&["--remote-cache", &nginx.url]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n", "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(
        nginx.requests("GET") - gets,
        4,
        "2 modules: listing + pack each"
    );
    // Copied into B's local cache as a file per module, and served from
    // there without the remote (and with no request when it is given).
    let packs = b.cache.path().join("results/packs");
    assert_eq!(
        std::fs::read_dir(&packs).unwrap().count(),
        2,
        "{}",
        packs.display()
    );
    assert!(
        !b.cache.path().join("results/logs").exists(),
        "no file per case"
    );
    let local = b.test(&[]);
    assert_eq!(stdout(&local), "ok  \t.\t(cached)\n");
    let gets = nginx.requests("GET");
    let again = b.test(&["--remote-cache", &nginx.url]);
    assert_eq!(stdout(&again), "ok  \t.\t(cached)\n");
    assert_eq!(nginx.requests("GET"), gets, "all local: nothing asked");
    // The audit tool reads logs that came from the remote.
    let inputs = crate::cachet_with(
        &b.dir(),
        &["inputs", ".", "tests::reads_a"],
        &[("CACHET_CACHE", b.cache.path().to_str().unwrap())],
    );
    assert!(
        stdout(&inputs).contains("open pkg/testdata/a.txt sha256:"),
        "{}{}",
        stdout(&inputs),
        stderr(&inputs)
    );

    // A changed input reruns only the case that read it, here and on C.
    std::fs::write(b.dir().join("testdata/a.txt"), "ALPHA").unwrap();
    let o = b.test(&["--remote-cache", &nginx.url]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        ran(&stdout(&o)),
        BTreeSet::from(["tests::reads_a".to_string()])
    );
    let c = Machine::new("c", false);
    std::fs::write(c.dir().join("testdata/a.txt"), "ALPHA").unwrap();
    let o = c.test(&["--remote-cache", &nginx.url]);
    assert_eq!(
        stdout(&o),
        "ok  \t.\t(cached)\n",
        "B uploaded the changed input's result"
    );

    // Read-only: results come down, nothing goes up.
    let d = Machine::new("d", false);
    std::fs::write(d.dir().join("testdata/b.txt"), "BRAVO").unwrap();
    let before = walk(&nginx.data()).len();
    let o = d.test(&["--remote-cache", &nginx.url, "--remote-cache-read-only"]);
    assert_eq!(
        ran(&stdout(&o)),
        BTreeSet::from(["tests::reads_b".to_string()])
    );
    assert_eq!(walk(&nginx.data()).len(), before, "nothing uploaded");

    // A damaged pack in the local cache: a warning, and its cases run.
    let e = Machine::new("e", false);
    let o = e.test(&["--remote-cache", &nginx.url]);
    assert_eq!(stdout(&o), "ok  \t.\t(cached)\n", "{}", stderr(&o));
    let packs = walk(&e.cache.path().join("results/packs"));
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&packs[0], bytes).unwrap();
    let o = e.test(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("is corrupt"), "{}", stderr(&o));
    assert!(
        !ran(&stdout(&o)).is_empty(),
        "the damaged module's cases ran"
    );
    assert_eq!(e.test(&[]).status.code(), Some(0));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// One `cachet: warning: remote cache ...` line, exit 0, every case run.
fn survives(o: &Output, why: &str) {
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(o), stderr(o));
    let err = stderr(o);
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 1, "one warning: {err}");
    assert!(
        warnings[0].starts_with("cachet: warning: remote cache http://127.0.0.1:")
            && warnings[0].contains(why),
        "{err}"
    );
}

#[test]
fn a_broken_remote_is_one_warning_and_a_correct_local_run() {
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let m = Machine::new("p", false);
    let url = format!("http://127.0.0.1:{port}/c");
    let o = m.test(&["--remote-cache", &url]);
    survives(&o, "3 attempts");
    assert_eq!(ran(&stdout(&o)).len(), CASES);

    // A server answering 500.
    let errors = Nginx::start(Serve::Errors);
    let m = Machine::new("q", false);
    let o = m.test(&["--remote-cache", &errors.url]);
    survives(&o, "the server answered 500");
    assert_eq!(ran(&stdout(&o)).len(), CASES);

    // Corrupted bodies: a good store's entries with a byte flipped in each.
    let good = Nginx::start(Serve::Dav);
    let a = Machine::new("a", false);
    assert_eq!(
        a.test(&["--remote-cache", &good.url]).status.code(),
        Some(0)
    );
    let damaged = tempfile::tempdir().unwrap();
    for f in walk(&good.data()) {
        let to = damaged.path().join(f.strip_prefix(good.data()).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let mut bytes = std::fs::read(&f).unwrap();
        let at = bytes.len() * 2 / 3;
        bytes[at] ^= 0x20;
        std::fs::write(&to, bytes).unwrap();
    }
    let bad = Nginx::start(Serve::ReadOnly(damaged.path()));
    let m = Machine::new("r", false);
    let o = m.test(&["--remote-cache", &bad.url]);
    survives(&o, "");
    assert_eq!(ran(&stdout(&o)).len(), CASES, "no damaged entry is used");

    // Well-formed entries filed under the wrong keys (a server mixing them
    // up): the two modules' packs swapped, then two listings swapped.
    for (kind, why) in [
        ("cachet-pack v1", "a pack of other tests"),
        ("\"case\":\"--list\"", "an entry of another test"),
    ] {
        let swapped = tempfile::tempdir().unwrap();
        for f in walk(&good.data()) {
            let to = swapped.path().join(f.strip_prefix(good.data()).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&f, &to).unwrap();
        }
        let pair = good.entries(kind);
        assert_eq!(pair.len(), 2, "{kind}");
        let at = |f: &PathBuf| swapped.path().join(f.strip_prefix(good.data()).unwrap());
        std::fs::copy(&pair[0], at(&pair[1])).unwrap();
        std::fs::copy(&pair[1], at(&pair[0])).unwrap();
        let mixed = Nginx::start(Serve::ReadOnly(swapped.path()));
        let m = Machine::new("s", false);
        let o = m.test(&["--remote-cache", &mixed.url]);
        survives(&o, why);
        assert_eq!(
            ran(&stdout(&o)).len(),
            CASES,
            "{kind}: nothing misfiled is used"
        );
    }
}

#[test]
fn shards_share_a_remote_cache_without_overwriting_each_other() {
    let nginx = Nginx::start(Serve::Dav);
    let shard = |round: &str, k: usize| {
        let m = Machine::new(&format!("{round}{k}"), false);
        let part = format!("hash:{k}/4");
        let o = m.test(&["--partition", &part, "--remote-cache", &nginx.url]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stderr(&o), "");
        o
    };
    let mut ran_first = 0;
    for k in 1..=4 {
        ran_first += ran(&stdout(&shard("first", k))).len();
    }
    assert_eq!(ran_first, CASES, "every case ran once");
    let packs = nginx.entries("cachet-pack v1").len();
    assert!(packs > 2, "a pack per shard and module: {packs}");
    // The next CI run: four fresh machines, each shard served whole.
    let puts = nginx.requests("PUT");
    for k in 1..=4 {
        let o = shard("second", k);
        assert!(ran(&stdout(&o)).is_empty(), "shard {k}: {}", stdout(&o));
    }
    assert_eq!(nginx.requests("PUT"), puts, "nothing new to upload");
}

#[test]
fn a_remote_stopped_mid_run_is_one_warning_and_results_stay_right() {
    let mut nginx = Nginx::start(Serve::Dav);
    let m = Machine::new("p", true);
    let cache = m.cache.path().to_str().unwrap().to_string();
    let (mut cmd, _fresh) = crate::cachet_command(&m.dir(), &[("CACHET_CACHE", &cache)]);
    let child = cmd
        .args(["test", "-p", "2", "--remote-cache", &nginx.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The slow case (3 s) uploads after the server is gone.
    std::thread::sleep(Duration::from_millis(1000));
    nginx.stop();
    let o = child.wait_with_output().unwrap();
    survives(&o, "");
    // Every passing result was still saved locally, and is right.
    let again = m.test(&[]);
    assert_eq!(stdout(&again), "ok  \t.\t(cached)\n", "{}", stderr(&again));
}

/// Case names a run reports, from `--json`.
fn cases_run(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| matches!(e["Action"].as_str(), Some("pass" | "fail" | "skip")))
        .filter_map(|e| {
            Some(format!(
                "{} {}",
                e["Package"].as_str()?,
                e["Test"].as_str()?
            ))
        })
        .collect()
}

#[test]
fn four_shards_run_every_case_exactly_once() {
    let m = Machine::new("p", false);
    std::fs::copy(&fixture("suite_isolation").wasm, m.dir().join("sub.wasm")).unwrap();
    let all = cases_run(&m.test(&["--json", "--count", "1"]));
    assert!(all.len() > CASES, "{all:?}");
    for kind in ["count", "hash"] {
        let mut union = Vec::new();
        let mut sizes = Vec::new();
        for k in 1..=4 {
            let part = format!("{kind}:{k}/4");
            let o = m.test(&["--json", "--count", "1", "--partition", &part]);
            let shard = cases_run(&o);
            sizes.push(shard.len());
            union.extend(shard);
        }
        let mut sorted_union = union.clone();
        sorted_union.sort();
        let mut sorted_all = all.clone();
        sorted_all.sort();
        assert_eq!(sorted_union, sorted_all, "{kind}: each case exactly once");
        if kind == "count" {
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "count shards are even: {sizes:?}");
        }
    }
    // Deterministic: the same shard twice is the same cases.
    let one = cases_run(&m.test(&["--json", "--count", "1", "--partition", "hash:2/4"]));
    let two = cases_run(&m.test(&["--json", "--count", "1", "--partition", "hash:2/4"]));
    assert_eq!(one, two);
    for bad in ["3/4", "count:0/4", "count:5/4", "hash:1/0", "mod:1/2"] {
        let o = m.test(&["--partition", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert_eq!(stderr(&o).lines().count(), 1, "{bad}: {}", stderr(&o));
    }
}

fn xsd() -> PathBuf {
    let p = repo_root().join(".tools/junit/junit-10.xsd");
    assert!(
        p.is_file(),
        "no JUnit schema at {}: run scripts/test (its ensure_ci_peers fetches it)",
        p.display()
    );
    p
}

fn xmllint(xml: &Path) -> Output {
    Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(xsd())
        .arg(xml)
        .output()
        .expect("xmllint is installed (scripts/test installs libxml2-utils)")
}

#[test]
fn junit_reports_validate_against_the_schema_ci_tools_read() {
    let m = Machine::new("p", false);
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(&fixture("suite_flaky").wasm, m.dir().join("flaky.wasm")).unwrap();
    std::fs::copy(&fixture("fails_panic").wasm, m.dir().join("panics.wasm")).unwrap();
    let mount = format!("{}:/data:rw", data.path().display());
    let xml = m.root.path().join("out/junit.xml");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--junit",
            xml.to_str().unwrap(),
            "--mount",
            &mount,
            "--retries",
            "1",
        ];
        args.extend(extra);
        let o = m.test(&args);
        assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
        let v = xmllint(&xml);
        assert!(
            v.status.success(),
            "{}\n{}",
            stderr(&v),
            std::fs::read_to_string(&xml).unwrap()
        );
        std::fs::read_to_string(&xml).unwrap()
    };
    let first = run(&[]);
    assert!(first.contains("<testsuite name=\".\""), "{first}");
    assert!(first.contains("flakyFailure"), "the flaky case: {first}");
    assert!(first.contains("<failure"), "{first}");
    assert!(first.contains("never passes"), "{first}");
    let second = run(&[]);
    assert!(
        second.contains("cachet: cached"),
        "cached cases marked: {second}"
    );
    assert!(
        second.contains("name=\"cachet.cached\" value=\"9\""),
        "{second}"
    );
}

#[test]
fn retries_report_flaky_cases_and_never_cache_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(&fixture("suite_flaky").wasm, dir.path().join("flaky.wasm")).unwrap();
    let mount = format!("{}:/data:rw", data.path().display());
    let cache = tempfile::tempdir().unwrap();
    let env = [("CACHET_CACHE", cache.path().to_str().unwrap())];
    let run = |extra: &[&str]| {
        let mut args = vec!["test", "--mount", &mount, "--run", "fails_first_time"];
        args.extend(extra);
        cachet_with(dir.path(), &args, &env)
    };
    // Without retries: a failure.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1));
    std::fs::remove_file(data.path().join("runs")).unwrap();
    // With one: FLAKY, exit 0, on stderr too; not cached.
    let o = run(&["--retries", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(
            "--- FLAKY: tests::fails_first_time (failed 1 of 2 attempts; the first failure:)"
        ),
        "{out}"
    );
    assert!(out.contains("first run fails"), "{out}");
    assert!(stderr(&o).contains("cachet: 1 flaky"), "{}", stderr(&o));
    let again = run(&["--retries", "1"]);
    assert!(
        !stdout(&again).contains("(cached)"),
        "a flaky pass is never cached"
    );
    // --fail-flaky makes it a failure.
    std::fs::remove_file(data.path().join("runs")).unwrap();
    let o = run(&["--retries", "1", "--fail-flaky", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("--- FLAKY: tests::fails_first_time"));
    // A case that never passes fails after every attempt.
    let o = cachet_with(
        dir.path(),
        &[
            "test",
            "--mount",
            &mount,
            "--run",
            "always_fails",
            "--retries",
            "2",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(!stdout(&o).contains("FLAKY"));
}

#[test]
fn cachet_toml_profiles_set_defaults_that_flags_override() {
    let m = Machine::new("proj", false);
    let data = m.root.path().join("proj/data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(&fixture("suite_flaky").wasm, m.dir().join("flaky.wasm")).unwrap();
    std::fs::write(
        m.dir().join("cachet.toml"),
        "[profile.default]\nenv = [\"CACHE_VAR=from-file\"]\n\n[profile.ci]\nretries = 1\nmount = [\"data:/data:rw\"]\njunit = \"reports/junit.xml\"\n\n[[profile.ci.overrides]]\npackages = \".\"\ntimeout = \"1m\"\n",
    )
    .unwrap();
    let sub = m.dir().join("testdata");
    // Found upward; the ci profile inherits the default's env, mounts data
    // relative to the file, retries the flaky case and writes JUnit.
    let o = cachet_with(
        &sub,
        &[
            "test",
            "--profile",
            "ci",
            "--run",
            "fails_first_time|reads_env$",
            "..",
        ],
        &[("CACHET_CACHE", m.cache.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("--- FLAKY"), "{}", stdout(&o));
    assert!(m.dir().join("reports/junit.xml").is_file());
    // The file's variable was the one in effect: the same value given as a
    // flag hits the cache, another one reruns the case that reads it.
    let env_run = |value: &str| {
        let var = format!("CACHE_VAR={value}");
        let o = cachet_with(
            &sub,
            &[
                "test",
                "--profile",
                "ci",
                "--explain",
                "--env",
                &var,
                "--run",
                "reads_env$",
                "..",
            ],
            &[("CACHET_CACHE", m.cache.path().to_str().unwrap())],
        );
        ran(&stdout(&o))
    };
    assert!(env_run("from-file").is_empty());
    assert_eq!(
        env_run("other"),
        BTreeSet::from(["tests::reads_env".to_string()])
    );
    // A flag wins over the file.
    let o = cachet_with(
        &sub,
        &[
            "test",
            "--profile",
            "ci",
            "--retries",
            "0",
            "--run",
            "always_fails",
            "..",
        ],
        &[("CACHET_CACHE", m.cache.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    // A bad file, or an unknown profile: one line naming the line, exit 2.
    std::fs::write(
        m.dir().join("cachet.toml"),
        "[profile.default]\nretries = 1\ntimout = \"1m\"\n",
    )
    .unwrap();
    let o = cachet_with(&m.dir(), &["test"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cachet.toml:3: unknown field `timout`"),
        "{err}"
    );
    std::fs::write(m.dir().join("cachet.toml"), "[profile.ci]\nretries = 1\n").unwrap();
    let o = cachet_with(&m.dir(), &["test", "--profile", "nightly"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no [profile.nightly]"),
        "{}",
        stderr(&o)
    );
}

/// Issue 17, part 4: twenty packages holding the same module, each with its
/// own testdata. A fresh machine gets every one of them from the remote,
/// with the requests one package costs: a key's entry and its module's pack
/// keep an input state per package, not the last few.
#[test]
fn twenty_packages_of_one_module_are_all_served_to_a_fresh_machine() {
    const PACKAGES: usize = 20;
    let nginx = Nginx::start(Serve::Dav);
    let project = |name: &str| {
        let root = tempfile::tempdir().unwrap();
        for n in 1..=PACKAGES {
            let p = root.path().join(name).join(format!("pkg{n:02}"));
            std::fs::create_dir_all(p.join("testdata/listed")).unwrap();
            std::fs::copy(&fixture("suite_cachecases").wasm, p.join("cases.wasm")).unwrap();
            std::fs::write(p.join("testdata/a.txt"), format!("alpha {n}")).unwrap();
            std::fs::write(p.join("testdata/b.txt"), format!("bravo {n}")).unwrap();
            std::fs::write(p.join("testdata/listed/x"), "").unwrap();
            std::os::unix::fs::symlink("a.txt", p.join("testdata/link")).unwrap();
        }
        root
    };
    let run = |root: &Path, name: &str, cache: &Path| {
        let o = cachet_with(
            &root.join(name),
            &[
                "test",
                "-p",
                "2",
                "--explain",
                "--remote-cache",
                &nginx.url,
                "./...",
            ],
            &[("CACHET_CACHE", cache.to_str().unwrap())],
        );
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        assert_eq!(stderr(&o), "", "no warning");
        o
    };
    let (a, a_cache) = (project("a"), tempfile::tempdir().unwrap());
    let first = run(a.path(), "a", a_cache.path());
    let passed = |o: &Output| {
        stdout(o)
            .lines()
            .filter(|l| l.starts_with("ok  \t"))
            .count()
    };
    assert_eq!(passed(&first), PACKAGES, "{}", stdout(&first));

    let (b, b_cache) = (project("b/elsewhere"), tempfile::tempdir().unwrap());
    let gets = nginx.requests("GET");
    let o = run(b.path(), "b/elsewhere", b_cache.path());
    let cached = stdout(&o).matches("(cached)").count();
    assert_eq!((passed(&o), cached), (PACKAGES, PACKAGES), "{}", stdout(&o));
    assert_eq!(
        nginx.requests("GET") - gets,
        2,
        "what one package costs: the listing's entry and the module's pack"
    );
}

/// A line of `--explain`'s module counts.
fn modules_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .find(|l| l.starts_with("cachet: explain: modules: "))
        .unwrap_or_default()
        .to_string()
}

/// Issue 17, part 2: compiled modules in the remote cache, only when asked
/// (`--remote-cache-compiled`), checked before they are loaded.
#[test]
fn compiled_modules_come_from_the_remote_only_when_asked_and_intact() {
    let nginx = Nginx::start(Serve::Dav);
    let shared = ["--remote-cache", &nginx.url, "--remote-cache-compiled"];
    // A fills the remote: results, and both modules' Cranelift code (the
    // background compiles are finished for the remote).
    let a = Machine::new("a", false);
    let o = a.test(&shared);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert!(
        modules_line(&o).contains("2 compiled by Cranelift"),
        "{}",
        modules_line(&o)
    );
    let blobs = |nginx: &Nginx| -> Vec<PathBuf> {
        walk(&nginx.data().join("cachet/cas"))
            .into_iter()
            .filter(|f| {
                // The module's code, then the magic, the key and a BLAKE3.
                let b = std::fs::read(f).unwrap();
                b.len() > 83 && b[b.len() - 83..b.len() - 64] == *b"cachet-compiled v3\n"
            })
            .collect()
    };
    assert_eq!(blobs(&nginx).len(), 2, "both modules' code uploaded");

    // B, a fresh machine running every case: compiles nothing.
    let b = Machine::new("elsewhere/b", false);
    let o = b.test(&[&["--count", "1"][..], &shared].concat());
    assert_eq!((o.status.code(), stderr(&o).as_str()), (Some(0), ""));
    assert_eq!(
        modules_line(&o),
        "cachet: explain: modules: 0 compiled by Cranelift (0 after starting on Winch), 0 by Winch, 0 from the local cache, 2 from the remote cache"
    );
    // Kept locally: the next run loads it from disk, asking nothing.
    let o = b.test(&["--count", "1"]);
    assert!(
        modules_line(&o).contains("2 from the local cache"),
        "{}",
        modules_line(&o)
    );

    // Without the flag nothing compiled comes down: C compiles.
    let c = Machine::new("c", false);
    let o = c.test(&["--count", "1", "--remote-cache", &nginx.url]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        modules_line(&o).ends_with(", 0 from the remote cache"),
        "{}",
        modules_line(&o)
    );
    assert!(!modules_line(&o)
        .contains("modules: 0 compiled by Cranelift (0 after starting on Winch), 0 by Winch"));

    // A damaged compiled file on the server is never loaded: one warning,
    // the module compiled here, every result right.
    for f in blobs(&nginx) {
        let mut bytes = std::fs::read(&f).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&f, bytes).unwrap();
    }
    let d = Machine::new("d", false);
    let o = d.test(&[&["--count", "1"][..], &shared].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("does not match its digest"),
        "{}",
        stderr(&o)
    );
    assert!(
        modules_line(&o).ends_with(", 0 from the remote cache"),
        "{}",
        modules_line(&o)
    );
    assert_eq!(ran(&stdout(&o)).len(), CASES);

    // The flag alone is one clear line.
    let o = b.test(&["--remote-cache-compiled"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "cachet: --remote-cache-compiled shares compiled modules through the remote cache: give --remote-cache URL too\n"
    );
}

/// How long jobs took travels with the remote cache: a fresh machine runs
/// a case that took 3 s on another machine apart on its first run, as the
/// machine that timed it would. An upload keeps the times of jobs its
/// machine did not run; a damaged entry is one warning and a right run.
#[test]
fn a_fresh_machine_knows_its_long_jobs_from_the_remote() {
    let nginx = Nginx::start(Serve::Dav);
    let remote = ["--remote-cache", nginx.url.as_str()];
    let a = Machine::new("a/project", true);
    let o = a.test(&remote);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stderr(&o), "", "no warning");
    assert_eq!(
        crate::apart::runs_apart(&stdout(&o)),
        0,
        "nothing timed yet"
    );
    let timings = nginx.entries("cachet-timings v1");
    assert_eq!(timings.len(), 1, "one package's timings");
    let text = String::from_utf8_lossy(&std::fs::read(&timings[0]).unwrap()).into_owned();
    assert!(
        !text.contains("prints_then_waits"),
        "case names are hashed: {text}"
    );

    // Fresh machines, every case run (`--count 1`): with the remote, the
    // slow case goes apart; without it, nothing is known.
    let apart_on = |m: &Machine, extra: &[&str]| {
        let o = m.test(&[&["--count", "1"][..], extra].concat());
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        (
            crate::apart::runs_apart(&stdout(&o)),
            stdout(&o),
            stderr(&o),
        )
    };
    let (apart, out, err) = apart_on(&Machine::new("b", true), &remote);
    assert_eq!((apart, err.as_str()), (1, ""), "{out}");
    assert!(
        out.contains("cachet: explain: job timings from the remote cache: 1 package"),
        "{out}"
    );
    let (apart, out, _) = apart_on(&Machine::new("c", true), &[]);
    assert_eq!(apart, 0, "{out}");

    // Read-only: taken, never given.
    let puts = nginx.requests("PUT");
    let read_only = [&remote[..], &["--remote-cache-read-only"]].concat();
    let (apart, out, _) = apart_on(&Machine::new("d", true), &read_only);
    assert_eq!(apart, 1, "{out}");
    assert_eq!(nginx.requests("PUT"), puts, "nothing uploaded");

    // A machine that runs only some of the package's jobs (E has no slow
    // module) shares their times and keeps the others' on the server.
    let puts = nginx.requests("PUT");
    let (apart, out, err) = apart_on(&Machine::new("e", false), &remote);
    assert_eq!((apart, err.as_str()), (0, ""), "{out}");
    assert!(nginx.requests("PUT") > puts, "E uploaded");
    let (apart, out, _) = apart_on(&Machine::new("g", true), &remote);
    assert_eq!(apart, 1, "the slow job's time survived E's upload: {out}");

    // A damaged entry: one warning; every case still runs and passes.
    let timings = nginx.entries("cachet-timings v1");
    let mut bytes = std::fs::read(&timings[0]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&timings[0], bytes).unwrap();
    let (apart, out, err) = apart_on(&Machine::new("f", true), &remote);
    assert_eq!(apart, 0, "{out}");
    assert!(err.contains("the entry is damaged"), "{err}");
    assert!(!ran(&out).is_empty());
}
