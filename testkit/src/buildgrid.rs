//! A real REAPI server for the remote-execution tests: BuildGrid (from
//! `scripts/tools.sh`'s virtual environment) with its scheduler on Debian's
//! PostgreSQL, both started on free ports of 127.0.0.1 and stopped by PID
//! when dropped. Workers are `cachet worker` processes.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo_root;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct BuildGrid {
    postgres: Child,
    bgd: Child,
    workers: Vec<Child>,
    dir: tempfile::TempDir,
    /// `grpc://127.0.0.1:PORT` (`grpcs://` when started with TLS)
    pub url: String,
    /// With TLS: the PEM file of the CA that signed the server's
    /// certificate (workers get it as `CACHET_REMOTE_EXECUTOR_CA`).
    pub ca: Option<PathBuf>,
    /// With authorization: a bearer token (a JWT, HS256) the server takes
    /// (workers get it as `CACHET_REMOTE_EXECUTOR_TOKEN`).
    pub token: Option<String>,
}

/// What a grid serves beyond plain gRPC.
#[derive(Default)]
struct Setup {
    tls: bool,
    auth: bool,
    /// No platform property `cachet` in the scheduler's property set.
    unregistered: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path, limit: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
}

/// A command run as `postgres` when this is root (PostgreSQL refuses root);
/// `setpriv` execs, so the child's PID is the server's own.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    }
}

fn bgd() -> PathBuf {
    let bgd = repo_root().join(".tools/buildgrid-venv/bin/bgd");
    assert!(
        bgd.is_file(),
        "BuildGrid is installed in .tools/buildgrid-venv (scripts/test installs it)"
    );
    bgd
}

impl BuildGrid {
    /// PostgreSQL, migrated, and BuildGrid serving action cache, CAS,
    /// ByteStream, Execution and Bots on `grpc://127.0.0.1:PORT`; its
    /// scheduler matches actions to bots by the platform property
    /// `cachet` (as the README's example farm does).
    /// `keepalive`: how long the server waits to hear from a bot before it
    /// takes the bot's leases back and queues them again.
    pub fn start(keepalive: Duration) -> BuildGrid {
        BuildGrid::start_with(keepalive, Setup::default())
    }

    /// As [`Self::start`], with a scheduler that knows no property
    /// `cachet` (it refuses actions asking for one).
    pub fn start_without_cachet_property(keepalive: Duration) -> BuildGrid {
        BuildGrid::start_with(
            keepalive,
            Setup {
                unregistered: true,
                ..Setup::default()
            },
        )
    }

    /// As [`Self::start`], serving TLS with a CA made here, and taking
    /// only requests with a bearer token ([`Self::token`]: a JWT signed
    /// with a secret made here, as BuildGrid's `jwt` method checks).
    pub fn start_secured(keepalive: Duration) -> BuildGrid {
        BuildGrid::start_with(
            keepalive,
            Setup {
                tls: true,
                auth: true,
                ..Setup::default()
            },
        )
    }

    /// As [`Self::start`], serving TLS (`grpcs://`) with a certificate for
    /// 127.0.0.1 signed by a CA made here ([`Self::ca`]).
    pub fn start_tls(keepalive: Duration) -> BuildGrid {
        BuildGrid::start_with(
            keepalive,
            Setup {
                tls: true,
                ..Setup::default()
            },
        )
    }

