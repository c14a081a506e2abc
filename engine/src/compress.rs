//! Blob encoding: zstd when it shrinks the data, raw otherwise, then sealed in an encrypted
//! repository; decoding opens, decompresses and verifies the id.

use std::borrow::Cow;
use std::cell::RefCell;

use cairn_formats::{BlobId, Codec};

use crate::keys::Crypt;
use crate::{Error, Result};

thread_local! {
    // One zstd context per thread, reused: creating a context costs about as much as decoding a
    // small blob (10 % of a restore's CPU when every blob made its own).
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        let c = match slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        c.compress(raw)
    })
}

/// Decompresses into a buffer of at most `capacity` bytes: a frame that would decode to more
/// fails instead of growing it.
fn decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress(stored, capacity)
    })
}

/// An encoded blob, ready for a pack.
#[derive(Debug)]
pub struct EncodedBlob {
    /// The id of the plaintext.
    pub id: BlobId,
    /// Stored bytes.
    pub data: Vec<u8>,
    /// Plaintext length.
    pub raw_len: u32,
    /// How `data` decodes.
    pub codec: Codec,
}

/// Compresses `raw` at `level` (0 = never) and keeps the result only if it is smaller; seals it
/// when the repository is encrypted.
pub fn encode_blob(crypt: &Crypt, id: BlobId, raw: &[u8], level: i32) -> EncodedBlob {
    let raw_len = u32::try_from(raw.len()).expect("invariant: blobs are at most 4 GiB");
    let z = (level > 0 && raw.len() >= 64)
        .then(|| compress(raw, level).ok())
        .flatten()
        .filter(|z| z.len() < raw.len());
    let (codec, stored): (Codec, Cow<'_, [u8]>) = match z {
        Some(z) => (Codec::Zstd, Cow::Owned(z)),
        None => (Codec::Raw, Cow::Borrowed(raw)),
    };
    let data = match crypt.keys() {
        Some(k) => k.seal_blob(&id, codec, raw_len, &stored),
        None => stored.into_owned(),
    };
    EncodedBlob {
        id,
        data,
        raw_len,
        codec,
    }
}

/// Decodes stored bytes and checks they hash to `id`; a raw blob is returned without a copy.
/// `object` names the blob for errors (called only on one).
///
/// # Errors
/// [`Error::Corrupt`] if decompression fails, the length is wrong, or the hash does not match.
pub fn decode_blob<'a>(
    crypt: &Crypt,
    object: impl Fn() -> String,
    id: &BlobId,
    stored: &'a [u8],
    raw_len: u32,
    codec: Codec,
) -> Result<Cow<'a, [u8]>> {
    let corrupt = |detail: String| Error::Corrupt {
        object: object(),
        detail,
    };
    let stored = match crypt.keys() {
        Some(k) => Cow::Owned(
            k.open_blob(id, codec, raw_len, stored)
                .map_err(|e| corrupt(format!("blob {}: {e}", id.short())))?,
        ),
        None => Cow::Borrowed(stored),
    };
    let raw = match codec {
        Codec::Raw => stored,
        Codec::Zstd => {
            // One-shot into a buffer of the recorded size: faster than streaming.
            Cow::Owned(decompress(&stored, raw_len as usize).map_err(|e| corrupt(format!("zstd: {e}")))?)
        }
    };
    if raw.len() != raw_len as usize {
        return Err(corrupt(format!(
            "decoded to {} bytes, expected {raw_len}",
            raw.len()
        )));
    }
    if crypt.blob_id(&raw) != *id {
        return Err(corrupt(format!(
            "content does not hash to blob id {}",
            id.short()
        )));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_incompressible_stays_raw() {
        let text = b"hello hello hello hello hello hello hello hello hello hello hello".repeat(20);
        let id = BlobId::of(&text);
        let e = encode_blob(&Crypt::plain(), id, &text, 3);
        assert_eq!(e.codec, Codec::Zstd);
        assert_eq!(
            decode_blob(&Crypt::plain(), || "t".into(), &id, &e.data, e.raw_len, e.codec).expect("decodes"),
            text
        );

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let e = encode_blob(&Crypt::plain(), BlobId::of(&noise), &noise, 3);
        assert!(e.data.len() <= noise.len());
    }

    #[test]
    fn flipped_byte_is_corrupt() {
        let text = b"abcdefgh".repeat(100);
        let id = BlobId::of(&text);
        let mut e = encode_blob(&Crypt::plain(), id, &text, 0);
        e.data[5] ^= 1;
        let err = decode_blob(
            &Crypt::plain(),
            || "pack x".into(),
            &id,
            &e.data,
            e.raw_len,
            e.codec,
        )
        .expect_err("must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    fn sealed() -> Crypt {
        Crypt::sealed(cairn_formats::RepoKeys::derive(
            &cairn_formats::RootKey::generate(),
            cairn_formats::RepoId([7; 16]),
        ))
    }

    #[test]
    fn sealed_blobs_round_trip_and_refuse_another_id_key_or_byte() {
        let c = sealed();
        let text = b"hello hello hello hello hello hello hello hello hello hello hello".repeat(20);
        let id = c.blob_id(&text);
        assert_ne!(id, BlobId::of(&text), "ids are keyed");
        let e = encode_blob(&c, id, &text, 3);
        assert_eq!(e.codec, Codec::Zstd);
        assert_eq!(
            &decode_blob(&c, || "t".into(), &id, &e.data, e.raw_len, e.codec).expect("opens")[..],
            &text[..]
        );
        let other = c.blob_id(b"other");
        assert!(
            decode_blob(&c, || "t".into(), &other, &e.data, e.raw_len, e.codec).is_err(),
            "another id"
        );
        assert!(
            decode_blob(&sealed(), || "t".into(), &id, &e.data, e.raw_len, e.codec).is_err(),
            "another key"
        );
        assert!(
            decode_blob(&c, || "t".into(), &id, &e.data, e.raw_len, Codec::Raw).is_err(),
            "another codec"
        );
        for i in [0, 30, e.data.len() - 1] {
            let mut bad = e.data.clone();
            bad[i] ^= 1;
            let err =
                decode_blob(&c, || "pack p".into(), &id, &bad, e.raw_len, e.codec).expect_err("flipped");
            assert!(
                err.to_string().contains("pack p") && err.to_string().contains("authenticate"),
                "{err}"
            );
        }
    }
}
