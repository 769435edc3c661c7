//! Building Go packages into wasip1 test binaries with the Go toolchain:
//! `GOOS=wasip1 GOARCH=wasm go test -c -trimpath`, into cachet's cache,
//! keyed so that an unchanged package is not built again. This runs the Go
//! toolchain on the host, outside the sandbox (`--prebuilt` turns it off).
//!
//! A package's key is the digest of the toolchain (version, GOROOT, the
//! environment that changes builds), the main module's `go.mod`/`go.sum`,
//! and the Go files (and embedded files) of the package and of every
//! non-standard package it depends on, which one `go list -deps -test` per
//! module names; modules from the module cache count by path and version.
//! `-trimpath` keeps host paths out of the binary, so another checkout
//! builds the same bytes and hits the same cache entries.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::discover::{GoMeta, Package};

/// The oldest Go with `GOOS=wasip1`.
const MIN_MINOR: u32 = 21;

/// Why Go packages cannot be described; each is one line with its fix.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("a Go package, but no Go toolchain is on PATH; install Go 1.21 or newer (GOOS=wasip1) and put `go` on PATH")]
    NoToolchain,
    #[error("`go env` printed nothing; is the Go toolchain on PATH working?")]
    EnvEmpty,
    #[error("the Go toolchain on PATH is {0}; GOOS=wasip1 needs Go 1.21 or newer")]
    TooOld(String),
    #[error("cannot run go list: {0}")]
    ListRun(std::io::Error),
    #[error("go list failed: {0}")]
    ListFailed(String),
    #[error("go list printed what cachet cannot read: {0}")]
    ListUnreadable(serde_json::Error),
    #[error("{0}: go list does not know this package")]
    Unknown(String),
    /// The package's own error, as go list gives it.
    #[error("{0}")]
    Package(String),
}

/// The Go toolchain on PATH.
#[derive(Clone, Debug)]
pub struct Toolchain {
    go: PathBuf,
    pub version: String,
    pub goroot: PathBuf,
}

/// Environment that changes what a build produces.
const BUILD_ENV: &[&str] = &["GOFLAGS", "GOEXPERIMENT", "GOWASM"];

impl Toolchain {
    /// Finds `go` on PATH and checks its version; one line saying what to do
    /// when there is none (or it is too old).
    pub fn find() -> Result<Toolchain, GoError> {
        let go = PathBuf::from(std::env::var_os("CACHET_GO").unwrap_or_else(|| "go".into()));
        let out = Command::new(&go)
            .args(["env", "GOVERSION", "GOROOT"])
            .output()
            .map_err(|_| GoError::NoToolchain)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let (Some(version), Some(goroot)) = (lines.next(), lines.next()) else {
            return Err(GoError::EnvEmpty);
        };
        let minor = version
            .strip_prefix("go1.")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok());
        if minor.is_none_or(|m| m < MIN_MINOR) {
            return Err(GoError::TooOld(version.to_string()));
        }
        Ok(Toolchain {
            go,
            version: version.to_string(),
            goroot: PathBuf::from(goroot),
        })
    }

    fn command(&self, dir: &Path) -> Command {
        let mut c = Command::new(&self.go);
        c.current_dir(dir)
            .env("GOOS", "wasip1")
            .env("GOARCH", "wasm")
            .env("GOTOOLCHAIN", "local");
        c
    }
}

