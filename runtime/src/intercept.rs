//! Interception at the linker (DESIGN.md, "Interception").
//!
//! The stock WASI p1 functions are added first; then each recorded or
//! limited function is redefined (`allow_shadowing`) by a wrapper that takes
//! the guest memory from the `Caller`, calls wasmtime-wasi's generated ABI
//! function `p1::wasi_snapshot_preview1::<name>` with that memory, and hands
//! the arguments and results to the [`Recorder`] and the [`Quota`]. Calling
//! the stock `Func` from a host function instead does not work: a host-to-host
//! call has no caller instance and fails with "missing required memory export".
//!
//! Every wrapper first sets the per-call host allocation budget ("hostcall
//! fuel") as wasmtime's own glue does: it starts at 0 and only the glue of an
//! unwrapped call refills it, so a wrapped `path_*` call made before any
//! unwrapped one failed with NOMEM, and ~128 MiB of path bytes in wrapped
//! calls exhausted it for good (issue 7).
//!
//! `poll_oneoff`, and under `--hermetic` the clocks and `random_get`, are
//! cachet's own (`clock.rs`, `random.rs`). Stock helpers called on host
//! memory (`fd_filestat_get` into a local buffer) read real metadata for the
//! scratch quota without touching the guest's memory.
//!
//! The generated module is not a stable API (hence the `=` pins in Cargo.toml);
//! `runtime/tests/` pins every wrapper's behaviour with a fixture, so an upgrade
//! that changes it fails loudly.

use wasmtime::{AsContextMut, Caller, Extern, Linker, Trap};
use wasmtime_wasi::p1::{
    self, wasi_snapshot_preview1 as abi, wasi_snapshot_preview1::WasiSnapshotPreview1,
};
use wasmtime_wasi::runtime::in_tokio;
use wiggle::GuestMemory;

use crate::clock::{self, Plan, Stop, Subscription, EVENT_SIZE, SUBSCRIPTION_SIZE};
use crate::devices::{self, Device, DEVICES};
use crate::dirents;
use crate::guest_abi;
use crate::log::{DeniedOp, Fact, ReadOp};
use crate::quota::{RealStat, INODE_CHARGE};
use crate::recorder::{guest_str, guest_u32, put_guest_u32, OpenCall, Precondition};
use crate::state::RunState;

const WASI: &str = "wasi_snapshot_preview1";

/// WASI errnos the wrappers answer with themselves.
mod errno {
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const MFILE: i32 = 33;
    pub const NOMEM: i32 = 48;
    pub const NOSPC: i32 = 51;
    pub const PERM: i32 = 63;
    pub const XDEV: i32 = 75;
}

/// A WASI call from a module that exports no memory.
#[derive(Debug, thiserror::Error)]
#[error("the module exports no memory, which WASI calls need; build it as a WASI command")]
pub(crate) struct NoMemoryExport;

/// Why a guest stopped from the host side (deadline, Ctrl-C), as the error
/// its call returns; the store's data says which.
pub(crate) fn stopped(st: &mut RunState, stop: Stop) -> wasmtime::Error {
    st.stop = Some(stop);
    wasmtime::Error::new(Trap::Interrupt)
}

/// The guest memory and state of a call, with its hostcall fuel set.
fn enter<'a>(
    caller: &'a mut Caller<'_, RunState>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut RunState)> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => {
            let (mem, st) = m.data_and_store_mut(caller);
            st.fuel = fuel;
            st.wasi.set_hostcall_fuel(fuel);
            Ok((mem, st))
        }
        _ => Err(wasmtime::Error::new(NoMemoryExport)),
    }
}

/// Calls a stock ABI function with the guest's memory (or any byte slice).
macro_rules! stock {
    (async $name:ident($st:expr, $mem:expr $(, $arg:expr)*)) => {{
        let st: &mut RunState = $st;
        st.wasi.set_hostcall_fuel(st.fuel);
        in_tokio(abi::$name(&mut st.wasi, &mut GuestMemory::Unshared($mem) $(, $arg)*))?
    }};
    (sync $name:ident($st:expr, $mem:expr $(, $arg:expr)*)) => {{
        let st: &mut RunState = $st;
        st.wasi.set_hostcall_fuel(st.fuel);
        abi::$name(&mut st.wasi, &mut GuestMemory::Unshared($mem) $(, $arg)*)?
    }};
}

