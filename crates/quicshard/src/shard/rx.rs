//! A shard's receive buffers ([`RxBufs`]): one batch of messages, filled by a UDP socket
//! ([`Sock`](super::io::Sock), recvmmsg + GRO) or an in-memory port ([`super::mem`]).

use quinn_udp::{RecvMeta, BATCH_SIZE};

/// The shortest buffer per received message: one maximal UDP payload.
const MIN_RX_BUF: usize = 1 << 16;

/// Bytes per GRO segment we reserve room for.
const GRO_SEGMENT_BYTES: usize = 1500;

/// Per-shard receive buffers: `BATCH_SIZE` messages of `buf_len` bytes each, plus their metadata.
pub(crate) struct RxBufs {
    pub(super) bufs: Vec<u8>,
    pub(crate) buf_len: usize,
    pub(crate) metas: [RecvMeta; BATCH_SIZE],
}

impl RxBufs {
    /// Buffers big enough for `gro_segments` coalesced datagrams per message.
    pub(crate) fn new(gro_segments: usize) -> Self {
        let buf_len = (gro_segments * GRO_SEGMENT_BYTES).max(MIN_RX_BUF);
        Self {
            bufs: vec![0; buf_len * BATCH_SIZE],
            buf_len,
            metas: [RecvMeta::default(); BATCH_SIZE],
        }
    }

    /// The whole buffer of message `i`, to receive into.
    pub(super) fn buf_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.buf_len;
        &mut self.bufs[start..start + self.buf_len]
    }

    /// The bytes of message `i` (its first `metas[i].len` bytes).
    pub(crate) fn message(&self, i: usize) -> &[u8] {
        let start = i * self.buf_len;
        &self.bufs[start..start + self.metas[i].len.min(self.buf_len)]
    }
}
