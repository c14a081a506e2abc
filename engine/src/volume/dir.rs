//! A directory of a workspace volume, held open by its file descriptor.
//!
//! The agent beside us is root in its container and writes the same volume: between any two
//! system calls it can rename an entry away and put a symlink, a FIFO, a device node or a mount in
//! its place. So no privileged code path resolves a workspace path twice. Everything below a
//! [`Dir`] is reached relative to its descriptor, one component at a time or through `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` (no
//! symlink anywhere on the way, nothing outside, no other mount); the last component of every call
//! is never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `renameat`, `linkat`
//! without `AT_SYMLINK_FOLLOW`). What a descriptor turns out to be is checked against what was
//! listed ([`same_entry`]): a different type, inode or device means the entry changed while it was
//! being read, never content.
//!
//! Regular files are opened, for reading or writing, in two steps: `O_PATH | O_NOFOLLOW` (which
//! opens nothing: a FIFO cannot block, a device's driver is not called), `fstat`, and only for a
//! regular file a reopen of that very inode through `/proc/self/fd/N` (relative to one descriptor
//! of `/proc/self/fd`, opened once), with `O_NONBLOCK` so a lease the agent takes never makes us
//! wait. Where `/proc` is missing the file is opened directly with `O_NONBLOCK | O_NOCTTY` after
//! the same check, and the `fstat` of what was opened still decides.
//!
//! Extended attributes of an entry that is not open (a symlink, a special file, a file the stat
//! cache vouches for) are read and written through `/proc/self/fd/<dir>/<name>` with the
//! `l*xattr` calls: the directory is ours, the name one component, and the last component is not
//! followed, so at worst they are the attributes of whatever the agent swapped in, inside the
//! workspace.
//!
//! The path a volume is opened at is the operator's (a mount path in a pod spec): trusted up to its
//! last component, which is opened with `O_NOFOLLOW` like everything else.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, CWD};
use rustix::io::Errno;

/// How directories are opened: read-only, never through a symlink.
const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);
/// How paths below a directory are resolved by `openat2`.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Whether `openat2` works here (0 unknown, 1 yes, 2 no: an old kernel or a seccomp profile
/// that refuses it; then paths are walked one `openat` at a time).
static OPENAT2: AtomicU8 = AtomicU8::new(0);
/// `/proc/self/fd`, opened once: regular files are reopened relative to it, which spares each
/// reopen the walk through `/proc` and `self`.
static PROC_FD: OnceLock<OwnedFd> = OnceLock::new();
/// `/proc` is not mounted here (only `ENOENT` says so; any other error is reported, not cached).
static NO_PROC: AtomicBool = AtomicBool::new(false);

/// `lstat` of an entry, in the units Cairn uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device of the file system holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Status change time, likewise.
    pub ctime: (i64, u32),
}

impl Stat {
    fn of(s: &rustix::fs::Stat) -> Stat {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Stat {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            size: s.st_size.max(0) as u64,
            blocks: s.st_blocks as u64,
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as u32),
            ctime: (s.st_ctime as i64, s.st_ctime_nsec as u32),
        }
    }

    /// The entry's type.
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == FileType::Directory
    }

    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind() == FileType::RegularFile
    }

    /// Modification time in nanoseconds since the epoch.
    pub fn mtime_ns(&self) -> i128 {
        crate::meta::ns(self.mtime.0, i64::from(self.mtime.1))
    }

    /// Status change time in nanoseconds since the epoch.
    pub fn ctime_ns(&self) -> i128 {
        crate::meta::ns(self.ctime.0, i64::from(self.ctime.1))
    }
}

impl From<&std::fs::Metadata> for Stat {
    fn from(md: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode(),
            nlink: md.nlink(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: md.size(),
            blocks: md.blocks(),
            mtime: (md.mtime(), md.mtime_nsec() as u32),
            ctime: (md.ctime(), md.ctime_nsec() as u32),
        }
    }
}

/// How what was opened differs from what was listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Another type of entry (a symlink, a FIFO or a directory where a file was).
    Type,
    /// Another inode of the same type (renamed in from elsewhere).
    Inode,
    /// Another file system (a mount).
    Device,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mismatch::Type => "its type changed",
            Mismatch::Inode => "it was replaced by another file",
            Mismatch::Device => "another file system is mounted there",
        })
    }
}

