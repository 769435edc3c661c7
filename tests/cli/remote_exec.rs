//! Remote execution (issue 19) on a real REAPI server: BuildGrid with its
//! scheduler on PostgreSQL, started here on 127.0.0.1, and `cachet worker`
//! processes as its bots. Actions are submitted through cachet's own REAPI
//! client (`cachet::reapi`), as `cachet test --remote-executor` will.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachet::reapi::cas::{Blob, Cas};
use cachet::reapi::exec::{ExecError, Executor};
use cachet::reapi::tree::TreeBuilder;
use cachet::reapi::{re, Endpoint};
use cachet_testkit::buildgrid::BuildGrid;
use prost::Message as _;

use crate::cachet_bin;

/// A shell command as an action: its input root holds `files`.
async fn submit(
    url: &str,
    files: &[(&str, &[u8])],
    script: &str,
    outputs: &[&str],
    timeout: Option<Duration>,
) -> Result<re::ExecuteResponse, ExecError> {
    let conn = Endpoint::parse(url, "", None).unwrap().connect().unwrap();
    let cas = Cas::new(conn.clone());
    let mut tree = TreeBuilder::default();
    for (path, bytes) in files {
        tree.add_bytes(path, bytes.to_vec(), false);
    }
    let tree = tree.finish();
    let command = re::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![re::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        output_paths: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let command = Blob::bytes(command.encode_to_vec());
    let action = re::Action {
        command_digest: Some(command.digest.clone()),
        input_root_digest: Some(tree.root.clone()),
        timeout: timeout.map(|t| cachet::reapi::protobuf::Duration {
            seconds: t.as_secs() as i64,
            nanos: 0,
        }),
        do_not_cache: true,
        ..Default::default()
    };
    let action = Blob::bytes(action.encode_to_vec());
    let digest = action.digest.clone();
    let mut blobs = tree.blobs;
    blobs.extend([command, action]);
    cas.upload(&blobs).await.unwrap();
    Executor::new(conn).execute(digest, true, &|_, _| {}).await
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn read(url: &str, d: &re::Digest) -> Vec<u8> {
    let conn = Endpoint::parse(url, "", None).unwrap().connect().unwrap();
    Cas::new(conn).read(d).await.unwrap()
}

#[test]
fn a_cachet_worker_runs_buildgrid_actions_as_hosttools_would() {
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 2);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = block_on(submit(
        &grid.url,
        &[("in/hello.txt", b"hello"), ("in/big.bin", &big)],
        "tr a-z A-Z < in/hello.txt > out/up.txt; mkdir -p dir/sub; cp in/big.bin dir/sub/; \
         echo to-stdout; echo to-stderr >&2; exit 3",
        &["out/up.txt", "dir", "never-made.txt"],
        None,
    ))
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nworker: {}\nserver: {}",
            grid.worker_log(0),
            grid.server_log()
        )
    });
    let result = r.result.expect("an ActionResult");
    assert_eq!(result.exit_code, 3);
    block_on(async {
        assert_eq!(
            read(&grid.url, result.stdout_digest.as_ref().unwrap()).await,
            b"to-stdout\n"
        );
        assert_eq!(
            read(&grid.url, result.stderr_digest.as_ref().unwrap()).await,
            b"to-stderr\n"
        );
        assert_eq!(result.output_files.len(), 1, "{:?}", result.output_files);
        assert_eq!(result.output_files[0].path, "out/up.txt");
        let up = read(&grid.url, result.output_files[0].digest.as_ref().unwrap()).await;
        assert_eq!(up, b"HELLO");
        assert_eq!(result.output_directories.len(), 1);
        let tree = read(
            &grid.url,
            result.output_directories[0].tree_digest.as_ref().unwrap(),
        )
        .await;
        let tree = re::Tree::decode(tree.as_slice()).unwrap();
        let sub = &tree.children[0];
        assert_eq!(sub.files[0].name, "big.bin");
        assert_eq!(
            read(&grid.url, sub.files[0].digest.as_ref().unwrap()).await,
            big
        );
    });
    assert!(
        result
            .execution_metadata
            .unwrap()
            .worker
            .starts_with("test-bot-"),
        "the worker names itself"
    );

    // Another action with the same big input: the worker links it from
    // its blob store (the same read-only file as the first action's).
    let r = block_on(submit(
        &grid.url,
        &[("other/big.bin", &big)],
        "stat -c '%i %a' other/big.bin",
        &[],
        None,
    ))
    .unwrap();
    let result = r.result.expect("an ActionResult");
    assert_eq!(result.exit_code, 0);
    let out = block_on(read(&grid.url, result.stdout_digest.as_ref().unwrap()));
    let d = cachet::reapi::digest_of(&big);
    let kept = grid
        .worker_dir(0)
        .join("blobs")
        .join(format!("{}-{}", d.hash, d.size_bytes));
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(&kept).expect("the blob is kept").ino();
    assert_eq!(String::from_utf8_lossy(&out), format!("{inode} 444\n"));
}

