//! The local directory store: the embedded default.
//!
//! Each key is a file under the root. Writes go to a temporary file in the destination directory,
//! are fsynced, then published: create-only by `link(2)` (which fails if the name exists, so two
//! writers of one key never both win), compare-and-swap by `rename(2)` under an exclusive
//! `flock(2)` on a per-key lock file. The directory is fsynced after publishing, so an
//! acknowledged write survives a crash. Temporary files start with `.tmp-` and are never listed.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{GetResult, ObjectMeta, PutMode, Store, Version};
use crate::{Error, Result};

const TMP_PREFIX: &str = ".tmp-";
const LOCK_DIR: &str = ".locks";

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(TMP_PREFIX));
        if !ok {
            return Err(Error::Invalid(format!("invalid store key {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn version_of(data: &[u8]) -> Version {
    Version(blake3::hash(data).to_hex()[..32].to_string())
}

fn store_err(key: &str, e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::NotFound { key: key.to_string() },
        _ => Error::Store {
            key: key.to_string(),
            detail: e.to_string(),
            retryable: matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::TimedOut),
        },
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to a fresh temporary file next to `dest` and fsyncs it.
fn write_temp(dest: &Path, data: &[u8]) -> std::io::Result<tempfile::TempPath> {
    let dir = dest.parent().expect("invariant: store paths have a parent");
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(TMP_PREFIX).tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    Ok(tmp.into_temp_path())
}

fn put_sync(root: &Path, key: &str, dest: &Path, data: &[u8], mode: &PutMode) -> Result<Version> {
    let err = |e| store_err(key, e);
    match mode {
        PutMode::Create => {
            if dest.exists() {
                return Err(Error::AlreadyExists { key: key.to_string() });
            }
            let tmp = write_temp(dest, data).map_err(err)?;
            match fs::hard_link(&tmp, dest) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(Error::AlreadyExists { key: key.to_string() })
                }
                Err(e) => return Err(err(e)),
            }
            drop(tmp);
            sync_dir(dest.parent().expect("invariant: store paths have a parent")).map_err(err)?;
            Ok(version_of(data))
        }
        PutMode::Update(expected) => {
            let lock_dir = root.join(LOCK_DIR);
            fs::create_dir_all(&lock_dir).map_err(err)?;
            let lock_path = lock_dir.join(blake3::hash(key.as_bytes()).to_hex().as_str());
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(err)?;
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| err(e.into()))?;
            let current = match fs::read(dest) {
                Ok(b) => version_of(&b),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(Error::Conflict { key: key.to_string() })
                }
                Err(e) => return Err(err(e)),
            };
            if &current != expected {
                return Err(Error::Conflict { key: key.to_string() });
            }
            let tmp = write_temp(dest, data).map_err(err)?;
            tmp.persist(dest).map_err(|e| err(e.error))?;
            sync_dir(dest.parent().expect("invariant: store paths have a parent")).map_err(err)?;
            Ok(version_of(data))
        }
    }
}

fn list_sync(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectMeta>> {
    // Walk the deepest directory the prefix names completely, then filter by the full prefix.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_part)
    };
    let mut out = Vec::new();
    let mut stack = vec![(start, dir_part.to_string())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => continue,
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) || (rel.is_empty() && name == LOCK_DIR) {
                continue;
            }
            let key = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type()?;
            if ft.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push((ent.path(), key));
                }
            } else if ft.is_file() && key.starts_with(prefix) {
                let md = ent.metadata()?;
                out.push(ObjectMeta {
                    key,
                    size: md.len(),
                    modified: md.modified().ok().and_then(super::system_timestamp),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Invalid(format!("store worker panicked: {e}"))))
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let dest = self.path(key)?;
        let (root, key) = (self.root.clone(), key.to_string());
        blocking(move || put_sync(&root, &key, &dest, &data, &mode)).await
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let data = fs::read(&path).map_err(|e| store_err(&key, e))?;
            let version = version_of(&data);
            Ok(GetResult {
                data: Bytes::from(data),
                version,
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let f = File::open(&path).map_err(|e| store_err(&key, e))?;
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|_| Error::Invalid(format!("{key}: range too large")))?;
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                match f.read_at(&mut buf[done..], range.start + done as u64) {
                    Ok(0) => {
                        return Err(Error::Corrupt {
                            object: key.clone(),
                            detail: format!(
                                "object ends at {} but bytes {}..{} were expected",
                                range.start + done as u64,
                                range.start,
                                range.end
                            ),
                        })
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(store_err(&key, e)),
                }
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || {
            let mut f = File::open(&path).map_err(|e| store_err(&key, e))?;
            let size = f.seek(SeekFrom::End(0)).map_err(|e| store_err(&key, e))?;
            let modified = f
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(super::system_timestamp);
            Ok(ObjectMeta { key, size, modified })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || list_sync(&root, &prefix).map_err(|e| store_err(&prefix, e))).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let key = key.to_string();
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(&key, e)),
        })
        .await
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}
