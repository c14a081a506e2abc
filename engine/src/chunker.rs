//! Content-defined chunking with FastCDC (2020, normalization level 1).
//!
//! An encrypted repository passes a seed derived from its root key: FastCDC XORs it into its gear
//! table, so boundaries differ between repositories (tenants). It is the crate's only way to key
//! the chunker; FORMAT.md says what it does and does not hide.
//!
//! Inputs no longer than the maximum chunk are chunked from one in-memory slice; longer inputs
//! stream through a `max`-sized buffer, so memory per file is bounded by the chunk limits.

use std::io::Read;

use cairn_formats::ChunkerParams;
use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

/// Splits `data` into chunks and calls `sink` with each one, in order. `seed` keys the gear table
/// (0: FastCDC's own).
pub fn chunk_slice<E>(
    params: &ChunkerParams,
    seed: u64,
    data: &[u8],
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    if data.len() <= params.min as usize {
        if !data.is_empty() {
            sink(data)?;
        }
        return Ok(());
    }
    for c in FastCDC::with_level_and_seed(
        data,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
        seed,
    ) {
        sink(&data[c.offset..c.offset + c.length])?;
    }
    Ok(())
}

/// Why [`chunk_reader`] stopped early.
#[derive(Debug)]
pub enum ChunkReadError<E> {
    /// Reading the input failed.
    Read(std::io::Error),
    /// The sink returned an error.
    Sink(E),
}

/// Reads `reader` to its end and calls `sink` with each chunk, in order.
///
/// # Errors
/// The reader's error, or the sink's.
pub fn chunk_reader<R: Read, E>(
    params: &ChunkerParams,
    seed: u64,
    reader: R,
    mut sink: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), ChunkReadError<E>> {
    let stream = StreamCDC::with_level_and_seed(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
        seed,
    );
    for c in stream {
        let c = c.map_err(|e| ChunkReadError::Read(e.into()))?;
        sink(&c.data).map_err(ChunkReadError::Sink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    fn chunks_of(data: &[u8]) -> Vec<Vec<u8>> {
        chunks_keyed(data, 0)
    }

    fn chunks_keyed(data: &[u8], key: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chunk_slice::<()>(&small(), key, data, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .expect("invariant: sink never fails");
        out
    }

    fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn concatenated_chunks_equal_input(seed in any::<u64>(), len in 0usize..40_000) {
            let data = pseudo_random(seed, len);
            let chunks = chunks_of(&data);
            prop_assert_eq!(chunks.concat(), data.clone());
            for c in &chunks[..chunks.len().saturating_sub(1)] {
                prop_assert!(c.len() >= 256 && c.len() <= 4096);
            }
            let mut streamed = Vec::new();
            chunk_reader::<_, ()>(&small(), 0, &data[..], |c| { streamed.push(c.to_vec()); Ok(()) }).expect("reads from a slice");
            prop_assert_eq!(streamed, chunks);
            let key = seed | 1;
            let keyed = chunks_keyed(&data, key);
            prop_assert_eq!(keyed.concat(), data.clone());
            let mut streamed = Vec::new();
            chunk_reader::<_, ()>(&small(), key, &data[..], |c| { streamed.push(c.to_vec()); Ok(()) }).expect("reads from a slice");
            prop_assert_eq!(streamed, keyed);
        }

        #[test]
        fn boundaries_resync_after_an_insertion(seed in any::<u64>(), at in 0usize..30_000, ins in proptest::collection::vec(any::<u8>(), 1..64)) {
            let data = pseudo_random(seed, 60_000);
            let mut edited = data.clone();
            edited.splice(at..at, ins.iter().copied());
            let before = chunks_of(&data);
            let after: std::collections::HashSet<Vec<u8>> = chunks_of(&edited).into_iter().collect();
            // Cut points depend only on a local window, so the chunking resynchronises after the
            // edit: the chunks of the original that start well past it are found again.
            let mut pos = 0;
            let (mut tail, mut shared) = (0, 0);
            for c in &before {
                if pos >= at + 3 * 4096 {
                    tail += c.len();
                    if after.contains(c) { shared += c.len(); }
                }
                pos += c.len();
            }
            prop_assert!(shared * 10 >= tail * 9, "only {} of {} tail bytes shared", shared, tail);
        }
    }

    #[test]
    fn a_keyed_chunker_cuts_elsewhere() {
        let data = pseudo_random(42, 200_000);
        let plain: Vec<usize> = chunks_of(&data).iter().map(Vec::len).collect();
        let keyed: Vec<usize> = chunks_keyed(&data, 0x9e37_79b9_7f4a_7c15)
            .iter()
            .map(Vec::len)
            .collect();
        assert_ne!(plain, keyed, "a seed must move the boundaries");
    }
}
