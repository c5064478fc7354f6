//! quicshard-testkit: a deterministic simulator of a quicshard engine. An engine's N shards
//! (the real shard loop, steering program, handoffs and handlers) and M quinn-proto clients
//! share one in-memory network on a virtual clock, driven from one thread; every path runs
//! through the impairment model of `quicshard-impair`. A seed fixes everything — the engine's
//! randomness, TLS (a seeded rustls provider, Ed25519 certificates, a seeded X25519), the
//! clients, the impairments — so a run is replayed bit for bit: [`Report::digest`] hashes every
//! datagram delivered.
//!
//! Entry point: [`simulate`] with a [`SimConfig`]. The example `simulate` prints the contract a
//! reviewer checks (`digest=HEX virtual_s=F wall_s=F completed=N/M`).

pub mod app;
mod client;
pub mod clock;
pub mod sim;
pub mod tls;

pub use sim::{simulate, Report, SetupError, SimConfig, Simulation, Steering};
