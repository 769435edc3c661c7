//! Compiled code of the two kinds cachet runs: a WASI preview 1 core module
//! and a WASI preview 2 component. Everything above this file (the compiled-
//! module cache, tiers, the compile child, runs) handles both alike; only
//! compiling, (de)serializing and linking differ, and they differ here.

use wasmtime::component::Component;
use wasmtime::{Engine, InstancePre, Precompiled};
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use crate::abi::Wasi;
use crate::error::{first_line, LoadError};
use crate::state::RunState;

/// Compiled code, not yet linked.
pub(crate) enum Code {
    Core(wasmtime::Module),
    Component(Component),
}

impl Code {
    /// Compiles `bytes`, a module or a component by its header.
    pub fn compile(engine: &Engine, bytes: &[u8], wasi: Wasi) -> wasmtime::Result<Code> {
        Ok(match wasi {
            Wasi::P1 => Code::Core(wasmtime::Module::new(engine, bytes)?),
            Wasi::P2 => Code::Component(Component::new(engine, bytes)?),
        })
    }

    pub fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Core(m) => m.serialize(),
            Code::Component(c) => c.serialize(),
        }
    }

    /// Code serialized by [`Code::serialize`] for `engine`.
    ///
    /// # Safety
    /// As `wasmtime::Module::deserialize`: `body` must be what wasmtime
    /// serialized (the callers check a BLAKE3 over it and its key first).
    pub unsafe fn deserialize(engine: &Engine, body: &[u8]) -> wasmtime::Result<Code> {
        Ok(match Engine::detect_precompiled(body) {
            Some(Precompiled::Component) => Code::Component(Component::deserialize(engine, body)?),
            _ => Code::Core(wasmtime::Module::deserialize(engine, body)?),
        })
    }

    /// [`Code::deserialize`] of the open file at `path`: a module's code
    /// runs from the file's pages; a component is read into memory.
    ///
    /// # Safety
    /// As [`Code::deserialize`], for the whole file (checked by the caller,
    /// which opened `file`; cachet renames cache files into place whole).
    pub unsafe fn deserialize_file(
        engine: &Engine,
        path: &std::path::Path,
        file: std::fs::File,
        body_len: u64,
    ) -> wasmtime::Result<Code> {
        match Engine::detect_precompiled_file(path)? {
            Some(Precompiled::Component) => {
                use std::os::unix::fs::FileExt;
                let mut body = vec![0u8; body_len as usize];
                file.read_exact_at(&mut body, 0)?;
                Ok(Code::Component(Component::deserialize(engine, &body)?))
            }
            _ => Ok(Code::Core(wasmtime::Module::deserialize_open_file(
                engine, file,
            )?)),
        }
    }
}

/// Linked code, instantiated by every run.
#[derive(Clone)]
pub(crate) enum Pre {
    Core(InstancePre<RunState>),
    Component(CommandPre<RunState>),
}

impl Pre {
    pub fn engine(&self) -> &Engine {
        match self {
            Pre::Core(pre) => pre.module().engine(),
            Pre::Component(pre) => pre.engine(),
        }
    }

    pub fn wasi(&self) -> Wasi {
        match self {
            Pre::Core(_) => Wasi::P1,
            Pre::Component(_) => Wasi::P2,
        }
    }
}

/// The linkers of one engine, one per kind of code.
pub(crate) struct Linkers {
    pub core: wasmtime::Linker<RunState>,
    pub component: wasmtime::component::Linker<RunState>,
}

impl Linkers {
    pub fn new(engine: &Engine) -> Result<Self, String> {
        let mut core = wasmtime::Linker::new(engine);
        crate::intercept::add_to_linker(&mut core).map_err(|e| format!("{e:#}"))?;
        let mut component = wasmtime::component::Linker::new(engine);
        crate::preview2::add_to_linker(&mut component).map_err(|e| format!("{e:#}"))?;
        Ok(Linkers { core, component })
    }

    /// Resolves `code`'s imports once, for every run of it.
    pub fn link(&self, code: &Code) -> Result<Pre, LoadError> {
        let link = |e: wasmtime::Error| LoadError::Link(first_line(&e));
        Ok(match code {
            Code::Core(m) => Pre::Core(self.core.instantiate_pre(m).map_err(link)?),
            Code::Component(c) => {
                let pre = self.component.instantiate_pre(c).map_err(link)?;
                Pre::Component(
                    CommandPre::new(pre).map_err(|e| LoadError::NotCommand(first_line(&e)))?,
                )
            }
        })
    }
}
