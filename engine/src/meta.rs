//! Reading file metadata on backup and applying it on restore, through descriptors or
//! directory-relative calls only (see `volume/dir.rs`).

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cairn_formats::{Meta, Timestamp, Xattr};
use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

use crate::volume::dir::{mtime_only, Dir, Stat};

/// Whether this process may set owners and create devices.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime does): a
/// walk by descriptors holds one per directory level, and a hostile tree can be deep.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(error = %e, "could not raise the open-file limit");
        }
    }
}

/// Makes this process not dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump holds its
/// credentials or keys, and no process of another user may ptrace it or read its `/proc` files.
/// Its children are dumpable again after their `exec`.
pub fn no_core_dumps() {
    use rustix::process::{set_dumpable_behavior, DumpableBehavior};
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::debug!(error = %e, "could not make the process non-dumpable");
    }
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

/// Where an entry's extended attributes are read or written.
#[derive(Clone, Copy)]
pub(crate) enum XattrsOf<'a> {
    /// An open descriptor of the entry (a file or directory we opened and checked).
    Fd(BorrowedFd<'a>),
    /// A path whose last component is never followed (`l*xattr`): `Dir::entry_path`, or a path
    /// in a directory the agent cannot reach (a drill's scratch).
    Path(&'a Path),
}

/// Builds the stored metadata of an entry from its `lstat` (or `fstat`) and its extended
/// attributes. Attributes that cannot be read are reported through `warn` (with `what`, the
/// entry's path for people) and left out.
pub(crate) fn read_meta(st: &Stat, xattrs: XattrsOf<'_>, what: &Path, warn: &mut dyn FnMut(String)) -> Meta {
    let mut out = Vec::new();
    match list_xattrs(xattrs) {
        Ok(names) => {
            for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
                match get_xattr(xattrs, name) {
                    Ok(Some(value)) => out.push(Xattr {
                        name: name.to_vec(),
                        value,
                    }),
                    Ok(None) => {}
                    Err(e) => warn(format!(
                        "{}: extended attribute {:?} not readable: {e}",
                        what.display(),
                        OsStr::from_bytes(name)
                    )),
                }
            }
        }
        Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => {}
        Err(e) => warn(format!(
            "{}: extended attributes not readable: {e}",
            what.display()
        )),
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Meta {
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: Timestamp {
            secs: st.mtime.0,
            nanos: st.mtime.1,
        },
        xattrs: out,
    }
}

/// Reads an extended attribute value or list: ask its size (`query`), then `fill` a buffer of
/// that size, again if it grew meanwhile.
fn sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fill: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    loop {
        let n = query()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n];
        match fill(&mut buf) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn list_xattrs(of: XattrsOf<'_>) -> io::Result<Vec<u8>> {
    match of {
        XattrsOf::Fd(fd) => sized(
            || rustix::fs::flistxattr_query(fd),
            |b| rustix::fs::flistxattr(fd, b),
        ),
        XattrsOf::Path(p) => sized(
            || rustix::fs::llistxattr_query(p),
            |b| rustix::fs::llistxattr(p, b),
        ),
    }
}

fn get_xattr(of: XattrsOf<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = OsStr::from_bytes(name);
    let r = match of {
        XattrsOf::Fd(fd) => sized(
            || rustix::fs::fgetxattr_query(fd, name),
            |b| rustix::fs::fgetxattr(fd, name, b),
        ),
        XattrsOf::Path(p) => sized(
            || rustix::fs::lgetxattr_query(p, name),
            |b| rustix::fs::lgetxattr(p, name, b),
        ),
    };
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(Errno::NODATA.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn set_xattr(of: XattrsOf<'_>, x: &Xattr, as_root: bool) -> io::Result<()> {
    let name = OsStr::from_bytes(&x.name);
    let r = match of {
        XattrsOf::Fd(fd) => rustix::fs::fsetxattr(fd, name, &x.value, rustix::fs::XattrFlags::empty()),
        XattrsOf::Path(p) => rustix::fs::lsetxattr(p, name, &x.value, rustix::fs::XattrFlags::empty()),
    };
    match r {
        Ok(()) => Ok(()),
        // Attributes outside `user.` need privileges a restore does not always have: as another
        // user, or as a root that runs without the capability (`trusted.*` needs CAP_SYS_ADMIN,
        // `security.capability` CAP_SETFCAP; the least-privilege pod grants neither).
        Err(_) if !(x.name.starts_with(b"user.") || as_root) => Ok(()),
        Err(e) if e == rustix::io::Errno::PERM && !x.name.starts_with(b"user.") => {
            tracing::warn!(xattr = ?name, "extended attribute not restored: this process lacks the capability to set it");
            Ok(())
        }
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("setting xattr {name:?}: {e}"),
        )),
    }
}

/// Applies owner (as root), extended attributes, permission bits and mtime to an open file or
/// directory, in the order that keeps each from undoing another (chown clears setuid; chmod last
/// but for times).
///
/// # Errors
/// The first failing call. Extended attributes outside `user.` that this process may not set
/// are skipped.
pub(crate) fn apply_meta_fd(fd: BorrowedFd<'_>, meta: &Meta, as_root: bool) -> io::Result<()> {
    if as_root {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )?;
    }
    for x in &meta.xattrs {
        set_xattr(XattrsOf::Fd(fd), x, as_root)?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    rustix::fs::futimens(fd, &mtime_only((meta.mtime.secs, meta.mtime.nanos)))?;
    Ok(())
}

/// Applies metadata to the entry `name` of `dir` without opening it: a symlink (owner and mtime
/// of the link itself; Linux keeps no mode or user xattrs on links), a special file (never
/// opened: see `Dir::chmod_kind`), or any entry of `kind` whose metadata alone changed.
///
/// # Errors
/// The first failing call.
pub(crate) fn apply_meta_at(
    dir: &Dir,
    name: &OsStr,
    meta: &Meta,
    kind: FileType,
    as_root: bool,
) -> io::Result<()> {
    if as_root {
        dir.chown_at(name, meta.uid, meta.gid)?;
    }
    if kind != FileType::Symlink {
        let path = dir.entry_path(name);
        for x in &meta.xattrs {
            set_xattr(XattrsOf::Path(&path), x, as_root)?;
        }
        dir.chmod_kind(name, kind, meta.mode)?;
    }
    dir.set_mtime_at(name, (meta.mtime.secs, meta.mtime.nanos))
}
