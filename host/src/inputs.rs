//! `cachet inputs PKG [CASE]`: the input log each case's last passing run
//! recorded, as the cache holds it. What a cache audit reads: every file,
//! directory, variable and link the cached result depends on.
//!
//! It builds the configuration as `cachet test` does (`TestConfig::load`:
//! the same flags, the same `cachet.toml` profile), plans the package's
//! jobs from its cached listings as `cachet test` does (`plan::jobs`, so
//! `--isolate`, Go's shared instances and `--run` cut them the same way),
//! and computes each job's key with the one function `cachet test` uses
//! (`plan::job_key`). It runs nothing.

use std::io::Write;
use std::sync::Arc;

use crate::artifact::Artifact;
use crate::cache::Cache;
use crate::cli::InputsArgs;
use crate::config::TestConfig;
use crate::home::cache_dir;
use crate::plan::{self, Listing};
use crate::{discover, exit};

pub fn run(args: InputsArgs, cache: Option<Cache>) -> u8 {
    let Some(cache) = cache else {
        eprintln!("cachet: no result cache to read (set CACHET_CACHE or HOME)");
        return exit::SETUP_ERROR;
    };
    let config = match std::env::current_dir()
        .map_err(|e| crate::config::ConfigError::Cwd(e.to_string()))
        .and_then(|cwd| TestConfig::load(args.flags, vec![args.package], args.args, &cwd))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachet: {e}");
            return exit::SETUP_ERROR;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut code = exit::PASSED;
    let build = config.build();
    let mut packages = discover::discover(
        &config.packages,
        build,
        cache_dir().map(|d| d.join("go-test")).as_deref(),
    );
    discover::go::build_all(&mut packages);
    for (pkg, package) in packages.into_iter().enumerate() {
        if let Some(e) = &package.error {
            eprintln!("cachet: {}: {e}", package.name);
            code = exit::SETUP_ERROR;
            continue;
        }
        let forced = plan::known_framework(&config, &package);
        let dir = plan::embeddable_dir(&package);
        let artifacts: Vec<Arc<Artifact>> = match package
            .modules
            .iter()
            .map(|m| Artifact::open(m.clone(), forced, dir.clone(), Some(&cache)).map(Arc::new))
            .collect()
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!("cachet: {}: {e}", package.name);
                code = exit::SETUP_ERROR;
                continue;
            }
        };
        let embedded = artifacts.iter().any(|a| a.embeds_dir);
        let memo = Some(cache.memo());
        let policy = plan::policy(&config, &package, &std::env::temp_dir(), embedded, memo);
        let stack = config.sandbox.stack_bytes();
        let mut modules = Vec::new();
        for a in artifacts {
            let module_policy = plan::module_policy(&policy, &a);
            let listing = match plan::listing_key(&package.name, &a, &module_policy, stack) {
                None => Some(Listing::whole(&a)),
                Some((parts, _)) => cache.listing(&parts, &package.name).map(Listing::cached),
            };
            match listing {
                Some(l) => modules.push((a, l)),
                None => {
                    eprintln!(
                        "cachet: {}: {}: no recorded run of this build with these flags; run `cachet test {}` with them first",
                        package.name,
                        a.file_name(),
                        package.name
                    );
                    code = exit::SETUP_ERROR;
                }
            }
        }
        for job in plan::jobs(pkg, &package.name, &config, &policy, &modules) {
            if args
                .case
                .as_ref()
                .is_some_and(|want| !job.cases.contains(want))
            {
                continue;
            }
            let _ = writeln!(out, "== {} {}", package.name, job.cases.join(" "));
            if job.ignored {
                let _ = writeln!(out, "(ignored: never runs, so it reads nothing)");
                continue;
            }
            let (parts, _) = plan::job_key(&job, &config.flags, &config.args, stack);
            let _ = match cache.log(&parts, &package.name) {
                Ok(Some(log)) => write!(out, "{}", log.render()),
                Ok(None) => writeln!(out, "(no passing run recorded)"),
                Err(e) => writeln!(out, "(unreadable: {e})"),
            };
        }
    }
    code
}
