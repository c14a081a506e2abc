//! Version 2: every stored byte sealed under keys derived from one repository's root key.
//!
//! The construction, in full (FORMAT.md has it in prose):
//! - A repository has one random 256-bit root key `R`. From it BLAKE3 `derive_key` makes the
//!   sub-keys: `id` (keyed BLAKE3 blob ids), `chunker` (the FastCDC gear seed), `blob` (file
//!   chunks and trees) and `object` (manifests, index records, segments, move tables, heads, pack
//!   trailers).
//! - A sealed item is `salt (24 random bytes) || ciphertext || tag (16)`. It is AES-256-GCM under
//!   the one-message key `BLAKE3-keyed(sub-key, salt)` with the all-zero 96-bit nonce: each key
//!   seals exactly one message, so no nonce is ever reused and no key wears out, however many
//!   objects a tenant writes (random 96-bit nonces under one key would be bounded to 2^32
//!   messages). This is age's payload-key pattern with BLAKE3 for HKDF.
//! - The associated data binds the item to its repository and its place: a blob to its id, codec
//!   and length, an object to its header and its store key (or key prefix for objects named by the
//!   hash of their bytes), a trailer to its pack kind. A blob or object moved, swapped or copied in
//!   from another repository fails to open.
//!
//! Keys are held in [`zeroize::Zeroizing`] buffers and never printed: `Debug` says "redacted".

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::{BlobId, Codec, FormatError, PackKind, RepoId};

/// The header kind byte of sealed operational state (JSON: `gc/state`, heartbeats).
pub const STATE_KIND: u8 = 9;

/// Bytes of the random salt that opens every sealed item.
pub const SALT_LEN: usize = 24;
/// Bytes of the AES-GCM tag that ends every sealed item.
pub const TAG_LEN: usize = 16;
/// What sealing adds to an item's length.
pub const SEAL_OVERHEAD: usize = SALT_LEN + TAG_LEN;

const CTX_ID: &str = "cairn 2026-12-01 v2 blob id";
const CTX_CHUNKER: &str = "cairn 2026-12-01 v2 chunker seed";
const CTX_BLOB: &str = "cairn 2026-12-01 v2 blob sealing";
const CTX_OBJECT: &str = "cairn 2026-12-01 v2 object sealing";
const CTX_KEY_FILE: &str = "cairn 2026-12-01 v2 key file wrapping";

/// A repository's root key: 32 random bytes, zeroed when dropped, never printed.
pub struct RootKey(Zeroizing<[u8; 32]>);

impl RootKey {
    /// A new random root key from the operating system's generator.
    ///
    /// # Panics
    /// If the system's random generator fails (nothing sensible can continue without it).
    pub fn generate() -> RootKey {
        let mut k = Zeroizing::new([0u8; 32]);
        os_random(&mut k[..]);
        RootKey(k)
    }

    /// A root key from its bytes (unwrapped from a key object).
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> RootKey {
        RootKey(bytes)
    }

    /// The key's bytes, for wrapping it. Handle with care: never log, print or store them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(redacted)")
    }
}

/// The keys of one encrypted repository, derived from its root key.
pub struct RepoKeys {
    repo: RepoId,
    id: Zeroizing<[u8; 32]>,
    blob: Zeroizing<[u8; 32]>,
    object: Zeroizing<[u8; 32]>,
    chunker_seed: u64,
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKeys({}, redacted)", self.repo)
    }
}

fn derive(ctx: &str, material: &[u8]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(ctx, material))
}

/// Seals `plain` under the one-message key `BLAKE3-keyed(key, salt)`, appending
/// `salt || ciphertext || tag` to `out`.
fn seal_into(key: &[u8; 32], salt: &[u8; SALT_LEN], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let one = Zeroizing::new(*blake3::keyed_hash(key, salt).as_bytes());
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &one[..]).expect("invariant: 32-byte key"));
    out.reserve(SEAL_OVERHEAD + plain.len());
    out.extend_from_slice(salt);
    let start = out.len();
    out.extend_from_slice(plain);
    let tag = aead
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([0; NONCE_LEN]),
            Aad::from(aad),
            &mut out[start..],
        )
        .expect("invariant: AES-GCM seals any length a blob can have");
    out.extend_from_slice(tag.as_ref());
}

