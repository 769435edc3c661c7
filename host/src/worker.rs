//! `cachet worker --buildgrid URL`: cachet as a bot of a BuildGrid farm.
//! It holds a Remote Workers session with the server, takes up to
//! `--capacity` leases at once, and runs each lease's action as BuildGrid's
//! own buildbox-run-hosttools would: the input root fetched from the
//! content store into a fresh directory, the command run there with only
//! the action's environment, its output files, stdout and stderr uploaded,
//! and an `ActionResult` returned in the lease. Any action runs, not only
//! cachet's. Cachet's own (`cachet __run-action`) either bring their
//! cachet binary in the input root (`./cachet`), or name the bare program
//! `cachet` and ask for the platform property the worker always offers,
//! `cachet=`[`protocol`](crate::remote_exec::protocol): the worker then
//! runs its own binary, and the action uploads none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::Notify;

use crate::reapi::bots::{self, BotSession, BotStatus, BotsClient, Lease, LeaseState, Property};
use crate::reapi::cas::{Blob, Cas};
use crate::reapi::store::Store;
use crate::reapi::tree::{self, TreeBuilder};
use crate::reapi::{re, rpc, Endpoint};

/// A gRPC deadline for session calls: BuildGrid long-polls for work for
/// 80% of it, and needs at least 3 s of it to answer at all.
const SESSION_DEADLINE: Duration = Duration::from_secs(10);
/// How often a busy bot says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Waits between attempts while the server is unreachable.
const BACKOFF: Duration = Duration::from_secs(1);
/// Stdout and stderr kept of a command (the rest is cut, and says so).
const MAX_STREAM: usize = 64 << 20;

const ACTION: &str = "build.bazel.remote.execution.v2.Action";
const DIGEST: &str = "build.bazel.remote.execution.v2.Digest";
const ACTION_RESULT: &str = "build.bazel.remote.execution.v2.ActionResult";

/// What `cachet worker` was told.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub endpoint: Endpoint,
    pub capacity: usize,
    pub work_dir: PathBuf,
    pub bot_id: String,
    /// Platform properties the bot offers (`key=value`) besides
    /// `cachet=PROTOCOL`, which it always does.
    pub properties: Vec<(String, String)>,
    /// The most the worker keeps of fetched blobs (`work_dir/blobs`).
    pub store_limit: u64,
}

/// What every lease of a session shares.
struct Shared {
    cas: Cas,
    store: Store,
    work_dir: PathBuf,
    bot_id: String,
    /// This binary: what a command naming the bare program `cachet` runs.
    own: Option<PathBuf>,
    /// Woken when a lease ends.
    finished: Notify,
    /// Leases ended and not yet reported, by id.
    ends: std::sync::Mutex<BTreeMap<String, Ended>>,
}

/// Runs the bot until Ctrl-C (or SIGTERM); a lease in progress is then
/// abandoned, and the server gives it to another bot.
pub fn run(config: WorkerConfig) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cachet-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachet worker: cannot start: {e}");
            return crate::exit::SETUP_ERROR;
        }
    };
    rt.block_on(async move {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        tokio::select! {
            code = serve(config) => code,
            _ = stop => 0,
        }
    })
}

/// A lease's end: its status, and its result when it ran.
type Ended = (rpc::Status, Option<Box<re::ActionResult>>);

/// A lease this bot holds.
enum Held {
    Running(tokio::task::JoinHandle<()>),
    Done(Ended),
}

