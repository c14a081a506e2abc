//! Browsing a snapshot without restoring it: an entry by path, a directory's listing, a walk,
//! the differences between two snapshots, and a file's bytes.
//!
//! Each reads only what it needs. Looking up one path reads the manifest, its index records and
//! the trees on the path (one range read each); reading a file then reads its chunks, adjacent
//! ones of a pack in one request. A walk of a whole snapshot (`find`, a recursive listing, a diff)
//! fetches the snapshot's metadata packs whole instead, a few large reads in place of one per
//! directory. Every tree and chunk is verified against its id as it is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_formats::{BlobId, Entry, Extent, Manifest, Meta, Node, SnapshotId, Tree};

use crate::compress::decode_blob;
use crate::repo::{Locations, Repo};
use crate::tree::SnapshotTrees;
use crate::{Error, Result};

/// The most bytes one coalesced read of adjacent chunks asks for.
const MAX_READ: u64 = 16 << 20;

/// One snapshot, open for browsing.
pub struct SnapshotView<'r> {
    repo: &'r Repo,
    /// The workspace.
    pub workspace: String,
    /// The snapshot.
    pub id: SnapshotId,
    /// Its manifest.
    pub manifest: Manifest,
    locations: Locations,
    whole: Option<SnapshotTrees>,
    cache: Mutex<HashMap<BlobId, Arc<Tree>>>,
}