#[test]
fn buildgrid_requeues_a_killed_workers_action_and_kills_overdue_ones() {
    let mut grid = BuildGrid::start(Duration::from_secs(4));
    grid.add_worker(&cachet_bin(), 1);
    let url = grid.url.clone();
    let marker = tempfile::tempdir().unwrap();
    let started = marker.path().join("started");
    let script = format!("touch {}; sleep 3; echo survived", started.display());
    let job = std::thread::spawn(move || block_on(submit(&url, &[], &script, &[], None)));
    let t = Instant::now();
    while !started.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the action never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The machine running it dies; another bot comes up.
    grid.kill_worker(0);
    grid.add_worker(&cachet_bin(), 1);
    let r = job
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}", grid.server_log()));
    eprintln!("requeued and done after {:?}", t.elapsed());
    let result = r.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.execution_metadata.unwrap().worker, "test-bot-1");

    // An action past its own timeout is killed, its process group too.
    let t = Instant::now();
    let e = block_on(submit(
        &grid.url,
        &[],
        "sleep 30 & sleep 30",
        &[],
        Some(Duration::from_secs(1)),
    ))
    .unwrap_err();
    eprintln!("timeout seen after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    match e {
        ExecError::Failed(s) => {
            assert_eq!(s.code(), tonic_code_deadline(), "{s:?}");
            assert!(s.message().contains("timeout"), "{s:?}");
        }
        e => panic!("{e}"),
    }
}

fn tonic_code_deadline() -> cachet::reapi::exec::Code {
    cachet::reapi::exec::Code::DeadlineExceeded
}

