//! The byte stores of a pipe: [`Ring`] for the receive direction (quinn-proto's bytes copied in,
//! the app's reads copied out) and [`SendBuf`] for the send direction, which hands quinn-proto
//! `Bytes` it keeps without copying: the app's writes are copied once into a staging buffer, and
//! `Bytes` the app gives ([`SendStream::write_bytes`](super::SendStream::write_bytes)) are not
//! copied at all.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// A byte ring of at most `cap` bytes (the pipe's capacity), allocated on first use, grown by
/// doubling while it fills (so a pipe holds only about as much memory as it has buffered, not
/// its capacity), and freed when the pipe ends.
#[derive(Default)]
pub(super) struct Ring {
    buf: Box<[u8]>,
    head: usize,
    pub(super) len: usize,
}

/// The first allocation of a ring. Why: one page holds a typical request or response; a bulk
/// stream doubles its way up to the pipe capacity in a handful of steps.
const RING_START: usize = 4096;

impl Ring {
    /// Appends as much of `data` as fits in `cap`; returns how much.
    pub(super) fn push(&mut self, data: &[u8], cap: usize) -> usize {
        let n = data.len().min(cap.saturating_sub(self.len));
        if self.len + n > self.buf.len() {
            self.grow(
                (self.len + n)
                    .max(2 * self.buf.len())
                    .max(RING_START)
                    .min(cap),
            );
        }
        let size = self.buf.len();
        let tail = (self.head + self.len) % size;
        let first = n.min(size - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Reallocates to `size` bytes (at least `len`), the contents moved to the front.
    fn grow(&mut self, size: usize) {
        let mut buf = vec![0; size].into_boxed_slice();
        // the contents are the front run, then (if the ring wraps) the run from index 0
        let first = self.front().len();
        buf[..first].copy_from_slice(self.front());
        buf[first..self.len].copy_from_slice(&self.buf[..self.len - first]);
        self.buf = buf;
        self.head = 0;
    }

    /// Moves up to `out.len()` bytes out; returns how many.
    pub(super) fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        let mut done = 0;
        while done < n {
            let s = self.front();
            let k = s.len().min(n - done);
            out[done..done + k].copy_from_slice(&s[..k]);
            self.consume(k);
            done += k;
        }
        n
    }

    /// The contiguous bytes at the head.
    pub(super) fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(self.buf.len());
        &self.buf[self.head..end]
    }

    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        self.len -= n;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + n) % self.buf.len()
        };
    }

    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Bytes staged per allocation at least. Why: the staging buffer is split into chunks that
/// quinn-proto keeps until they are acknowledged, so it is reallocated rather than reused; one
/// allocation per 64 KiB written keeps that off the per-write path.
const STAGE_CHUNK: usize = 64 * 1024;

/// `Bytes` shorter than this are copied into the stage instead of queued. Why: it bounds the
/// number of queued chunks (and their per-chunk cost in quinn-proto) by the capacity / 1 KiB.
const MIN_CHUNK: usize = 1024;

/// The send direction's store: at most the pipe's capacity, in order, as chunks for quinn-proto.
#[derive(Default)]
pub(super) struct SendBuf {
    /// Chunks ready for quinn-proto, oldest first; everything in `stage` comes after them.
    chunks: VecDeque<Bytes>,
    /// Copied-in bytes not yet cut into a chunk.
    stage: BytesMut,
    /// Bytes in `chunks` and `stage`.
    len: usize,
}

impl SendBuf {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Copies as much of `data` as fits in `cap`; returns how much.
    pub(super) fn push(&mut self, data: &[u8], cap: usize) -> usize {
        let n = data.len().min(cap.saturating_sub(self.len));
        if n == 0 {
            return 0;
        }
        if self.stage.capacity() - self.stage.len() < n {
            self.stage.reserve(n.max(STAGE_CHUNK));
        }
        self.stage.extend_from_slice(&data[..n]);
        self.len += n;
        n
    }

    /// Takes as much of `data` as fits in `cap` (advancing `data` past it), without copying
    /// unless it is a small piece; returns how much.
    pub(super) fn push_bytes(&mut self, data: &mut Bytes, cap: usize) -> usize {
        let n = data.len().min(cap.saturating_sub(self.len));
        if n < MIN_CHUNK {
            let k = self.push(&data[..n], cap);
            data.advance(k);
            return k;
        }
        self.seal();
        self.chunks.push_back(data.split_to(n));
        self.len += n;
        n
    }

