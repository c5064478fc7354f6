//! The memory a shard copies received datagrams into before handing them to quinn-proto: 1 MiB
//! chunks, each datagram split off the current chunk as its own `BytesMut`, so a receive
//! allocates nothing per datagram.
//!
//! A chunk can be written again only once every datagram split from it has been dropped
//! (quinn-proto keeps some: stream data not yet read, a connection's first Initial). When the
//! current chunk is used up while datagrams still pin it, it is set aside (at most
//! [`SPARE_CHUNKS`], oldest dropped first) and later reused when nothing pins it any more,
//! instead of being freed. Why: a freed chunk went back to the allocator (often as an `munmap`),
//! and each fresh chunk then cost 256 page faults as the copies touched it: half of a shard's
//! page faults, about 2% of its CPU per handshake at 8 shards.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Bytes per chunk. Why: large enough that the allocation is amortised over hundreds of
/// datagrams, small enough that a few long-lived stream buffers pinning a chunk waste little.
pub(crate) const ARENA_CHUNK: usize = 1 << 20;

/// Used-up chunks kept for reuse. Why: under load, a chunk's datagrams are all released within
/// one or two chunks' worth of traffic (handshakes last milliseconds); a chunk pinned for longer
/// than three more chunks is dropped rather than hoarded.
pub(crate) const SPARE_CHUNKS: usize = 3;

/// A bump allocator for received datagrams (see the module docs).
pub(crate) struct Arena {
    chunk: BytesMut,
    /// Used-up chunks, oldest first, waiting for their datagrams to be dropped.
    spare: VecDeque<BytesMut>,
    chunk_size: usize,
}

impl Default for Arena {
    fn default() -> Self {
        Self::with_chunk_size(ARENA_CHUNK)
    }
}

impl Arena {
    /// An arena of `chunk_size`-byte chunks. The first is allocated now: only the pages the
    /// copies touch become resident.
    pub(crate) fn with_chunk_size(chunk_size: usize) -> Self {
        Self {
            chunk: BytesMut::with_capacity(chunk_size),
            spare: VecDeque::with_capacity(SPARE_CHUNKS),
            chunk_size,
        }
    }

    /// A `BytesMut` holding a copy of `data`.
    pub(crate) fn copy(&mut self, data: &[u8]) -> BytesMut {
        if self.chunk.capacity() < data.len() {
            self.next_chunk(data.len());
        }
        self.chunk.extend_from_slice(data);
        self.chunk.split_to(data.len())
    }

    /// Makes the current chunk one with room for `need` bytes: itself if nothing pins it any
    /// more, else a spare nothing pins, else a new one (setting the used-up chunk aside).
    fn next_chunk(&mut self, need: usize) {
        let size = self.chunk_size.max(need);
        if self.chunk.try_reclaim(size) {
            return;
        }
        let next = match self.spare.iter_mut().position(|c| c.try_reclaim(size)) {
            Some(i) => self.spare.remove(i).expect("position() is in range"),
            None => BytesMut::with_capacity(size),
        };
        // the used-up chunk is the newest spare; beyond SPARE_CHUNKS the oldest goes
        self.spare
            .push_back(std::mem::replace(&mut self.chunk, next));
        if self.spare.len() > SPARE_CHUNKS {
            self.spare.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `b` lies inside the buffer that starts at `base` (`len` bytes).
    fn inside(b: &BytesMut, base: *const u8, len: usize) -> bool {
        let p = b.as_ptr() as usize;
        (base as usize..base as usize + len).contains(&p)
    }

    #[test]
    fn copies_are_exact_and_share_a_chunk() {
        let mut a = Arena::with_chunk_size(64);
        let x = a.copy(b"hello");
        let y = a.copy(b"world!");
        assert_eq!((&x[..], &y[..]), (&b"hello"[..], &b"world!"[..]));
        assert_eq!(y.as_ptr() as usize, x.as_ptr() as usize + 5);
        // a datagram larger than a chunk gets a chunk of its own size
        let big = a.copy(&[7; 100]);
        assert_eq!(&big[..], &[7; 100][..]);
    }

    #[test]
    fn a_chunk_nothing_pins_is_written_again() {
        let mut a = Arena::with_chunk_size(64);
        let first = a.copy(&[1; 40]);
        let base = first.as_ptr();
        drop(first);
        // 40 + 40 > 64: the chunk is used up, and reclaimed in place
        let second = a.copy(&[2; 40]);
        assert_eq!(second.as_ptr(), base);
    }

    #[test]
    fn a_pinned_chunk_is_set_aside_and_reused_once_released() {
        let mut a = Arena::with_chunk_size(64);
        let pin = a.copy(&[1; 40]);
        let first = pin.as_ptr();
        assert!(a.spare.is_empty());
        // chunk 1 is pinned: chunk 2
        let d2 = a.copy(&[2; 40]);
        assert!(!inside(&d2, first, 64));
        assert_eq!(a.spare.len(), 1);
        let second = d2.as_ptr();
        drop(pin);
        // chunk 2 is pinned by d2, chunk 1 is free again: reused, not a new allocation
        let d3 = a.copy(&[3; 40]);
        assert!(inside(&d3, first, 64), "the released spare is reused");
        drop(d2);
        let d4 = a.copy(&[4; 40]);
        assert!(inside(&d4, second, 64));
        assert_eq!((&d3[..], &d4[..]), (&[3; 40][..], &[4; 40][..]));
    }

    #[test]
    fn spares_stay_oldest_first_when_one_is_reused() {
        let mut a = Arena::with_chunk_size(64);
        // chunks 0, 1, 2 used up and pinned; 3 current
        let mut pins: Vec<BytesMut> = (0..4).map(|i| a.copy(&[i; 40])).collect();
        let base = |p: &BytesMut| p.as_ptr() as usize;
        let firsts: Vec<usize> = pins.iter().map(base).collect();
        // release chunk 1: it is reused, and chunk 3 (now used up) becomes the newest spare
        pins.remove(1);
        let d = a.copy(&[9; 40]);
        assert_eq!(base(&d), firsts[1]);
        // each spare is the view left after its chunk's one 40-byte copy
        let order: Vec<usize> = a.spare.iter().map(|c| c.as_ptr() as usize - 40).collect();
        assert_eq!(order, [firsts[0], firsts[2], firsts[3]]);
    }

    #[test]
    fn at_most_spare_chunks_are_kept() {
        let mut a = Arena::with_chunk_size(64);
        // every chunk stays pinned: each copy needs a new one
        let pins: Vec<BytesMut> = (0..10).map(|i| a.copy(&[i; 40])).collect();
        assert_eq!(a.spare.len(), SPARE_CHUNKS);
        for (i, p) in pins.iter().enumerate() {
            assert_eq!(&p[..], &[i as u8; 40][..]);
        }
    }
}