/// A project of two prebuilt test modules reading testdata, with its own
/// cache: one "machine".
struct Project {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project::of(&[
            ("suite_cachecases", "cachecases.wasm"),
            ("suite_cachenoshim", "noshim.wasm"),
        ])
    }

    /// A project of the given fixture modules (fixture, file name).
    fn of(modules: &[(&str, &str)]) -> Project {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        std::fs::create_dir_all(p.join("testdata/listed")).unwrap();
        for (f, name) in modules {
            std::fs::copy(&cachet_testkit::fixture(f).wasm, p.join(name)).unwrap();
        }
        std::fs::write(p.join("testdata/a.txt"), "alpha").unwrap();
        std::fs::write(p.join("testdata/b.txt"), "bravo").unwrap();
        std::fs::write(p.join("testdata/listed/x"), "").unwrap();
        std::os::unix::fs::symlink("a.txt", p.join("testdata/link")).unwrap();
        Project {
            root,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn test(&self, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["test", "--explain", "-v"];
        args.extend(extra);
        crate::cachet_with(
            self.root.path(),
            &args,
            &[("CACHET_CACHE", self.cache.path().to_str().unwrap())],
        )
    }

    /// `cachet test` on `url`'s farm, started and left running: after a
    /// local run that only lists, so only the cases go to the farm.
    fn spawn(&self, url: &str, extra: &[&str]) -> std::process::Child {
        let first = self.test(&["--run", "^nothing$"]);
        assert_eq!(first.status.code(), Some(0), "{}", crate::stderr(&first));
        let cache = self.cache.path().to_str().unwrap();
        let (mut cmd, _) = crate::cachet_command(self.root.path(), &[("CACHET_CACHE", cache)]);
        cmd.args(["test", "--explain", "-v", "--remote-executor", url])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The worker (of the first `n`) holding an action, once one does.
fn busy_worker(grid: &BuildGrid, n: usize) -> usize {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(w) = (0..n).find(|&w| holds_action(grid, w)) {
            return w;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no worker took the action:\n{}", grid.server_log());
}

/// Whether worker `w` still holds an action.
fn holds_action(grid: &BuildGrid, w: usize) -> bool {
    std::fs::read_dir(grid.worker_dir(w))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("action-"))
}

/// Cases that ran, from `--explain`.
fn ran(out: &str) -> std::collections::BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cachet: explain: "))
        .filter_map(|l| l.split_once(" ran: "))
        .map(|(who, _)| who.rsplit(": ").next().unwrap().to_string())
        .collect()
}

/// Each case's verdict line (`--- PASS: name`), sorted, without times.
fn verdicts(o: &std::process::Output) -> Vec<String> {
    let re = regex::Regex::new(r" \(\d+\.\d+s\)").unwrap();
    let mut v: Vec<String> = crate::stdout(o)
        .lines()
        .filter(|l| l.starts_with("--- "))
        .map(|l| re.replace_all(l, "").into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn misses_run_on_buildgrid_and_are_cached_here_exactly() {
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 2);
    grid.add_worker(&cachet_bin(), 2);
    let remote = Project::new();
    let local = Project::new();
    let exec = ["--remote-executor", grid.url.as_str()];

    let here = local.test(&[]);
    let there = remote.test(&exec);
    let err = crate::stderr(&there);
    assert_eq!(there.status.code(), here.status.code(), "{err}");
    assert!(!verdicts(&here).is_empty());
    assert_eq!(verdicts(&there), verdicts(&here), "{err}");
    let runs = ran(&crate::stdout(&there));
    assert_eq!(runs, ran(&crate::stdout(&here)));
    let summary = regex::Regex::new(
        r"remote executor grpc://[^ ]+: (\d+) of (\d+) runs remote in (\d+) actions",
    )
    .unwrap();
    let c = summary
        .captures(&err)
        .unwrap_or_else(|| panic!("{err}\n{}", grid.worker_log(0)));
    assert_eq!(c[1], c[2], "every run went to the farm: {err}");
    // Runs of one module travel together: fewer actions than runs.
    let (runs_n, actions) = (
        c[2].parse::<usize>().unwrap(),
        c[3].parse::<usize>().unwrap(),
    );
    assert!(actions < runs_n, "{err}");
    assert!(!err.contains("warning"), "{err}");

    // Cached here: the second run asks the executor nothing.
    let again = remote.test(&exec);
    assert_eq!(verdicts(&again), verdicts(&here));
    assert!(
        ran(&crate::stdout(&again)).is_empty(),
        "{}",
        crate::stdout(&again)
    );
    assert!(
        !crate::stderr(&again).contains("runs remote"),
        "{}",
        crate::stderr(&again)
    );

    // A changed input reruns exactly its readers, remotely.
    for p in [&remote, &local] {
        std::fs::write(p.root.path().join("testdata/a.txt"), "ALPHA").unwrap();
    }
    let here = local.test(&[]);
    let there = remote.test(&exec);
    let (rh, rt) = (ran(&crate::stdout(&here)), ran(&crate::stdout(&there)));
    assert!(
        !rh.is_empty() && rh.len() < runs.len(),
        "{rh:?} of {runs:?}"
    );
    assert_eq!(rt, rh);
    assert_eq!(verdicts(&there), verdicts(&here));
    let err = crate::stderr(&there);
    let c = summary.captures(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        (c[1].parse::<usize>().unwrap(), &c[2]),
        (rh.len(), &c[1]),
        "{err}"
    );
}

#[test]
fn workers_own_cachet_serves_actions_that_carry_none() {
    // No worker yet: the run says once what it waits for, and waits.
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    let p = Project::new();
    let mut child = p.spawn(&grid.url, &["--remote-cachet", "installed"]);
    let stderr = child.stderr.take().unwrap();
    let (lines, heard) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let protocol = cachet::remote_exec::protocol();
    let start = Instant::now();
    loop {
        let line = heard
            .recv_timeout(Duration::from_secs(60))
            .expect("the run says it waits for a worker");
        if line.contains("still waiting") {
            assert!(line.contains("no worker has started"), "{line}");
            assert!(line.contains(&format!("cachet={protocol}")), "{line}");
            break;
        }
    }
    assert!(
        start.elapsed() >= Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    // A worker comes: it offers the property, runs its own cachet, and the
    // run ends as a local one would, nothing of cachet uploaded.
    grid.add_worker(&cachet_bin(), 2);
    let o = finish(child);
    let err = reader.join().unwrap();
    let here = Project::new().test(&[]);
    assert_eq!(o.status.code(), here.status.code(), "{err}");
    assert_eq!(verdicts(&o), verdicts(&here), "{err}");
    let summary =
        regex::Regex::new(r": (\d+) of (\d+) runs remote in \d+ actions, ([\d.]+) MiB uploaded")
            .unwrap();
    let c = summary.captures(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(c[1], c[2], "every run went to the farm: {err}");
    let uploaded = c[3].parse::<f64>().unwrap() * (1 << 20) as f64;
    let binary = std::fs::metadata(cachet_bin()).unwrap().len() as f64;
    assert!(
        uploaded < binary / 10.0,
        "{uploaded} of a {binary} B cachet: {err}"
    );
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(
        grid.worker_log(0)
            .contains(&format!("offering cachet={protocol}")),
        "{}",
        grid.worker_log(0)
    );
    let again = p.test(&[]);
    assert!(ran(&crate::stdout(&again)).is_empty(), "cached");

    // A farm whose scheduler does not know the property refuses the
    // action: one warning says what to register, and the run goes on here.
    let plain = BuildGrid::start_without_cachet_property(Duration::from_secs(10));
    let p = Project::new();
    let o = p.test(&[
        "--remote-executor",
        &plain.url,
        "--remote-cachet",
        "installed",
    ]);
    let err = crate::stderr(&o);
    assert_eq!(o.status.code(), here.status.code(), "{err}");
    assert_eq!(verdicts(&o), verdicts(&here), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("FailedPrecondition"), "{err}");
    assert!(
        err.contains("register the platform property `cachet`"),
        "{err}"
    );
    assert!(err.contains("running the rest locally"), "{err}");
}

/// `(runs remote, runs, actions)` from a run's summary line.
fn farm_summary(err: &str) -> (usize, usize, usize) {
    let re = regex::Regex::new(r": (\d+) of (\d+) runs remote in (\d+) actions").unwrap();
    let c = re.captures(err).unwrap_or_else(|| panic!("{err}"));
    let n = |i: usize| c[i].parse::<usize>().unwrap();
    (n(1), n(2), n(3))
}

#[test]
fn a_modules_time_on_the_farm_sizes_its_first_batches_next_run() {
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 4);
    let p = Project::of(&[("suite_many", "many.wasm")]);
    // First time: the module's runs are untimed, 8 to an action at most.
    let first = finish(p.spawn(&grid.url, &[]));
    let err = crate::stderr(&first);
    assert_eq!(first.status.code(), Some(0), "{err}");
    let (remote, runs, actions) = farm_summary(&err);
    assert_eq!((remote, runs), (40, 40), "{err}");
    assert!(actions >= 5, "{err}");
    // Next time (no results kept: --count 1), the cache's record of their
    // time on the farm makes the first batches a second's work: fewer
    // actions than batches of 8 could carry the 40 runs in.
    let again = p.test(&["--remote-executor", &grid.url, "--count", "1"]);
    let err2 = crate::stderr(&again);
    assert_eq!(again.status.code(), Some(0), "{err2}");
    let (remote2, runs2, actions2) = farm_summary(&err2);
    assert_eq!((remote2, runs2), (40, 40), "{err2}");
    assert!(actions2 < 40 / 8, "{err}\n{err2}");
}

#[test]
fn an_unreachable_executor_warns_once_and_the_run_goes_on_locally() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Project::new();
    let url = format!("grpc://127.0.0.1:{port}");
    let o = p.test(&["--remote-executor", &url]);
    let err = crate::stderr(&o);
    let here = Project::new().test(&[]);
    assert_eq!(o.status.code(), here.status.code(), "{err}");
    assert_eq!(verdicts(&o), verdicts(&here));
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains(&format!("remote executor {url}")), "{err}");
    assert!(err.contains("running the rest locally"), "{err}");
    // What ran locally is cached as any local result.
    let again = p.test(&[]);
    assert!(ran(&crate::stdout(&again)).is_empty());
}

/// A bot gone bad: it answers every lease it gets, without running
/// anything, with `outcome` as each run's `outcome.json`.
fn lying_bot(url: String, outcome: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    use cachet::reapi::bots::{self, BotSession, BotStatus, BotsClient, Lease, LeaseState};
    std::thread::spawn(move || {
        block_on(async move {
            let conn = Endpoint::parse(&url, "", None).unwrap().connect().unwrap();
            let bots = BotsClient::new(conn.clone());
            let cas = Cas::new(conn);
            let blob = Blob::bytes(outcome);
            cas.upload(std::slice::from_ref(&blob)).await.unwrap();
            // Every outcome file the action's command names.
            let result = |lease: &Lease| {
                let action: re::Action = bots::unpack(
                    "build.bazel.remote.execution.v2.Action",
                    lease.payload.as_ref().expect("a payload"),
                )
                .expect("an action");
                let (cas, digest) = (cas.clone(), blob.digest.clone());
                async move {
                    let command = cas.read(&action.command_digest.unwrap()).await.unwrap();
                    let command = re::Command::decode(command.as_slice()).unwrap();
                    re::ActionResult {
                        output_files: command
                            .output_paths
                            .iter()
                            .filter(|p| p.ends_with("outcome.json"))
                            .map(|p| re::OutputFile {
                                path: p.clone(),
                                digest: Some(digest.clone()),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }
                }
            };
            let template = BotSession {
                bot_id: "liar".into(),
                status: BotStatus::Ok as i32,
                ..Default::default()
            };
            let mut session = bots.create(template, Duration::from_secs(5)).await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let mut answer = session.clone();
                answer.leases.clear();
                for l in &session.leases {
                    if l.state == LeaseState::Completed as i32 {
                        continue;
                    }
                    answer.leases.push(Lease {
                        state: LeaseState::Completed as i32,
                        status: Some(cachet::reapi::rpc::Status::default()),
                        result: Some(bots::pack(
                            "build.bazel.remote.execution.v2.ActionResult",
                            &result(l).await,
                        )),
                        payload: None,
                        ..l.clone()
                    });
                }
                if let Ok(s) = bots.update(answer, Duration::from_secs(5)).await {
                    session = s;
                }
            }
        })
    })
}

#[test]
fn a_workers_results_are_data_checked_before_they_count() {
    use cachet_runtime::log::{Entry, InputLog, Observation, ReadOp};
    use cachet_runtime::{OutcomeSpec, Sha256Digest, Status};
    let grid = BuildGrid::start(Duration::from_secs(10));
    let stop = Arc::new(AtomicBool::new(false));

    // Garbage for an outcome: one warning, then every case runs here.
    let bot = lying_bot(grid.url.clone(), b"{not json".to_vec(), stop.clone());
    let p = Project::new();
    let here = Project::new().test(&[]);
    let o = p.test(&["--remote-executor", &grid.url]);
    let err = crate::stderr(&o);
    assert_eq!(verdicts(&o), verdicts(&here), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("malformed"), "{err}");
    stop.store(true, Ordering::SeqCst);
    bot.join().unwrap();

    // A well-formed lie: every case "passed" having read a testdata file
    // this machine holds otherwise. A run whose inputs are not this
    // machine's is not this machine's result: each case runs here.
    let lie = OutcomeSpec {
        status: Status::Exited(0),
        elapsed: Duration::from_millis(1),
        log: InputLog {
            entries: vec![Entry::Read {
                op: ReadOp::Open,
                path: "pkg/testdata/a.txt".into(),
                observation: Observation::Digest(Sha256Digest::of(b"forged")),
            }],
        },
        changed_during_run: None,
        cleanup_error: None,
        compiler: cachet_runtime::Compiler::Cranelift,
        restarted: false,
        wasi: cachet_runtime::Wasi::P1,
        exit_frames: Vec::new(),
        collected: false,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let bot = lying_bot(
        grid.url.clone(),
        serde_json::to_vec(&lie).unwrap(),
        stop.clone(),
    );
    // Another input root than the first project's: the farm's action cache
    // holds the garbage above for those actions.
    let p = Project::new();
    std::fs::write(p.root.path().join("unread.txt"), "another input root").unwrap();
    let o = p.test(&["--remote-executor", &grid.url]);
    let err = crate::stderr(&o);
    assert_eq!(verdicts(&o), verdicts(&here), "{err}");
    assert!(err.contains(": 0 of "), "{err}");
    stop.store(true, Ordering::SeqCst);
    bot.join().unwrap();
    let after = p.test(&[]);
    assert!(
        ran(&crate::stdout(&after)).is_empty(),
        "{}",
        crate::stdout(&after)
    );
}

/// The output of a spawned `cachet test`, once it ends.
fn finish(child: std::process::Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

#[test]
fn a_worker_killed_mid_run_costs_time_not_the_result() {
    let mut grid = BuildGrid::start(Duration::from_secs(4));
    grid.add_worker(&cachet_bin(), 1);
    grid.add_worker(&cachet_bin(), 1);
    // One case that prints, then sleeps 3 s on the worker.
    let p = Project::of(&[("suite_slowprint", "slowprint.wasm")]);
    let child = p.spawn(&grid.url, &[]);
    let w = busy_worker(&grid, 2);
    grid.kill_worker(w);
    let o = finish(child);
    let err = crate::stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        crate::stdout(&o).contains("--- PASS: tests::prints_then_waits"),
        "{}",
        crate::stdout(&o)
    );
    // The server gave the action to the other bot: it still ran remotely.
    assert!(err.contains(": 1 of 1 runs remote"), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(holds_action(&grid, w), "the killed worker left its action");
    let again = p.test(&[]);
    assert!(ran(&crate::stdout(&again)).is_empty(), "cached");
}

#[test]
fn a_server_gone_mid_run_leaves_the_run_to_this_machine() {
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 1);
    let p = Project::of(&[("suite_slowprint", "slowprint.wasm")]);
    let child = p.spawn(&grid.url, &[]);
    busy_worker(&grid, 1);
    grid.stop_server();
    let o = finish(child);
    let err = crate::stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(crate::stdout(&o).contains("--- PASS: tests::prints_then_waits"));
    // One warning, the server's end (on a loaded machine the worker may
    // also take over 10 s to start the action: said, and not counted).
    let warnings = err
        .lines()
        .filter(|l| l.contains("warning") && !l.contains("still waiting"))
        .count();
    assert_eq!(warnings, 1, "{err}");
    assert!(err.contains("running the rest locally"), "{err}");
    assert!(err.contains(": 0 of 1 runs remote"), "{err}");
    // What ran here is cached as any local result.
    let again = p.test(&[]);
    assert!(ran(&crate::stdout(&again)).is_empty(), "cached");
}

#[test]
fn ctrl_c_cancels_the_farms_operations() {
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 1);
    // Ctrl-C once the worker holds the run's action: exit 130 at once,
    // and the worker's action gone within `within`.
    let interrupt = |child: std::process::Child, within: Duration| {
        busy_worker(&grid, 1);
        let start = Instant::now();
        let kill = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let o = finish(child);
        let err = crate::stderr(&o);
        assert_eq!(o.status.code(), Some(130), "{err}");
        // Interrupted, not failed: a listing cut short is no setup error.
        assert!(!err.contains("listing its tests"), "{err}");
        assert!(
            !crate::stdout(&o).contains("setup failed"),
            "{}",
            crate::stdout(&o)
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        while holds_action(&grid, 0) {
            assert!(
                start.elapsed() < within,
                "the action still runs on the worker:\n{}",
                grid.worker_log(0)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // During a listing on the farm (the worker's first action: it fetches
    // this cachet and compiles the module): an interrupted run, not a
    // package whose listing failed.
    let first = Project::of(&[("suite_spin", "spin.wasm")]);
    let cache = first.cache.path().to_str().unwrap();
    let (mut cmd, _) = crate::cachet_command(first.root.path(), &[("CACHET_CACHE", cache)]);
    let child = cmd
        .args(["test", "--remote-executor", &grid.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    interrupt(child, Duration::from_secs(60));
    // During a case that spins until its 60 s limit: only a cancel stops
    // it early, and the worker heard it.
    let p = Project::of(&[("suite_spin", "spin.wasm")]);
    let child = p.spawn(&grid.url, &["--timeout", "60s"]);
    interrupt(child, Duration::from_secs(30));
}

#[test]
fn go_packages_run_on_buildgrid_with_the_verdicts_of_a_local_run() {
    use cachet_testkit::{copy_tree, repo_root};
    let mut grid = BuildGrid::start(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 2);
    grid.add_worker(&cachet_bin(), 2);
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("m");
    copy_tree(&repo_root().join("fixtures/go"), &m).unwrap();
    let (here_cache, there_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One instance per test on both sides (by default a Go module whose
    // init measured slow shares one instance: a timing, not a verdict).
    let go_test = |cache: &tempfile::TempDir, extra: &[&str]| {
        let mut args = vec![
            "test",
            "--isolate",
            "test",
            "--env",
            "CACHET_GREETING=hello",
        ];
        args.extend(extra);
        args.push("./...");
        crate::cachet_with(
            &m,
            &args,
            &[("CACHET_CACHE", cache.path().to_str().unwrap())],
        )
    };
    let exec = ["--remote-executor", grid.url.as_str()];
    let here = go_test(&here_cache, &["--json"]);
    let there = go_test(&there_cache, &["--json", exec[0], exec[1]]);
    let err = crate::stderr(&there);
    assert_eq!(there.status.code(), here.status.code(), "{err}");
    let verdicts = |o: &std::process::Output| {
        let mut v = crate::json_verdicts(&crate::stdout(o));
        v.sort();
        v
    };
    assert!(verdicts(&here).len() > 10, "{}", crate::stdout(&here));
    assert_eq!(verdicts(&there), verdicts(&here), "{err}");
    let summary =
        regex::Regex::new(r"remote executor grpc://[^ ]+: (\d+) of (\d+) runs remote").unwrap();
    let c = summary
        .captures(&err)
        .unwrap_or_else(|| panic!("{err}\n{}", grid.worker_log(0)));
    assert_eq!(c[1], c[2], "every run went to the farm: {err}");
    assert!(c[1].parse::<usize>().unwrap() > 0);
    // The second run reruns what a local second run reruns (the failing
    // tests), on the farm; the rest is cached here.
    let again_here = go_test(&here_cache, &["--explain"]);
    let again = go_test(&there_cache, &["--explain", "--remote-executor", &grid.url]);
    let (rh, rt) = (
        ran(&crate::stdout(&again_here)),
        ran(&crate::stdout(&again)),
    );
    assert_eq!(
        rt,
        rh,
        "first:\n{}\nsecond:\n{}{}",
        crate::stdout(&there),
        crate::stdout(&again),
        crate::stderr(&again)
    );
    assert!(rh.len() < verdicts(&here).len(), "{rh:?}");
    let err = crate::stderr(&again);
    let c = summary.captures(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        (&c[1], &c[2]),
        (&*rh.len().to_string(), &*rh.len().to_string())
    );
}

#[test]
fn a_module_a_worker_cannot_run_fails_here_as_it_would_have() {
    let grid = {
        let mut g = BuildGrid::start(Duration::from_secs(10));
        g.add_worker(&cachet_bin(), 2);
        g
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Loads, but imports what no host gives: it cannot be instantiated.
    let imports = wat::parse_str(
        r#"(module (import "env" "host_magic" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    )
    .unwrap();
    std::fs::write(d.join("imports.wasm"), imports).unwrap();
    std::fs::copy(
        &cachet_testkit::fixture("suite_cachecases").wasm,
        d.join("good.wasm"),
    )
    .unwrap();
    // Both listed by libtest's protocol: the listings go to the farm, whose
    // worker cannot instantiate the first.
    let args = [
        "test",
        "-p",
        "1",
        "--framework",
        "libtest",
        "imports.wasm",
        "good.wasm",
    ];
    let here = crate::cachet_in(d, &args);
    let mut remote = args.to_vec();
    remote.extend(["--remote-executor", grid.url.as_str()]);
    let there = crate::cachet_in(d, &remote);
    let err = crate::stderr(&there);
    assert_eq!(there.status.code(), Some(2), "{err}");
    assert_eq!(
        crate::normalize(&crate::stdout(&there)),
        crate::normalize(&crate::stdout(&here))
    );
    // The same error line as here, and no warning: the executor stayed on
    // and ran the good module's cases.
    let setup = |o: &str| {
        o.lines()
            .filter(|l| l.starts_with("cachet: imports.wasm"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(setup(&err), setup(&crate::stderr(&here)), "{err}");
    assert_eq!(setup(&err).len(), 1, "{err}");
    assert!(!err.contains("warning"), "{err}");
    let summary =
        regex::Regex::new(r"remote executor grpc://[^ ]+: (\d+) of (\d+) runs remote").unwrap();
    let c = summary.captures(&err).unwrap_or_else(|| panic!("{err}"));
    // The good module's listing and cases ran there; the bad one's listing
    // came back here.
    assert_eq!(
        c[1].parse::<usize>().unwrap() + 1,
        c[2].parse::<usize>().unwrap(),
        "{err}"
    );
}

#[test]
fn a_farm_behind_tls_and_a_token_is_reached_with_its_ca_and_token_only() {
    let mut grid = BuildGrid::start_secured(Duration::from_secs(10));
    grid.add_worker(&cachet_bin(), 2);
    assert!(grid.url.starts_with("grpcs://"), "{}", grid.url);
    let ca = grid.ca.clone().unwrap();
    let p = Project::new();
    let here = Project::new().test(&[]);
    // Without the farm's CA its certificate is not trusted: one warning,
    // and the run goes on here.
    let o = p.test(&["--count", "1", "--remote-executor", &grid.url]);
    let err = crate::stderr(&o);
    assert_eq!(verdicts(&o), verdicts(&here), "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains(": 0 of "), "{err}");
    assert!(
        err.contains("CACHET_REMOTE_EXECUTOR_CA"),
        "says what to do: {err}"
    );
    let cache = p.cache.path().to_str().unwrap();
    let ca = ca.to_str().unwrap();
    let run = |env: &[(&str, &str)]| {
        let mut env = env.to_vec();
        env.push(("CACHET_CACHE", cache));
        crate::cachet_with(
            p.root.path(),
            &["test", "-v", "--count", "1", "--remote-executor", &grid.url],
            &env,
        )
    };
    // With the CA but no token (or a wrong one) the server refuses every
    // call: one warning, the run goes on here.
    for env in [
        vec![("CACHET_REMOTE_EXECUTOR_CA", ca)],
        vec![
            ("CACHET_REMOTE_EXECUTOR_CA", ca),
            ("CACHET_REMOTE_EXECUTOR_TOKEN", "not-a-token"),
        ],
    ] {
        let o = run(&env);
        let err = crate::stderr(&o);
        assert_eq!(verdicts(&o), verdicts(&here), "{err}");
        assert_eq!(err.matches("warning").count(), 1, "{err}");
        assert!(err.contains(": 0 of "), "{err}");
        assert!(
            err.contains("CACHET_REMOTE_EXECUTOR_TOKEN"),
            "says what to do: {err}"
        );
    }
    // With both (as the worker has them), every run goes to the farm over
    // TLS, each call carrying the token.
    let token = grid.token.clone().unwrap();
    let o = run(&[
        ("CACHET_REMOTE_EXECUTOR_CA", ca),
        ("CACHET_REMOTE_EXECUTOR_TOKEN", &token),
    ]);
    let err = crate::stderr(&o);
    assert_eq!(
        verdicts(&o),
        verdicts(&here),
        "{err}\n{}",
        grid.worker_log(0)
    );
    let summary =
        regex::Regex::new(r"remote executor grpcs://[^ ]+: (\d+) of (\d+) runs remote").unwrap();
    let c = summary.captures(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(c[1], c[2], "{err}");
    assert!(!err.contains("warning"), "{err}");
    // A CA file that is not there is one clear line, before anything runs.
    let o = crate::cachet_with(
        p.root.path(),
        &["test", "--remote-executor", &grid.url],
        &[("CACHET_REMOTE_EXECUTOR_CA", "/nonexistent/ca.pem")],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = crate::stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CACHET_REMOTE_EXECUTOR_CA=/nonexistent/ca.pem"),
        "{err}"
    );
}