async fn serve(config: WorkerConfig) -> u8 {
    let conn = match config.endpoint.connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachet worker: {e}");
            return crate::exit::SETUP_ERROR;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&config.work_dir) {
        eprintln!(
            "cachet worker: cannot create {}: {e}; pass --work-dir a writable directory",
            config.work_dir.display()
        );
        return crate::exit::SETUP_ERROR;
    }
    // Input roots a killed worker left behind.
    if let Ok(entries) = std::fs::read_dir(&config.work_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("action-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let store = match Store::open(&config.work_dir.join("blobs"), config.store_limit) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "cachet worker: cannot open its blob store in {}: {e}; pass --work-dir a writable directory",
                config.work_dir.display()
            );
            return crate::exit::SETUP_ERROR;
        }
    };
    let bots = BotsClient::new(conn.clone());
    let shared = Arc::new(Shared {
        cas: Cas::new(conn.clone()),
        store,
        work_dir: config.work_dir.clone(),
        bot_id: config.bot_id.clone(),
        // The child's /proc/self/exe is this process's binary until it
        // execs: the worker's own cachet even after an upgrade replaced
        // the file (whose protocol the worker did not offer).
        own: Path::new("/proc/self/exe")
            .exists()
            .then(|| PathBuf::from("/proc/self/exe"))
            .or_else(|| std::env::current_exe().ok()),
        finished: Notify::new(),
        ends: Default::default(),
    });
    let mut warned = false;
    'session: loop {
        let template = BotSession {
            bot_id: config.bot_id.clone(),
            status: BotStatus::Ok as i32,
            worker: Some(bots::Worker {
                // The primary device's properties are what a scheduler
                // matches an action's platform against (BuildGrid reads
                // no others).
                devices: vec![bots::Device {
                    handle: config.bot_id.clone(),
                    properties: config
                        .properties
                        .iter()
                        .cloned()
                        .chain([(
                            crate::remote_exec::PROPERTY.to_string(),
                            crate::remote_exec::protocol(),
                        )])
                        .map(|(key, value)| Property { key, value })
                        .collect(),
                }],
                configs: vec![Property {
                    key: "capacity".into(),
                    value: config.capacity.to_string(),
                }],
                properties: Vec::new(),
            }),
            ..Default::default()
        };
        let mut session = match bots.create(template, SESSION_DEADLINE).await {
            Ok(s) => s,
            Err(e) => {
                if !warned {
                    eprintln!(
                        "cachet worker: {}: {}; retrying",
                        conn.display(),
                        e.message()
                    );
                    warned = true;
                }
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        if warned {
            eprintln!("cachet worker: connected to {}", conn.display());
            warned = false;
        }
        eprintln!(
            "cachet worker: {} serving {} (capacity {}, offering {}={})",
            config.bot_id,
            conn.display(),
            config.capacity,
            crate::remote_exec::PROPERTY,
            crate::remote_exec::protocol()
        );
        let mut held: BTreeMap<String, (Lease, Held)> = BTreeMap::new();
        start_new(&session.leases, &mut held, &shared);
        loop {
            // Finished leases are reported as COMPLETED.
            for (id, r) in std::mem::take(&mut *shared.ends.lock().expect("ends")) {
                if let Some(entry) = held.get_mut(&id) {
                    entry.1 = Held::Done(r);
                }
            }
            session.leases = held
                .values()
                .map(|(lease, h)| match h {
                    Held::Running(_) => Lease {
                        state: LeaseState::Active as i32,
                        payload: None,
                        ..lease.clone()
                    },
                    Held::Done((status, result)) => Lease {
                        state: LeaseState::Completed as i32,
                        status: Some(status.clone()),
                        result: result
                            .as_ref()
                            .map(|r| bots::pack(ACTION_RESULT, r.as_ref())),
                        payload: None,
                        ..lease.clone()
                    },
                })
                .collect();
            let reported: Vec<String> = held
                .iter()
                .filter(|(_, (_, h))| matches!(h, Held::Done(..)))
                .map(|(id, _)| id.clone())
                .collect();
            let running = held.len() - reported.len();
            let update = bots.update(session.clone(), SESSION_DEADLINE);
            let answer = tokio::select! {
                a = update => Some(a),
                _ = shared.finished.notified(), if running > 0 => None,
            };
            let Some(answer) = answer else {
                continue; // a lease finished while the server was polling
            };
            match answer {
                Ok(s) => {
                    session = s;
                    for id in reported {
                        held.remove(&id);
                    }
                    // A lease the server no longer lists, or lists as
                    // CANCELLED, was cancelled.
                    let listed: Vec<&str> = session
                        .leases
                        .iter()
                        .filter(|l| l.state != LeaseState::Cancelled as i32)
                        .map(|l| l.id.as_str())
                        .collect();
                    held.retain(|id, (_, h)| {
                        let keep = listed.contains(&id.as_str());
                        if !keep {
                            if let Held::Running(task) = h {
                                task.abort();
                            }
                        }
                        keep
                    });
                    start_new(&session.leases, &mut held, &shared);
                }
                Err(e) if e.code() == tonic::Code::DeadlineExceeded => {}
                Err(e) => {
                    eprintln!(
                        "cachet worker: {}: {}; opening a new session",
                        conn.display(),
                        e.message()
                    );
                    for (_, (_, h)) in held {
                        if let Held::Running(task) = h {
                            task.abort();
                        }
                    }
                    tokio::time::sleep(BACKOFF).await;
                    continue 'session;
                }
            }
            let busy = held.values().any(|(_, h)| matches!(h, Held::Running(_)));
            if busy && shared.ends.lock().expect("ends").is_empty() {
                tokio::select! {
                    _ = shared.finished.notified() => {}
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        }
    }
}

/// Starts each lease of `leases` not yet held.
fn start_new(leases: &[Lease], held: &mut BTreeMap<String, (Lease, Held)>, shared: &Arc<Shared>) {
    for lease in leases {
        if held.contains_key(&lease.id)
            || lease.state == LeaseState::Completed as i32
            || lease.state == LeaseState::Cancelled as i32
        {
            continue;
        }
        let (shared, lease_c) = (shared.clone(), lease.clone());
        let task = tokio::spawn(async move {
            let (status, result) = execute_lease(&shared, &lease_c).await;
            shared.store.trim();
            let r = (status, result.map(Box::new));
            shared
                .ends
                .lock()
                .expect("ends")
                .insert(lease_c.id.clone(), r);
            shared.finished.notify_one();
        });
        held.insert(lease.id.clone(), (lease.clone(), Held::Running(task)));
    }
}

fn status(code: tonic::Code, message: impl Into<String>) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// One lease: its action run, and what to report.
async fn execute_lease(shared: &Shared, lease: &Lease) -> (rpc::Status, Option<re::ActionResult>) {
    let work_dir = shared.work_dir.as_path();
    let Some(payload) = &lease.payload else {
        return (
            status(tonic::Code::InvalidArgument, "the lease has no action"),
            None,
        );
    };
    let action: re::Action = if let Some(a) = bots::unpack(ACTION, payload) {
        a
    } else if let Some(d) = bots::unpack::<re::Digest>(DIGEST, payload) {
        match fetch_message(shared, &d).await {
            Ok(a) => a,
            Err(s) => return (s, None),
        }
    } else {
        return (
            status(
                tonic::Code::InvalidArgument,
                format!("a lease of {} is not an action", payload.type_url),
            ),
            None,
        );
    };
    let dir = match tempfile::Builder::new()
        .prefix("action-")
        .tempdir_in(work_dir)
    {
        Ok(d) => d,
        Err(e) => {
            return (
                status(
                    tonic::Code::Internal,
                    format!("{}: {e}", work_dir.display()),
                ),
                None,
            )
        }
    };
    match run_action(shared, &action, dir.path()).await {
        Ok(result) => (status(tonic::Code::Ok, ""), Some(result)),
        Err(s) => (s, None),
    }
}

/// A message by digest: from the worker's store, or fetched and kept.
async fn fetch_message<M: prost::Message + Default>(
    shared: &Shared,
    digest: &re::Digest,
) -> Result<M, rpc::Status> {
    let bytes = match shared.store.get(digest) {
        Some(b) => b,
        None => {
            let b = shared.cas.read(digest).await.map_err(cas_status)?;
            // A store that cannot keep it costs only the next fetch.
            let _ = shared.store.put(digest, &b, false);
            b
        }
    };
    M::decode(bytes.as_slice()).map_err(|e| {
        status(
            tonic::Code::InvalidArgument,
            format!("blob {} is not the message it should be: {e}", digest.hash),
        )
    })
}

/// A content-store failure as the lease's status: a missing input is the
/// client's (FAILED_PRECONDITION), the server's trouble is retried.
fn cas_status(e: crate::reapi::cas::CasError) -> rpc::Status {
    use crate::reapi::cas::CasError;
    match &e {
        CasError::Missing(_) => status(tonic::Code::FailedPrecondition, e.to_string()),
        CasError::Status(s) if crate::reapi::transient(s) => {
            status(tonic::Code::Unavailable, e.to_string())
        }
        _ => status(tonic::Code::Internal, e.to_string()),
    }
}

/// Fetches the inputs into `root`, runs the command, uploads the outputs.
async fn run_action(
    shared: &Shared,
    action: &re::Action,
    root: &Path,
) -> Result<re::ActionResult, rpc::Status> {
    let cas = &shared.cas;
    let (start, wall) = (Instant::now(), std::time::SystemTime::now());
    let missing = |what: &str| {
        status(
            tonic::Code::InvalidArgument,
            format!("the action has no {what}"),
        )
    };
    let command: re::Command = fetch_message(
        shared,
        action
            .command_digest
            .as_ref()
            .ok_or_else(|| missing("command"))?,
    )
    .await?;
    let input = action
        .input_root_digest
        .as_ref()
        .ok_or_else(|| missing("input root"))?;
    tree::fetch(cas, input, root, Some(&shared.store))
        .await
        .map_err(|e| match e {
            tree::FetchError::Cas(c) => cas_status(c),
            e => status(tonic::Code::InvalidArgument, e.to_string()),
        })?;
    let fetched = start.elapsed();
    let cwd = inside(root, &command.working_directory)?;
    // REAPI 2.0's output_files / output_directories, which clients before
    // 2.1 (and some still) send instead of output_paths.
    #[allow(deprecated)]
    let outputs: Vec<String> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .cloned()
            .collect()
    } else {
        command.output_paths.clone()
    };
    for o in &outputs {
        if let Some(parent) = inside(&cwd, o)?.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| status(tonic::Code::Internal, format!("{}: {e}", parent.display())))?;
        }
    }
    let Some(program) = command.arguments.first() else {
        return Err(missing("arguments"));
    };
    let program = if program.contains('/') {
        cwd.join(program)
    } else if let (crate::remote_exec::PROGRAM, Some(own)) = (program.as_str(), &shared.own) {
        own.clone()
    } else {
        PathBuf::from(program)
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&command.arguments[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(
            command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone())),
        )
        // The one variable a worker adds: where cachet's own actions keep
        // compiled modules between actions (any other command ignores it).
        .env("CACHET_WORKER_CACHE", work_dir_cache(root))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        status(
            tonic::Code::InvalidArgument,
            format!("cannot run {}: {e}", program.display()),
        )
    })?;
    let group = ProcessGroup(child.id());
    let timeout = action
        .timeout
        .as_ref()
        .map(|t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
        .filter(|t| !t.is_zero());
    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, child.wait_with_output()).await,
        None => Ok(child.wait_with_output().await),
    };
    drop(group);
    let output = match waited {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(status(
                tonic::Code::Internal,
                format!("waiting for the command: {e}"),
            ))
        }
        Err(_) => {
            return Err(status(
                tonic::Code::DeadlineExceeded,
                format!(
                    "the action ran past its timeout of {:?}",
                    timeout.unwrap_or_default()
                ),
            ))
        }
    };
    let executed = start.elapsed();
    let mut blobs = Vec::new();
    let mut result = re::ActionResult {
        exit_code: output
            .status
            .code()
            .unwrap_or(128 + signal_of(&output.status)),
        ..Default::default()
    };
    for (bytes, digest) in [
        (output.stdout, &mut result.stdout_digest),
        (output.stderr, &mut result.stderr_digest),
    ] {
        let mut bytes = bytes;
        bytes.truncate(MAX_STREAM);
        let blob = Blob::bytes(bytes);
        *digest = Some(blob.digest.clone());
        blobs.push(blob);
    }
    for o in &outputs {
        let path = inside(&cwd, o)?;
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // an output the command did not make is simply absent
        };
        if meta.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            let bytes = std::fs::read(&path)
                .map_err(|e| status(tonic::Code::Internal, format!("{o}: {e}")))?;
            let blob = Blob::bytes(bytes);
            result.output_files.push(re::OutputFile {
                path: o.clone(),
                digest: Some(blob.digest.clone()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                contents: Vec::new(),
                node_properties: None,
            });
            blobs.push(blob);
        } else if meta.is_dir() {
            let mut t = TreeBuilder::default();
            t.add_dir_contents(&path)
                .map_err(|e| status(tonic::Code::Internal, format!("{o}: {e}")))?;
            let (message, dirs) = t.finish_as_tree();
            let blob = Blob::bytes(message.encode_to_vec());
            result.output_directories.push(re::OutputDirectory {
                path: o.clone(),
                tree_digest: Some(blob.digest.clone()),
                is_topologically_sorted: false,
                root_directory_digest: None,
            });
            blobs.push(blob);
            blobs.extend(dirs);
        }
    }
    cas.upload(&blobs).await.map_err(cas_status)?;
    let now = |d: Duration| timestamp(wall + d);
    let done = start.elapsed();
    result.execution_metadata = Some(re::ExecutedActionMetadata {
        worker: shared.bot_id.clone(),
        worker_start_timestamp: Some(now(Duration::ZERO)),
        input_fetch_start_timestamp: Some(now(Duration::ZERO)),
        input_fetch_completed_timestamp: Some(now(fetched)),
        execution_start_timestamp: Some(now(fetched)),
        execution_completed_timestamp: Some(now(executed)),
        output_upload_start_timestamp: Some(now(executed)),
        output_upload_completed_timestamp: Some(now(done)),
        worker_completed_timestamp: Some(now(done)),
        ..Default::default()
    });
    Ok(result)
}

fn timestamp(t: std::time::SystemTime) -> crate::reapi::protobuf::Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    crate::reapi::protobuf::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn signal_of(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal().unwrap_or(0)
}

/// The worker's cache of compiled modules: beside its action directories.
fn work_dir_cache(action_root: &Path) -> PathBuf {
    action_root.parent().unwrap_or(action_root).join("cache")
}

/// `rel` under `root`, refusing absolute paths and `..`.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, rpc::Status> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(status(
            tonic::Code::InvalidArgument,
            format!("{rel}: a path of an action must stay inside its input root"),
        ));
    }
    Ok(root.join(p))
}

/// The command's process group, killed whole when the lease ends or is
/// cancelled (a command's own children included).
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg has no memory effects; the group is the one
            // this worker created for the command.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}
