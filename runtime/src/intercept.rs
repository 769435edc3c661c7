//! Interception at the linker (DESIGN.md, "Interception").
//!
//! The stock WASI p1 functions are added first; then each recorded function is
//! redefined (`allow_shadowing`) by a wrapper that takes the guest memory from
//! the `Caller`, calls wasmtime-wasi's generated ABI function
//! `p1::wasi_snapshot_preview1::<name>` with that memory, and afterwards hands
//! the arguments and results to the [`Recorder`]. Calling the stock `Func` from
//! a host function instead does not work: a host-to-host call has no caller
//! instance and fails with "missing required memory export".
//!
//! The generated module is not a stable API (hence the `=` pins in Cargo.toml);
//! `runtime/tests/` pins every wrapper's behaviour with a fixture, so an upgrade
//! that changes it fails loudly.

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::{self, wasi_snapshot_preview1 as abi};
use wasmtime_wasi::runtime::in_tokio;
use wiggle::GuestMemory;

use crate::guest_abi;
use crate::log::{DeniedOp, Fact, ReadOp};
use crate::recorder::{guest_str, guest_u32, OpenCall};
use crate::run::RunState;

const WASI: &str = "wasi_snapshot_preview1";

fn memory_and_state<'a>(
    caller: &'a mut Caller<'_, RunState>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut RunState)> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m.data_and_store_mut(caller)),
        _ => Err(wasmtime::Error::msg("missing required memory export")),
    }
}

/// Defines `$name` as: run the stock ABI function (async ones through
/// `in_tokio`), then `$after` with the guest memory, state and errno in scope.
macro_rules! wrap {
    ($linker:ident, $kind:ident $name:ident ($($arg:ident: $ty:ty),*), |$mem:ident, $st:ident, $errno:ident| $after:block) => {
        $linker.func_wrap(WASI, stringify!($name), |mut caller: Caller<'_, RunState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
            let ($mem, $st) = memory_and_state(&mut caller)?;
            let $errno = wrap!(@call $kind $name, $st, $mem, $($arg),*);
            $after
            Ok($errno)
        })?;
    };
    (@call async $name:ident, $st:ident, $mem:ident, $($arg:ident),*) => {
        in_tokio(abi::$name(&mut $st.wasi, &mut GuestMemory::Unshared($mem), $($arg),*))?
    };
    (@call sync $name:ident, $st:ident, $mem:ident, $($arg:ident),*) => {
        abi::$name(&mut $st.wasi, &mut GuestMemory::Unshared($mem), $($arg),*)?
    };
}