/// Defines `$name` as `$body`, which returns the call's errno.
macro_rules! define {
    ($linker:ident, $name:ident ($($arg:ident: $ty:ty),*), |$mem:ident, $st:ident| $body:block) => {
        $linker.func_wrap(WASI, stringify!($name), |mut caller: Caller<'_, RunState>, $($arg: $ty),*| -> wasmtime::Result<i32> {
            let ($mem, $st) = enter(&mut caller)?;
            $body
        })?;
    };
}

/// A write to a device: every byte of the iovecs taken, none kept.
fn discard(mem: &mut [u8], iovs: i32, iovs_len: i32, written: i32) -> i32 {
    let mut total = 0u32;
    for i in 0..iovs_len.max(0) as u32 {
        let at = (iovs as u32).wrapping_add(i * 8) as i32;
        match guest_u32(mem, at.wrapping_add(4)) {
            Some(len) => total = total.saturating_add(len),
            None => return errno::FAULT,
        }
    }
    match put_guest_u32(mem, written, total) {
        Some(()) => 0,
        None => errno::FAULT,
    }
}

/// A read of `zero` or `random` (`devices.rs`): every iovec filled.
fn fill(
    mem: &mut [u8],
    st: &mut RunState,
    device: Device,
    iovs: i32,
    iovs_len: i32,
    read: i32,
) -> wasmtime::Result<i32> {
    if device == Device::Random {
        st.recorder.uses(Fact::Random);
    }
    let mut total = 0u32;
    for i in 0..iovs_len.max(0) as u32 {
        let at = (iovs as u32).wrapping_add(i * 8) as i32;
        let (Some(buf), Some(len)) = (guest_u32(mem, at), guest_u32(mem, at.wrapping_add(4)))
        else {
            return Ok(errno::FAULT);
        };
        let start = buf as usize;
        let Some(dest) = start
            .checked_add(len as usize)
            .and_then(|end| mem.get_mut(start..end))
        else {
            return Ok(errno::FAULT);
        };
        if device == Device::Zero {
            dest.fill(0);
        } else if let Some(rng) = &mut st.random {
            rng.fill(dest);
        } else {
            let e = stock!(sync random_get(st, mem, buf as i32, len as i32));
            if e != 0 {
                return Ok(e);
            }
        }
        total = total.saturating_add(len);
    }
    Ok(match put_guest_u32(mem, read, total) {
        Some(()) => 0,
        None => errno::FAULT,
    })
}

/// The largest listing read into host memory (about a million entries);
/// a larger one fails with `ENOMEM`.
const MAX_LISTING: usize = 64 << 20;

/// The whole listing of directory `fd` from the stock `fd_readdir`, read
/// into host memory in the host's order; `Err` is the stock call's errno.
fn stock_listing(
    st: &mut RunState,
    fd: i32,
) -> wasmtime::Result<Result<Vec<dirents::Dirent>, i32>> {
    let mut host = vec![0u8; 64 << 10];
    loop {
        // The answer in the front, the count of bytes used in the last 4.
        let cap = host.len() - 4;
        let e = stock!(async fd_readdir(st, &mut host, fd, 0, cap as i32, 0, cap as i32));
        if e != 0 {
            return Ok(Err(e));
        }
        let used = u32::from_le_bytes(host[cap..].try_into().expect("4 bytes")) as usize;
        if used < cap {
            return Ok(dirents::parse(&host[..used]).ok_or(errno::NOMEM));
        }
        if host.len() >= MAX_LISTING {
            return Ok(Err(errno::NOMEM));
        }
        host = vec![0u8; host.len() * 4];
    }
}

