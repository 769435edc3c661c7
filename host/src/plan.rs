//! The plan: the sandbox policy of a package and the jobs its cases become.

use std::path::Path;
use std::sync::Arc;

use cachet_runtime::{DigestMemo, Policy};

use crate::artifact::Artifact;

use crate::config::{Isolate, TestConfig};
use crate::discover::Package;
use crate::framework::Framework;

/// Logical name of the package mount in input logs.
pub const PACKAGE_MOUNT: &str = "pkg";

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
    pub policy: Arc<Policy>,
}

/// What every run of a package may see: the package dir read-only at `.`, a
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
    let absolute = absolute_dir(package).filter(|_| embedded);
    let mut guests = vec!["."];
    guests.extend(absolute.as_deref());
    p.mount_read_only(PACKAGE_MOUNT, &package.dir, &guests)
        .scratch(scratch);
    if package.cargo {
        // As `cargo test` sets it. The absolute path only where the module
        // already holds it (and the package is mounted there); otherwise `.`,
        // which keeps the environment the same in every checkout.
        p.env("CARGO_MANIFEST_DIR", absolute.as_deref().unwrap_or("."));
    }
    for m in &config.mounts {
        if m.writable {
            p.mount_read_write(&m.name, &m.host, &[m.guest.as_str()]);
        } else {
            p.mount_read_only(&m.name, &m.host, &[m.guest.as_str()]);
        }
    }
    for (k, v) in &config.env {
        p.env(k, v);
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
    p
}

/// The package dir as an absolute, canonical path (what `env!("CARGO_MANIFEST_DIR")` holds).
pub fn absolute_dir(package: &Package) -> Option<String> {
    std::fs::canonicalize(&package.dir)
        .ok()?
        .to_str()
        .map(str::to_string)
}

/// The jobs of one package, in order: per case (`--isolate=test`, the
/// default where the framework lists cases) or per module, `--count` times.
pub fn jobs(
    pkg: usize,
    package: &str,
    config: &TestConfig,
    policy: Arc<Policy>,
    modules: Vec<(Arc<Artifact>, Vec<String>)>,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for _ in 0..config.count {
        for (module, cases) in &modules {
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
            let isolate = if listed {
                config.isolate.unwrap_or(Isolate::Test)
            } else {
                Isolate::Test
            };
            let job = |cases: Vec<String>| Job {
                pkg,
                package: package.to_string(),
                module: module.clone(),
                framework: module.framework,
                isolate,
                run_cases: if listed { cases.clone() } else { Vec::new() },
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
