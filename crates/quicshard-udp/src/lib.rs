//! Batched UDP system calls for quicshard, in the spirit of quinn-udp: the one place in the
//! workspace that builds `mmsghdr` arrays, socket addresses and control messages for the kernel.
//!
//! - [`MmsgBufs`] / [`OutMsg`]: the engine's shard transmit path, one `sendmmsg(2)` for up to
//!   [`TX_BATCH`] datagrams and GSO batches to many destinations, each with its ECN codepoint,
//!   source address (`IP_PKTINFO` / `IPV6_PKTINFO`) and GSO segment size (`UDP_SEGMENT`).
//! - [`BatchIo`] / [`Received`]: the load balancer's pipeline, `recvmmsg(2)` into caller buffers
//!   and `sendmmsg(2)` of plain datagrams (no control messages), skipping a refused datagram.
//!
//! Both keep their scratch arrays between calls, so the hot path allocates nothing. The socket
//! address codec they share lives in `addr`.
//!
//! # Portability
//! [`MmsgBufs`] needs `sendmmsg` and `UDP_SEGMENT` (Linux). [`BatchIo`] is Linux's
//! `recvmmsg`/`sendmmsg` and elsewhere a loop of `recv_from`/`send_to` with the same signatures.
//!
//! # Panics
//! Never on the caller's input: every index is bounded by the slices the caller passed or by
//! [`TX_BATCH`].

mod addr;
mod batch;
mod tx;

pub use batch::{BatchIo, Received, SendSocket};
pub use tx::{MmsgBufs, OutMsg, TX_BATCH};