    fn start_with(keepalive: Duration, setup: Setup) -> BuildGrid {
        let Setup {
            tls,
            auth,
            unregistered,
        } = setup;
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pg");
        std::fs::create_dir(&pgdata).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let init_log = dir.path().join("initdb.log");
        let out = as_postgres(&format!("{PG_BIN}/initdb"))
            .args(["-A", "trust", "-U", "bgd", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&pgdata)
            .output()
            .unwrap();
        std::fs::write(&init_log, [out.stdout, out.stderr].concat()).unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            std::fs::read_to_string(&init_log).unwrap()
        );
        let pg_port = free_port();
        let pg_log = dir.path().join("postgres.log");
        let postgres = as_postgres(&format!("{PG_BIN}/postgres"))
            .arg("-D")
            .arg(&pgdata)
            .arg("-k")
            .arg(&pgdata)
            .args(["-p", &pg_port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&pg_log).unwrap())
            .spawn()
            .unwrap();
        let mut grid = BuildGrid {
            postgres,
            bgd: Command::new("true").spawn().unwrap(),
            workers: Vec::new(),
            url: String::new(),
            ca: None,
            token: None,
            dir,
        };
        wait_for_port(pg_port, "PostgreSQL", &pg_log, Duration::from_secs(30));
        let db = format!("postgresql://bgd@127.0.0.1:{pg_port}/bgd");
        // The port opens before the server takes connections ("the
        // database system is starting up"): ask again for a while.
        let createdb = || {
            Command::new(format!("{PG_BIN}/createdb"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg_port.to_string(),
                    "-U",
                    "bgd",
                    "bgd",
                ])
                .output()
                .unwrap()
        };
        let asked = Instant::now();
        let mut created = createdb();
        while !created.status.success()
            && String::from_utf8_lossy(&created.stderr).contains("starting up")
            && asked.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
            created = createdb();
        }
        assert!(
            created.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        succeeded(
            "bgd migrate",
            Command::new(bgd()).args(["migrate", "apply", &db]),
        );
        let port = free_port();
        let config = grid.dir.path().join("bgd.yml");
        let credentials = tls.then(|| {
            let d = grid.dir.path();
            make_certificates(d);
            grid.ca = Some(d.join("ca.pem"));
            (d.join("server.key"), d.join("server.pem"))
        });
        let secret = auth.then(|| {
            let path = grid.dir.path().join("auth.secret");
            std::fs::write(&path, "cachet-test-secret").unwrap();
            grid.token = Some(jwt("cachet-test-secret"));
            path
        });
        std::fs::write(
            &config,
            config_yaml(
                port,
                &db,
                keepalive,
                credentials.as_ref(),
                secret.as_deref(),
                !unregistered,
            ),
        )
        .unwrap();
        let bgd_log = grid.dir.path().join("bgd.log");
        grid.bgd = Command::new(bgd())
            .args(["server", "start"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&bgd_log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, "BuildGrid", &bgd_log, Duration::from_secs(60));
        let scheme = if tls { "grpcs" } else { "grpc" };
        grid.url = format!("{scheme}://127.0.0.1:{port}");
        grid
    }

    /// Starts a `cachet worker` (the binary at `cachet`) with `capacity`.
    pub fn add_worker(&mut self, cachet: &Path, capacity: usize) -> u32 {
        let n = self.workers.len();
        let work = self.dir.path().join(format!("worker-{n}"));
        let log = self.dir.path().join(format!("worker-{n}.log"));
        let mut cmd = Command::new(cachet);
        if let Some(ca) = &self.ca {
            cmd.env("CACHET_REMOTE_EXECUTOR_CA", ca);
        }
        if let Some(token) = &self.token {
            cmd.env("CACHET_REMOTE_EXECUTOR_TOKEN", token);
        }
        let child = cmd
            .args([
                "worker",
                "--buildgrid",
                &self.url,
                "--capacity",
                &capacity.to_string(),
            ])
            .arg("--work-dir")
            .arg(&work)
            .args(["--bot-id", &format!("test-bot-{n}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let id = child.id();
        self.workers.push(child);
        id
    }

    /// Worker `n`'s `--work-dir`.
    pub fn worker_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{n}"))
    }

    /// Kills worker `n` (SIGKILL: as a machine dies).
    pub fn kill_worker(&mut self, n: usize) {
        let _ = self.workers[n].kill();
        let _ = self.workers[n].wait();
    }

    /// What worker `n` printed.
    pub fn worker_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{n}.log"))).unwrap_or_default()
    }

    /// What the server printed.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
    }

    /// Stops the server (the database stays up): the executor unreachable.
    pub fn stop_server(&mut self) {
        stop(&mut self.bgd, "TERM");
    }
}

/// A JWT for BuildGrid's `jwt` method: HS256 with `secret`, expiring in a
/// day, made by PyJWT of BuildGrid's own environment.
fn jwt(secret: &str) -> String {
    let python = repo_root().join(".tools/buildgrid-venv/bin/python3");
    let out = succeeded(
        "PyJWT",
        Command::new(python).args([
            "-c",
            "import jwt, sys, time; print(jwt.encode({'sub': 'cachet-test', 'exp': int(time.time()) + 86400}, sys.argv[1], algorithm='HS256'))",
            secret,
        ]),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 it signed
/// (`server.pem`, `server.key`) in `dir`, made with openssl.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        succeeded(
            &format!("openssl {args:?}"),
            Command::new("openssl").current_dir(dir).args(args),
        );
    };
    let key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"];
    openssl(
        &[
            &["req", "-x509"][..],
            &key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=cachet test CA",
            ],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &key[..3],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// Runs `cmd` to its end; it must succeed (else its stderr is the panic).
fn succeeded(what: &str, cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SIGTERM (or `signal`), then SIGKILL after 5 s.
fn stop(child: &mut Child, signal: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return; // stopped before
    }
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        stop(&mut self.bgd, "TERM");
        // SIGINT: PostgreSQL's fast shutdown.
        stop(&mut self.postgres, "INT");
    }
}

/// BuildGrid's configuration: LRU storage and action cache in memory, the
/// SQL scheduler with an assigner that polls every 50 ms without jitter
/// (else each miss waits up to a second for its assignment).
fn config_yaml(
    port: u16,
    db: &str,
    keepalive: Duration,
    tls: Option<&(PathBuf, PathBuf)>,
    secret: Option<&Path>,
    cachet_key: bool,
) -> String {
    let properties = if cachet_key {
        "    property-set: !dynamic-property-set { match-property-keys: [cachet] }\n"
    } else {
        ""
    };
    let authorization = match secret {
        None => "  method: none\n".to_string(),
        Some(path) => format!(
            "  method: jwt\n  secret: {}\n  algorithm: hs256\n",
            path.display()
        ),
    };
    let channel = match tls {
        None => "    insecure-mode: true\n".to_string(),
        Some((key, cert)) => format!(
            "    insecure-mode: false\n    credentials:\n      tls-server-key: {}\n      tls-server-cert: {}\n",
            key.display(),
            cert.display()
        ),
    };
    format!(
        r#"server:
  - !channel
    address: "127.0.0.1:{port}"
{channel}authorization:
{authorization}connections:
  - !sql-connection &sql
    connection-string: {db}
    pool-size: 10
    pool-timeout: 30
    max-overflow: 10
storages:
  - !lru-storage &main-storage
    size: 2G
caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &state-database
    sql: *sql
    action-cache: *main-action
    storage: *main-storage
{properties}    bot-session-keepalive-timeout: {keepalive}
    max-execution-timeout: 7200
    assigners:
      - !priority-age-assigner
        count: 1
        interval: 0.05
        jitter-factor: 0
instances:
  - name: ""
    services:
      - !action-cache
        cache: *main-action
      - !execution
        scheduler: *state-database
      - !cas
        storage: *main-storage
      - !bytestream
        storage: *main-storage
# Execute streams hold a thread each while their action waits: room for
# a client's 64 in flight and the bots' UpdateBotSession calls beside them.
thread-pool-size: 200
"#,
        keepalive = keepalive.as_secs().max(1)
    )
}