    /// Cuts what is staged into a chunk.
    fn seal(&mut self) {
        if !self.stage.is_empty() {
            self.chunks.push_back(self.stage.split().freeze());
        }
    }

    /// The oldest bytes, as a chunk to hand to quinn-proto (a cheap clone of shared memory).
    pub(super) fn front(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            self.seal();
        }
        self.chunks.front().cloned()
    }

    /// Drops the first `n` bytes of the front chunk (quinn-proto took them).
    pub(super) fn consume_front(&mut self, n: usize) {
        if let Some(f) = self.chunks.front_mut() {
            let n = n.min(f.len());
            if n == f.len() {
                self.chunks.pop_front();
            } else {
                f.advance(n);
            }
            self.len -= n;
        }
    }

    /// Drops everything and frees the memory.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_wraps() {
        let mut r = Ring::default();
        let cap = 8;
        assert_eq!(r.push(b"abcdef", cap), 6);
        let mut out = [0u8; 4];
        assert_eq!(r.pop(&mut out), 4);
        assert_eq!(&out, b"abcd");
        assert_eq!(r.push(b"ghijklmn", cap), 6);
        assert_eq!(r.len, 8);
        let mut out = [0u8; 8];
        assert_eq!(r.pop(&mut out), 8);
        assert_eq!(&out, b"efghijkl");
        assert_eq!(r.len, 0);
    }

    /// The ring grows with what it holds (doubling, from one page, up to the capacity), keeps
    /// the byte order across a wrapped growth, and never exceeds the capacity.
    #[test]
    fn ring_grows_with_its_contents_up_to_the_capacity() {
        let cap = 64 * 1024;
        let mut r = Ring::default();
        assert_eq!(r.push(&[1; 3000], cap), 3000);
        assert_eq!(r.buf.len(), RING_START, "a small stream holds one page");
        // wrap the ring, then grow it while wrapped
        let mut out = vec![0u8; 3000];
        assert_eq!(r.pop(&mut out[..2000]), 2000);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(r.push(&data[..3000], cap), 3000);
        assert!(r.head + r.len > r.buf.len(), "wrapped before growing");
        assert_eq!(r.push(&data[3000..], cap), 17_000);
        assert!(r.buf.len() >= 21_000 && r.buf.len() <= cap);
        assert_eq!(r.pop(&mut out[..1000]), 1000);
        assert!(out[..1000].iter().all(|&b| b == 1));
        let mut out = vec![0u8; 20_000];
        assert_eq!(r.pop(&mut out), 20_000);
        assert!(out == data, "order kept across growth");
        // never beyond the capacity
        assert_eq!(r.push(&vec![7; 2 * cap], cap), cap);
        assert_eq!(r.buf.len(), cap);
        assert_eq!(r.push(b"x", cap), 0);
    }

    /// Copied writes and queued `Bytes` come out in order; small `Bytes` are copied; the length
    /// never exceeds the capacity.
    #[test]
    fn send_buf_keeps_order_and_capacity() {
        let cap = 8192;
        let mut b = SendBuf::default();
        assert_eq!(b.push(b"ab", cap), 2);
        let big = Bytes::from(vec![7u8; 3000]);
        let mut big_left = big.clone();
        assert_eq!(b.push_bytes(&mut big_left, cap), 3000);
        assert!(big_left.is_empty());
        let mut small = Bytes::from_static(b"cd");
        assert_eq!(b.push_bytes(&mut small, cap), 2, "copied into the stage");
        assert_eq!(b.push(&[9u8; 10_000], cap), cap - 3004);
        assert_eq!(b.len(), cap);
        assert_eq!(b.push(b"x", cap), 0);
        // drain as the shard does, taking odd amounts
        let mut out = Vec::new();
        while let Some(f) = b.front() {
            let n = f.len().min(777);
            out.extend_from_slice(&f[..n]);
            b.consume_front(n);
        }
        assert_eq!(b.len(), 0);
        let mut want = b"ab".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"cd");
        want.extend(std::iter::repeat_n(9u8, cap - 3004));
        assert!(out == want, "order kept");
        // the queued chunk was not copied: it is the caller's memory
        let mut b = SendBuf::default();
        let mut again = big.clone();
        b.push_bytes(&mut again, cap);
        assert_eq!(b.front().unwrap().as_ptr(), big.as_ptr());
    }
}