/// A Go package cachet tests, as `go list` describes it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GoPackage {
    /// Its import path: the name `go test` reports it by.
    pub import_path: String,
    pub dir: PathBuf,
    /// The root of its module (`$GOROOT/src` for the standard library).
    pub module_root: PathBuf,
    /// Its module's path (`std` for the standard library).
    pub module_path: String,
    pub standard: bool,
    pub has_tests: bool,
    /// The build key (see the module documentation).
    key: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Listed {
    import_path: String,
    dir: String,
    standard: bool,
    for_test: String,
    module: Option<ListedModule>,
    go_files: Vec<String>,
    cgo_files: Vec<String>,
    s_files: Vec<String>,
    embed_files: Vec<String>,
    test_go_files: Vec<String>,
    x_test_go_files: Vec<String>,
    test_embed_files: Vec<String>,
    x_test_embed_files: Vec<String>,
    deps: Vec<String>,
    error: Option<ListedError>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListedModule {
    path: String,
    version: String,
    dir: String,
    main: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListedError {
    err: String,
}

/// The module root above `dir`: the nearest directory with a `go.mod`.
pub fn module_root(dir: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(dir).ok()?;
    dir.ancestors()
        .find(|d| d.join("go.mod").is_file())
        .map(Path::to_path_buf)
}

/// What one `go list` said, and the files and directories it read, each
/// with its identity then: while none changed, the answer is the same,
/// and a fully cached run starts no Go tool at all (`go list` over the
/// standard library's 15 test packages takes 0.39 s, more than the rest of
/// such a run).
#[derive(serde::Serialize, serde::Deserialize)]
struct DescribeMemo {
    packages: Vec<GoPackage>,
    /// Each path, with its identity (`None`: missing).
    watched: Vec<(PathBuf, Option<Identity>)>,
}

/// dev, inode, size, mtime and ctime in ns: what any change touches.
type Identity = (u64, u64, u64, i128, i128);

fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let id = cachet_runtime::FileId::of(&m);
    Some((id.dev, id.ino, id.size, id.mtime_ns, id.ctime_ns))
}

/// A file changed less than this before the memo was written could change
/// again within its timestamp's granularity: such a memo is not written.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// [`describe`], answered from the memo in `cache_dir` while nothing it
/// read changed.
pub fn describe_memoized(
    tc: &Toolchain,
    root: &Path,
    dirs: &[PathBuf],
    cache_dir: &Path,
) -> Result<Vec<GoPackage>, GoError> {
    let mut h = Sha256::new();
    h.update(toolchain_key(tc, root));
    h.update(root.as_os_str().as_encoded_bytes());
    for d in dirs {
        h.update([0]);
        h.update(abs_dir(d).as_os_str().as_encoded_bytes());
    }
    let memo_path = cache_dir
        .join("describe")
        .join(format!("{}.json", hex(&h.finalize())));
    if let Some(memo) = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<DescribeMemo>(&b).ok())
    {
        if memo.watched.iter().all(|(p, id)| identity(p) == *id) {
            return Ok(memo.packages);
        }
    }
    let (packages, watched) = describe(tc, root, dirs)?;
    let now = std::time::SystemTime::now();
    let racy = watched.iter().any(|p| {
        std::fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age < RACY) || t > now)
    });
    if !racy {
        let memo = DescribeMemo {
            packages: packages.clone(),
            watched: watched.iter().map(|p| (p.clone(), identity(p))).collect(),
        };
        if let Ok(bytes) = serde_json::to_vec(&memo) {
            let _ = std::fs::create_dir_all(memo_path.parent().expect("has a parent"));
            if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(cache_dir) {
                use std::io::Write as _;
                if tmp.write_all(&bytes).is_ok() {
                    let _ = tmp.persist(&memo_path);
                }
            }
        }
    }
    Ok(packages)
}

