//! Precise environment reads for Go. The Go runtime copies the whole
//! environment at start (`environ`), so without help every variable would
//! be an input of every Go test. Go's `testing` package writes a test log
//! (`-test.testlogfile`) of the `os.Getenv`/`os.LookupEnv` calls a test
//! made; its `getenv` lines replace the `environ` entry, so a variable no
//! test reads never invalidates a Go result. Files stay observed at the WASI
//! boundary (the test log misses reads outside package `os`).

use cachet_runtime::{Entry, InputLog, World};

/// Variables the Go runtime and standard library read without package os
/// (so the test log does not list them): always observed.
pub const RUNTIME_VARS: &[&str] = &[
    "GODEBUG",
    "GOGC",
    "GOMAXPROCS",
    "GOMEMLIMIT",
    "GOROOT",
    "GOTRACEBACK",
    "TZ",
    "ZONEINFO",
];

const HEADER: &str = "# test log";

/// Replaces `log`'s `environ` entry with one `env NAME` entry per variable
/// the test log names (and [`RUNTIME_VARS`]), observed in `world`. Nothing
/// changes without a well-formed test log. Returns whether it refined.
pub fn refine(log: &mut InputLog, testlog: Option<&[u8]>, world: &World) -> bool {
    let Some(text) = testlog.and_then(|t| std::str::from_utf8(t).ok()) else {
        return false;
    };
    if !text.starts_with(HEADER) {
        return false;
    }
    let Some(at) = log
        .entries
        .iter()
        .position(|e| matches!(e, Entry::Environ(_)))
    else {
        return false;
    };
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("getenv "))
        .chain(RUNTIME_VARS.iter().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    let precise = names.into_iter().map(|name| Entry::Env {
        name: name.to_string(),
        observation: world.env_observation(name),
    });
    log.entries.splice(at..=at, precise);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_runtime::{Observation, Sha256Digest};
    use std::collections::BTreeMap;

    #[test]
    fn environ_becomes_the_variables_the_test_read() {
        let env: BTreeMap<String, String> = [("GREETING".to_string(), "hi".to_string())]
            .into_iter()
            .collect();
        let world = World::new(std::iter::empty(), env);
        let mut log = InputLog {
            entries: vec![
                Entry::Environ(Observation::Digest(Sha256Digest::of(b"all"))),
                Entry::Uses(cachet_runtime::log::Fact::Clock),
            ],
        };
        let testlog =
            b"# test log\ngetenv GREETING\nopen testdata/x\ngetenv HOME\ngetenv GREETING\n";
        assert!(refine(&mut log, Some(testlog), &world));
        let text = log.render();
        assert!(!text.contains("environ"), "{text}");
        assert!(text.contains(&format!("env GREETING {}", Sha256Digest::of(b"hi"))));
        assert!(text.contains("env HOME unset\n"));
        assert!(text.contains("env GODEBUG unset\n"));
        assert_eq!(text.matches("env GREETING").count(), 1);
        assert!(!refine(&mut log.clone(), Some(b"garbage"), &world));
        assert!(!refine(&mut log.clone(), None, &world));
    }
}
