//! Application protocols spoken by `serve` and used by `get`/`bench`, as engine [`Handler`]s.
//!
//! - `hq-interop`: request `GET /path\r\n`, response the file's bytes then FIN; a missing file is
//!   a stream reset with [`HQ_NOT_FOUND`].
//! - `perf` (quinn's perf protocol): 8-byte big-endian length, the upload, FIN; then that many
//!   bytes back and FIN.
//! - `echo`: each stream's bytes back, then FIN.
//! - `h3` (HTTP/3, not a callback handler): `h3_server` (the mixed engine and accept loop of
//!   `serve`, files by `quicshard_h3::FileServer`) and `h3_client` (`get` and `bench` over h3).
//!
//! [`Handler`]: quicshard::Handler

pub(crate) mod client;
pub(crate) mod h3_client;
pub(crate) mod h3_server;
pub(crate) mod server;
mod stream;

/// ALPN of the HTTP/0.9-style interop protocol.
pub(crate) const ALPN_HQ: &[u8] = b"hq-interop";
/// ALPN of quinn's perf protocol.
pub(crate) const ALPN_PERF: &[u8] = b"perf";
/// ALPN of the echo protocol.
pub(crate) const ALPN_ECHO: &[u8] = b"echo";
/// ALPN of HTTP/3.
pub(crate) const ALPN_H3: &[u8] = quicshard_h3::ALPN;
/// Every ALPN `serve` offers, h3 first (the server's order decides when a client offers several).
pub(crate) const SERVER_ALPNS: &[&[u8]] = &[ALPN_H3, ALPN_HQ, ALPN_PERF, ALPN_ECHO];

/// Stream reset code for "file not found" (hq-interop has no status line).
pub(crate) const HQ_NOT_FOUND: u32 = 0x194;
/// Stream reset code for a malformed request.
pub(crate) const BAD_REQUEST: u32 = 0x190;

/// The negotiated ALPN of a connection, if any.
pub(crate) fn alpn(conn: &quinn_proto::Connection) -> Option<Vec<u8>> {
    conn.crypto_session()
        .handshake_data()?
        .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}