/// Describes the packages in `dirs` (all under `root`) with one `go list`;
/// also returns every file and directory the answer (and the build keys)
/// depend on.
pub fn describe(
    tc: &Toolchain,
    root: &Path,
    dirs: &[PathBuf],
) -> Result<(Vec<GoPackage>, Vec<PathBuf>), GoError> {
    let rel: Vec<String> = dirs
        .iter()
        .map(|d| {
            let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            match abs.strip_prefix(root) {
                Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
                Ok(r) => format!("./{}", r.display()),
                Err(_) => abs.display().to_string(),
            }
        })
        .collect();
    let out = tc
        .command(root)
        .args(["list", "-e", "-deps", "-test", "-json"])
        .args(&rel)
        .output()
        .map_err(GoError::ListRun)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        return Err(GoError::ListFailed(first.to_string()));
    }
    let mut listed = Vec::new();
    for item in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Listed>() {
        listed.push(item.map_err(GoError::ListUnreadable)?);
    }
    let by_path: HashMap<&str, &Listed> =
        listed.iter().map(|l| (l.import_path.as_str(), l)).collect();
    let module_path = listed
        .iter()
        .find_map(|l| l.module.as_ref().filter(|m| m.main).map(|m| m.path.clone()))
        .unwrap_or_else(|| "std".into());
    let env_key = toolchain_key(tc, root);
    let mut packages = Vec::new();
    let mut watched: std::collections::BTreeSet<PathBuf> =
        ["go.mod", "go.sum", "go.work", "go.work.sum"]
            .iter()
            .map(|f| root.join(f))
            .collect();
    for dir in dirs {
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        let Some(p) = listed.iter().find(|l| {
            l.for_test.is_empty() && Path::new(&l.dir) == abs && !l.import_path.ends_with(".test")
        }) else {
            return Err(GoError::Unknown(dir.display().to_string()));
        };
        if let Some(e) = &p.error {
            let first = e.err.lines().next().unwrap_or("");
            return Err(GoError::Package(first.to_string()));
        }
        let has_tests = !(p.test_go_files.is_empty() && p.x_test_go_files.is_empty());
        // The test variants of the package carry the whole dependency set.
        let mut h = Sha256::new();
        h.update(&env_key);
        let test_main = format!("{}.test", p.import_path);
        let deps = by_path
            .get(test_main.as_str())
            .map(|t| t.deps.clone())
            .unwrap_or_else(|| p.deps.clone());
        let mut seen = std::collections::BTreeSet::new();
        for dep in std::iter::once(&p.import_path).chain(&deps) {
            let variants = listed.iter().filter(|l| {
                l.import_path == *dep || l.import_path.starts_with(&format!("{dep} ["))
            });
            for l in variants {
                if seen.insert(l.import_path.clone()) {
                    let target = l.import_path == p.import_path;
                    if hash_package(&mut h, l, target) {
                        watched.insert(PathBuf::from(&l.dir));
                        watched.extend(package_files(l).map(|f| Path::new(&l.dir).join(f)));
                    }
                }
            }
        }
        packages.push(GoPackage {
            import_path: p.import_path.clone(),
            dir: abs,
            module_root: root.to_path_buf(),
            module_path: if p.standard {
                "std".into()
            } else {
                module_path.clone()
            },
            standard: p.standard,
            has_tests,
            key: hex(&h.finalize()),
        });
        watched.insert(abs_dir(dir));
    }
    Ok((packages, watched.into_iter().collect()))
}

fn abs_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// A package's source files: Go, cgo, assembly, embedded, test.
fn package_files(l: &Listed) -> impl Iterator<Item = &String> {
    [
        &l.go_files,
        &l.cgo_files,
        &l.s_files,
        &l.embed_files,
        &l.test_go_files,
        &l.x_test_go_files,
        &l.test_embed_files,
        &l.x_test_embed_files,
    ]
    .into_iter()
    .flatten()
}

fn toolchain_key(tc: &Toolchain, root: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"cachet-go-build v1\0");
    h.update(tc.version.as_bytes());
    h.update(tc.goroot.as_os_str().as_encoded_bytes());
    for var in BUILD_ENV {
        h.update(var.as_bytes());
        h.update(std::env::var(var).unwrap_or_default().as_bytes());
        h.update([0]);
    }
    for file in ["go.mod", "go.sum", "go.work", "go.work.sum"] {
        h.update(file.as_bytes());
        h.update(std::fs::read(root.join(file)).unwrap_or_default());
    }
    h.finalize().to_vec()
}

