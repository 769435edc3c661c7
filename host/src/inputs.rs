//! `cachet inputs PKG [CASE]`: the input log each case's last passing run
//! recorded, as the cache holds it. What a cache audit reads: every file,
//! directory, variable and link the cached result depends on.

use std::io::Write;
use std::sync::Arc;

use crate::artifact::Artifact;
use crate::cache::{Cache, KeyParts};
use crate::cli::{InputsArgs, TestArgs};
use crate::config::TestConfig;
use crate::framework::Framework;
use crate::job::LIST_CASE;
use crate::{cache_dir, discover, exit, plan};

pub fn run(args: InputsArgs, cache: Option<Cache>) -> u8 {
    let Some(cache) = cache else {
        eprintln!("cachet: no result cache to read (set CACHET_CACHE or HOME)");
        return exit::SETUP_ERROR;
    };
    let test_args = TestArgs {
        run: None,
        list: None,
        failfast: false,
        timeout: None,
        count: None,
        sandbox: args.sandbox,
        verbose: false,
        json: false,
        parallel: Some(1),
        framework: None,
        isolate: None,
        explain: false,
        verify: false,
        prebuilt: args.prebuilt,
        short: false,
        go_parallel: None,
        compile_timeout: None,
        compile_memory: None,
        packages: vec![args.package],
        args: args.args,
        remote_cache: None,
        remote_cache_read_only: false,
        partition: None,
        junit: None,
        retries: None,
        fail_flaky: false,
        profile: None,
    };
    let config = match TestConfig::from_args(test_args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cachet: {e}");
            return exit::SETUP_ERROR;
        }
    };
    let mut out = std::io::stdout().lock();
    let mut code = exit::PASSED;
    let build = if config.prebuilt {
        discover::Build::Never
    } else {
        discover::Build::Allowed
    };
    for package in discover::discover(
        &config.packages,
        build,
        cache_dir().map(|d| d.join("go-test")).as_deref(),
    ) {
        if let Some(e) = &package.error {
            eprintln!("cachet: {}: {e}", package.name);
            code = exit::SETUP_ERROR;
            continue;
        }
        let dir = package
            .cargo
            .then(|| plan::absolute_dir(&package))
            .flatten();
        let forced = package.cargo.then_some(Framework::Libtest);
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
        let policy = plan::policy(&config, &package, &std::env::temp_dir(), embedded, None);
        for a in &artifacts {
            let mut policy = policy.clone();
            policy.program_name(&a.file_name());
            let cases = match a.framework.list_args() {
                None => vec![a.file_name()],
                Some(list_args) => {
                    let parts = KeyParts::new(
                        a.digest,
                        a.framework.name(),
                        LIST_CASE,
                        &list_args,
                        &policy,
                        config.stack_bytes(),
                    );
                    match cache.log(&parts, &package.name) {
                        Ok(Some(_)) => cache.cases(&parts, &package.name).unwrap_or_default(),
                        _ => {
                            eprintln!(
                                "cachet: {}: {}: no recorded run of this build; run `cachet test {}` first",
                                package.name,
                                a.file_name(),
                                package.name
                            );
                            code = exit::SETUP_ERROR;
                            continue;
                        }
                    }
                }
            };
            for case in cases
                .iter()
                .filter(|c| args.case.as_ref().is_none_or(|want| want == *c))
            {
                let key_args = a.framework.key_args(&config.run_flags(), &config.args);
                let parts = KeyParts::new(
                    a.digest,
                    a.framework.name(),
                    case,
                    &key_args,
                    &policy,
                    config.stack_bytes(),
                );
                let _ = writeln!(out, "== {} {case}", package.name);
                let _ = match cache.log(&parts, &package.name) {
                    Ok(Some(log)) => write!(out, "{}", log.render()),
                    Ok(None) => writeln!(out, "(no passing run recorded)"),
                    Err(e) => writeln!(out, "(unreadable: {e})"),
                };
            }
        }
    }
    code
}
