//! The plan: where a package's files appear to its guest (its layout and
//! sandbox policy), and the jobs its cases become: one instance per case,
//! or one per module where `--isolate` or the harness says so.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cachet_runtime::{DigestMemo, Policy};

use crate::artifact::Artifact;
use crate::cache::{KeyParts, NameKey, LIST_CASE};
use crate::config::{
    Isolate, Layout, TestConfig, DEV_MOUNT, GOROOT_MOUNT, GO_MODULE_MOUNT, NO_TIME_LIMIT,
    PACKAGE_MOUNT,
};
use crate::discover::Package;
use crate::framework::Framework;
use crate::framework::RunFlags;

/// One instance to run.
#[derive(Clone)]
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
    /// Its one case is one the harness listed as ignored (`#[ignore]`): it
    /// is reported skipped and never runs.
    pub ignored: bool,
    pub policy: Arc<Policy>,
}

/// A module's cases, and what one instance of it costs before any case runs
/// (the listing run: package init, for Go), which decides how its cases
/// are cut into instances (see [`jobs`]).
#[derive(Clone, Debug)]
pub struct Listing {
    pub cases: Vec<String>,
    pub init: Duration,
    /// Of the cases, those the harness skips without running them (sorted).
    pub ignored: Vec<String>,
}

impl Listing {
    /// A module whose harness cannot list cases: it is its one case.
    pub fn whole(module: &Artifact) -> Listing {
        Listing {
            cases: vec![module.file_name()],
            init: Duration::ZERO,
            ignored: Vec::new(),
        }
    }

    /// A listing as the cache holds it.
    pub fn cached(r: crate::cache::CachedResult) -> Listing {
        Listing {
            cases: r.cases,
            init: r.elapsed,
            ignored: r.ignored,
        }
    }
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
/// `cachet exec`'s default memory limit: all a wasm32 guest can address,
/// as the wasmtime CLI allows.
const EXEC_MEMORY: u64 = 4 << 30;

/// What every run of a package may see: its layout's mounts and variables,
/// then the sandbox settings for the package (flags, profile, overrides).
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
    let sandbox = config.sandbox_for(&package.name);
    match &config.layout {
        Layout::Exec {
            cwd,
            guest_cwd,
            test_binary,
        } => {
            // As a program run directly: wasm32's whole address space, and
            // no time limit unless one is asked for.
            p.memory_limit(EXEC_MEMORY).timeout(NO_TIME_LIMIT);
            sandbox.apply(&mut p);
            if *test_binary {
                test_binary_mounts(&mut p, &sandbox, cwd, guest_cwd, scratch);
                devices(&mut p, &sandbox, scratch);
            } else if sandbox.mounts_at("/") {
                // A program given the host's `/` would find its `/dev/null`
                // there, which is refused as any special file: the devices
                // are shown at `/dev` instead (wasi-libc and Go resolve a
                // path by its longest preopen).
                devices(&mut p, &sandbox, scratch);
            }
        }
        Layout::Package => {
            package_mounts(&mut p, package, scratch, embedded);
            sandbox.apply(&mut p);
            devices(&mut p, &sandbox, scratch);
        }
    }
    p
}

/// `/dev/null`, `/dev/zero`, `/dev/random` and `/dev/urandom`, unless a
/// mount is at `/dev`: the run directory's empty files (see `workdir.rs`),
/// which the runtime makes the devices. Nothing else is under `/dev`.
fn devices(p: &mut Policy, sandbox: &crate::config::SandboxConfig, scratch: &Path) {
    if !sandbox.mounts_at("/dev") {
        p.mount_read_only(DEV_MOUNT, scratch.join(crate::workdir::DEVICES), &["/dev"])
            .devices(DEV_MOUNT);
    }
}

/// `cachet exec` of a test binary: after the mounts asked for (already in
/// `p`), the current directory read-only at its absolute path and at `.`
/// (unless a mount is already there, or at `/`), a scratch `/tmp` (unless
/// one is), and `PWD`, which Go's tests and cargo's runner assume. No
/// `TMPDIR`: a program run directly has none either.
fn test_binary_mounts(
    p: &mut Policy,
    sandbox: &crate::config::SandboxConfig,
    cwd: &Path,
    guest_cwd: &str,
    scratch: &Path,
) {
    // wasi-libc matches `.` and `/` alike (both lose their prefix): with a
    // mount at `/`, `.` would hide it, so relative paths then resolve
    // against `/`, as under `wasmtime run --dir /`.
    let dot = !sandbox.mounts_at(".") && !sandbox.mounts_at("/");
    let guests: Vec<&str> = [guest_cwd]
        .into_iter()
        .filter(|g| !sandbox.mounts_at(g))
        .chain(dot.then_some("."))
        .collect();
    if !guests.is_empty() {
        p.mount_read_only(PACKAGE_MOUNT, cwd, &guests);
    }
    if !sandbox.mounts_at(cachet_runtime::SCRATCH_GUEST_PATH) {
        p.scratch(scratch);
        if !sandbox.env.contains_key("TMPDIR") {
            p.unset_env("TMPDIR");
        }
    }
    if !sandbox.env.contains_key("PWD") {
        p.env("PWD", guest_cwd);
    }
}

