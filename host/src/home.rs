//! Where cachet keeps what outlives a run: the caches under one directory
//! (results, compiled modules, Go test binaries), opened and trimmed here,
//! and removed by `cachet clean`.

use std::path::PathBuf;

use crate::{cache, exit};

/// Where cachet keeps its caches: `$CACHET_CACHE`, else the XDG cache dir.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CACHET_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("cachet"))
}

/// The result cache under [`cache_dir`], trimmed at most once a day; `None`
/// (with a warning) when it cannot be opened: tests then run uncached.
pub fn open_cache() -> Option<cache::Cache> {
    let dir = cache_dir()?.join("results");
    match cache::Cache::open(&dir) {
        Ok(c) => {
            trim_daily(&c);
            Some(c)
        }
        Err(e) => {
            eprintln!("cachet: warning: cannot open the result cache in {}: {e}; running without it (set CACHET_CACHE)", dir.display());
            None
        }
    }
}

/// Compiled modules kept: a Go test binary compiles to ~50 MB of native
/// code, a Rust one to a few MB; 4 GiB holds a large project's.
const MAX_COMPILED_BYTES: u64 = 4 << 30;

/// Trims the store when its marker is a day old (as Go's cache does).
fn trim_daily(cache: &cache::Cache) {
    let marker = cache.store().root().join("trimmed");
    let due = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > std::time::Duration::from_secs(24 * 3600));
    if due && std::fs::write(&marker, b"").is_ok() {
        let _ = cache
            .store()
            .trim(cache::store::MAX_AGE, cache::store::MAX_BYTES);
        if let Some(compiled) = cache_dir().map(|d| d.join("compiled")) {
            let _ =
                cachet_runtime::trim_compiled(&compiled, cache::store::MAX_AGE, MAX_COMPILED_BYTES);
        }
    }
}

/// `cachet clean`: removes the cache, or with `results_only` just results.
pub fn clean(results_only: bool) -> u8 {
    let Some(dir) = cache_dir() else {
        eprintln!("cachet: no cache directory (set CACHET_CACHE or HOME)");
        return exit::SETUP_ERROR;
    };
    let target = if results_only {
        dir.join("results")
    } else {
        dir
    };
    match std::fs::remove_dir_all(&target) {
        Ok(()) => {
            println!("removed {}", target.display());
            exit::PASSED
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => exit::PASSED,
        Err(e) => {
            eprintln!("cachet: cannot remove {}: {e}", target.display());
            exit::SETUP_ERROR
        }
    }
}