/// A path inside a snapshot: components separated by `/`; empty, `/` or `.` is the root.
///
/// # Errors
/// [`Error::Invalid`] for a `..` component.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>> {
    let parts: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if parts.iter().any(|c| *c == b"..") {
        return Err(Error::Invalid(format!(
            "{}: paths inside a snapshot are relative to its root and cannot contain ..",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(parts)
}

/// `path` in the form walks report it: components joined by single `/`s, no leading or trailing
/// one, no `.` (the root is empty).
///
/// # Errors
/// As [`split_path`].
pub fn normalize_path(path: &[u8]) -> Result<Vec<u8>> {
    Ok(split_path(path)?.join(&b'/'))
}

impl<'r> SnapshotView<'r> {
    /// Opens `workspace`'s snapshot (`None` or `"latest"`: its head; else an id prefix).
    ///
    /// # Errors
    /// Unknown workspace or snapshot; store errors; corrupt manifest or index records.
    pub async fn open(repo: &'r Repo, workspace: &str, snapshot: Option<&str>) -> Result<SnapshotView<'r>> {
        let (id, manifest) = repo.resolve(workspace, snapshot).await?;
        let locations = repo.locations(&manifest).await?;
        Ok(SnapshotView {
            repo,
            workspace: workspace.to_string(),
            id,
            manifest,
            locations,
            whole: None,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Fetches every metadata pack of the snapshot, for walks over much of it.
    ///
    /// # Errors
    /// As [`SnapshotTrees::load`].
    pub async fn load_all_trees(&mut self) -> Result<()> {
        if self.whole.is_none() {
            self.whole = Some(SnapshotTrees::load(self.repo, &self.manifest).await?);
        }
        Ok(())
    }

    /// [`SnapshotView::load_all_trees`] for a second snapshot, taking the metadata packs `other`
    /// holds from memory (two snapshots of one workspace share most of them).
    ///
    /// # Errors
    /// As [`SnapshotTrees::load`].
    pub async fn load_trees_sharing(&mut self, other: &SnapshotView<'_>) -> Result<()> {
        if self.whole.is_none() {
            self.whole = Some(match &other.whole {
                Some(o) => SnapshotTrees::load_sharing(self.repo, &self.manifest, o).await?,
                None => SnapshotTrees::load(self.repo, &self.manifest).await?,
            });
        }
        Ok(())
    }

    /// The root directory as an entry (its name empty).
    pub fn root(&self) -> Entry {
        Entry {
            name: Vec::new(),
            node: Node::Dir {
                tree: self.manifest.root,
            },
            meta: self.manifest.root_meta.clone(),
        }
    }

    /// Reads and verifies one tree.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a tree that is not located, fails its hash or does not decode.
    pub async fn tree(&self, id: &BlobId) -> Result<Arc<Tree>> {
        if let Some(t) = self.cache.lock().expect("invariant: lock not poisoned").get(id) {
            return Ok(t.clone());
        }
        let tree = match &self.whole {
            Some(w) => w.tree(id)?,
            None => {
                let raw = self.blob(id).await?;
                Tree::decode(&raw).map_err(|e| Error::format(format!("tree {id}"), e))?
            }
        };
        let tree = Arc::new(tree);
        self.cache
            .lock()
            .expect("invariant: lock not poisoned")
            .insert(*id, tree.clone());
        Ok(tree)
    }

    /// Where a file's chunk is, checking that the index agrees with the tree on its length (a
    /// chunk of another length would shift everything after it).
    fn located(&self, id: &BlobId, len: u32) -> Result<&crate::index::BlobLocation> {
        let loc = self.locations.get(id)?;
        if loc.entry.raw_len != len || loc.kind != cairn_formats::PackKind::Data {
            return Err(Error::Corrupt {
                object: format!("blob {id}"),
                detail: format!(
                    "the tree gives it {len} bytes of file content, the index {} bytes in a {:?} pack",
                    loc.entry.raw_len, loc.kind
                ),
            });
        }
        Ok(loc)
    }

    /// One blob's bytes, read by range and verified.
    async fn blob(&self, id: &BlobId) -> Result<Bytes> {
        let loc = self.locations.get(id)?;
        let stored = self
            .repo
            .read_pack(loc.kind, &loc.pack, Some(loc.entry.range()))
            .await?;
        let key = cairn_formats::pack_key(loc.kind, &loc.pack);
        let raw = decode_blob(
            self.repo.crypt(),
            || format!("blob {} in {key}", id.short()),
            id,
            &stored,
            loc.entry.raw_len,
            loc.entry.codec,
        )?;
        Ok(Bytes::copy_from_slice(&raw))
    }

    /// The entry at `path` (the root for an empty path); `None` if there is none.
    ///
    /// # Errors
    /// A `..` in the path; trees that fail to load.
    pub async fn lookup(&self, path: &[u8]) -> Result<Option<Entry>> {
        let mut entry = self.root();
        for part in split_path(path)? {
            let Node::Dir { tree } = &entry.node else {
                return Ok(None);
            };
            let tree = self.tree(tree).await?;
            match tree.entries.iter().find(|e| e.name == part) {
                Some(e) => entry = e.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(entry))
    }

    /// [`SnapshotView::lookup`], with an error naming the path and the snapshot if it is absent.
    ///
    /// # Errors
    /// [`Error::Unknown`] if there is no such entry.
    pub async fn entry(&self, path: &[u8]) -> Result<Entry> {
        self.lookup(path).await?.ok_or_else(|| {
            Error::Unknown(format!(
                "no {} in snapshot {} of workspace {} (see `initctl ls {}@{}`)",
                String::from_utf8_lossy(path),
                self.id.short(),
                self.workspace,
                self.workspace,
                self.id.short()
            ))
        })
    }

    /// Visits `entry` (at `path`) and everything below it, parents before children; paths are
    /// relative to the snapshot's root, components joined by `/`.
    ///
    /// # Errors
    /// The first tree that fails to load, or the visitor's error.
    pub async fn walk(
        &self,
        path: &[u8],
        entry: &Entry,
        visit: &mut (dyn FnMut(&[u8], &Entry) -> Result<()> + Send),
    ) -> Result<()> {
        // Pre-order, names in order (as `find` lists): each popped entry is visited, then its
        // children pushed in reverse.
        let mut stack: Vec<(Vec<u8>, Entry)> = vec![(path.to_vec(), entry.clone())];
        while let Some((p, e)) = stack.pop() {
            visit(&p, &e)?;
            if let Node::Dir { tree } = &e.node {
                let tree = self.tree(tree).await?;
                stack.extend(tree.entries.iter().rev().map(|c| (join(&p, &c.name), c.clone())));
            }
        }
        Ok(())
    }

    /// A file's content, in order, as verified chunks (holes as zeros), handed to `out` one
    /// piece at a time (it may wait: a slow reader holds the next read back).
    ///
    /// # Errors
    /// [`Error::Invalid`] if `entry` is not a file; store and corruption errors; `out`'s errors.
    pub async fn read_file<F, Fut>(&self, entry: &Entry, mut out: F) -> Result<()>
    where
        F: FnMut(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>>,
    {
        let Node::File { extents, .. } = &entry.node else {
            return Err(Error::Invalid(format!(
                "{} is not a regular file",
                String::from_utf8_lossy(&entry.name)
            )));
        };
        let io = |e: std::io::Error| Error::Io {
            path: "the output".into(),
            source: e,
        };
        let mut i = 0;
        while i < extents.len() {
            match extents[i] {
                Extent::Hole { len } => {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(1 << 20);
                        out(vec![0u8; n as usize]).await.map_err(io)?;
                        left -= n;
                    }
                    i += 1;
                }
                Extent::Chunk { id, len } => {
                    // Chunks stored back to back in one pack are read in one request.
                    let first = self.located(&id, len)?;
                    let mut run = vec![(id, first.entry)];
                    let mut end = first.entry.range().end;
                    let mut j = i + 1;
                    while let Some(Extent::Chunk { id: next, len }) = extents.get(j) {
                        let loc = self.located(next, *len)?;
                        if loc.pack != first.pack
                            || loc.entry.offset != end
                            || end - first.entry.offset + u64::from(loc.entry.stored_len) > MAX_READ
                        {
                            break;
                        }
                        end = loc.entry.range().end;
                        run.push((*next, loc.entry));
                        j += 1;
                    }
                    let start = first.entry.offset;
                    let stored = self
                        .repo
                        .read_pack(first.kind, &first.pack, Some(start..end))
                        .await?;
                    let key = cairn_formats::pack_key(first.kind, &first.pack);
                    for (id, e) in &run {
                        let r = (e.offset - start) as usize..(e.range().end - start) as usize;
                        let part = stored.get(r).ok_or_else(|| Error::Corrupt {
                            object: key.clone(),
                            detail: format!("short read for blob {}", id.short()),
                        })?;
                        let raw = decode_blob(
                            self.repo.crypt(),
                            || format!("blob {} in {key}", id.short()),
                            id,
                            part,
                            e.raw_len,
                            e.codec,
                        )?;
                        out(raw.into_owned()).await.map_err(io)?;
                    }
                    i = j;
                }
            }
        }
        Ok(())
    }

    /// Writes `entry` (at `path`) and everything below it to `w` as a tar stream (GNU format,
    /// with PAX extended attributes), paths relative to the snapshot's root; hard links as tar
    /// links, holes as zeros. Returns `w`.
    ///
    /// # Errors
    /// Store and corruption errors; `w`'s errors.
    pub async fn dump_tar<W: std::io::Write + Send + 'static>(
        &self,
        path: &[u8],
        entry: &Entry,
        w: W,
    ) -> Result<W> {
        use tokio::sync::mpsc;
        // The listing comes first (one request per directory unless the caller loaded the
        // metadata packs whole: `initctl dump` does for a directory).
        let mut entries = Vec::new();
        self.walk(path, entry, &mut |p, e| {
            if !p.is_empty() {
                entries.push((p.to_vec(), e.clone()));
            }
            Ok(())
        })
        .await?;
        type Body = mpsc::Receiver<Vec<u8>>;
        let (items, mut rx) = mpsc::channel::<(Vec<u8>, Entry, Option<Body>)>(16);
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<W> {
            let mut b = tar::Builder::new(FailClosed {
                inner: w,
                failed: false,
            });
            let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
            while let Some((path, e, body)) = rx.blocking_recv() {
                if let Err(e) = tar_entry(&mut b, &mut links, &path, &e, body) {
                    b.get_mut().failed = true;
                    return Err(e);
                }
            }
            Ok(b.into_inner()?.inner)
        });
        let fed = async {
            let mut links = std::collections::HashSet::new();
            for (p, e) in entries {
                // The first file of a link group carries the content; the others link to it.
                let first = match &e.node {
                    Node::File {
                        link_group: Some(g), ..
                    } => links.insert(*g),
                    Node::File { .. } => true,
                    _ => false,
                };
                if !first {
                    if items.send((p, e, None)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let (tx, body) = mpsc::channel(4);
                if items.send((p, e.clone(), Some(body))).await.is_err() {
                    break;
                }
                let tx = &tx;
                self.read_file(&e, |piece| async move {
                    tx.send(piece).await.map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "tar writer stopped")
                    })
                })
                .await?;
            }
            drop(items);
            Ok::<(), Error>(())
        };
        let fed = fed.await;
        let written = writer
            .await
            .map_err(|e| Error::Invalid(format!("tar writer: {e}")))?;
        let io = |e: std::io::Error| Error::Io {
            path: "the tar stream".into(),
            source: e,
        };
        match (fed, written) {
            (Ok(()), Ok(w)) => Ok(w),
            // The writer's error explains a feeder that found it gone...
            (Err(Error::Io { source, .. }), Err(e)) if source.kind() == std::io::ErrorKind::BrokenPipe => {
                Err(io(e))
            }
            // ...and the feeder's (a store or corruption error) a writer left short.
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(io(e)),
        }
    }
}

/// One entry of a tar stream.
fn tar_entry<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    links: &mut HashMap<u64, Vec<u8>>,
    path: &[u8],
    e: &Entry,
    body: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use tar::{EntryType, Header};
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let xattrs: Vec<(String, &[u8])> = e
        .meta
        .xattrs
        .iter()
        .filter_map(|x| {
            Some((
                format!("SCHILY.xattr.{}", std::str::from_utf8(&x.name).ok()?),
                &x.value[..],
            ))
        })
        .collect();
    if !xattrs.is_empty() {
        b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut h = Header::new_gnu();
    h.set_mode(e.meta.mode);
    h.set_uid(u64::from(e.meta.uid));
    h.set_gid(u64::from(e.meta.gid));
    h.set_mtime(u64::try_from(e.meta.mtime.secs).unwrap_or(0));
    h.set_size(0);
    match &e.node {
        Node::Dir { .. } => {
            h.set_entry_type(EntryType::Directory);
            b.append_data(&mut h, p, std::io::empty())
        }
        Node::File { size, link_group, .. } => match body {
            Some(body) => {
                if let Some(g) = link_group {
                    links.insert(*g, path.to_vec());
                }
                h.set_entry_type(EntryType::Regular);
                h.set_size(*size);
                b.append_data(
                    &mut h,
                    p,
                    BodyReader {
                        rx: body,
                        piece: Vec::new(),
                        at: 0,
                        left: *size,
                    },
                )
            }
            None => {
                let to = link_group
                    .and_then(|g| links.get(&g))
                    .cloned()
                    .unwrap_or_default();
                h.set_entry_type(EntryType::Link);
                b.append_link(&mut h, p, std::path::Path::new(std::ffi::OsStr::from_bytes(&to)))
            }
        },
        Node::Symlink { target } => {
            h.set_entry_type(EntryType::Symlink);
            b.append_link(
                &mut h,
                p,
                std::path::Path::new(std::ffi::OsStr::from_bytes(target)),
            )
        }
        Node::Fifo => {
            h.set_entry_type(EntryType::Fifo);
            b.append_data(&mut h, p, std::io::empty())
        }
        Node::CharDevice { rdev } | Node::BlockDevice { rdev } => {
            h.set_entry_type(if matches!(e.node, Node::CharDevice { .. }) {
                EntryType::Char
            } else {
                EntryType::Block
            });
            h.set_device_major(rustix::fs::major(*rdev))?;
            h.set_device_minor(rustix::fs::minor(*rdev))?;
            b.append_data(&mut h, p, std::io::empty())
        }
    }
}

/// A file's content, read from the feeder's channel: exactly the size its header gives, else an
/// error (a feeder that stopped early must not leave a short file padded as if whole).
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    left: u64,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.blocking_recv() {
                Some(p) => {
                    self.piece = p;
                    self.at = 0;
                }
                None if self.left == 0 => return Ok(0),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file content ended {} bytes short", self.left),
                    ))
                }
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "file content longer than its size",
            ));
        }
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Passes writes through until one fails, then fails every later one: once a tar stream broke,
/// nothing (not the end-of-archive blocks `tar::Builder` writes when dropped) may make it look
/// whole.
struct FailClosed<W> {
    inner: W,
    failed: bool,
}

