//! The pure pieces of the datagram input path, exposed for the property tests
//! (`tests/fuzz_*.rs`). Not a stable API.
//!
//! A datagram on the shared port goes: [`handoff_target`] (steering: another shard's? hand it
//! off) → [`check_before_endpoint`] (drop empty, truncated or foreign short headers) →
//! `quinn_proto::Endpoint::handle`. Handed-off datagrams skip the first step on the owner.

pub use crate::shard::inbound::{check_before_endpoint, handoff_target, EarlyDrop};
