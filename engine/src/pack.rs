//! Building packs: blobs appended back to back, then the self-describing trailer.

use bytes::Bytes;
use cairn_formats::{PackEntry, PackId, PackKind, PackTrailer, PACK_HEADER_LEN};

use crate::compress::{encode_blob, EncodedBlob};
use crate::keys::Crypt;

/// A pack being filled.
#[derive(Debug)]
pub struct PackBuilder {
    crypt: Crypt,
    kind: PackKind,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A sealed pack, ready to upload.
#[derive(Debug, Clone)]
pub struct FinishedPack {
    /// BLAKE3 of `bytes`.
    pub id: PackId,
    /// Data or metadata.
    pub kind: PackKind,
    /// The whole pack object.
    pub bytes: Bytes,
    /// Its blobs, as in the trailer.
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    /// An empty pack expected to grow to at most `target` bytes of blobs; the capacity leaves
    /// room for the trailer (about 60 bytes a blob) so sealing does not reallocate.
    pub fn new(crypt: &Crypt, kind: PackKind, target: usize) -> Self {
        let mut buf = Vec::with_capacity(target + (target >> 4) + 64);
        buf.extend_from_slice(PackTrailer::magic(crypt.keys()));
        PackBuilder {
            crypt: crypt.clone(),
            kind,
            buf,
            entries: Vec::new(),
        }
    }

    /// Appends a blob.
    pub fn add(&mut self, blob: &EncodedBlob) {
        self.entries.push(PackEntry {
            id: blob.id,
            offset: self.buf.len() as u64,
            stored_len: u32::try_from(blob.data.len()).expect("invariant: blobs are at most 4 GiB"),
            raw_len: blob.raw_len,
            codec: blob.codec,
        });
        self.buf.extend_from_slice(&blob.data);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the blob region of another pack (`PACK_HEADER_LEN..` up to its trailer) byte for
    /// byte, with its trailer's entries; returns where the region starts in this pack.
    pub fn append_region(&mut self, region: &[u8], entries: &[PackEntry]) -> u64 {
        self.append_range(region, PACK_HEADER_LEN, entries)
    }

    /// Appends `bytes`, which were at offset `from` of another pack, with the entries of the blobs
    /// they hold (offsets in that pack); returns where they start in this pack.
    pub fn append_range(&mut self, bytes: &[u8], from: u64, entries: &[PackEntry]) -> u64 {
        let at = self.buf.len() as u64;
        for e in entries {
            let mut e = *e;
            e.offset = e.offset - from + at;
            self.entries.push(e);
        }
        self.buf.extend_from_slice(bytes);
        at
    }

    /// Adds a random 16-byte blob and finishes, so that no two packs are ever the same bytes (a
    /// pack's name is the hash of its bytes). A backup must never "re-create" a pack that garbage
    /// collection condemned (create-only puts would report it as already there, and the sweep
    /// would then delete what this backup relies on); a unique pack cannot collide with one.
    /// Restores never read the blob; `check --read-data` verifies it like any other.
    pub fn seal(mut self) -> FinishedPack {
        let nonce: [u8; 16] = rand::random();
        let blob = encode_blob(&self.crypt, self.crypt.blob_id(&nonce), &nonce, 0);
        self.add(&blob);
        self.finish()
    }

    /// [`PackBuilder::seal`] with the blobs in random order, so that a pack's layout does not
    /// follow the order of the files they came from. For packs built from whole blobs only (a
    /// repack copies runs of blobs whose offsets its moves record, and must keep them).
    pub fn seal_shuffled(mut self) -> FinishedPack {
        use rand::seq::SliceRandom;
        if self.entries.len() > 1 {
            let mut order: Vec<usize> = (0..self.entries.len()).collect();
            order.shuffle(&mut rand::thread_rng());
            let mut buf = Vec::with_capacity(self.buf.capacity());
            buf.extend_from_slice(&self.buf[..PACK_HEADER_LEN as usize]);
            let mut entries = Vec::with_capacity(self.entries.len());
            for i in order {
                let mut e = self.entries[i];
                let r = e.range();
                e.offset = buf.len() as u64;
                buf.extend_from_slice(&self.buf[r.start as usize..r.end as usize]);
                entries.push(e);
            }
            self.buf = buf;
            self.entries = entries;
        }
        self.seal()
    }

    /// Writes the trailer and computes the pack id.
    pub fn finish(self) -> FinishedPack {
        let mut buf = self.buf;
        let trailer = PackTrailer {
            kind: self.kind,
            blobs: self.entries,
        };
        trailer.append_to(self.crypt.keys(), &mut buf);
        FinishedPack {
            id: PackId::of(&buf),
            kind: self.kind,
            bytes: Bytes::from(buf),
            entries: trailer.blobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::decode_blob;

    #[test]
    fn finished_pack_describes_itself() {
        for c in [
            Crypt::plain(),
            Crypt::sealed(cairn_formats::RepoKeys::derive(
                &cairn_formats::RootKey::generate(),
                cairn_formats::RepoId([1; 16]),
            )),
        ] {
            described(&c, false);
            described(&c, true);
        }
    }

    fn described(c: &Crypt, shuffled: bool) {
        let mut b = PackBuilder::new(c, PackKind::Data, 1024);
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 * (i as usize + 1)]).collect();
        for raw in &blobs {
            b.add(&encode_blob(c, c.blob_id(raw), raw, 3));
        }
        let p = if shuffled { b.seal_shuffled() } else { b.finish() };
        let t = PackTrailer::decode_pack(c.keys(), &p.bytes).expect("valid pack");
        assert_eq!(t.blobs, p.entries);
        let mut found = 0;
        for e in &t.blobs {
            let Some(raw) = blobs.iter().find(|r| c.blob_id(r) == e.id) else {
                continue; // the nonce blob of a sealed pack
            };
            found += 1;
            let r = e.range();
            let got = decode_blob(
                c,
                || "p".into(),
                &e.id,
                &p.bytes[r.start as usize..r.end as usize],
                e.raw_len,
                e.codec,
            )
            .expect("blob decodes");
            assert_eq!(&got[..], &raw[..]);
        }
        assert_eq!(found, blobs.len());
        assert_eq!(p.id, PackId::of(&p.bytes));
    }
}