impl<W: std::io::Write> std::io::Write for FailClosed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::other("the tar stream already failed"));
        }
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other("the tar stream already failed"));
        }
        self.inner.flush()
    }
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// How an entry differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// Content or type differs.
    Modified,
    /// Same content, other metadata (mode, owner, times, xattrs).
    Metadata,
}

/// One difference.
#[derive(Clone, Debug)]
pub struct Difference {
    /// The path, relative to the root.
    pub path: Vec<u8>,
    /// What changed.
    pub change: Change,
    /// The entry in the first snapshot (absent if added).
    pub before: Option<Entry>,
    /// The entry in the second (absent if removed).
    pub after: Option<Entry>,
}

/// Bytes a file holds (0 for anything else).
pub fn entry_size(e: &Entry) -> u64 {
    match &e.node {
        Node::File { size, .. } => *size,
        _ => 0,
    }
}

fn same_content(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (Node::File { extents: x, .. }, Node::File { extents: y, .. }) => x == y,
        (Node::Dir { .. }, Node::Dir { .. }) => true,
        _ => a == b,
    }
}

fn same_meta(a: &Meta, b: &Meta) -> bool {
    a == b
}

/// The differences between `a` and `b` below `path` (entries `ea` and `eb` at it, either absent):
/// every entry only in one, and every entry in both whose content or metadata differs, sorted by
/// path. A directory added or removed is listed with everything below it. Subtrees with the same
/// id are not read.
///
/// # Errors
/// Trees that fail to load.
pub async fn diff(
    a: &SnapshotView<'_>,
    b: &SnapshotView<'_>,
    path: &[u8],
    ea: Option<&Entry>,
    eb: Option<&Entry>,
) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<u8>, Option<BlobId>, Option<BlobId>)> = Vec::new();
    compare(&mut out, &mut stack, path, ea, eb);
    while let Some((dir, ta, tb)) = stack.pop() {
        if ta.is_some() && ta == tb {
            continue;
        }
        let la = match ta {
            Some(t) => a.tree(&t).await?.entries.clone(),
            None => Vec::new(),
        };
        let lb = match tb {
            Some(t) => b.tree(&t).await?.entries.clone(),
            None => Vec::new(),
        };
        // Both lists are sorted by name (FORMAT.md): merge them.
        let (mut i, mut j) = (0, 0);
        let mut pairs: Vec<(Option<&Entry>, Option<&Entry>)> = Vec::new();
        while i < la.len() || j < lb.len() {
            match (la.get(i), lb.get(j)) {
                (Some(x), Some(y)) if x.name == y.name => {
                    pairs.push((Some(x), Some(y)));
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.name < y.name => {
                    pairs.push((Some(x), None));
                    i += 1;
                }
                (Some(_), Some(y)) => {
                    pairs.push((None, Some(y)));
                    j += 1;
                }
                (Some(x), None) => {
                    pairs.push((Some(x), None));
                    i += 1;
                }
                (None, Some(y)) => {
                    pairs.push((None, Some(y)));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        let mut sub = Vec::new();
        for (x, y) in pairs {
            let name = x.or(y).map(|e| e.name.clone()).unwrap_or_default();
            let p = join(&dir, &name);
            compare(&mut out, &mut sub, &p, x, y);
        }
        stack.extend(sub.into_iter().rev());
    }
    // A directory the diff starts at is where it looks, not one of its findings.
    if matches!(
        (ea.map(|e| &e.node), eb.map(|e| &e.node)),
        (Some(Node::Dir { .. }), Some(Node::Dir { .. }))
    ) {
        out.retain(|d| d.path != path);
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(out)
}

fn compare(
    out: &mut Vec<Difference>,
    stack: &mut Vec<(Vec<u8>, Option<BlobId>, Option<BlobId>)>,
    path: &[u8],
    x: Option<&Entry>,
    y: Option<&Entry>,
) {
    let dir = |e: Option<&Entry>| match e.map(|e| &e.node) {
        Some(Node::Dir { tree }) => Some(*tree),
        _ => None,
    };
    let change = match (x, y) {
        (None, None) => return,
        (None, Some(_)) => Some(Change::Added),
        (Some(_), None) => Some(Change::Removed),
        (Some(x), Some(y)) => {
            if !same_content(&x.node, &y.node) {
                Some(Change::Modified)
            } else if !same_meta(&x.meta, &y.meta) {
                Some(Change::Metadata)
            } else {
                None
            }
        }
    };
    // The root itself is not listed, only what is below it.
    if let Some(change) = change.filter(|_| !path.is_empty()) {
        out.push(Difference {
            path: path.to_vec(),
            change,
            before: x.cloned(),
            after: y.cloned(),
        });
    }
    // A directory on either side: look inside (what a directory replaced by a file held is
    // removed; what a file replaced by a directory holds is added).
    let (da, db) = (dir(x), dir(y));
    if da.is_some() || db.is_some() {
        stack.push((path.to_vec(), da, db));
    }
}
