//! Read buffers handed back for reuse: a restore makes hundreds of multi-MiB ranged reads, and a
//! fresh allocation for each faults in its pages anew (5 % of a restore's CPU from S3). The bytes
//! a read returns own their buffer; when the last of them is dropped, the buffer goes back to the
//! pool, which keeps a few of the largest.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers kept for reuse, at most (a restore has four 8 MiB reads in flight).
const KEEP: usize = 4;
/// Smaller reads take a fresh allocation: it comes from the allocator's free lists, not the OS.
const MIN: usize = 1 << 20;

/// A pool of read buffers.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty buffer that holds at least `len` bytes without growing: the smallest free one
    /// that does.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len < MIN {
            return Vec::with_capacity(len);
        }
        let reused = {
            let mut free = self
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// `buf` as bytes that return it to the pool when dropped.
    pub(crate) fn bytes(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < MIN {
            return;
        }
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        free.push(buf);
        if free.len() > KEEP {
            // Drop the smallest.
            let (i, _) = free
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .expect("invariant: more than KEEP buffers");
            free.swap_remove(i);
        }
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_read_returns_its_buffer_and_the_pool_stays_small() {
        let pool = Arc::new(BufferPool::default());
        let mut b = pool.take(MIN);
        b.extend_from_slice(&[7u8; 1000]);
        let ptr = b.as_ptr();
        let bytes = pool.bytes(b);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(&part[..], &[7u8; 10]);
        assert!(
            pool.free.lock().expect("lock").is_empty(),
            "still referenced by a slice"
        );
        drop(part);
        let again = pool.take(MIN);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same buffer, reused");
        let other = pool.take(MIN);
        assert!(other.as_ptr() != ptr, "taken once only");
        drop(pool.bytes(again));

        let many: Vec<Bytes> = (1..=10).map(|n| pool.bytes(pool.take(n * MIN))).collect();
        drop(many);
        drop(pool.bytes(pool.take(1000))); // too small to keep
        let free = pool.free.lock().expect("lock");
        assert_eq!(free.len(), KEEP);
        assert!(
            free.iter().all(|b| b.capacity() >= 7 * MIN),
            "the largest are kept"
        );
        drop(free);
        let fit = pool.take(3 * MIN).capacity();
        assert!(fit < 8 * MIN, "the smallest that fits: {fit}");
    }
}
