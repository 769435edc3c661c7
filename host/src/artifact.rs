//! A test binary as the scheduler holds it: read and hashed up front,
//! compiled only when a run needs it. A fully cached run never compiles or
//! instantiates anything: the module digest is all its keys need.

use std::path::PathBuf;
use std::sync::OnceLock;

use cachet_runtime::{check_header, Module, ModuleDigest, Runtime};

use crate::framework::{self, Framework};

pub struct Artifact {
    pub path: PathBuf,
    pub digest: ModuleDigest,
    pub framework: Framework,
    /// The module contains its package's absolute path (from
    /// `env!("CARGO_MANIFEST_DIR")`), so the package is mounted there too.
    pub embeds_dir: bool,
    bytes: Vec<u8>,
    compiled: OnceLock<Result<Module, String>>,
}

impl Artifact {
    /// Reads and checks a module file; `dir` is the package's absolute path
    /// to look for, `forced` the framework when it is known.
    pub fn read(
        path: PathBuf,
        forced: Option<Framework>,
        dir: Option<String>,
    ) -> Result<Artifact, String> {
        let file = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| format!("{file}: cannot read: {e}"))?;
        check_header(&bytes).map_err(|e| format!("{file}: {e}"))?;
        let framework = forced.unwrap_or_else(|| Framework::detect(&bytes));
        let embeds_dir = dir.is_some_and(|d| framework::contains(&bytes, d.as_bytes()));
        Ok(Artifact {
            digest: ModuleDigest::of(&bytes),
            path,
            framework,
            embeds_dir,
            bytes,
            compiled: OnceLock::new(),
        })
    }

    /// The compiled module, compiling (or loading from the compiled-module
    /// cache) on first use; concurrent callers wait for one compile.
    pub fn module(&self, runtime: &Runtime) -> Result<Module, String> {
        self.compiled
            .get_or_init(|| {
                runtime
                    .load_digested(&self.bytes, self.digest)
                    .map_err(|e| format!("{}: {e}", self.path.display()))
            })
            .clone()
    }

    /// The file name, as `argv[0]` and as the case name of a plain module.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
