//! The plan: the sandbox policy of a package and the jobs its cases become.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cachet_runtime::{DigestMemo, Policy};

use crate::artifact::Artifact;
use crate::job::Listing;

use crate::config::{Isolate, Layout, TestConfig};
use crate::discover::Package;
use crate::framework::Framework;

/// Logical name of the package mount in input logs.
pub const PACKAGE_MOUNT: &str = "pkg";
/// Logical names of a Go package's module and of GOROOT in input logs.
pub const GO_MODULE_MOUNT: &str = "mod";
pub const GOROOT_MOUNT: &str = "goroot";

/// One instance to run.
pub struct Job {
    pub pkg: usize,
    /// The package's name, which identifies its cases across rebuilds.
    pub package: String,
    pub module: Arc<Artifact>,
    pub framework: Framework,
    pub isolate: Isolate,
    /// The cases this job reports on.
    pub cases: Vec<String>,
    /// The case names passed to the framework (empty for plain modules).
    pub run_cases: Vec<String>,
    /// Why its cases share one instance when cachet chose so.
    pub shared_because: Option<String>,
    pub policy: Arc<Policy>,
}

/// Where a Go package's module is mounted: `/go/src/<module path>`, a path
/// that is the same on every machine (Go resolves relative paths against
/// `PWD`, which is set below it).
const GO_SRC: &str = "/go/src";
/// Where GOROOT is mounted (and what `GOROOT` says), for the standard
/// library's own tests and for data such as `time`'s zone database.
const GUEST_GOROOT: &str = "/goroot";
/// Linear memory a Go case may use by default: Go's allocator reserves
/// generously, and `image/png`'s tests run out at 1 GiB (issue 9).
const GO_MEMORY: u64 = 4 << 30;

/// What every run of a package may see: the package dir read-only at `.`
/// (a Go package: its module at a fixed path, `PWD` in it, and GOROOT), a
/// fresh scratch dir at `/tmp`, the `--env` variables, the `--mount`s, and
/// the limits.
pub fn policy(
    config: &TestConfig,
    package: &Package,
    scratch: &Path,
    embedded: bool,
    memo: Option<Arc<dyn DigestMemo>>,
) -> Policy {
    let mut p = Policy::new();
    if let Some(m) = memo {
        p.digest_memo(m);
    }
    if let Layout::Exec { cwd, guest_cwd } = &config.layout {
        exec_mounts(&mut p, config, cwd, guest_cwd, scratch);
    } else {
        package_mounts(&mut p, config, package, scratch, embedded);
    }
    if let Some(t) = config.timeout {
        p.timeout(t);
    } else {
        p.timeout(std::time::Duration::from_secs(u64::MAX / 4));
    }
    if let Some(m) = config.memory {
        p.memory_limit(m);
    }
    if let Some(o) = config.output_limit {
        p.output_limit(o);
    }
    if let Some(t) = config.tmp_limit {
        p.scratch_limit(t);
    }
    if let Some(n) = config.open_files {
        p.open_files(n);
    }
    if let Some(seed) = config.hermetic {
        p.hermetic(seed);
    }
    for o in config.overrides_for(&package.name) {
        apply_override(&mut p, o);
    }
    p
}

/// A `cachet.toml` override of the package's sandbox.
fn apply_override(p: &mut Policy, o: &crate::config::PackageOverride) {
    if let Some(t) = o.timeout {
        p.timeout(t.unwrap_or(std::time::Duration::from_secs(u64::MAX / 4)));
    }
    if let Some(m) = o.memory {
        p.memory_limit(m);
    }
    if let Some(l) = o.output_limit {
        p.output_limit(l);
    }
    if let Some(t) = o.tmp_limit {
        p.scratch_limit(t);
    }
    if let Some(n) = o.open_files {
        p.open_files(n);
    }
    for m in &o.mounts {
        if m.writable {
            p.mount_read_write(&m.name, &m.host, &[m.guest.as_str()]);
        } else {
            p.mount_read_only(&m.name, &m.host, &[m.guest.as_str()]);
        }
    }
    for (k, v) in &o.env {
        p.env(k, v);
    }
}

/// `cachet exec`: the mounts asked for, in order, then the current
/// directory read-only at its absolute path and at `.` (unless a mount is
/// already there, or at `/`), a scratch `/tmp` (unless one is), and only the variables
/// given, with `PWD`. No `TMPDIR`: a program run directly has none either.
fn exec_mounts(p: &mut Policy, config: &TestConfig, cwd: &Path, guest_cwd: &str, scratch: &Path) {
    add_extra_mounts(p, config);
    let taken = |g: &str| config.mounts.iter().any(|m| m.guest == g);
    // wasi-libc matches `.` and `/` alike (both lose their prefix): with a
    // mount at `/`, `.` would hide it, so relative paths then resolve
    // against `/`, as under `wasmtime run --dir /`.
    let dot = !taken(".") && !taken("/");
    let guests: Vec<&str> = [guest_cwd]
        .into_iter()
        .filter(|g| !taken(g))
        .chain(dot.then_some("."))
        .collect();
    if !guests.is_empty() {
        p.mount_read_only(PACKAGE_MOUNT, cwd, &guests);
    }
    if !taken(cachet_runtime::SCRATCH_GUEST_PATH) {
        p.scratch(scratch).unset_env("TMPDIR");
    }
    p.env("PWD", guest_cwd);
    for (k, v) in &config.env {
        p.env(k, v);
    }
    // As a program run directly: wasm32's whole address space.
    p.memory_limit(EXEC_MEMORY);
}