/// Opens `salt || ciphertext || tag`; `None` when it does not authenticate.
fn open_from(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEAL_OVERHEAD {
        return None;
    }
    let (salt, rest) = sealed.split_at(SALT_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let one = Zeroizing::new(*blake3::keyed_hash(key, <&[u8; SALT_LEN]>::try_from(salt).ok()?).as_bytes());
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &one[..]).ok()?);
    let mut out = vec![0u8; ct.len()];
    aead.open_separate_gather(
        Nonce::assume_unique_for_key([0; NONCE_LEN]),
        Aad::from(aad),
        ct,
        tag,
        &mut out,
    )
    .ok()?;
    Some(out)
}

/// Fills `out` from the operating system's generator (`getrandom(2)`). Not aws-lc's DRBG: its
/// first use seeds from CPU jitter entropy, 40-60 ms of CPU in every process (measured with perf),
/// which a `fork` or a restore would pay for a 24-byte salt.
fn os_random(out: &mut [u8]) {
    use rand::RngCore;
    rand::rngs::OsRng.fill_bytes(out);
}

fn random_salt() -> [u8; SALT_LEN] {
    let mut s = [0u8; SALT_LEN];
    os_random(&mut s);
    s
}

impl RepoKeys {
    /// Derives the keys of repository `repo` from its root key.
    pub fn derive(root: &RootKey, repo: RepoId) -> RepoKeys {
        let seed = derive(CTX_CHUNKER, root.expose());
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed[..8]);
        RepoKeys {
            repo,
            id: derive(CTX_ID, root.expose()),
            blob: derive(CTX_BLOB, root.expose()),
            object: derive(CTX_OBJECT, root.expose()),
            // FastCDC treats seed 0 as "no seed"; never derive it.
            chunker_seed: u64::from_le_bytes(s) | 1,
        }
    }

    /// The repository these keys belong to.
    pub fn repo(&self) -> RepoId {
        self.repo
    }

    /// A blob's id: BLAKE3 keyed with the repository's id key.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id, data).as_bytes())
    }

    /// The FastCDC gear-table seed (never 0).
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    fn blob_aad(&self, id: &BlobId, codec: Codec, raw_len: u32) -> [u8; 16 + 5 + 32 + 1 + 4] {
        let mut a = [0u8; 58];
        a[..16].copy_from_slice(&self.repo.0);
        a[16..21].copy_from_slice(b"BLOB2");
        a[21..53].copy_from_slice(&id.0);
        a[53] = match codec {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        };
        a[54..].copy_from_slice(&raw_len.to_le_bytes());
        a
    }

    /// Seals a blob's stored bytes (raw or compressed) for a pack.
    pub fn seal_blob(&self, id: &BlobId, codec: Codec, raw_len: u32, stored: &[u8]) -> Vec<u8> {
        self.seal_blob_with(id, codec, raw_len, stored, &random_salt())
    }

    /// [`RepoKeys::seal_blob`] with a given salt: for golden files only. Never reuse a salt.
    #[doc(hidden)]
    pub fn seal_blob_with(
        &self,
        id: &BlobId,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
        salt: &[u8; SALT_LEN],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        seal_into(
            &self.blob,
            salt,
            &self.blob_aad(id, codec, raw_len),
            stored,
            &mut out,
        );
        out
    }

    /// Opens a sealed blob.
    ///
    /// # Errors
    /// [`FormatError::Sealed`] if it does not authenticate as blob `id` of this repository.
    pub fn open_blob(
        &self,
        id: &BlobId,
        codec: Codec,
        raw_len: u32,
        sealed: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        open_from(&self.blob, &self.blob_aad(id, codec, raw_len), sealed)
            .ok_or(FormatError::Sealed { what: "blob" })
    }

    fn object_aad(&self, header: &[u8], binding: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(16 + header.len() + binding.len());
        a.extend_from_slice(&self.repo.0);
        a.extend_from_slice(header);
        a.extend_from_slice(binding.as_bytes());
        a
    }

    /// Seals an encoded object (its 8-byte header, then its body): the stored object is the header
    /// with version 2, then the sealed body. `binding` is the store key the object is written at,
    /// or for objects named by the hash of their stored bytes, the key's prefix.
    ///
    /// # Panics
    /// If `plain` is shorter than a header (an encoder bug).
    pub fn seal_object(&self, binding: &str, plain: &[u8]) -> Vec<u8> {
        self.seal_object_with(binding, plain, &random_salt())
    }

    /// [`RepoKeys::seal_object`] with a given salt: for golden files only. Never reuse a salt.
    #[doc(hidden)]
    pub fn seal_object_with(&self, binding: &str, plain: &[u8], salt: &[u8; SALT_LEN]) -> Vec<u8> {
        assert!(
            plain.len() >= crate::envelope::HEADER_LEN,
            "an encoded object has a header"
        );
        let mut header = [0u8; crate::envelope::HEADER_LEN];
        header.copy_from_slice(&plain[..crate::envelope::HEADER_LEN]);
        header[6..8].copy_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        let mut out = header.to_vec();
        seal_into(
            &self.object,
            salt,
            &self.object_aad(&header, binding),
            &plain[crate::envelope::HEADER_LEN..],
            &mut out,
        );
        out
    }

    /// Opens a stored version-2 object into its encoding (header with version 2, then the body),
    /// which the type's `decode` reads.
    ///
    /// # Errors
    /// [`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`] for a header that is not a
    /// version-2 one; [`FormatError::Sealed`] if it does not authenticate at `binding` in this
    /// repository (a wrong key, a flipped byte, an object moved or copied from elsewhere).
    pub fn open_object(
        &self,
        what: &'static str,
        binding: &str,
        stored: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        let h = crate::envelope::HEADER_LEN;
        if stored.len() < h || &stored[..5] != crate::envelope::MAGIC {
            return Err(FormatError::BadMagic { what });
        }
        let version = u16::from_le_bytes([stored[6], stored[7]]);
        if version != crate::FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what,
                found: version,
                supported: crate::FORMAT_VERSION,
            });
        }
        let body = open_from(
            &self.object,
            &self.object_aad(&stored[..h], binding),
            &stored[h..],
        )
        .ok_or(FormatError::Sealed { what })?;
        let mut out = Vec::with_capacity(h + body.len());
        out.extend_from_slice(&stored[..h]);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Seals a JSON document of operational state (`gc/state`, a heartbeat) stored at `binding`:
    /// the header `"CAIRN"`, kind 9, version 2, then the sealed JSON.
    pub fn seal_state(&self, binding: &str, json: &[u8]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(crate::envelope::HEADER_LEN + json.len());
        plain.extend_from_slice(crate::envelope::MAGIC);
        plain.push(STATE_KIND);
        plain.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        plain.extend_from_slice(json);
        self.seal_object(binding, &plain)
    }

    /// Opens what [`RepoKeys::seal_state`] sealed, returning the JSON.
    ///
    /// # Errors
    /// As [`RepoKeys::open_object`], and [`FormatError::WrongKind`] for another kind of object.
    pub fn open_state(
        &self,
        what: &'static str,
        binding: &str,
        stored: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        if stored.len() > 5 && &stored[..5] == crate::envelope::MAGIC && stored[5] != STATE_KIND {
            return Err(FormatError::WrongKind {
                what,
                expected: STATE_KIND,
                found: stored[5],
            });
        }
        let mut plain = self.open_object(what, binding, stored)?;
        plain.drain(..crate::envelope::HEADER_LEN);
        Ok(plain)
    }

    fn trailer_aad(&self, kind: PackKind) -> [u8; 25] {
        let mut a = [0u8; 25];
        a[..16].copy_from_slice(&self.repo.0);
        a[16..24].copy_from_slice(crate::PACK_MAGIC_V2);
        a[24] = match kind {
            PackKind::Data => 0,
            PackKind::Meta => 1,
        };
        a
    }

    /// Seals a pack trailer's encoding.
    pub fn seal_trailer(&self, kind: PackKind, plain: &[u8]) -> Vec<u8> {
        self.seal_trailer_with(kind, plain, &random_salt())
    }

    /// [`RepoKeys::seal_trailer`] with a given salt: for golden files only. Never reuse a salt.
    #[doc(hidden)]
    pub fn seal_trailer_with(&self, kind: PackKind, plain: &[u8], salt: &[u8; SALT_LEN]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_into(&self.object, salt, &self.trailer_aad(kind), plain, &mut out);
        out
    }

    /// Opens a pack trailer of either kind, returning the kind it was sealed as and its encoding.
    ///
    /// # Errors
    /// [`FormatError::Sealed`].
    pub fn open_trailer(&self, sealed: &[u8]) -> Result<(PackKind, Vec<u8>), FormatError> {
        for kind in [PackKind::Data, PackKind::Meta] {
            if let Some(p) = open_from(&self.object, &self.trailer_aad(kind), sealed) {
                return Ok((kind, p));
            }
        }
        Err(FormatError::Sealed { what: "pack trailer" })
    }
}