/// `cachet test`: the package (or Go module and GOROOT) and scratch.
fn package_mounts(p: &mut Policy, package: &Package, scratch: &Path, embedded: bool) {
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
}

/// The package dir as an absolute, canonical path (what `env!("CARGO_MANIFEST_DIR")` holds).
pub fn absolute_dir(package: &Package) -> Option<String> {
    std::fs::canonicalize(&package.dir)
        .ok()?
        .to_str()
        .map(str::to_string)
}

/// The framework of a package's modules when it is known without looking
/// at their bytes: `--framework`, or the package's kind.
pub fn known_framework(config: &TestConfig, package: &Package) -> Option<Framework> {
    config
        .framework
        .or(package.cargo.then_some(Framework::Libtest))
        .or(package.go.is_some().then_some(Framework::Go))
}

/// The package dir a module may embed (a cargo package's), to look for.
pub fn embeddable_dir(package: &Package) -> Option<String> {
    package.cargo.then(|| absolute_dir(package)).flatten()
}

/// A module's policy: the package's, with the module's file name as `argv[0]`.
pub fn module_policy(policy: &Policy, module: &Artifact) -> Policy {
    let mut p = policy.clone();
    p.program_name(&module.file_name());
    p
}

/// How a module's cases are cut into instances: `--isolate` when given;
/// else as its harness says (one per case, but a Go module with an
/// expensive init in one), and why.
fn isolate_for(
    config: &TestConfig,
    module: &Artifact,
    listing: &Listing,
    selected: usize,
) -> (Isolate, Option<String>) {
    if module.framework.harness().one_case_per_instance() {
        return (Isolate::Test, None);
    }
    if let Some(i) = config.isolate {
        return (i, None);
    }
    match module
        .framework
        .harness()
        .shared_instance(selected, listing.init)
    {
        Some(why) => (Isolate::Module, Some(why)),
        None => (Isolate::Test, None),
    }
}

/// A module with an expensive init shares instances among its cases
/// (`isolate_for`): up to [`SHARED_INSTANCES`] of them, with at least
/// [`CASES_PER_SHARED`] cases each, dealt out in turn (neighbours in the
/// listing, often alike in cost, go to different instances). Its cases then
/// run on as many runners, beside other packages', instead of all on one
/// (a cold run of the Go set waited 53 s on `bytes` in one instance); the
/// extra inits cost at most 1/16 of what one instance per case would. The
/// cut depends on the listing alone, so the jobs' keys are the same on
/// every machine.
fn shared_instances(cases: Vec<String>) -> Vec<Vec<String>> {
    let n = (cases.len() / CASES_PER_SHARED).clamp(1, SHARED_INSTANCES);
    let mut out = vec![Vec::new(); n];
    for (i, case) in cases.into_iter().enumerate() {
        out[i % n].push(case);
    }
    out.retain(|c| !c.is_empty());
    out
}

/// At most this many instances share a module's cases.
const SHARED_INSTANCES: usize = 4;

/// At least this many cases share each of them.
const CASES_PER_SHARED: usize = 16;

/// The policy of a job that runs `run_cases`: the module's, with the
/// variables its harness names cases by (libtest's child mode), which
/// are then in its key and its log like any other.
fn case_policy(module: &Arc<Policy>, framework: Framework, run_cases: &[String]) -> Arc<Policy> {
    let env = framework.harness().case_env(run_cases);
    if env.is_empty() {
        return module.clone();
    }
    let mut p = (**module).clone();
    for (name, value) in env {
        p.env(&name, &value);
    }
    Arc::new(p)
}