/// `cachet exec`'s default memory limit: all a wasm32 guest can address,
/// as the wasmtime CLI allows.
const EXEC_MEMORY: u64 = 4 << 30;

fn add_extra_mounts(p: &mut Policy, config: &TestConfig) {
    for m in &config.mounts {
        if m.writable {
            p.mount_read_write(&m.name, &m.host, &[m.guest.as_str()]);
        } else {
            p.mount_read_only(&m.name, &m.host, &[m.guest.as_str()]);
        }
    }
}

/// `cachet test`: the package (or Go module and GOROOT), scratch, `--mount`s, `--env`.
fn package_mounts(
    p: &mut Policy,
    config: &TestConfig,
    package: &Package,
    scratch: &Path,
    embedded: bool,
) {
    let absolute = absolute_dir(package).filter(|_| embedded);
    match &package.go {
        Some(go) => {
            let goroot = go.goroot.to_string_lossy();
            let pwd = if go.standard {
                format!("{GUEST_GOROOT}/src/{}", go.rel)
            } else {
                p.mount_read_only(
                    GO_MODULE_MOUNT,
                    &go.module_root,
                    &[&format!("{GO_SRC}/{}", go.module_path)],
                );
                format!("{GO_SRC}/{}/{}", go.module_path, go.rel)
            };
            p.mount_read_only(GOROOT_MOUNT, goroot.as_ref(), &[GUEST_GOROOT])
                .env("GOROOT", GUEST_GOROOT)
                .env("PWD", pwd.trim_end_matches('/'))
                .memory_limit(GO_MEMORY);
        }
        None => {
            let mut guests = vec!["."];
            guests.extend(absolute.as_deref());
            p.mount_read_only(PACKAGE_MOUNT, &package.dir, &guests);
        }
    }
    p.scratch(scratch);
    if package.cargo {
        // As `cargo test` sets it. The absolute path only where the module
        // already holds it (and the package is mounted there); otherwise `.`,
        // which keeps the environment the same in every checkout.
        p.env("CARGO_MANIFEST_DIR", absolute.as_deref().unwrap_or("."));
    }
    add_extra_mounts(p, config);
    for (k, v) in &config.env {
        p.env(k, v);
    }
}

/// The package dir as an absolute, canonical path (what `env!("CARGO_MANIFEST_DIR")` holds).
pub fn absolute_dir(package: &Package) -> Option<String> {
    std::fs::canonicalize(&package.dir)
        .ok()?
        .to_str()
        .map(str::to_string)
}

/// A Go module whose instance costs this much before its first case (its
/// package init, measured by its listing run) runs its cases in one
/// instance by default: one per case would multiply that. Measured (issue
/// 9, docs/BENCHMARKS.md): the standard library's `strings` tests take
/// 116 ms per instance (128 cases: 15 s of init, against 0.25 s in one
/// instance), a small user package 2.5 ms.
pub const GO_INIT_PER_CASE: Duration = Duration::from_millis(20);

/// How a module's cases are cut into instances: `--isolate` when given;
/// else one per case, but for a Go module with an expensive init (above),
/// and then why.
fn isolate_for(
    config: &TestConfig,
    module: &Artifact,
    listing: &Listing,
    selected: usize,
) -> (Isolate, Option<String>) {
    if let Some(i) = config.isolate {
        return (i, None);
    }
    if module.framework == Framework::Go && selected > 1 && listing.init >= GO_INIT_PER_CASE {
        let why = format!(
            "the module's init took {}",
            cachet_runtime::duration_string(listing.init)
        );
        (Isolate::Module, Some(why))
    } else {
        (Isolate::Test, None)
    }
}

/// The jobs of one package, in order: per case (the default where the
/// framework lists cases) or per module, `--count` times.
pub fn jobs(
    pkg: usize,
    package: &str,
    config: &TestConfig,
    policy: Arc<Policy>,
    modules: Vec<(Arc<Artifact>, Listing)>,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for _ in 0..config.count {
        for (module, listing) in &modules {
            let cases = &listing.cases;
            let mut policy_for = (*policy).clone();
            policy_for.program_name(&module.file_name());
            let policy_for = Arc::new(policy_for);
            let selected: Vec<String> = cases
                .iter()
                .filter(|c| config.run.as_ref().is_none_or(|re| re.is_match(c)))
                .cloned()
                .collect();
            if selected.is_empty() {
                continue;
            }
            let listed = module.framework.list_args().is_some();
            let (isolate, shared_because) = if listed {
                isolate_for(config, module, listing, selected.len())
            } else {
                (Isolate::Test, None)
            };
            let job = |cases: Vec<String>| Job {
                pkg,
                package: package.to_string(),
                module: module.clone(),
                framework: module.framework,
                isolate,
                run_cases: if listed { cases.clone() } else { Vec::new() },
                shared_because: shared_because.clone(),
                cases,
                policy: policy_for.clone(),
            };
            match isolate {
                Isolate::Test => jobs.extend(selected.into_iter().map(|c| job(vec![c]))),
                Isolate::Module => jobs.push(job(selected)),
            }
        }
    }
    jobs
}