/// The stock `filestat` of `fd`, read into host memory: real metadata.
fn fd_real_stat(st: &mut RunState, fd: i32) -> wasmtime::Result<Option<RealStat>> {
    let mut buf = [0u8; 64];
    let errno = stock!(async fd_filestat_get(st, &mut buf, fd, 0));
    Ok((errno == 0).then(|| RealStat::parse(&buf)).flatten())
}

/// The stock `filestat` of `path` (not following a final symlink) under `fd`.
fn path_real_stat(st: &mut RunState, fd: i32, path: &str) -> wasmtime::Result<Option<RealStat>> {
    let mut buf = vec![0u8; 64 + path.len()];
    buf[64..].copy_from_slice(path.as_bytes());
    let len = i32::try_from(path.len()).unwrap_or(i32::MAX);
    let errno = stock!(async path_filestat_get(st, &mut buf, fd, 0, 64, len, 0));
    Ok((errno == 0).then(|| RealStat::parse(&buf)).flatten())
}

/// Whether `fd` + `path` lies in the run's scratch dir.
fn in_scratch(st: &RunState, fd: i32, path: Option<&str>) -> bool {
    st.recorder
        .mount_of(fd, path)
        .is_some_and(|m| st.recorder.is_scratch(m))
}

/// The length of the first non-empty iovec: what the stock `fd_write` and
/// `fd_pwrite` write in one call.
fn first_iov_len(mem: &[u8], iovs: i32, count: i32) -> u64 {
    for i in 0..count.max(0) as u32 {
        let Some(at) = (iovs as u32).checked_add(i * 8) else {
            return 0;
        };
        match guest_u32(mem, at.wrapping_add(4) as i32) {
            Some(0) => continue,
            Some(len) => return u64::from(len),
            None => return 0,
        }
    }
    0
}

/// Refuses a write to a scratch file that would grow scratch use past the
/// quota: `Some(NOSPC)`, as a full disk answers.
fn check_growth(
    st: &mut RunState,
    fd: i32,
    end: impl FnOnce(&mut RunState) -> wasmtime::Result<u64>,
) -> wasmtime::Result<Option<i32>> {
    let Some(inode) = st.quota.scratch_inode(fd as u32) else {
        return Ok(None);
    };
    let size = st.quota.size_of(inode);
    let end = end(st)?;
    let grow = end.saturating_sub(size);
    Ok((grow > 0 && !st.quota.fits(grow)).then_some(errno::NOSPC))
}

/// After a call that may have grown a scratch file: charge its new size.
fn charge_fd(st: &mut RunState, fd: i32) -> wasmtime::Result<()> {
    if st.quota.scratch_inode(fd as u32).is_some() {
        if let Some(stat) = fd_real_stat(st, fd)? {
            st.quota.update(stat);
        }
    }
    Ok(())
}

/// The current offset of `fd`, or its size when it appends.
fn write_position(st: &mut RunState, fd: i32) -> wasmtime::Result<u64> {
    if st.appending.contains(&(fd as u32)) {
        let inode = st.quota.scratch_inode(fd as u32);
        return Ok(inode.map_or(0, |i| st.quota.size_of(i)));
    }
    let mut buf = [0u8; 8];
    let errno = stock!(sync fd_tell(st, &mut buf, fd, 0));
    Ok(if errno == 0 {
        u64::from_le_bytes(buf)
    } else {
        0
    })
}

/// `path_unlink_file` and `path_remove_directory`: logged, and a removed
/// scratch entry's charge released (see `quota.rs`).
fn removal(
    mem: &mut [u8],
    st: &mut RunState,
    fd: i32,
    path: i32,
    path_len: i32,
    (op, pre): (DeniedOp, Precondition),
    call: impl FnOnce(&mut RunState, &mut [u8]) -> wasmtime::Result<i32>,
) -> wasmtime::Result<i32> {
    let name = guest_str(mem, path, path_len).map(str::to_owned);
    st.recorder.before_mutation(op, fd, name.as_deref(), pre);
    let before = match (&name, in_scratch(st, fd, name.as_deref())) {
        (Some(n), true) => path_real_stat(st, fd, n)?,
        _ => None,
    };
    let e = call(st, mem)?;
    if e == 0 {
        st.recorder.mutated(fd, name.as_deref());
    }
    if let (0, Some(stat)) = (e, before) {
        st.quota.unlinked(stat);
    }
    Ok(e)
}

