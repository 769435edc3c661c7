//! A test binary as the scheduler holds it: identified up front, read and
//! compiled only when a run needs it. A fully cached run never compiles or
//! instantiates anything, and does not even read an unchanged module: its
//! digest comes from the stat memo, and what was learnt from its bytes (the
//! framework, whether it embeds its package's path) from the cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cachet_runtime::{check_header, FileId, LoadError, Module, ModuleDigest, Runtime, Wasi};

use crate::cache::{Cache, ModuleFacts};
use crate::framework::Framework;

/// Why a test binary cannot be used; each reads as one line with its file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{file}: cannot read: {error}")]
    Read {
        file: String,
        error: Arc<std::io::Error>,
    },
    #[error("{file}: {error}")]
    Load { file: String, error: Arc<LoadError> },
    #[error("{file}: changed while cachet was running; run again")]
    Changed { file: String },
}

impl ArtifactError {
    fn read(path: &Path, error: std::io::Error) -> Self {
        ArtifactError::Read {
            file: path.display().to_string(),
            error: Arc::new(error),
        }
    }

    fn load(path: &Path, error: LoadError) -> Self {
        ArtifactError::Load {
            file: path.display().to_string(),
            error: Arc::new(error),
        }
    }
}

pub struct Artifact {
    pub path: PathBuf,
    pub digest: ModuleDigest,
    pub framework: Framework,
    /// The module contains its package's absolute path (from
    /// `env!("CARGO_MANIFEST_DIR")`), so the package is mounted there too.
    pub embeds_dir: bool,
    /// A preview 1 core module or a preview 2 component.
    pub wasi: Wasi,
    /// The bytes, kept when the run has no cache (every case will run);
    /// otherwise read again if a case misses.
    bytes: Option<Vec<u8>>,
    /// An earlier run met this module (its facts were cached): it is worth
    /// Cranelift's compile at once (`Runtime::load_again`).
    seen_before: bool,
    compiled: OnceLock<Result<Module, ArtifactError>>,
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
    ) -> Result<Artifact, ArtifactError> {
        let id = file_id(&path);
        if let (Some(cache), Some(id)) = (cache, &id) {
            if let Some(digest) = cache.memo().get(id) {
                let digest = ModuleDigest(digest);
                if let Some(facts) = cache.module_facts(&digest, dir.as_deref()) {
                    return Ok(Artifact {
                        path,
                        digest,
                        framework: Framework::chosen(forced, facts.framework()),
                        embeds_dir: facts.embeds_dir,
                        wasi: facts.wasi(),
                        bytes: None,
                        seen_before: true,
                        compiled: OnceLock::new(),
                    });
                }
            }
        }
        let mut buffer = Buffer::take();
        read_into(&path, &mut buffer).map_err(|e| ArtifactError::read(&path, e))?;
        let bytes = &buffer.0;
        let wasi = check_header(bytes).map_err(|e| ArtifactError::load(&path, e))?;
        let detected = Framework::detect(bytes);
        // Only data the program can read counts: debug info names the
        // package dir too, but the program cannot see it.
        let embeds_dir = dir
            .as_deref()
            .is_some_and(|d| cachet_runtime::data_contains(bytes, d.as_bytes()));
        let digest = ModuleDigest::of(bytes);
        let seen_before = cache.is_some_and(|c| c.module_facts(&digest, dir.as_deref()).is_some());
        if let (Some(cache), Some(id)) = (cache, id) {
            // Remembered only if the file did not change while it was read.
            if file_id(&path) == Some(id) {
                cache.memo().put(id, digest.0);
                let facts = ModuleFacts::new(detected, embeds_dir, wasi);
                cache.save_module_facts(&digest, dir.as_deref(), &facts);
            }
        }
        Ok(Artifact {
            digest,
            path,
            framework: Framework::chosen(forced, detected),
            embeds_dir,
            wasi,
            bytes: cache.is_none().then(|| buffer.0.clone()),
            seen_before,
            compiled: OnceLock::new(),
        })
    }

    /// The compiled module, compiling (or loading from the compiled-module
    /// cache) on first use; concurrent callers wait for one compile.
    pub fn module(&self, runtime: &Runtime) -> Result<Module, ArtifactError> {
        self.compiled
            .get_or_init(|| {
                // Compiled code at hand needs the module's bytes no more.
                if self.bytes.is_none() {
                    if let Some(m) = runtime.load_ready(self.digest) {
                        return Ok(m);
                    }
                }
                let bytes = self.bytes()?;
                let loaded = if self.seen_before {
                    runtime.load_again(&bytes, self.digest)
                } else {
                    runtime.load_digested(&bytes, self.digest)
                };
                loaded.map_err(|e| ArtifactError::load(&self.path, e))
            })
            .clone()
    }

    /// The module's bytes: kept, or read again (and checked).
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, ArtifactError> {
        match &self.bytes {
            Some(b) => Ok(std::borrow::Cow::Borrowed(b)),
            None => self.read_again().map(std::borrow::Cow::Owned),
        }
    }

    /// The bytes of the module, read again to compile it and checked against
    /// its digest: a file replaced since is an error, not another module's
    /// run. (With a cache, identifying reads into a reused buffer and keeps
    /// nothing: a fresh 0.5 MB allocation per module, page faults and all,
    /// cost more than reading again the few modules a run compiles.)
    fn read_again(&self) -> Result<Vec<u8>, ArtifactError> {
        let bytes = std::fs::read(&self.path).map_err(|e| ArtifactError::read(&self.path, e))?;
        if ModuleDigest::of(&bytes) != self.digest {
            return Err(ArtifactError::Changed {
                file: self.path.display().to_string(),
            });
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

/// A read buffer, reused by the modules identified after it (at most
/// [`KEPT_BUFFERS`] kept, none over [`KEPT_BUFFER_MAX`]).
struct Buffer(Vec<u8>);

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const KEPT_BUFFERS: usize = 4;
const KEPT_BUFFER_MAX: usize = 64 << 20;

impl Buffer {
    fn take() -> Buffer {
        let mut kept = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
        Buffer(kept.pop().unwrap_or_default())
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0);
        if bytes.capacity() <= KEPT_BUFFER_MAX {
            bytes.clear();
            let mut kept = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEPT_BUFFERS {
                kept.push(bytes);
            }
        }
    }
}

fn read_into(path: &Path, buffer: &mut Buffer) -> std::io::Result<()> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    buffer.0.clear();
    f.read_to_end(&mut buffer.0)?;
    Ok(())
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| FileId::of(&m))
}
