//! The local index: a RocksDB database outside the workspace that remembers where blobs are,
//! which packs exist and which index record covers them, and a stat cache of files already read.
//!
//! Everything here can be rebuilt from the store (index records, packs), so losing it costs time,
//! never data. Blob locations enter only after their pack is stored (or from a stored index
//! record), so the index never claims a blob the store does not hold. A pack whose record is still
//! `None` was uploaded by a session that did not finish; the next backup that references it adopts
//! it into its own index record.

use std::path::{Path, PathBuf};

use cairn_formats::{BlobId, Extent, IndexId, IndexPack, IndexRecord, PackEntry, PackId, PackKind};
use rocksdb::{ColumnFamily, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const CF_BLOBS: &str = "blobs";
const CF_PACKS: &str = "packs";
const CF_RECORDS: &str = "records";
const CF_STAT: &str = "stat";
/// Compacted index segments loaded: `<set>\0<shard u32 BE>` -> empty.
const CF_SHARDS: &str = "shards";
/// In the default column family: the GC generation the locations belong to.
const GC_GENERATION_KEY: &[u8] = b"gc-generation";

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// The pack's kind.
    pub kind: PackKind,
    /// The blob's place in the pack.
    pub entry: PackEntry,
}

/// What the index knows of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackInfo {
    /// Data or metadata.
    pub kind: PackKind,
    /// Length in bytes.
    pub size: u64,
    /// The index record that lists the whole pack, once one is stored.
    pub record: Option<IndexId>,
}

/// A stat-cache entry: a file's identity when it was last read, and its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatEntry {
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i128,
    /// `st_ctime` in nanoseconds.
    pub ctime_ns: i128,
    /// `st_ino`.
    pub ino: u64,
    /// The content as stored.
    pub extents: Vec<Extent>,
    /// The extended attributes it had (any change to them moves the ctime, so a matching entry
    /// vouches for them too, and a backup reads none for it).
    pub xattrs: Vec<cairn_formats::Xattr>,
}

impl StatEntry {
    /// The ctime of an entry that only records a file's last good version: it never matches a
    /// real ctime, so it never lets a backup skip reading the file.
    pub const UNTRUSTED: i128 = i128::MIN;

    /// A file's identity from its `lstat`, its content and its extended attributes.
    pub(crate) fn of(
        st: &crate::volume::dir::Stat,
        extents: Vec<Extent>,
        xattrs: Vec<cairn_formats::Xattr>,
    ) -> Self {
        StatEntry {
            size: st.size,
            mtime_ns: st.mtime_ns(),
            ctime_ns: st.ctime_ns(),
            ino: st.ino,
            extents,
            xattrs,
        }
    }
}

/// The local index database.
pub struct LocalIndex {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for LocalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIndex").field("path", &self.path).finish()
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("invariant: encoding to a Vec cannot fail")
}

impl LocalIndex {
    /// Opens (creating if needed) the database in `path`.
    ///
    /// # Errors
    /// [`Error::Index`] if RocksDB cannot open it (for example another process holds its lock).
    pub fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // Small memtables: the index is a cache, and a backup must stay within a small memory budget.
        opts.set_write_buffer_size(4 << 20);
        opts.set_db_write_buffer_size(8 << 20);
        opts.set_keep_log_file_num(2);
        opts.increase_parallelism(2);
        let db =
            DB::open_cf(&opts, path, [CF_BLOBS, CF_PACKS, CF_RECORDS, CF_STAT, CF_SHARDS]).map_err(|e| {
                Error::Index {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        Ok(LocalIndex {
            db,
            path: path.to_path_buf(),
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("invariant: column families are created at open")
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Index {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, cf: &str, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key).map_err(|e| self.err(e))? {
            // A value that does not decode is treated as absent: the index is only a cache.
            Some(v) => Ok(postcard::from_bytes(&v).ok()),
            None => Ok(None),
        }
    }

    /// Where `id` is stored, if known.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn blob(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.get(CF_BLOBS, id.as_bytes())
    }

    /// What is known of a pack.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn pack(&self, id: &PackId) -> Result<Option<PackInfo>> {
        self.get(CF_PACKS, id.as_bytes())
    }

    /// Records a stored pack and its blobs, covered by `record` if known.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn add_pack(&self, pack: &IndexPack, record: Option<IndexId>) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.batch_pack(&mut batch, pack, record);
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn batch_pack(&self, batch: &mut WriteBatch, pack: &IndexPack, record: Option<IndexId>) {
        let blobs = self.cf(CF_BLOBS);
        for e in &pack.blobs {
            let loc = BlobLocation {
                pack: pack.pack,
                kind: pack.kind,
                entry: *e,
            };
            batch.put_cf(blobs, e.id.as_bytes(), enc(&loc));
        }
        let info = PackInfo {
            kind: pack.kind,
            size: pack.size,
            record,
        };
        batch.put_cf(self.cf(CF_PACKS), pack.pack.as_bytes(), enc(&info));
    }

    /// Whether the record `id` was already loaded.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn has_record(&self, id: &IndexId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_RECORDS), id.as_bytes())
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// Loads a stored index record: its packs and blobs become known, covered by `id`.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn add_record(&self, id: &IndexId, record: &IndexRecord) -> Result<()> {
        let mut batch = WriteBatch::default();
        for p in &record.packs {
            self.batch_pack(&mut batch, p, Some(*id));
        }
        batch.put_cf(self.cf(CF_RECORDS), id.as_bytes(), []);
        self.db.write(batch).map_err(|e| self.err(e))
    }

    /// Learns what a snapshot's loaded records say (as [`LocalIndex::add_record`] for each of
    /// them, without fetching them again): every blob location, every pack with its record.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn add_locations(&self, locations: &crate::repo::Locations) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut packs = std::collections::HashMap::new();
        for (id, loc) in locations.iter() {
            batch.put_cf(self.cf(CF_BLOBS), id.as_bytes(), enc(loc));
            packs.entry(loc.pack).or_insert(loc.kind);
        }
        for (pack, kind) in packs {
            let info = PackInfo {
                kind,
                size: locations.pack_size(&pack).unwrap_or(0),
                record: locations.pack_record(&pack),
            };
            batch.put_cf(self.cf(CF_PACKS), pack.as_bytes(), enc(&info));
        }
        for r in locations.records() {
            batch.put_cf(self.cf(CF_RECORDS), r.as_bytes(), []);
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn shard_key(set: &str, shard: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(set.len() + 5);
        k.extend_from_slice(set.as_bytes());
        k.push(0);
        k.extend_from_slice(&shard.to_be_bytes());
        k
    }

    /// Whether the segment `shard` of the compacted set `set` was loaded.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn has_shard(&self, set: &str, shard: u32) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_SHARDS), Self::shard_key(set, shard))
            .map_err(|e| self.err(e))?
            .is_some())
    }

