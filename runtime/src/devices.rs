//! The guest's devices. The read-only mount `Policy::devices` names (cachet
//! mounts it at `/dev`) holds empty files named as devices; an open of one
//! opens that empty file underneath (read-only, whatever was asked, so
//! nothing of the mount is writable) and the fd then behaves as the device:
//!
//! - `null`: reads end at once (the empty file), writes are taken whole and
//!   discarded;
//! - `zero`: reads fill the buffers with zeros, writes are discarded;
//! - `random`, `urandom`: reads fill the buffers from the run's random
//!   source (`random_get`'s: seeded under `--hermetic`, so a hermetic run
//!   reads the same bytes on every machine), writes are discarded.
//!
//! The open is logged as the read of an empty file, the same on every
//! machine; a read of `random` is logged as a use of randomness, as
//! `random_get` is. Real device files in mounts stay refused.

/// A device an fd is open on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    Null,
    Zero,
    Random,
}

/// The devices, by their file names in the devices mount.
pub(crate) const DEVICES: [(&str, Device); 4] = [
    ("null", Device::Null),
    ("zero", Device::Zero),
    ("random", Device::Random),
    ("urandom", Device::Random),
];

/// The file names a devices mount must hold (empty files).
pub const DEVICE_FILES: [&str; 4] = ["null", "zero", "random", "urandom"];

/// What an open of a device may not ask of the file underneath: `O_CREAT`,
/// `O_EXCL`, `O_TRUNC`; the rights to write, sync, allocate, resize or
/// retime.
pub(crate) const OFLAGS_DROPPED: i32 = 1 | 4 | 8;
pub(crate) const RIGHTS_DROPPED: i64 = 1 | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 22) | (1 << 23);
