//! A pub/sub relay over QUIC (ALPN `relay`) on quicshard's callback API: what the `relay`
//! example checks end to end and what `quicshard relay` serves.
//!
//! - [`protocol`]: the wire format (request lines, publish and delivery frames, error codes).
//! - [`topic`]: the topic registry and each topic's bounded log, shared by every shard.
//! - [`server`]: the per-shard [`Handler`](quicshard::Handler) ([`server::Relay`]), its
//!   counters and the engine [`Builder`](quicshard::Builder) ([`server::builder`]).
//! - [`client`]: publisher and subscriber clients over the engine's blocking handles, and the
//!   self-checking payload format the example and the CLI's tests publish.

pub mod client;
pub mod protocol;
pub mod server;
pub mod topic;