    /// Loads a compacted index segment of `set`: blobs not yet known become known, located in
    /// their pack and covered by the segment's record, except those in `skip_packs` or covered by
    /// `skip_records` (what garbage collection condemned).
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn add_segment(
        &self,
        set: &str,
        seg: &cairn_formats::IndexSegment,
        skip_packs: &std::collections::HashSet<PackId>,
        skip_records: &std::collections::HashSet<IndexId>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        let usable: Vec<bool> = seg
            .packs
            .iter()
            .map(|p| {
                !skip_packs.contains(&p.pack)
                    && seg
                        .records
                        .get(p.record as usize)
                        .is_some_and(|r| !skip_records.contains(r))
            })
            .collect();
        for (i, p) in seg.packs.iter().enumerate() {
            if usable[i] && self.pack(&p.pack)?.is_none() {
                let info = PackInfo {
                    kind: p.kind,
                    size: p.size,
                    record: seg.records.get(p.record as usize).copied(),
                };
                batch.put_cf(self.cf(CF_PACKS), p.pack.as_bytes(), enc(&info));
            }
        }
        for b in &seg.blobs {
            let Some(p) = seg.packs.get(b.pack as usize).filter(|_| usable[b.pack as usize]) else {
                continue;
            };
            if self.blob(&b.entry.id)?.is_some() {
                continue;
            }
            let loc = BlobLocation {
                pack: p.pack,
                kind: p.kind,
                entry: b.entry,
            };
            batch.put_cf(self.cf(CF_BLOBS), b.entry.id.as_bytes(), enc(&loc));
        }
        batch.put_cf(self.cf(CF_SHARDS), Self::shard_key(set, seg.shard), []);
        self.db.write(batch).map_err(|e| self.err(e))
    }

    fn stat_key(workspace: &str, path: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(workspace.len() + 1 + path.len());
        k.extend_from_slice(workspace.as_bytes());
        k.push(0);
        k.extend_from_slice(path);
        k
    }

    /// The stat-cache entry of `path` (relative to the workspace root) in `workspace`.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn stat(&self, workspace: &str, path: &[u8]) -> Result<Option<StatEntry>> {
        self.get(CF_STAT, &Self::stat_key(workspace, path))
    }

    /// Remembers how `path` was read.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn put_stat(&self, workspace: &str, path: &[u8], entry: &StatEntry) -> Result<()> {
        self.db
            .put_cf(self.cf(CF_STAT), Self::stat_key(workspace, path), enc(entry))
            .map_err(|e| self.err(e))
    }

    /// Remembers many files at once (one write batch), as a restore does for what it wrote.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn put_stats(&self, workspace: &str, entries: &[(Vec<u8>, StatEntry)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (path, entry) in entries {
            batch.put_cf(self.cf(CF_STAT), Self::stat_key(workspace, path), enc(entry));
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    /// The GC generation the blob locations were learned in (0 if never set).
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn gc_generation(&self) -> Result<u64> {
        Ok(self
            .db
            .get(GC_GENERATION_KEY)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| {
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes)
            }))
    }

    /// Forgets every blob location, pack and record (garbage collection may have deleted some
    /// since they were learned) and records `generation`. The stat cache stays: its entries are
    /// used only when every chunk they name is known again.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn reset_locations(&self, generation: u64) -> Result<()> {
        for cf in [CF_BLOBS, CF_PACKS, CF_RECORDS, CF_SHARDS] {
            self.db
                .delete_range_cf(self.cf(cf), [0u8; 0].as_slice(), [0xffu8; 40].as_slice())
                .map_err(|e| self.err(e))?;
        }
        self.db
            .put(GC_GENERATION_KEY, generation.to_le_bytes())
            .map_err(|e| self.err(e))
    }

    /// Forgets a stat-cache entry.
    ///
    /// # Errors
    /// [`Error::Index`] on a database failure.
    pub fn drop_stat(&self, workspace: &str, path: &[u8]) -> Result<()> {
        self.db
            .delete_cf(self.cf(CF_STAT), Self::stat_key(workspace, path))
            .map_err(|e| self.err(e))
    }
}