/// Adds WASI p1 with every recorded function wrapped, plus `cachet.getenv`.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    p1::add_to_linker_sync(linker, |s: &mut RunState| &mut s.wasi)?;
    linker.allow_shadowing(true);

    define!(linker, environ_sizes_get(count: i32, size: i32), |mem, st| {
        st.recorder.environ();
        Ok(stock!(sync environ_sizes_get(st, mem, count, size)))
    });
    define!(linker, environ_get(environ: i32, buf: i32), |mem, st| {
        st.recorder.environ();
        Ok(stock!(sync environ_get(st, mem, environ, buf)))
    });

    define!(linker, path_open(fd: i32, lookup: i32, path: i32, path_len: i32, oflags: i32, rights: i64, inheriting: i64, fdflags: i32, fd_out: i32), |mem, st| {
        let name = guest_str(mem, path, path_len).map(str::to_owned);
        if !st.quota.may_open() {
            return Ok(errno::MFILE);
        }
        // A device opens read-only underneath, whatever was asked; the fd
        // then reads and writes as the device (`devices.rs`).
        let device = st
            .device_mount
            .and_then(|m| st.recorder.path_on(fd, name.as_deref(), m))
            .and_then(|rel| DEVICES.iter().find(|(file, _)| *file == rel).map(|(_, d)| *d));
        let (oflags, rights, fdflags) = if device.is_some() {
            (oflags & !devices::OFLAGS_DROPPED, rights & !devices::RIGHTS_DROPPED, 0)
        } else {
            (oflags, rights, fdflags)
        };
        let call = OpenCall { lookup, oflags, rights };
        if let Err(e) = st.recorder.before_open(fd, call, name.as_deref()) {
            return Ok(i32::from(e));
        }
        let scratch = in_scratch(st, fd, name.as_deref());
        const CREAT: i32 = 1;
        if scratch && oflags & CREAT != 0 && !st.quota.fits(INODE_CHARGE) {
            return Ok(errno::NOSPC);
        }
        let e = stock!(async path_open(st, mem, fd, lookup, path, path_len, oflags, rights, inheriting, fdflags, fd_out));
        let opened = if e == 0 { guest_u32(mem, fd_out) } else { None };
        st.recorder.after_open(fd, call, name.as_deref(), opened);
        if let Some(new_fd) = opened {
            match device {
                Some(d) => st.devices.insert(new_fd, d),
                None => st.devices.remove(&new_fd),
            };
            let stat = if scratch { fd_real_stat(st, new_fd as i32)? } else { None };
            st.quota.opened(new_fd, stat);
            const APPEND: i32 = 1;
            if fdflags & APPEND != 0 {
                st.appending.insert(new_fd);
            } else {
                st.appending.remove(&new_fd);
            }
        }
        Ok(e)
    });
    // Reads: observed before the stock call, so that a change after the
    // observation shows at the end of the run (see `Recorder::finish`).
    define!(linker, path_filestat_get(fd: i32, lookup: i32, path: i32, path_len: i32, buf: i32), |mem, st| {
        let name = guest_str(mem, path, path_len).map(str::to_owned);
        st.recorder.stat(fd, lookup, name.as_deref());
        let e = stock!(async path_filestat_get(st, mem, fd, lookup, path, path_len, buf));
        if e == 0 {
            st.recorder.virtualize_filestat(mem, buf, fd, name.as_deref());
        }
        Ok(e)
    });
    define!(linker, fd_filestat_get(fd: i32, buf: i32), |mem, st| {
        st.recorder.fd_stat(fd);
        let e = stock!(async fd_filestat_get(st, mem, fd, buf));
        if e == 0 {
            st.recorder.virtualize_filestat(mem, buf, fd, None);
        }
        Ok(e)
    });
    define!(linker, fd_readdir(fd: i32, buf: i32, buf_len: i32, cookie: i64, used: i32), |mem, st| {
        st.recorder.fd_readdir(fd);
        let reading_on = matches!(&st.listing, Some((f, _)) if *f == fd) && cookie != 0;
        if !reading_on {
            let mut entries = match stock_listing(st, fd)? {
                Ok(entries) => entries,
                Err(errno) => return Ok(errno),
            };
            dirents::sort(&mut entries);
            st.listing = Some((fd, entries));
        }
        let entries = &st.listing.as_ref().expect("just read").1;
        let (start, len) = (buf as u32 as usize, buf_len as u32 as usize);
        let Some(out) = mem.get_mut(start..start.saturating_add(len)) else {
            return Ok(errno::FAULT);
        };
        let n = dirents::encode(entries, cookie as u64, out);
        if put_guest_u32(mem, used, n as u32).is_none() {
            return Ok(errno::FAULT);
        }
        st.recorder.virtualize_dirents(mem, buf, n, fd);
        Ok(0)
    });
    define!(linker, path_readlink(fd: i32, path: i32, path_len: i32, buf: i32, buf_len: i32, used: i32), |mem, st| {
        st.recorder.read(ReadOp::Readlink, DeniedOp::Readlink, fd, guest_str(mem, path, path_len));
        Ok(stock!(async path_readlink(st, mem, fd, path, path_len, buf, buf_len, used)))
    });
    define!(linker, fd_close(fd: i32), |mem, st| {
        let e = stock!(async fd_close(st, mem, fd));
        if e == 0 {
            st.listing = None;
            st.devices.remove(&(fd as u32));
            st.recorder.closed(fd);
            st.quota.closed(fd as u32);
            st.appending.remove(&(fd as u32));
        }
        Ok(e)
    });
    define!(linker, fd_renumber(from: i32, to: i32), |mem, st| {
        let e = stock!(async fd_renumber(st, mem, from, to));
        if e == 0 {
            st.listing = None;
            match st.devices.remove(&(from as u32)) {
                Some(d) => st.devices.insert(to as u32, d),
                None => st.devices.remove(&(to as u32)),
            };
            st.recorder.renumbered(from, to);
            st.quota.renumbered(from as u32, to as u32);
            if st.appending.remove(&(from as u32)) {
                st.appending.insert(to as u32);
            } else {
                st.appending.remove(&(to as u32));
            }
        }
        Ok(e)
    });

    // Writes: checked against the scratch quota before, charged after.
    define!(linker, fd_read(fd: i32, iovs: i32, iovs_len: i32, read: i32), |mem, st| {
        match st.devices.get(&(fd as u32)) {
            Some(&d) if d != Device::Null => fill(mem, st, d, iovs, iovs_len, read),
            _ => Ok(stock!(async fd_read(st, mem, fd, iovs, iovs_len, read))),
        }
    });
    define!(linker, fd_pread(fd: i32, iovs: i32, iovs_len: i32, offset: i64, read: i32), |mem, st| {
        match st.devices.get(&(fd as u32)) {
            Some(&d) if d != Device::Null => fill(mem, st, d, iovs, iovs_len, read),
            _ => Ok(stock!(async fd_pread(st, mem, fd, iovs, iovs_len, offset, read))),
        }
    });
    define!(linker, fd_write(fd: i32, iovs: i32, iovs_len: i32, written: i32), |mem, st| {
        if st.devices.contains_key(&(fd as u32)) {
            return Ok(discard(mem, iovs, iovs_len, written));
        }
        if st.quota.scratch_inode(fd as u32).is_some() {
            let len = first_iov_len(mem, iovs, iovs_len);
            if let Some(e) = check_growth(st, fd, |st| Ok(write_position(st, fd)?.saturating_add(len)))? {
                return Ok(e);
            }
        }
        let e = stock!(async fd_write(st, mem, fd, iovs, iovs_len, written));
        charge_fd(st, fd)?;
        Ok(e)
    });
    define!(linker, fd_pwrite(fd: i32, iovs: i32, iovs_len: i32, offset: i64, written: i32), |mem, st| {
        if st.devices.contains_key(&(fd as u32)) {
            return Ok(discard(mem, iovs, iovs_len, written));
        }
        let end = (offset as u64).saturating_add(first_iov_len(mem, iovs, iovs_len));
        if let Some(e) = check_growth(st, fd, |_| Ok(end))? {
            return Ok(e);
        }
        let e = stock!(async fd_pwrite(st, mem, fd, iovs, iovs_len, offset, written));
        charge_fd(st, fd)?;
        Ok(e)
    });
    define!(linker, fd_allocate(fd: i32, offset: i64, len: i64), |mem, st| {
        let end = (offset as u64).saturating_add(len as u64);
        if let Some(e) = check_growth(st, fd, |_| Ok(end))? {
            return Ok(e);
        }
        let e = stock!(sync fd_allocate(st, mem, fd, offset, len));
        charge_fd(st, fd)?;
        Ok(e)
    });
    define!(linker, fd_filestat_set_size(fd: i32, size: i64), |mem, st| {
        if let Some(e) = check_growth(st, fd, |_| Ok(size as u64))? {
            return Ok(e);
        }
        let e = stock!(async fd_filestat_set_size(st, mem, fd, size));
        charge_fd(st, fd)?;
        Ok(e)
    });

    // Path operations that change the file system.
    define!(linker, path_create_directory(fd: i32, path: i32, path_len: i32), |mem, st| {
        let name = guest_str(mem, path, path_len).map(str::to_owned);
        st.recorder.before_mutation(DeniedOp::Mkdir, fd, name.as_deref(), Precondition::Presence);
        let scratch = in_scratch(st, fd, name.as_deref());
        if scratch && !st.quota.fits(INODE_CHARGE) {
            return Ok(errno::NOSPC);
        }
        let e = stock!(async path_create_directory(st, mem, fd, path, path_len));
        if e == 0 {
            st.recorder.mutated(fd, name.as_deref());
        }
        if let (0, true, Some(name)) = (e, scratch, &name) {
            if let Some(stat) = path_real_stat(st, fd, name)? {
                st.quota.update(stat);
            }
        }
        Ok(e)
    });
    define!(linker, path_remove_directory(fd: i32, path: i32, path_len: i32), |mem, st| {
        removal(mem, st, fd, path, path_len, (DeniedOp::Rmdir, Precondition::Empty), |st, mem| {
            Ok(stock!(async path_remove_directory(st, mem, fd, path, path_len)))
        })
    });
    define!(linker, path_unlink_file(fd: i32, path: i32, path_len: i32), |mem, st| {
        removal(mem, st, fd, path, path_len, (DeniedOp::Unlink, Precondition::Presence), |st, mem| {
            Ok(stock!(async path_unlink_file(st, mem, fd, path, path_len)))
        })
    });
    define!(linker, path_rename(fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32), |mem, st| {
        let old_name = guest_str(mem, old, old_len).map(str::to_owned);
        let new_name = guest_str(mem, new, new_len).map(str::to_owned);
        let (from, to) = (st.recorder.mount_of(fd, old_name.as_deref()), st.recorder.mount_of(new_fd, new_name.as_deref()));
        if from.is_some() && to.is_some() && from != to {
            // Across mounts (scratch and a :rw mount share a file system):
            // refused as across devices; programs fall back to copying.
            return Ok(errno::XDEV);
        }
        st.recorder.before_mutation(DeniedOp::Rename, fd, old_name.as_deref(), Precondition::Content { follow: false });
        st.recorder.before_mutation(DeniedOp::Rename, new_fd, new_name.as_deref(), Precondition::Presence);
        let replaced = match (&new_name, in_scratch(st, new_fd, new_name.as_deref())) {
            (Some(n), true) => path_real_stat(st, new_fd, n)?,
            _ => None,
        };
        let moved = match (&old_name, replaced.is_some()) {
            (Some(n), true) => path_real_stat(st, fd, n)?,
            _ => None,
        };
        let e = stock!(async path_rename(st, mem, fd, old, old_len, new_fd, new, new_len));
        if e == 0 {
            st.recorder.mutated(fd, old_name.as_deref());
            st.recorder.mutated(new_fd, new_name.as_deref());
        }
        if let (0, Some(stat)) = (e, replaced) {
            if moved.map(|m| m.inode) != Some(stat.inode) {
                st.quota.unlinked(stat);
            }
        }
        Ok(e)
    });
    define!(linker, path_symlink(old: i32, old_len: i32, fd: i32, new: i32, new_len: i32), |mem, st| {
        let link = guest_str(mem, new, new_len).map(str::to_owned);
        let target = guest_str(mem, old, old_len).map(str::to_owned);
        st.recorder.before_mutation(DeniedOp::Symlink, fd, link.as_deref(), Precondition::Presence);
        if st.recorder.symlink_escapes(fd, link.as_deref(), target.as_deref()) {
            return Ok(errno::PERM);
        }
        let scratch = in_scratch(st, fd, link.as_deref());
        if scratch && !st.quota.fits(INODE_CHARGE) {
            return Ok(errno::NOSPC);
        }
        let e = stock!(async path_symlink(st, mem, old, old_len, fd, new, new_len));
        if e == 0 {
            st.recorder.mutated(fd, link.as_deref());
        }
        if let (0, true, Some(link)) = (e, scratch, &link) {
            if let Some(stat) = path_real_stat(st, fd, link)? {
                st.quota.update(stat);
            }
        }
        Ok(e)
    });
    define!(linker, path_link(fd: i32, lookup: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32), |mem, st| {
        let old_name = guest_str(mem, old, old_len).map(str::to_owned);
        let new_name = guest_str(mem, new, new_len).map(str::to_owned);
        let (from, to) = (st.recorder.mount_of(fd, old_name.as_deref()), st.recorder.mount_of(new_fd, new_name.as_deref()));
        if from.is_some() && to.is_some() && from != to {
            // A hard link from a mount into scratch would let the guest read
            // a mounted file under a name the log never sees (issue 8).
            return Ok(errno::XDEV);
        }
        const FOLLOW: i32 = 1;
        st.recorder.before_mutation(DeniedOp::Link, fd, old_name.as_deref(), Precondition::Content { follow: lookup & FOLLOW != 0 });
        st.recorder.before_mutation(DeniedOp::Link, new_fd, new_name.as_deref(), Precondition::Presence);
        let e = stock!(async path_link(st, mem, fd, lookup, old, old_len, new_fd, new, new_len));
        if e == 0 {
            // Writes through the new name change the old one too.
            st.recorder.mutated(fd, old_name.as_deref());
            st.recorder.mutated(new_fd, new_name.as_deref());
        }
        Ok(e)
    });
    define!(linker, path_filestat_set_times(fd: i32, lookup: i32, path: i32, path_len: i32, atim: i64, mtim: i64, flags: i32), |mem, st| {
        st.recorder.before_mutation(DeniedOp::SetTimes, fd, guest_str(mem, path, path_len), Precondition::Presence);
        Ok(stock!(async path_filestat_set_times(st, mem, fd, lookup, path, path_len, atim, mtim, flags)))
    });

    // Time and randomness.
    define!(linker, clock_time_get(id: i32, precision: i64, out: i32), |mem, st| {
        st.recorder.uses(Fact::Clock);
        if st.clock.is_virtual() {
            let Some(now) = st.clock.read_virtual(id as u32) else {
                return Ok(errno::INVAL);
            };
            return Ok(put(mem, out, &now.to_le_bytes()));
        }
        Ok(stock!(sync clock_time_get(st, mem, id, precision, out)))
    });
    define!(linker, clock_res_get(id: i32, out: i32), |mem, st| {
        st.recorder.uses(Fact::Clock);
        if st.clock.is_virtual() {
            if id as u32 > 3 {
                return Ok(errno::INVAL);
            }
            return Ok(put(mem, out, &clock::HERMETIC_TICK_NS.to_le_bytes()));
        }
        Ok(stock!(sync clock_res_get(st, mem, id, out)))
    });
    define!(linker, poll_oneoff(subs: i32, events: i32, n: i32, out: i32), |mem, st| {
        poll_oneoff(mem, st, subs, events, n, out)
    });
    define!(linker, random_get(buf: i32, len: i32), |mem, st| {
        st.recorder.uses(Fact::Random);
        if let Some(rng) = &mut st.random {
            let start = buf as u32 as usize;
            let Some(dest) = start.checked_add(len as u32 as usize).and_then(|end| mem.get_mut(start..end)) else {
                return Ok(errno::FAULT);
            };
            rng.fill(dest);
            return Ok(0);
        }
        Ok(stock!(sync random_get(st, mem, buf, len)))
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
            let (mem, st) = enter(&mut caller)?;
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

/// Writes `bytes` at `ptr`: errno 0, or FAULT when out of bounds.
fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> i32 {
    let start = ptr as u32 as usize;
    match start
        .checked_add(bytes.len())
        .and_then(|end| mem.get_mut(start..end))
    {
        Some(dest) => {
            dest.copy_from_slice(bytes);
            0
        }
        None => errno::FAULT,
    }
}

/// cachet's `poll_oneoff` (see `clock.rs`).
fn poll_oneoff(
    mem: &mut [u8],
    st: &mut RunState,
    subs: i32,
    events: i32,
    n: i32,
    out: i32,
) -> wasmtime::Result<i32> {
    let n = n as u32 as usize;
    if n == 0 {
        return Ok(errno::INVAL);
    }
    let range = |ptr: i32, size: usize| {
        let start = ptr as u32 as usize;
        let end = n.checked_mul(size).and_then(|len| start.checked_add(len))?;
        (end <= mem.len()).then_some(start..end)
    };
    let (Some(sub_range), Some(_)) = (range(subs, SUBSCRIPTION_SIZE), range(events, EVENT_SIZE))
    else {
        return Ok(errno::FAULT);
    };
    let mut parsed = Vec::with_capacity(n.min(1024));
    for chunk in mem[sub_range].chunks_exact(SUBSCRIPTION_SIZE) {
        match Subscription::parse(chunk) {
            Some(s) => parsed.push(s),
            None => return Ok(errno::INVAL),
        }
    }
    if parsed
        .iter()
        .any(|s| matches!(s.kind, clock::SubKind::Clock { .. }))
    {
        st.recorder.uses(Fact::Clock);
    }
    let mut fd_status = std::collections::HashMap::new();
    for s in &parsed {
        if let clock::SubKind::FdRead(fd) | clock::SubKind::FdWrite(fd) = s.kind {
            if let std::collections::hash_map::Entry::Vacant(v) = fd_status.entry(fd) {
                let mut buf = [0u8; 24];
                let e = stock!(async fd_fdstat_get(st, &mut buf, fd as i32, 0));
                const DIRECTORY: u8 = 3;
                let status = match e {
                    0 if buf[0] == DIRECTORY => errno::BADF,
                    e => e,
                };
                v.insert(status as u16);
            }
        }
    }
    let plan = match clock::plan(&parsed, &st.clock, |fd| fd_status[&fd]) {
        Ok(p) => p,
        Err(e) => return Ok(i32::from(e)),
    };
    let ready = match plan {
        Plan::Ready(ev) => ev,
        Plan::Sleep(ns, due) => {
            let (interrupt, deadline) = (st.interrupt.clone(), st.deadline);
            if let Err(stop) = st.clock.sleep(ns, &interrupt, deadline) {
                return Err(stopped(st, stop));
            }
            due
        }
    };
    let base = events as u32 as usize;
    for (i, ev) in ready.iter().enumerate() {
        let at = base + i * EVENT_SIZE;
        ev.write(&mut mem[at..at + EVENT_SIZE]);
    }
    Ok(put(mem, out, &(ready.len() as u32).to_le_bytes()))
}
