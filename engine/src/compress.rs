//! Blob encoding: zstd when it shrinks the data, raw otherwise; decoding verifies the id.

use cairn_formats::{BlobId, Codec};

use crate::{Error, Result};

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

/// Compresses `raw` at `level` (0 = never) and keeps the result only if it is smaller.
pub fn encode_blob(id: BlobId, raw: &[u8], level: i32) -> EncodedBlob {
    let raw_len = u32::try_from(raw.len()).expect("invariant: blobs are at most 4 GiB");
    if level > 0 && raw.len() >= 64 {
        if let Ok(z) = zstd::bulk::compress(raw, level) {
            if z.len() < raw.len() {
                return EncodedBlob {
                    id,
                    data: z,
                    raw_len,
                    codec: Codec::Zstd,
                };
            }
        }
    }
    EncodedBlob {
        id,
        data: raw.to_vec(),
        raw_len,
        codec: Codec::Raw,
    }
}

/// Decodes stored bytes and checks they hash to `id`. `object` names the blob for errors.
///
/// # Errors
/// [`Error::Corrupt`] if decompression fails, the length is wrong, or the hash does not match.
pub fn decode_blob(object: &str, id: &BlobId, stored: &[u8], raw_len: u32, codec: Codec) -> Result<Vec<u8>> {
    let corrupt = |detail: String| Error::Corrupt {
        object: object.to_string(),
        detail,
    };
    let raw = match codec {
        Codec::Raw => stored.to_vec(),
        Codec::Zstd => {
            // One-shot into a buffer of the recorded size: faster than streaming, and a frame that
            // would decode to more than `raw_len` bytes fails instead of growing the buffer.
            let mut out = vec![0u8; raw_len as usize];
            let n = zstd::bulk::decompress_to_buffer(stored, &mut out[..])
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            out.truncate(n);
            out
        }
    };
    if raw.len() != raw_len as usize {
        return Err(corrupt(format!(
            "decoded to {} bytes, expected {raw_len}",
            raw.len()
        )));
    }
    if BlobId::of(&raw) != *id {
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
        let e = encode_blob(id, &text, 3);
        assert_eq!(e.codec, Codec::Zstd);
        assert_eq!(
            decode_blob("t", &id, &e.data, e.raw_len, e.codec).expect("decodes"),
            text
        );

        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let e = encode_blob(BlobId::of(&noise), &noise, 3);
        assert!(e.data.len() <= noise.len());
    }

    #[test]
    fn flipped_byte_is_corrupt() {
        let text = b"abcdefgh".repeat(100);
        let id = BlobId::of(&text);
        let mut e = encode_blob(id, &text, 0);
        e.data[5] ^= 1;
        let err = decode_blob("pack x", &id, &e.data, e.raw_len, e.codec).expect_err("must fail");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
