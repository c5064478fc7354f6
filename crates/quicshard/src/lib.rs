//! quicshard: a multi-core QUIC endpoint engine.
//!
//! One UDP port is served by N shards, each on its own thread (more shards than cores share
//! threads in fixed groups, [`Builder::threads`]); each shard owns a `quinn_proto::Endpoint` and
//! its connections for their whole life. The kernel steers datagrams to the owning shard by the shard
//! byte of the connection ID (classic BPF on an `SO_REUSEPORT` group); whatever it cannot steer is
//! handed off between shards in userspace. Start with [`Engine::builder`] and a [`Handler`]
//! (callbacks on the owning shard), or with [`HandleEngine::builder`] for thread-safe blocking,
//! non-blocking and async handles ([`handle`]). The layers stack: the core (shards, steering,
//! handoff, callbacks) names no layer above it; the handle layer wraps the started [`Engine`]
//! ([`Layer`]), and the [`direct`] backend plugs into the handle layer's progress abstraction.

pub mod cid;
pub mod direct;
mod engine;
pub mod handle;
pub mod handler;
pub mod handover;
mod inject;
pub mod memory;
pub mod qlog;
pub mod random;
mod ranks;
mod reload;
pub mod secrets;
mod shard;
mod shared;
pub mod stats;
pub mod steer;
#[doc(hidden)]
pub mod testing;
pub mod tickets;
pub mod tls;

pub use engine::{Builder, Engine, Layer, StartError, DEFAULT_MAX_CONNECTIONS};
pub use handle::HandleEngine;
pub use handler::{ConnId, Handler, Remote, RemoteError, ShardCtx, ShardId, HANDLER_PANIC_CODE};
pub use handover::{Handover, HandoverError, HandoverStats};
pub use inject::{InjectError, InjectStats, Injector};
pub use memory::MemoryBudget;
pub use reload::ReloadError;
pub use secrets::Secrets;
pub use shared::Admission;
pub use stats::ShardStats;

pub use quinn_proto;
pub use rustls;
