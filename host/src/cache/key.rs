//! Cache keys, and the two-level lookup they serve (DESIGN.md, "The cache";
//! Go's `tryCacheWithID`):
//!
//! 1. The **test key** is everything that defines a run before it starts:
//!    [`ABI_VERSION`], module digest, framework, test case, the module's
//!    file name (`argv[0]`, which the guest can read), the arguments
//!    after `--`, the mount layout (logical names, guest paths, modes; never
//!    host paths), the limits that can change an outcome (memory, wasm
//!    stack, output, scratch size, open files), the clock and random mode
//!    (real, or hermetic with its seed) and the WASI version (a preview 2
//!    component's keys say so; a preview 1 module's are unchanged). It maps to the input logs of the
//!    last passing runs, one per package holding the module (two packages
//!    with the same module read different files).
//! 2. Lookup re-observes that log in today's world (`reobserve`), giving an
//!    **inputs digest**; `H(test key, inputs digest)` maps to the result.
//!
//! A result is found only when every observation of the log comes out the
//! same today. Not in the key, as in Go: `--run`, `-v`, `--failfast`,
//! `--timeout`, `-p`, `--json`; the environment is not in the key because
//! the log records exactly what the test read of it.

use cachet_runtime::{InputsDigest, ModuleDigest, MountMode, Policy, Sha256Digest, Wasi};
use sha2::{Digest as _, Sha256};

/// Bumped when the meaning of a key or entry changes: old entries then miss.
/// v4: Go cases run in one canonical output mode (their stored output is
/// test2json mode's), and the mode is no longer part of the key.
pub const ABI_VERSION: &str = "cachet-cache-v4";

/// Pseudo case name under which a module's listing is cached.
pub const LIST_CASE: &str = "--list";

/// What defines one run before it starts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyParts {
    pub module: String,
    pub framework: String,
    /// The test case, or `--list` for a module's listing.
    pub case: String,
    /// `argv[0]`: the module's file name.
    pub program: String,
    pub args: Vec<String>,
    pub mounts: Vec<String>,
    pub memory: u64,
    pub output: u64,
    pub stack: u64,
    pub scratch: u64,
    pub open_files: u32,
    /// `real`, or `hermetic seed=N`.
    pub time: String,
    /// `preview2` for a component; absent for a preview 1 module, whose
    /// keys are those of cachet before components ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
}

/// Digest of [`KeyParts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TestKey(pub Sha256Digest);

/// `H(test key, inputs digest)`: where a result lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResultKey(pub Sha256Digest);

/// Identifies a case across module rebuilds, for `--explain` ("module
/// changed"): package path and case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey(pub Sha256Digest);

impl KeyParts {
    pub fn new(
        module: ModuleDigest,
        wasi: Wasi,
        framework: &str,
        case: &str,
        args: &[String],
        policy: &Policy,
        stack: usize,
    ) -> Self {
        let mounts = policy
            .mounts()
            .iter()
            .map(|m| {
                let mode = match m.mode {
                    MountMode::ReadOnly => "ro",
                    MountMode::ReadWrite => "rw",
                };
                format!("{} {} {}", m.name, m.guest.join(","), mode)
            })
            .collect();
        KeyParts {
            module: module.0.hex(),
            framework: framework.to_string(),
            case: case.to_string(),
            program: policy.program().to_string(),
            args: args.to_vec(),
            mounts,
            memory: policy.memory_limit_bytes(),
            output: policy.output_limit_bytes() as u64,
            stack: stack as u64,
            scratch: policy.scratch_limit_bytes(),
            open_files: policy.open_files_limit(),
            time: match policy.hermetic_seed() {
                Some(seed) => format!("hermetic seed={seed}"),
                None => "real".to_string(),
            },
            wasi: (wasi == Wasi::P2).then(|| wasi.as_str().to_string()),
        }
    }

    pub fn key(&self) -> TestKey {
        let mut h = Sha256::new();
        h.update(ABI_VERSION);
        let json = serde_json::to_vec(self).expect("key parts serialize");
        h.update((json.len() as u64).to_le_bytes());
        h.update(json);
        TestKey(Sha256Digest(h.finalize().into()))
    }

    /// What changed between the parts of an earlier run and these, in words.
    pub fn difference(&self, before: &KeyParts) -> &'static str {
        if self.module != before.module {
            "module changed"
        } else if self.args != before.args {
            "args changed"
        } else if self.program != before.program {
            "module file name changed (argv[0])"
        } else if self.mounts != before.mounts {
            "mount layout changed"
        } else if self.memory != before.memory
            || self.output != before.output
            || self.stack != before.stack
            || self.scratch != before.scratch
            || self.open_files != before.open_files
        {
            "limits changed"
        } else if self.time != before.time {
            "clock mode changed (--hermetic, --seed)"
        } else if self.framework != before.framework {
            "framework changed"
        } else if self.wasi != before.wasi {
            "WASI version changed"
        } else {
            "no cache entry"
        }
    }
}

impl TestKey {
    pub fn result(&self, inputs: &InputsDigest) -> ResultKey {
        let mut h = Sha256::new();
        h.update(self.0 .0);
        h.update(inputs.0 .0);
        ResultKey(Sha256Digest(h.finalize().into()))
    }
}

impl NameKey {
    pub fn new(package: &str, case: &str) -> Self {
        let mut h = Sha256::new();
        h.update(ABI_VERSION);
        h.update(package.as_bytes());
        h.update([0]);
        h.update(case.as_bytes());
        NameKey(Sha256Digest(h.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            module: "ab".into(),
            framework: "libtest".into(),
            case: "t".into(),
            program: "t.wasm".into(),
            args: vec![],
            mounts: vec!["pkg . ro".into()],
            memory: 1,
            output: 2,
            stack: 3,
            scratch: 4,
            open_files: 5,
            time: "real".into(),
            wasi: None,
        }
    }

    #[test]
    fn every_part_is_in_the_key() {
        let base = parts();
        let mut changed = Vec::new();
        let mut p = parts();
        p.module = "cd".into();
        changed.push(p);
        let mut p = parts();
        p.case = "u".into();
        changed.push(p);
        let mut p = parts();
        p.args = vec!["--x".into()];
        changed.push(p);
        let mut p = parts();
        p.program = "renamed.wasm".into();
        changed.push(p);
        let mut p = parts();
        p.mounts = vec!["pkg . rw".into()];
        changed.push(p);
        let mut p = parts();
        p.memory = 3;
        changed.push(p);
        let mut p = parts();
        p.stack = 9;
        changed.push(p);
        let mut p = parts();
        p.scratch = 9;
        changed.push(p);
        let mut p = parts();
        p.open_files = 9;
        changed.push(p);
        let mut p = parts();
        p.time = "hermetic seed=0".into();
        changed.push(p);
        let mut p = parts();
        p.wasi = Some("preview2".into());
        changed.push(p);
        for c in &changed {
            assert_ne!(c.key(), base.key(), "{c:?}");
        }
        assert_eq!(changed[0].difference(&base), "module changed");
        assert_eq!(
            changed[3].difference(&base),
            "module file name changed (argv[0])"
        );
        assert_eq!(changed[4].difference(&base), "mount layout changed");
        // A preview 1 key is what it was before components ran.
        let json = serde_json::to_string(&base).unwrap();
        assert!(!json.contains("wasi"), "{json}");
    }
}
