//! Reading file metadata on backup and applying it on restore.

use std::fs::{self, Metadata, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use cairn_formats::{Meta, Timestamp, Xattr};
use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};

use crate::error::IoContext;
use crate::Result;

/// Whether this process may set owners and create devices.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Nanoseconds since the epoch of a `(secs, nsecs)` pair.
pub fn ns(secs: i64, nsecs: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsecs)
}

/// Nanoseconds since the epoch of a timestamp.
pub(crate) fn timestamp_ns(t: Timestamp) -> i128 {
    ns(t.secs, i64::from(t.nanos))
}

/// Nanoseconds since the epoch by this machine's clock (which the file system's coarse clock
/// never runs ahead of).
pub(crate) fn now_ns() -> i128 {
    timestamp_ns(Timestamp::now())
}

/// Builds the stored metadata of `path` from its `lstat`. Extended attributes that cannot be read
/// are reported through `warn` and left out.
pub fn read_meta(path: &Path, md: &Metadata, warn: &mut dyn FnMut(String)) -> Meta {
    let mut xattrs = Vec::new();
    match xattr::list(path) {
        Ok(names) => {
            for name in names {
                match xattr::get(path, &name) {
                    Ok(Some(value)) => xattrs.push(Xattr {
                        name: name.as_encoded_bytes().to_vec(),
                        value,
                    }),
                    Ok(None) => {}
                    Err(e) => warn(format!(
                        "{}: extended attribute {:?} not readable: {e}",
                        path.display(),
                        name
                    )),
                }
            }
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {}
        Err(e) => warn(format!(
            "{}: extended attributes not readable: {e}",
            path.display()
        )),
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Timestamp {
            secs: md.mtime(),
            nanos: md.mtime_nsec() as u32,
        },
        xattrs,
    }
}

/// What kind of entry metadata is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A symlink: no mode, no user xattrs (Linux refuses them), times on the link itself.
    Symlink,
    /// Anything else.
    Other,
}

/// Applies owner (as root), extended attributes, permission bits and mtime, in the order that
/// keeps each from undoing another (chown clears setuid; chmod last but for times).
///
/// # Errors
/// [`crate::Error::Io`] naming the path. Extended attributes outside `user.` that this process may
/// not set are skipped, since they need privileges a restore does not always have.
pub fn apply_meta(path: &Path, meta: &Meta, target: Target, as_root: bool) -> Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).at(path)?;
    }
    if target == Target::Other {
        for x in &meta.xattrs {
            let name = std::ffi::OsStr::from_bytes(&x.name);
            if let Err(e) = xattr::set(path, name, &x.value) {
                if x.name.starts_with(b"user.") || as_root {
                    return Err(crate::Error::io(
                        path,
                        std::io::Error::new(e.kind(), format!("setting xattr {name:?}: {e}")),
                    ));
                }
            }
        }
        fs::set_permissions(path, Permissions::from_mode(meta.mode)).at(path)?;
    }
    set_mtime(path, meta.mtime)
}

/// Sets the modification time of `path` itself (not a symlink's target); leaves atime alone.
///
/// # Errors
/// [`crate::Error::Io`] naming the path.
pub fn set_mtime(path: &Path, mtime: Timestamp) -> Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.secs,
            tv_nsec: i64::from(mtime.nanos),
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| crate::Error::io(path, e.into()))
}
