//! `wasi:filesystem/types` and `preopens`: every open, stat, listing,
//! readlink and mutation observed before it acts (as `intercept.rs` does
//! for preview 1), metadata virtualized on read-only mounts, the scratch
//! quota and the devices.

use std::collections::HashMap;

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
use wasmtime_wasi::p2::bindings::sync::filesystem::{preopens, types as fs};
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::pipe::SinkOutputStream;
use wasmtime_wasi::p2::{DynOutputStream, FsError, FsResult};

use crate::devices::{Device, DEVICES};
use crate::log::{DeniedOp, ReadOp};
use crate::observe::VIRTUAL_TIME_NS;
use crate::quota::{Inode, Quota, INODE_CHARGE};
use crate::random::SeededRandom;
use crate::recorder::{OpenCall, Precondition, Recorder};
use crate::state::{Preview2State, RunState, ScratchStream};

use super::streams::device_bytes;

/// What the filesystem host needs of a run.
pub(super) struct Files<'a> {
    view: WasiFilesystemCtxView<'a>,
    recorder: &'a mut Recorder,
    quota: &'a mut Quota,
    p2: &'a mut Preview2State,
    device_mount: Option<usize>,
    devices: &'a mut HashMap<u32, Device>,
    seeded: &'a mut Option<SeededRandom>,
}

impl HasData for Files<'static> {
    type Data<'a> = Files<'a>;
}

pub(super) fn files(st: &mut RunState) -> Files<'_> {
    Files {
        view: st.wasi.filesystem(),
        recorder: &mut st.recorder,
        quota: &mut st.quota,
        p2: &mut st.p2,
        device_mount: st.device_mount,
        devices: &mut st.devices,
        seeded: &mut st.random,
    }
}

/// A descriptor's number, as the recorder and the quota know it.
pub(super) fn num<T: 'static>(r: &Resource<T>) -> i32 {
    r.rep() as i32
}

/// The same resource, borrowed, for a call that consumes its handle.
pub(super) fn again<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

/// A refusal of cachet's own (FsError holds the stock host's error codes).
fn err(code: ErrorCode) -> FsError {
    code.into()
}

impl Files<'_> {
    /// Whether `fd` + `path` lies in the run's scratch dir.
    fn in_scratch(&self, fd: i32, path: &str) -> bool {
        self.recorder
            .mount_of(fd, Some(path))
            .is_some_and(|m| self.recorder.is_scratch(m))
    }

    /// Refuses a rename or hard link between two mounts, as under preview
    /// 1: a hard link from a mount into scratch would let the guest read a
    /// file under a name never logged.
    fn same_mount(&self, fd: i32, old: &str, new_fd: i32, new: &str) -> FsResult<()> {
        let from = self.recorder.mount_of(fd, Some(old));
        let to = self.recorder.mount_of(new_fd, Some(new));
        if from.is_some() && to.is_some() && from != to {
            return Err(err(ErrorCode::CrossDevice));
        }
        Ok(())
    }

    /// Refuses growing a scratch file to `end` bytes past the quota.
    fn check_growth(&mut self, fd: i32, end: u64) -> FsResult<()> {
        let Some(inode) = self.quota.scratch_inode(fd as u32) else {
            return Ok(());
        };
        let grow = end.saturating_sub(self.quota.size_of(inode));
        if grow > 0 && !self.quota.fits(grow) {
            return Err(err(ErrorCode::InsufficientSpace));
        }
        Ok(())
    }

    /// Charges a scratch file's size after a call that may have grown it.
    fn charge(&mut self, fd: i32) {
        if self.quota.scratch_inode(fd as u32).is_some() {
            if let Some(stat) = self.recorder.scratch_stat(fd, None) {
                self.quota.update(stat);
            }
        }
    }

    /// Charges a scratch entry a call has just made.
    fn charge_path(&mut self, fd: i32, path: &str) {
        if let Some(stat) = self.recorder.scratch_stat(fd, Some(path)) {
            self.quota.update(stat);
        }
    }

    /// Rewrites the stat of a read-only mount's file as preview 1 does
    /// (`Recorder::virtualize_filestat`): fixed times, one link, and size 0
    /// for directories. Preview 2's stat has no device or inode; its
    /// `metadata-hash` stands for them.
    fn virtualize(&self, stat: &mut fs::DescriptorStat, fd: i32, path: Option<&str>) {
        if self.recorder.virtual_ids(fd, path).is_none() {
            return;
        }
        let time = Some(fs::Datetime {
            seconds: VIRTUAL_TIME_NS / 1_000_000_000,
            nanoseconds: (VIRTUAL_TIME_NS % 1_000_000_000) as u32,
        });
        stat.link_count = 1;
        if stat.type_ == fs::DescriptorType::Directory {
            stat.size = 0;
        }
        stat.data_access_timestamp = time;
        stat.data_modification_timestamp = time;
        stat.status_change_timestamp = time;
    }

    /// An output stream that takes every write and keeps nothing: a
    /// device's.
    fn sink(&mut self) -> FsResult<Resource<streams::OutputStream>> {
        let sink: DynOutputStream = Box::new(SinkOutputStream);
        Ok(self.view.table.push(sink)?)
    }

    /// Remembers a new output stream into a scratch file, whose writes the
    /// scratch quota checks (`Streams`).
    fn track(
        &mut self,
        stream: &Resource<streams::OutputStream>,
        inode: Option<Inode>,
        position: u64,
        append: bool,
    ) {
        match inode {
            Some(inode) => self.p2.scratch_streams.insert(
                stream.rep(),
                ScratchStream {
                    inode,
                    position,
                    append,
                },
            ),
            None => self.p2.scratch_streams.remove(&stream.rep()),
        };
    }

    /// `remove-directory-at` and `unlink-file-at`: logged, and a removed
    /// scratch entry's charge released.
    fn removal(
        &mut self,
        fd: &Resource<fs::Descriptor>,
        path: String,
        (op, pre): (DeniedOp, Precondition),
        call: impl FnOnce(&mut WasiFilesystemCtxView<'_>, String) -> FsResult<()>,
    ) -> FsResult<()> {
        let n = num(fd);
        self.recorder.before_mutation(op, n, Some(&path), pre);
        let before = self.recorder.scratch_stat(n, Some(&path));
        call(&mut self.view, path.clone())?;
        self.recorder.mutated(n, Some(&path));
        if let Some(stat) = before {
            self.quota.unlinked(stat);
        }
        Ok(())
    }
}