/// The jobs of one package, in order: per case (the default where the
/// framework lists cases) or per module, `--count` times.
pub fn jobs(
    pkg: usize,
    package: &str,
    config: &TestConfig,
    policy: &Policy,
    modules: &[(Arc<Artifact>, Listing)],
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for _ in 0..config.count {
        for (module, listing) in modules {
            let policy_for = Arc::new(module_policy(policy, module));
            let is_ignored = |c: &String| listing.ignored.binary_search(c).is_ok();
            let chosen: Vec<&String> = listing
                .cases
                .iter()
                .filter(|c| config.run.as_ref().is_none_or(|re| re.is_match(c)))
                .collect();
            let selected: Vec<String> = chosen
                .iter()
                .filter(|c| !is_ignored(c))
                .map(|c| c.to_string())
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let listed = module.framework.harness().list_args().is_some();
            let (isolate, shared_because) = if listed {
                isolate_for(config, module, listing, selected.len())
            } else {
                (Isolate::Test, None)
            };
            let job = |cases: Vec<String>| {
                let run_cases = if listed { cases.clone() } else { Vec::new() };
                Job {
                    pkg,
                    package: package.to_string(),
                    module: module.clone(),
                    framework: module.framework,
                    isolate,
                    policy: case_policy(&policy_for, module.framework, &run_cases),
                    run_cases,
                    shared_because: shared_because.clone(),
                    cases,
                    ignored: false,
                }
            };
            let ignored_job = |c: String| Job {
                isolate: Isolate::Test,
                shared_because: None,
                ignored: true,
                ..job(vec![c])
            };
            match isolate {
                // In the listing's order, ignored cases among the others.
                Isolate::Test => jobs.extend(chosen.into_iter().map(|c| {
                    if is_ignored(c) {
                        ignored_job(c.clone())
                    } else {
                        job(vec![c.clone()])
                    }
                })),
                Isolate::Module => {
                    let ignored = chosen.into_iter().filter(|c| is_ignored(c));
                    let ignored: Vec<Job> = ignored.map(|c| ignored_job(c.clone())).collect();
                    if shared_because.is_some() {
                        jobs.extend(shared_instances(selected).into_iter().map(job));
                    } else if !selected.is_empty() {
                        jobs.push(job(selected));
                    }
                    jobs.extend(ignored);
                }
            }
        }
    }
    jobs
}

/// The key of a module's listing in `package` (`policy`: the module's, with
/// its `argv[0]`), if its harness lists cases; and the name `--explain`
/// knows it by.
pub fn listing_key(
    package: &str,
    module: &Artifact,
    policy: &Policy,
    stack: usize,
) -> Option<(KeyParts, NameKey)> {
    let harness = module.framework.harness();
    let mut args = harness.list_args()?;
    args.extend(harness.ignored_list_args().unwrap_or_default());
    let parts = KeyParts::new(
        module.digest,
        module.wasi,
        module.framework.name(),
        LIST_CASE,
        &args,
        policy,
        stack,
    );
    let name = NameKey::new(package, &format!("{LIST_CASE} {}", module.file_name()));
    Some((parts, name))
}

/// The case part of a job's cache key: its case, or for cases run in one
/// instance all of them (their results are cached together).
pub fn case_key(job: &Job) -> String {
    match (job.isolate, job.cases.as_slice()) {
        (Isolate::Test, [one]) => one.clone(),
        (_, cases) => format!("--module {}", cases.join(" ")),
    }
}

/// A job's cache key, and its name for `--explain`: the one function that
/// both `cachet test` and `cachet inputs` compute keys with. `flags` and
/// `args` (the user's, after `--`) are what the harness passes beyond the
/// cases; `stack` is the engine's wasm stack.
pub fn job_key(job: &Job, flags: &RunFlags, args: &[String], stack: usize) -> (KeyParts, NameKey) {
    let mut key_args = job.framework.harness().flag_args(flags);
    key_args.extend(args.iter().cloned());
    let case = case_key(job);
    let parts = KeyParts::new(
        job.module.digest,
        job.module.wasi,
        job.framework.name(),
        &case,
        &key_args,
        &job.policy,
        stack,
    );
    (parts, NameKey::new(&job.package, &case))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("T{i}")).collect()
    }

    #[test]
    fn cases_sharing_instances_are_dealt_out_sixteen_or_more_each_up_to_four() {
        assert_eq!(shared_instances(names(3)), vec![names(3)]);
        assert_eq!(shared_instances(names(31)).len(), 1);
        let two = shared_instances(names(32));
        assert_eq!(two.len(), 2);
        assert_eq!(two[0][..3], ["T0", "T2", "T4"]);
        assert_eq!(two[1][..3], ["T1", "T3", "T5"]);
        let four = shared_instances(names(159));
        assert_eq!(
            four.iter().map(Vec::len).collect::<Vec<_>>(),
            [40, 40, 40, 39]
        );
        assert!(shared_instances(Vec::new()).is_empty());
    }
}