/// Whether `opened` (the `fstat` of a descriptor) is the entry `listed` (its `lstat`).
///
/// # Errors
/// The first difference, in the order type, device, inode.
pub fn same_entry(listed: &Stat, opened: &Stat) -> Result<(), Mismatch> {
    if listed.kind() != opened.kind() {
        Err(Mismatch::Type)
    } else if listed.dev != opened.dev {
        Err(Mismatch::Device)
    } else if listed.ino != opened.ino {
        Err(Mismatch::Inode)
    } else {
        Ok(())
    }
}

/// A regular file opened for reading (see the module docs), with the `fstat` of what was opened.
pub struct OpenedFile {
    /// The file.
    pub file: File,
    /// Its `fstat`.
    pub stat: Stat,
}

/// A directory held open; every operation is relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// One path component: not empty, no `/`, not `.` or `..` (tree names are validated at decode;
/// this keeps the promise for every caller).
fn component(name: &OsStr) -> io::Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    cstr(name)
}

impl Dir {
    /// Opens the directory at `path`, not following a symlink in its last component.
    ///
    /// # Errors
    /// The `open(2)` error (`ELOOP` for a symlink, `ENOTDIR` for something else).
    pub fn open(path: &Path) -> io::Result<Dir> {
        Ok(Dir {
            fd: rustix::fs::openat(CWD, path, DIR, Mode::empty())?,
        })
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `fstat` of the directory itself.
    ///
    /// # Errors
    /// The `fstat(2)` error.
    pub fn stat(&self) -> io::Result<Stat> {
        Ok(Stat::of(&rustix::fs::fstat(&self.fd)?))
    }

    /// `lstat` of the entry `name`.
    ///
    /// # Errors
    /// The `fstatat(2)` error (`NotFound` if there is none).
    pub fn stat_at(&self, name: &OsStr) -> io::Result<Stat> {
        Ok(Stat::of(&rustix::fs::statat(
            &self.fd,
            component(name)?.as_c_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// The names in the directory, `.` and `..` left out, in the order the file system gives.
    ///
    /// # Errors
    /// The `getdents(2)` error.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        let mut d = rustix::fs::Dir::read_from(&self.fd)?;
        while let Some(e) = d.read() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                out.push(OsString::from_vec(n.to_vec()));
            }
        }
        Ok(out)
    }

    /// Opens the subdirectory `rel` (one or more components): never through a symlink, never
    /// onto another mount (`EXDEV`), never outside this directory.
    ///
    /// # Errors
    /// `ELOOP` or `ENOTDIR` where a component is not a directory, `EXDEV` at a mount point,
    /// `NotFound`.
    pub fn open_dir(&self, rel: &Path) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.open_beneath(rel, DIR, Mode::empty())?,
        })
    }

    /// Opens `rel` below this directory with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`), resolving
    /// it without symlinks, magic links, mount crossings or `..`.
    ///
    /// # Errors
    /// The `openat2(2)` error; `EXDEV` at a mount point.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if OPENAT2.load(Ordering::Relaxed) != 2 {
            match rustix::fs::openat2(&self.fd, rel, flags, mode, RESOLVE) {
                Ok(fd) => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return Ok(fd);
                }
                // No openat2 here (an old kernel, or a seccomp profile that refuses it), if a
                // harmless probe fails the same way; otherwise the error is this path's.
                Err(e @ (Errno::NOSYS | Errno::PERM)) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                    let probe = OFlags::PATH | OFlags::CLOEXEC;
                    if rustix::fs::openat2(CWD, "/", probe, Mode::empty(), ResolveFlags::empty()).is_ok() {
                        OPENAT2.store(1, Ordering::Relaxed);
                        return Err(e.into());
                    }
                    OPENAT2.store(2, Ordering::Relaxed);
                    tracing::info!(
                        "openat2 is not available; walking workspace paths one component at a time"
                    );
                }
                // EAGAIN: a rename elsewhere raced the lookup; the caller sees it as "changed".
                Err(e) => return Err(e.into()),
            }
        }
        self.open_walking(rel, flags, mode)
    }

    /// `open_beneath` without `openat2`: one `openat(O_NOFOLLOW)` per component, each directory
    /// checked to be on this directory's device.
    fn open_walking(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let parts: Vec<&OsStr> = rel.iter().collect();
        let Some((last, dirs)) = parts.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
        };
        let dev = self.stat()?.dev;
        let mut cur: Option<OwnedFd> = None;
        for p in dirs {
            let at = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
            let next = rustix::fs::openat(at, component(p)?.as_c_str(), DIR, Mode::empty())?;
            if Stat::of(&rustix::fs::fstat(&next)?).dev != dev {
                return Err(Errno::XDEV.into());
            }
            cur = Some(next);
        }
        let at = cur.as_ref().map_or(self.fd.as_fd(), |f| f.as_fd());
        let fd = rustix::fs::openat(at, component(last)?.as_c_str(), flags, mode)?;
        if flags.contains(OFlags::DIRECTORY) && Stat::of(&rustix::fs::fstat(&fd)?).dev != dev {
            return Err(Errno::XDEV.into());
        }
        Ok(fd)
    }

    /// Opens the entry `name` with `O_PATH | O_NOFOLLOW`: a handle on exactly that inode, whatever
    /// it is, that opens nothing (no FIFO blocks, no driver is called).
    ///
    /// # Errors
    /// The `openat(2)` error.
    pub fn open_path(&self, name: &OsStr) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            &self.fd,
            component(name)?.as_c_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Opens the regular file `name` for reading (see the module docs). `Ok(Err(stat))` when the
    /// entry is not a regular file (any more): it was not opened.
    ///
    /// # Errors
    /// The `open(2)` errors; `EWOULDBLOCK` for a file under a lease (never waited for).
    pub fn open_file(&self, name: &OsStr) -> io::Result<Result<OpenedFile, Stat>> {
        let handle = self.open_path(name)?;
        let stat = Stat::of(&rustix::fs::fstat(&handle)?);
        if !stat.is_file() {
            return Ok(Err(stat));
        }
        match self.reopen_checked(&handle, &stat, Path::new(name), OFlags::RDONLY)? {
            Some(file) => Ok(Ok(OpenedFile { file, stat })),
            None => Ok(Err(stat)),
        }
    }

    /// Reopens the `O_PATH` handle of a regular file (`stat` its `fstat`) with `flags`, through
    /// `/proc/self/fd` (that very inode); without `/proc`, opens `rel` beneath this directory with
    /// `O_NONBLOCK | O_NOCTTY` and checks it is the same inode (`None` if not).
    fn reopen_checked(
        &self,
        handle: &OwnedFd,
        stat: &Stat,
        rel: &Path,
        flags: OFlags,
    ) -> io::Result<Option<File>> {
        if let Some(fd) = reopen(handle, flags)? {
            return Ok(Some(fd.into()));
        }
        let fd = self.open_beneath(rel, flags | OFlags::NONBLOCK | OFlags::NOCTTY, Mode::empty())?;
        let opened = Stat::of(&rustix::fs::fstat(&fd)?);
        Ok(same_entry(stat, &opened).is_ok().then(|| fd.into()))
    }

    /// Creates the regular file `name` (which must not exist) for writing.
    ///
    /// # Errors
    /// `AlreadyExists` if anything is there (a planted symlink included).
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        Ok(rustix::fs::openat(
            &self.fd,
            component(name)?.as_c_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )?
        .into())
    }

    /// Opens the existing regular file `rel` below this directory (see [`Dir::open_beneath`]) with
    /// `flags`: an `O_PATH` handle first, checked to be a regular file (and inode `ino`, if
    /// given), then reopened, so a FIFO or device node planted there is never opened.
    ///
    /// # Errors
    /// The `open(2)` errors; `InvalidData` if it is not a regular file or not that inode.
    pub fn open_file_beneath(&self, rel: &Path, flags: OFlags, ino: Option<u64>) -> io::Result<(File, Stat)> {
        let handle = self.open_beneath(rel, OFlags::PATH, Mode::empty())?;
        let st = Stat::of(&rustix::fs::fstat(&handle)?);
        if !st.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
        }
        if ino.is_some_and(|i| i != st.ino) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "replaced by another file while it was restored",
            ));
        }
        match self.reopen_checked(&handle, &st, rel, flags)? {
            Some(f) => Ok((f, st)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "replaced while it was opened",
            )),
        }
    }

    /// Creates the subdirectory `name`.
    ///
    /// # Errors
    /// The `mkdirat(2)` error (`AlreadyExists` if anything is there).
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            component(name)?.as_c_str(),
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Makes `name` a real directory and opens it: keeps one that is there (not a mount), removes
    /// anything else first. Returns the directory and whether it was already there.
    ///
    /// # Errors
    /// The underlying errors; `EXDEV` for a mount point.
    pub fn ensure_dir(&self, name: &OsStr) -> io::Result<(Dir, bool)> {
        for _ in 0..8 {
            match self.open_dir(Path::new(name)) {
                Ok(d) => return Ok((d, true)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if is_not_dir(&e) => self.remove(name)?,
                Err(e) => return Err(e),
            }
            match self.mkdir(name, 0o700) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            match self.open_dir(Path::new(name)) {
                Ok(d) => return Ok((d, false)),
                Err(e) if e.kind() == io::ErrorKind::NotFound || is_not_dir(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("the entry keeps changing"))
    }

    /// Creates the symlink `name` pointing at `target` (stored as is, never resolved).
    ///
    /// # Errors
    /// The `symlinkat(2)` error.
    pub fn symlink(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(
            cstr(OsStr::from_bytes(target))?.as_c_str(),
            &self.fd,
            component(name)?.as_c_str(),
        )?)
    }

    /// Creates the special file `name` (a FIFO or a device node), mode 0600.
    ///
    /// # Errors
    /// The `mknodat(2)` error.
    pub fn mknod(&self, name: &OsStr, kind: FileType, dev: u64) -> io::Result<()> {
        Ok(rustix::fs::mknodat(
            &self.fd,
            component(name)?.as_c_str(),
            kind,
            Mode::from_raw_mode(0o600),
            dev,
        )?)
    }

    /// A hard link `name` here to `from_name` in `from` (never following a symlink there).
    ///
    /// # Errors
    /// The `linkat(2)` error.
    pub fn link_from(&self, from: &Dir, from_name: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &from.fd,
            component(from_name)?.as_c_str(),
            &self.fd,
            component(name)?.as_c_str(),
            AtFlags::empty(),
        )?)
    }

    /// Renames `name` to `to_name` in `to` (which it replaces if that is a file).
    ///
    /// # Errors
    /// The `renameat(2)` error.
    pub fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(
            &self.fd,
            component(name)?.as_c_str(),
            &to.fd,
            component(to_name)?.as_c_str(),
        )?)
    }

    /// Removes whatever `name` is (a file, a link, a special file, a whole directory tree),
    /// never following a symlink and never descending into another mount. Nothing there is fine.
    ///
    /// # Errors
    /// The first `unlinkat(2)` or `openat2(2)` error; `EXDEV` for a mount point below.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        let c = component(name)?;
        match rustix::fs::unlinkat(&self.fd, c.as_c_str(), AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => {}
            Err(e) => return Err(e.into()),
        }
        // A directory: empty it depth first with an explicit stack (no recursion: a hostile tree
        // can be deeper than any thread's stack), then remove it.
        let top = match self.open_dir(Path::new(name)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut stack: Vec<(Dir, CString, std::vec::IntoIter<OsString>)> = Vec::new();
        let names = top.names()?.into_iter();
        stack.push((top, c, names));
        while let Some((dir, _, names)) = stack.last_mut() {
            match names.next() {
                Some(n) => {
                    let nc = component(&n)?;
                    match rustix::fs::unlinkat(&dir.fd, nc.as_c_str(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(Errno::ISDIR | Errno::PERM) => {
                            let sub = dir.open_dir(Path::new(&n))?;
                            let names = sub.names()?.into_iter();
                            stack.push((sub, nc, names));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let (_, done, _) = stack.pop().expect("invariant: the stack is not empty");
                    let parent = stack.last().map_or(&self.fd, |(d, _, _)| &d.fd);
                    match rustix::fs::unlinkat(parent, done.as_c_str(), AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the file `name` if it is there (not a directory).
    ///
    /// # Errors
    /// The `unlinkat(2)` error other than "not found".
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, component(name)?.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `fsync` of the directory.
    ///
    /// # Errors
    /// The `fsync(2)` error.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// `syncfs` of the file system holding the directory.
    ///
    /// # Errors
    /// The `syncfs(2)` error.
    pub fn syncfs(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.fd)?)
    }

    /// The path that names the entry `name` of this directory through `/proc/self/fd`, for the
    /// `l*xattr` calls (see the module docs). Only valid while this `Dir` is open.
    pub fn entry_path(&self, name: &OsStr) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        p.push(name);
        p
    }

    /// Sets the owner of the entry `name` itself (a symlink's own).
    ///
    /// # Errors
    /// The `fchownat(2)` error.
    pub fn chown_at(&self, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
        Ok(rustix::fs::chownat(
            &self.fd,
            component(name)?.as_c_str(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Sets the permission bits of the entry `name` without opening it (a FIFO or device node is
    /// never opened): through an `O_PATH` handle checked to be of `kind`, never a symlink.
    ///
    /// # Errors
    /// The underlying errors; `InvalidData` if the entry is no longer of that kind.
    pub fn chmod_kind(&self, name: &OsStr, kind: FileType, mode: u32) -> io::Result<()> {
        let handle = self.open_path(name)?;
        if Stat::of(&rustix::fs::fstat(&handle)?).kind() != kind {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the entry changed"));
        }
        let path = format!("/proc/self/fd/{}", handle.as_raw_fd());
        Ok(rustix::fs::chmodat(
            CWD,
            path.as_str(),
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?)
    }

    /// Sets the modification time of the entry `name` itself; leaves its atime alone.
    ///
    /// # Errors
    /// The `utimensat(2)` error.
    pub fn set_mtime_at(&self, name: &OsStr, mtime: (i64, u32)) -> io::Result<()> {
        Ok(rustix::fs::utimensat(
            &self.fd,
            component(name)?.as_c_str(),
            &mtime_only(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Timestamps that set only the mtime.
pub(crate) fn mtime_only(mtime: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: i64::from(mtime.1) as _,
        },
    }
}

/// `fstat` of any descriptor.
///
/// # Errors
/// The `fstat(2)` error.
pub fn fstat(fd: impl AsFd) -> io::Result<Stat> {
    Ok(Stat::of(&rustix::fs::fstat(fd)?))
}

/// Whether an open error says "a component is not a directory" (a file, a symlink refused by
/// `O_NOFOLLOW` or `RESOLVE_NO_SYMLINKS`).
pub fn is_not_dir(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOTDIR | Errno::LOOP)
    )
}

/// Whether an error is "another file system is mounted there".
pub fn is_mount(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::XDEV.raw_os_error())
}

/// Reopens an `O_PATH` handle of a regular file with `flags` (plus `O_NONBLOCK`, so a lease
/// never makes us wait, `O_NOCTTY` and `O_CLOEXEC`), through `/proc/self/fd` (the same inode,
/// whatever its name now points to). `None` where `/proc` is not mounted.
fn reopen(handle: &OwnedFd, flags: OFlags) -> io::Result<Option<OwnedFd>> {
    let Some(proc_fd) = proc_fd()? else {
        return Ok(None);
    };
    Ok(Some(rustix::fs::openat(
        proc_fd,
        rustix::path::DecInt::from_fd(handle),
        flags | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// The descriptor of `/proc/self/fd`, opened on first use; `None` where `/proc` is not mounted.
fn proc_fd() -> io::Result<Option<BorrowedFd<'static>>> {
    if let Some(fd) = PROC_FD.get() {
        return Ok(Some(fd.as_fd()));
    }
    if NO_PROC.load(Ordering::Relaxed) {
        return Ok(None);
    }
    match rustix::fs::open("/proc/self/fd", DIR, Mode::empty()) {
        Ok(fd) => {
            // Two first uses at once: one descriptor is kept, the other closed.
            let _ = PROC_FD.set(fd);
            Ok(PROC_FD.get().map(|fd| fd.as_fd()))
        }
        Err(Errno::NOENT) => {
            NO_PROC.store(true, Ordering::Relaxed);
            tracing::warn!(
                "/proc is not mounted: workspace files are opened with O_NONBLOCK after an O_PATH check"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