/// Adds what a package's build depends on: for a standard or module-cache
/// package its identity (the toolchain or the module version fixes its
/// files), else its files' names and contents. Returns whether its files
/// counted.
fn hash_package(h: &mut Sha256, l: &Listed, target: bool) -> bool {
    h.update(l.import_path.as_bytes());
    h.update([0]);
    if l.standard && !target {
        return false;
    }
    if let Some(m) = l
        .module
        .as_ref()
        .filter(|m| !m.main && !m.version.is_empty())
    {
        h.update(format!("{}@{}", m.path, m.version).as_bytes());
        return false;
    }
    let files: BTreeMap<&String, ()> = package_files(l).map(|f| (f, ())).collect();
    for f in files.keys() {
        h.update(f.as_bytes());
        h.update([0]);
        h.update(std::fs::read(Path::new(&l.dir).join(f)).unwrap_or_default());
    }
    true
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Describes every Go package discovery found: names it by import
/// path (as `go test` reports it), and gives it its test binary to build
/// ([`GoBuild`]), or its error (no toolchain; not in a module).
pub fn resolve(packages: &mut [Package], cache: Option<&Path>) {
    let pending: Vec<usize> = (0..packages.len())
        .filter(|&i| packages[i].error.is_none() && packages[i].go.is_some())
        .collect();
    if pending.is_empty() {
        return;
    }
    let fail = |packages: &mut [Package], ids: &[usize], e: &str| {
        for &i in ids {
            packages[i].error = Some(e.to_string());
        }
    };
    let tc = match Toolchain::find() {
        Ok(t) => t,
        Err(e) => return fail(packages, &pending, &e.to_string()),
    };
    let Some(cache) = cache else {
        return fail(
            packages,
            &pending,
            "no cache directory to build Go test binaries in; set CACHET_CACHE (or HOME)",
        );
    };
    let mut by_module: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
    for &i in &pending {
        match module_root(&packages[i].dir) {
            Some(root) => by_module.entry(root).or_default().push(i),
            None => packages[i].error = Some(
                "a Go package outside any module (no go.mod above it); run `go mod init` in its root".into(),
            ),
        }
    }
    let mut builds = Vec::new();
    for (root, ids) in by_module {
        let dirs: Vec<PathBuf> = ids.iter().map(|&i| packages[i].dir.clone()).collect();
        match describe_memoized(&tc, &root, &dirs, cache) {
            Err(e) => fail(packages, &ids, &e.to_string()),
            Ok(described) => {
                for (i, gp) in ids.into_iter().zip(described) {
                    let p = &mut packages[i];
                    p.name = gp.import_path.clone();
                    p.go = Some(GoMeta {
                        rel: gp
                            .dir
                            .strip_prefix(&gp.module_root)
                            .map(|r| r.display().to_string())
                            .unwrap_or_default(),
                        module_root: gp.module_root.clone(),
                        module_path: gp.module_path.clone(),
                        standard: gp.standard,
                        goroot: tc.goroot.clone(),
                    });
                    if gp.has_tests {
                        builds.push((i, gp));
                    }
                }
            }
        }
    }
    for (i, gp) in builds {
        packages[i].go_build = Some(GoBuild {
            toolchain: tc.clone(),
            package: gp,
            cache: cache.to_path_buf(),
        });
    }
}

/// A Go package's test binary still to build (`go test -c`). The scheduler
/// builds each as its package comes up, so links overlap the compiles and
/// runs of the packages before it; [`build_all`] builds every one first.
#[derive(Clone, Debug)]
pub struct GoBuild {
    toolchain: Toolchain,
    package: GoPackage,
    cache: PathBuf,
}

impl Package {
    /// Builds its test binary if it has one still to build: then it has its
    /// module, or its error (the compiler's output printed to stderr, as
    /// `go test` prints it).
    pub fn build(&mut self) {
        let Some(b) = self.go_build.take() else {
            return;
        };
        match build(&b.toolchain, &b.package, &b.cache) {
            Ok(wasm) => self.modules = vec![wasm],
            Err(BuildFailed(output)) => {
                eprint!("{output}");
                self.error = Some("build failed (errors above)".into());
                self.build_failed = true;
            }
        }
    }
}

/// Builds every package's test binary still to build, two at a time
/// (`go test -c` is mostly one linker process).
pub fn build_all(packages: &mut [Package]) {
    let queue = std::sync::Mutex::new(packages.iter_mut().filter(|p| p.go_build.is_some()));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(p) = next else { break };
                p.build();
            });
        }
    });
}

/// A build that failed: what `go test -c` printed.
#[derive(Debug)]
pub struct BuildFailed(pub String);

/// The test binary of `pkg`, from `cache_dir` when one with its key was
/// built before, else built now.
pub fn build(tc: &Toolchain, pkg: &GoPackage, cache_dir: &Path) -> Result<PathBuf, BuildFailed> {
    let out = cache_dir.join(format!("{}.wasm", pkg.key));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| BuildFailed(format!("cannot create {}: {e}", cache_dir.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-go-build-")
        .suffix(".wasm")
        .tempfile_in(cache_dir)
        .map_err(|e| BuildFailed(format!("cannot write in {}: {e}", cache_dir.display())))?;
    let result = tc
        .command(&pkg.dir)
        .args(["test", "-c", "-trimpath", "-o"])
        .arg(tmp.path())
        .arg(".")
        .output()
        .map_err(|e| BuildFailed(format!("cannot run go: {e}")))?;
    if !result.status.success() {
        return Err(BuildFailed(
            String::from_utf8_lossy(&result.stderr).into_owned(),
        ));
    }
    tmp.persist(&out)
        .map_err(|e| BuildFailed(format!("cannot keep the built binary: {}", e.error)))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_roots_are_found_upward() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/go.mod"), "module x\n").unwrap();
        let root = module_root(&dir.path().join("a/b")).unwrap();
        assert_eq!(root, std::fs::canonicalize(dir.path().join("a")).unwrap());
    }
}
