//! The quicshard QUIC-LB load balancer: a receiver → processor → forwarder pipeline.
//!
//! Receivers read client datagrams into buffers of one preallocated [`pool::Pool`], parse just
//! the DCID ([`parse`]) and hash the flow onto a processor; processors route with the sans-IO
//! [`route::Router`] (QUIC-LB CID decoding, then the draft's fallback tables and consistent
//! hash); forwarders send to the backend as a UDP relay (`proxy`) or IP-in-UDP ([`encap`],
//! `dsr`). Entry point: [`Lb::start`] with an [`LbConfig`]; the CLI reads [`Lb::stats`].
// The batched socket calls, the only `unsafe` the pipeline needs, live in `quicshard-udp`.
#![forbid(unsafe_code)]

pub mod config;
pub mod encap;
pub mod nftables;
pub mod parse;
mod pipeline;
pub mod pool;
pub mod route;

pub use config::{ConfigError, ForwardMode, LbConfig, Pipeline};
pub use pipeline::{
    Error, ForwarderStats, Lb, ProcessorStats, ReceiverStats, SlowPathStats, Stats,
};