/// The key-encryption key of a key file: derived from the whole file's bytes.
pub struct FileKek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for FileKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKek(redacted)")
    }
}

/// Fewest bytes a key file may hold: it is a key, not a password (no slow hash stretches it).
pub const MIN_KEY_FILE_LEN: usize = 32;

impl FileKek {
    /// Derives the key-encryption key from a key file's contents. A trailing newline (a text key
    /// written with `echo`) is ignored when at least [`MIN_KEY_FILE_LEN`] bytes remain, so 32 random
    /// bytes that happen to end in 0x0a are used whole.
    ///
    /// # Errors
    /// [`FormatError::Invalid`] if it holds fewer than [`MIN_KEY_FILE_LEN`] bytes.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<FileKek, FormatError> {
        let b = match bytes.strip_suffix(b"\n") {
            Some(t) if t.len() >= MIN_KEY_FILE_LEN => t,
            _ => bytes,
        };
        if b.len() < MIN_KEY_FILE_LEN {
            return Err(FormatError::Invalid {
                what: "key file",
                value: format!("{} bytes", b.len()),
                reason: "a key file holds at least 32 random bytes (make one with `head -c 32 /dev/urandom > key`)",
            });
        }
        Ok(FileKek(derive(CTX_KEY_FILE, b)))
    }

    /// Wraps `root`, bound to `aad` (`KeyObject::binding`).
    pub fn wrap(&self, root: &RootKey, aad: &[u8]) -> Vec<u8> {
        self.wrap_with(root, aad, &random_salt())
    }

    /// [`FileKek::wrap`] with a given salt: for golden files only. Never reuse a salt.
    #[doc(hidden)]
    pub fn wrap_with(&self, root: &RootKey, aad: &[u8], salt: &[u8; SALT_LEN]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_into(&self.0, salt, aad, root.expose(), &mut out);
        out
    }

    /// Unwraps a root key; `None` if this file's key did not wrap it.
    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Option<RootKey> {
        let plain = Zeroizing::new(open_from(&self.0, aad, wrapped)?);
        let bytes: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(RootKey::from_bytes(Zeroizing::new(bytes)))
    }
}