impl fs::Host for Files<'_> {
    fn convert_error_code(&mut self, e: FsError) -> wasmtime::Result<fs::ErrorCode> {
        fs::Host::convert_error_code(&mut self.view, e)
    }

    fn filesystem_error_code(
        &mut self,
        e: Resource<streams::Error>,
    ) -> wasmtime::Result<Option<fs::ErrorCode>> {
        fs::Host::filesystem_error_code(&mut self.view, e)
    }
}

impl preopens::Host for Files<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<fs::Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.view)?;
        for ((dir, _), &mount) in dirs.iter().zip(&self.p2.preopen_mounts) {
            self.recorder.add_preopen(dir.rep(), mount);
        }
        Ok(dirs)
    }
}

impl fs::HostDescriptor for Files<'_> {
    fn open_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
        oflags: fs::OpenFlags,
        flags: fs::DescriptorFlags,
    ) -> FsResult<Resource<fs::Descriptor>> {
        let n = num(&fd);
        // A device opens read-only underneath, whatever was asked; the
        // descriptor then reads and writes as the device (`devices.rs`).
        let device = self
            .device_mount
            .and_then(|m| self.recorder.path_on(n, Some(&path), m))
            .and_then(|rel| {
                DEVICES
                    .iter()
                    .find(|(file, _)| *file == rel)
                    .map(|(_, d)| *d)
            });
        let (oflags, flags) = match device {
            Some(_) => (
                oflags
                    & !(fs::OpenFlags::CREATE | fs::OpenFlags::EXCLUSIVE | fs::OpenFlags::TRUNCATE),
                flags & fs::DescriptorFlags::READ,
            ),
            None => (oflags, flags),
        };
        if !self.quota.may_open() {
            // wasi:filesystem has no "too many open files"; `quota` is the
            // nearest (docs/design/sandbox.md, "Preview 2").
            return Err(err(ErrorCode::Quota));
        }
        let call = OpenCall::preview2(
            path_flags.contains(fs::PathFlags::SYMLINK_FOLLOW),
            oflags.contains(fs::OpenFlags::CREATE),
            oflags.contains(fs::OpenFlags::DIRECTORY),
            oflags.contains(fs::OpenFlags::EXCLUSIVE),
            oflags.contains(fs::OpenFlags::TRUNCATE),
            flags.contains(fs::DescriptorFlags::WRITE),
        );
        if self.recorder.before_open(n, call, Some(&path)).is_err() {
            return Err(err(ErrorCode::Access));
        }
        let scratch = self.in_scratch(n, &path);
        if scratch && oflags.contains(fs::OpenFlags::CREATE) && !self.quota.fits(INODE_CHARGE) {
            return Err(err(ErrorCode::InsufficientSpace));
        }
        let opened = fs::HostDescriptor::open_at(
            &mut self.view,
            fd,
            path_flags,
            path.clone(),
            oflags,
            flags,
        );
        self.recorder
            .after_open(n, call, Some(&path), opened.as_ref().ok().map(|r| r.rep()));
        let opened = opened?;
        match device {
            Some(d) => self.devices.insert(opened.rep(), d),
            None => self.devices.remove(&opened.rep()),
        };
        let stat = match scratch {
            true => self.recorder.scratch_stat(num(&opened), None),
            false => None,
        };
        self.quota.opened(opened.rep(), stat);
        Ok(opened)
    }

    fn stat(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorStat> {
        let n = num(&fd);
        self.recorder.fd_stat(n);
        let mut stat = fs::HostDescriptor::stat(&mut self.view, fd)?;
        self.virtualize(&mut stat, n, None);
        Ok(stat)
    }

    fn stat_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::DescriptorStat> {
        let n = num(&fd);
        let lookup = i32::from(path_flags.contains(fs::PathFlags::SYMLINK_FOLLOW));
        self.recorder.stat(n, lookup, Some(&path));
        let mut stat = fs::HostDescriptor::stat_at(&mut self.view, fd, path_flags, path.clone())?;
        self.virtualize(&mut stat, n, Some(&path));
        Ok(stat)
    }

    /// An open descriptor's identity: on a read-only mount it follows from
    /// its path, which the open already logged; elsewhere it is a stat.
    fn metadata_hash(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::MetadataHashValue> {
        let n = num(&fd);
        let virtual_ids = self.recorder.virtual_ids(n, None);
        if virtual_ids.is_none() {
            self.recorder.fd_stat(n);
        }
        let hash = fs::HostDescriptor::metadata_hash(&mut self.view, fd)?;
        Ok(match virtual_ids {
            Some((dev, ino)) => fs::MetadataHashValue {
                upper: dev,
                lower: ino,
            },
            None => hash,
        })
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::MetadataHashValue> {
        let n = num(&fd);
        let follow = path_flags.contains(fs::PathFlags::SYMLINK_FOLLOW);
        // wasi-libc asks this of every entry it lists (for `d_ino`): on a
        // read-only mount the answer follows from the listing, already
        // logged. Any other path is logged as the stat it stands for.
        let listed = !follow
            && self
                .p2
                .listed
                .get(&n)
                .is_some_and(|names| names.contains(&path))
            && self.recorder.virtual_ids(n, Some(&path)).is_some();
        if !listed {
            self.recorder.stat(n, i32::from(follow), Some(&path));
        }
        let hash =
            fs::HostDescriptor::metadata_hash_at(&mut self.view, fd, path_flags, path.clone())?;
        Ok(match self.recorder.virtual_ids(n, Some(&path)) {
            Some((dev, ino)) => fs::MetadataHashValue {
                upper: dev,
                lower: ino,
            },
            None => hash,
        })
    }

    /// The whole listing is read at once and served in cachet's order
    /// (bytewise by name), so the sorted listing in the log is what the
    /// guest saw, as under preview 1.
    fn read_directory(
        &mut self,
        fd: Resource<fs::Descriptor>,
    ) -> FsResult<Resource<fs::DirectoryEntryStream>> {
        let n = num(&fd);
        self.recorder.fd_readdir(n);
        let stream = fs::HostDescriptor::read_directory(&mut self.view, fd)?;
        let mut entries = Vec::new();
        loop {
            match fs::HostDirectoryEntryStream::read_directory_entry(&mut self.view, again(&stream))
            {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => break,
                Err(e) => {
                    fs::HostDirectoryEntryStream::drop(&mut self.view, stream)
                        .map_err(FsError::trap)?;
                    return Err(e);
                }
            }
        }
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let names = self.p2.listed.entry(n).or_default();
        names.extend(entries.iter().map(|e| e.name.clone()));
        self.p2.listings.insert(stream.rep(), entries.into());
        Ok(stream)
    }

    fn readlink_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<String> {
        self.recorder
            .read(ReadOp::Readlink, DeniedOp::Readlink, num(&fd), Some(&path));
        fs::HostDescriptor::readlink_at(&mut self.view, fd, path)
    }

    fn drop(&mut self, fd: Resource<fs::Descriptor>) -> wasmtime::Result<()> {
        let n = num(&fd);
        fs::HostDescriptor::drop(&mut self.view, fd)?;
        self.devices.remove(&(n as u32));
        self.recorder.closed(n);
        self.quota.closed(n as u32);
        self.p2.listed.remove(&n);
        Ok(())
    }

    fn create_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        let n = num(&fd);
        self.recorder
            .before_mutation(DeniedOp::Mkdir, n, Some(&path), Precondition::Presence);
        let scratch = self.in_scratch(n, &path);
        if scratch && !self.quota.fits(INODE_CHARGE) {
            return Err(err(ErrorCode::InsufficientSpace));
        }
        fs::HostDescriptor::create_directory_at(&mut self.view, fd, path.clone())?;
        self.recorder.mutated(n, Some(&path));
        if scratch {
            self.charge_path(n, &path);
        }
        Ok(())
    }

    fn remove_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        let call = (DeniedOp::Rmdir, Precondition::Empty);
        self.removal(&fd, path, call, |view, path| {
            fs::HostDescriptor::remove_directory_at(view, again(&fd), path)
        })
    }

    fn unlink_file_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        let call = (DeniedOp::Unlink, Precondition::Presence);
        self.removal(&fd, path, call, |view, path| {
            fs::HostDescriptor::unlink_file_at(view, again(&fd), path)
        })
    }

    fn rename_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old: String,
        new_fd: Resource<fs::Descriptor>,
        new: String,
    ) -> FsResult<()> {
        let (n, new_n) = (num(&fd), num(&new_fd));
        self.same_mount(n, &old, new_n, &new)?;
        let content = Precondition::Content { follow: false };
        self.recorder
            .before_mutation(DeniedOp::Rename, n, Some(&old), content);
        self.recorder
            .before_mutation(DeniedOp::Rename, new_n, Some(&new), Precondition::Presence);
        let replaced = self.recorder.scratch_stat(new_n, Some(&new));
        let moved = replaced.and_then(|_| self.recorder.scratch_stat(n, Some(&old)));
        fs::HostDescriptor::rename_at(&mut self.view, fd, old.clone(), new_fd, new.clone())?;
        self.recorder.mutated(n, Some(&old));
        self.recorder.mutated(new_n, Some(&new));
        if let Some(stat) = replaced {
            if moved.map(|m| m.inode) != Some(stat.inode) {
                self.quota.unlinked(stat);
            }
        }
        Ok(())
    }

    fn symlink_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        target: String,
        link: String,
    ) -> FsResult<()> {
        let n = num(&fd);
        self.recorder
            .before_mutation(DeniedOp::Symlink, n, Some(&link), Precondition::Presence);
        if self.recorder.symlink_escapes(n, Some(&link), Some(&target)) {
            return Err(err(ErrorCode::NotPermitted));
        }
        let scratch = self.in_scratch(n, &link);
        if scratch && !self.quota.fits(INODE_CHARGE) {
            return Err(err(ErrorCode::InsufficientSpace));
        }
        fs::HostDescriptor::symlink_at(&mut self.view, fd, target, link.clone())?;
        self.recorder.mutated(n, Some(&link));
        if scratch {
            self.charge_path(n, &link);
        }
        Ok(())
    }

    fn link_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old_flags: fs::PathFlags,
        old: String,
        new_fd: Resource<fs::Descriptor>,
        new: String,
    ) -> FsResult<()> {
        let (n, new_n) = (num(&fd), num(&new_fd));
        self.same_mount(n, &old, new_n, &new)?;
        let follow = old_flags.contains(fs::PathFlags::SYMLINK_FOLLOW);
        self.recorder.before_mutation(
            DeniedOp::Link,
            n,
            Some(&old),
            Precondition::Content { follow },
        );
        self.recorder
            .before_mutation(DeniedOp::Link, new_n, Some(&new), Precondition::Presence);
        fs::HostDescriptor::link_at(
            &mut self.view,
            fd,
            old_flags,
            old.clone(),
            new_fd,
            new.clone(),
        )?;
        self.recorder.mutated(n, Some(&old));
        self.recorder.mutated(new_n, Some(&new));
        Ok(())
    }

    fn set_times_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        path_flags: fs::PathFlags,
        path: String,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        self.recorder.before_mutation(
            DeniedOp::SetTimes,
            num(&fd),
            Some(&path),
            Precondition::Presence,
        );
        fs::HostDescriptor::set_times_at(&mut self.view, fd, path_flags, path, atim, mtim)
    }

    fn write(
        &mut self,
        fd: Resource<fs::Descriptor>,
        buf: Vec<u8>,
        offset: fs::Filesize,
    ) -> FsResult<fs::Filesize> {
        let n = num(&fd);
        if self.devices.contains_key(&fd.rep()) {
            return Ok(buf.len() as u64);
        }
        self.check_growth(n, offset.saturating_add(buf.len() as u64))?;
        let written = fs::HostDescriptor::write(&mut self.view, fd, buf, offset);
        self.charge(n);
        written
    }

    fn set_size(&mut self, fd: Resource<fs::Descriptor>, size: fs::Filesize) -> FsResult<()> {
        let n = num(&fd);
        self.check_growth(n, size)?;
        let done = fs::HostDescriptor::set_size(&mut self.view, fd, size);
        self.charge(n);
        done
    }

    // The rest as the stock host has them.

    fn advise(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
        len: fs::Filesize,
        advice: fs::Advice,
    ) -> FsResult<()> {
        fs::HostDescriptor::advise(&mut self.view, fd, offset, len, advice)
    }

    fn sync_data(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync_data(&mut self.view, fd)
    }

    fn get_flags(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorFlags> {
        fs::HostDescriptor::get_flags(&mut self.view, fd)
    }

    fn get_type(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorType> {
        fs::HostDescriptor::get_type(&mut self.view, fd)
    }

    fn set_times(
        &mut self,
        fd: Resource<fs::Descriptor>,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        fs::HostDescriptor::set_times(&mut self.view, fd, atim, mtim)
    }

    fn read(
        &mut self,
        fd: Resource<fs::Descriptor>,
        len: fs::Filesize,
        offset: fs::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        match self.devices.get(&fd.rep()) {
            Some(Device::Null) | None => fs::HostDescriptor::read(&mut self.view, fd, len, offset),
            Some(&d) => Ok((device_bytes(d, len, self.recorder, self.seeded), false)),
        }
    }

    fn sync(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync(&mut self.view, fd)
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
    ) -> FsResult<Resource<streams::InputStream>> {
        let device = self.devices.get(&fd.rep()).copied();
        let stream = fs::HostDescriptor::read_via_stream(&mut self.view, fd, offset)?;
        match device {
            Some(d) if d != Device::Null => self.p2.device_streams.insert(stream.rep(), d),
            _ => self.p2.device_streams.remove(&stream.rep()),
        };
        Ok(stream)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: fs::Filesize,
    ) -> FsResult<Resource<streams::OutputStream>> {
        if self.devices.contains_key(&fd.rep()) {
            return self.sink();
        }
        let inode = self.quota.scratch_inode(fd.rep());
        let stream = fs::HostDescriptor::write_via_stream(&mut self.view, fd, offset)?;
        self.track(&stream, inode, offset, false);
        Ok(stream)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
    ) -> FsResult<Resource<streams::OutputStream>> {
        if self.devices.contains_key(&fd.rep()) {
            return self.sink();
        }
        let inode = self.quota.scratch_inode(fd.rep());
        let stream = fs::HostDescriptor::append_via_stream(&mut self.view, fd)?;
        self.track(&stream, inode, 0, true);
        Ok(stream)
    }

    fn is_same_object(
        &mut self,
        a: Resource<fs::Descriptor>,
        b: Resource<fs::Descriptor>,
    ) -> wasmtime::Result<bool> {
        fs::HostDescriptor::is_same_object(&mut self.view, a, b)
    }
}

impl fs::HostDirectoryEntryStream for Files<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<fs::DirectoryEntryStream>,
    ) -> FsResult<Option<fs::DirectoryEntry>> {
        match self.p2.listings.get_mut(&stream.rep()) {
            Some(entries) => Ok(entries.pop_front()),
            None => fs::HostDirectoryEntryStream::read_directory_entry(&mut self.view, stream),
        }
    }

    fn drop(&mut self, stream: Resource<fs::DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.p2.listings.remove(&stream.rep());
        fs::HostDirectoryEntryStream::drop(&mut self.view, stream)
    }
}
