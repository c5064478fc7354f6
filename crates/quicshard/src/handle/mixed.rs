//! Mixed engines: handles for some application protocols, callbacks for the rest, on one port.
//! This module owns [`Engine::builder_handles_mixed`]; the delegation itself lives in the shard
//! side, [`HandleHandler`] (`bridge.rs`).
//!
//! A server that speaks an async protocol (HTTP/3 over the handles) next to protocols written as
//! callback [`Handler`]s picks the side per connection by the negotiated ALPN: connections whose
//! ALPN is in `handle_alpns` are accepted with [`Engine::accept`] / `accept_async` like in any
//! handle-mode engine; every other connection is handed, whole and for its entire life, to the
//! shard's fallback handler, which sees the usual callbacks from `on_connection` on. Client
//! connections made with `Engine::connect` always stay handles.
//!
//! # Examples
//! ```no_run
//! use quicshard::{Engine, Handler, ShardId};
//! struct Echo;
//! impl Handler for Echo {}
//! let engine = Engine::builder_handles_mixed(Default::default(), &[b"h3"], |_shard: ShardId| {
//!     Box::new(Echo) as Box<dyn Handler + Send>
//! })
//! .alpn(&[b"h3", b"echo"])
//! .start()
//! .unwrap();
//! let h3_conn = engine.accept().unwrap(); // only connections that negotiated "h3"
//! ```

use std::sync::Arc;

use super::bridge::HandleHandler;
use super::hub::HandleConfig;
use crate::engine::{Builder, Engine};
use crate::handler::{Handler, ShardId};

impl Engine<HandleHandler> {
    /// A builder for a mixed engine: handle mode for connections that negotiate one of
    /// `handle_alpns`, and on each shard a callback handler made by `fallback` (on that shard's
    /// thread) for every other connection. Configure it like any [`Builder`]; the server's ALPN
    /// list ([`Builder::alpn`] or the TLS config) must offer both kinds of protocols.
    pub fn builder_handles_mixed<F>(
        config: HandleConfig,
        handle_alpns: &[&[u8]],
        fallback: F,
    ) -> Builder<HandleHandler>
    where
        F: Fn(ShardId) -> Box<dyn Handler + Send> + Send + Sync + 'static,
    {
        // the hub of a plain handle-mode builder, whose own factory is dropped with it
        let hub = Engine::builder_handles_with(config)
            .handles
            // invariant: builder_handles_with always sets the hub
            .expect("handle-mode builder has a hub");
        let alpns: Arc<[Vec<u8>]> = handle_alpns.iter().map(|a| a.to_vec()).collect();
        let h = hub.clone();
        let mut b = Engine::builder(move |shard| {
            HandleHandler::with_fallback(shard, h.clone(), alpns.clone(), fallback(shard))
        });
        b.handles = Some(hub);
        b
    }
}
