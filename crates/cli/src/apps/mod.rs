//! Application protocols spoken by `serve` and used by `get`/`bench`, as engine [`Handler`]s.
//!
//! - `hq-interop`, `perf`, `echo`: the protocols, their server and the stream pump are
//!   `crates/quicshard-apps`' (shared with the benchmark baselines); the client side of hq-interop
//!   and perf (plans, progress events, the open-loop schedule) is `client`.
//! - `h3` (HTTP/3, not a callback handler): `h3_server` (the mixed engine and accept loop of
//!   `serve`, files by `quicshard_h3::FileServer`) and `h3_client` (`get` and `bench` over h3).
//!
//! [`Handler`]: quicshard::Handler

pub(crate) mod client;
pub(crate) mod h3_client;
pub(crate) mod h3_server;

pub(crate) use quicshard_apps::{alpn, server, stream, ALPN_ECHO, ALPN_H3, ALPN_HQ, ALPN_PERF};

/// Every ALPN `serve` offers, h3 first (the server's order decides when a client offers several).
pub(crate) const SERVER_ALPNS: &[&[u8]] = &[ALPN_H3, ALPN_HQ, ALPN_PERF, ALPN_ECHO];
