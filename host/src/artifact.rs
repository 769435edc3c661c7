//! A test binary as the scheduler holds it: identified up front, read and
//! compiled only when a run needs it. A fully cached run never compiles or
//! instantiates anything, and does not even read an unchanged module: its
//! digest comes from the stat memo, and what was learnt from its bytes (the
//! framework, whether it embeds its package's path) from the cache.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cachet_runtime::{check_header, FileId, Module, ModuleDigest, Runtime};

use crate::cache::{Cache, ModuleFacts};
use crate::framework::Framework;

pub struct Artifact {
    pub path: PathBuf,
    pub digest: ModuleDigest,
    pub framework: Framework,
    /// The module contains its package's absolute path (from
    /// `env!("CARGO_MANIFEST_DIR")`), so the package is mounted there too.
    pub embeds_dir: bool,
    /// The bytes, when they were read to identify the module.
    bytes: Option<Vec<u8>>,
    compiled: OnceLock<Result<Module, String>>,
}

impl Artifact {
    /// Identifies a module file; `dir` is the package's absolute path to
    /// look for, `forced` the framework when it is known. With a cache, an
    /// unchanged file (same dev, inode, size, mtime and ctime as when it was
    /// last hashed, by the racy-file rule) is not read at all.
    pub fn open(
        path: PathBuf,
        forced: Option<Framework>,
        dir: Option<String>,
        cache: Option<&Cache>,
    ) -> Result<Artifact, String> {
        let file = path.display().to_string();
        let id = file_id(&path);
        if let (Some(cache), Some(id)) = (cache, &id) {
            if let Some(digest) = cache.memo().get(id) {
                let digest = ModuleDigest(digest);
                if let Some(facts) = cache.module_facts(&digest, dir.as_deref()) {
                    return Ok(Artifact {
                        path,
                        digest,
                        framework: forced.unwrap_or(facts.framework()),
                        embeds_dir: facts.embeds_dir,
                        bytes: None,
                        compiled: OnceLock::new(),
                    });
                }
            }
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("{file}: cannot read: {e}"))?;
        check_header(&bytes).map_err(|e| format!("{file}: {e}"))?;
        let detected = Framework::detect(&bytes);
        // Only data the program can read counts: debug info names the
        // package dir too, but the program cannot see it.
        let embeds_dir = dir
            .as_deref()
            .is_some_and(|d| cachet_runtime::data_contains(&bytes, d.as_bytes()));
        let digest = ModuleDigest::of(&bytes);
        if let (Some(cache), Some(id)) = (cache, id) {
            // Remembered only if the file did not change while it was read.
            if file_id(&path) == Some(id) {
                cache.memo().put(id, digest.0);
                let facts = ModuleFacts::new(detected, embeds_dir);
                let _ = cache.save_module_facts(&digest, dir.as_deref(), &facts);
            }
        }
        Ok(Artifact {
            digest,
            path,
            framework: forced.unwrap_or(detected),
            embeds_dir,
            bytes: Some(bytes),
            compiled: OnceLock::new(),
        })
    }

    /// The compiled module, compiling (or loading from the compiled-module
    /// cache) on first use; concurrent callers wait for one compile.
    pub fn module(&self, runtime: &Runtime) -> Result<Module, String> {
        self.compiled
            .get_or_init(|| {
                let read;
                let bytes = match &self.bytes {
                    Some(b) => b,
                    None => {
                        read = self.read_again()?;
                        &read
                    }
                };
                runtime
                    .load_digested(bytes, self.digest)
                    .map_err(|e| format!("{}: {e}", self.path.display()))
            })
            .clone()
    }

    /// The bytes of a module identified by the memo, checked against its
    /// digest: a file replaced since is an error, not another module's run.
    fn read_again(&self) -> Result<Vec<u8>, String> {
        let file = self.path.display();
        let bytes = std::fs::read(&self.path).map_err(|e| format!("{file}: cannot read: {e}"))?;
        if ModuleDigest::of(&bytes) != self.digest {
            return Err(format!(
                "{file}: changed while cachet was running; run again"
            ));
        }
        Ok(bytes)
    }

    /// The file name, as `argv[0]` and as the case name of a plain module.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId::of(&m))
}