/// Adds WASI p1 with every recorded function wrapped, plus `cachet.getenv`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    p1::add_to_linker_sync(linker, |s: &mut RunState| &mut s.wasi)?;
    linker.allow_shadowing(true);

    wrap!(linker, sync environ_sizes_get(count: i32, size: i32), |_mem, st, errno| {
        st.recorder.environ();
    });
    wrap!(linker, sync environ_get(environ: i32, buf: i32), |_mem, st, errno| {
        st.recorder.environ();
    });
    wrap!(linker, async path_open(fd: i32, lookup: i32, path: i32, path_len: i32, oflags: i32, rights: i64, inheriting: i64, fdflags: i32, fd_out: i32), |mem, st, errno| {
        let _ = inheriting;
        let opened = if errno == 0 { guest_u32(mem, fd_out) } else { None };
        let call = OpenCall { lookup, oflags, rights, fdflags };
        st.recorder.open(fd, call, guest_str(mem, path, path_len), opened);
    });
    wrap!(linker, async path_filestat_get(fd: i32, lookup: i32, path: i32, path_len: i32, buf: i32), |mem, st, errno| {
        let path = guest_str(mem, path, path_len).map(str::to_owned);
        st.recorder.stat(fd, lookup, path.as_deref());
        if errno == 0 {
            st.recorder.virtualize_filestat(mem, buf, fd, path.as_deref());
        }
    });
    wrap!(linker, async fd_filestat_get(fd: i32, buf: i32), |mem, st, errno| {
        st.recorder.fd_stat(fd);
        if errno == 0 {
            st.recorder.virtualize_filestat(mem, buf, fd, None);
        }
    });
    wrap!(linker, async fd_readdir(fd: i32, buf: i32, buf_len: i32, cookie: i64, used: i32), |mem, st, errno| {
        let _ = (buf_len, cookie);
        st.recorder.fd_readdir(fd);
        if errno == 0 {
            if let Some(used) = guest_u32(mem, used) {
                st.recorder.virtualize_dirents(mem, buf, used as usize, fd);
            }
        }
    });
    wrap!(linker, async path_readlink(fd: i32, path: i32, path_len: i32, buf: i32, buf_len: i32, used: i32), |mem, st, errno| {
        let _ = (buf, buf_len, used);
        st.recorder.read(ReadOp::Readlink, DeniedOp::Readlink, fd, guest_str(mem, path, path_len));
    });
    wrap!(linker, async fd_close(fd: i32), |_mem, st, errno| {
        if errno == 0 {
            st.recorder.closed(fd);
        }
    });
    wrap!(linker, async fd_renumber(from: i32, to: i32), |_mem, st, errno| {
        if errno == 0 {
            st.recorder.renumbered(from, to);
        }
    });

    wrap!(linker, async path_create_directory(fd: i32, path: i32, path_len: i32), |mem, st, errno| {
        st.recorder.mutate(DeniedOp::Mkdir, fd, guest_str(mem, path, path_len));
    });
    wrap!(linker, async path_remove_directory(fd: i32, path: i32, path_len: i32), |mem, st, errno| {
        st.recorder.mutate(DeniedOp::Rmdir, fd, guest_str(mem, path, path_len));
    });
    wrap!(linker, async path_unlink_file(fd: i32, path: i32, path_len: i32), |mem, st, errno| {
        st.recorder.mutate(DeniedOp::Unlink, fd, guest_str(mem, path, path_len));
    });
    wrap!(linker, async path_rename(fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32), |mem, st, errno| {
        st.recorder.mutate(DeniedOp::Rename, fd, guest_str(mem, old, old_len));
        st.recorder.mutate(DeniedOp::Rename, new_fd, guest_str(mem, new, new_len));
    });
    wrap!(linker, async path_symlink(old: i32, old_len: i32, fd: i32, new: i32, new_len: i32), |mem, st, errno| {
        let _ = (old, old_len);
        st.recorder.mutate(DeniedOp::Symlink, fd, guest_str(mem, new, new_len));
    });
    wrap!(linker, async path_link(fd: i32, lookup: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32), |mem, st, errno| {
        let _ = (fd, lookup, old, old_len);
        st.recorder.mutate(DeniedOp::Link, new_fd, guest_str(mem, new, new_len));
    });
    wrap!(linker, async path_filestat_set_times(fd: i32, lookup: i32, path: i32, path_len: i32, atim: i64, mtim: i64, flags: i32), |mem, st, errno| {
        let _ = (lookup, atim, mtim, flags);
        st.recorder.mutate(DeniedOp::SetTimes, fd, guest_str(mem, path, path_len));
    });

    wrap!(linker, sync clock_time_get(id: i32, precision: i64, out: i32), |_mem, st, errno| {
        st.recorder.uses(Fact::Clock);
    });
    wrap!(linker, sync clock_res_get(id: i32, out: i32), |_mem, st, errno| {
        st.recorder.uses(Fact::Clock);
    });
    wrap!(linker, async poll_oneoff(subs: i32, events: i32, n: i32, out: i32), |_mem, st, errno| {
        st.recorder.uses(Fact::Clock);
    });
    wrap!(linker, sync random_get(buf: i32, len: i32), |_mem, st, errno| {
        st.recorder.uses(Fact::Random);
    });

    linker.func_wrap(
        guest_abi::MODULE,
        guest_abi::GETENV,
        |mut caller: Caller<'_, RunState>,
         name: i32,
         name_len: i32,
         buf: i32,
         buf_len: i32|
         -> wasmtime::Result<i32> {
            let (mem, st) = memory_and_state(&mut caller)?;
            let Some(name) = guest_str(mem, name, name_len).map(str::to_owned) else {
                return Ok(guest_abi::GETENV_FAULT);
            };
            let Some(value) = st.recorder.getenv(&name) else {
                return Ok(guest_abi::GETENV_UNSET);
            };
            let start = buf as u32 as usize;
            let n = value.len().min(buf_len as u32 as usize);
            let Some(dest) = start.checked_add(n).and_then(|end| mem.get_mut(start..end)) else {
                return Ok(guest_abi::GETENV_FAULT);
            };
            dest.copy_from_slice(&value.as_bytes()[..n]);
            Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
        },
    )?;
    Ok(())
}
