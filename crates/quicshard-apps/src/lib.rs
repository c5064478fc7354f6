//! The application protocols `quicshard serve` speaks, in one place for every server and client
//! that speaks them: the CLI (`serve`, `get`, `bench`, `demo`) and the benchmark baselines
//! (`crates/baseline`: quinn's API and quicshard's handles).
//!
//! - `hq-interop`: request `GET /path\r\n`, response the file's bytes then FIN; a missing file (or
//!   a path outside the root) is a stream reset with [`HQ_NOT_FOUND`].
//! - `perf` (quinn's perf protocol): 8-byte big-endian length, the upload, FIN; then that many
//!   bytes back and FIN. The bytes are the [`pattern`] (offset mod 251), which clients verify
//!   ([`pattern_mismatch`]).
//! - `echo`: each stream's bytes back, then FIN.
//!
//! What the crate owns: those constants and helpers, the bounded stream pump ([`stream`]) and
//! the server of all three as an engine [`Handler`](quicshard::Handler) per shard
//! ([`server::Server`]). HTTP/3 is `quicshard-h3`'s.

pub mod server;
pub mod stream;

use std::fs::File;
use std::path::Path;

pub use stream::{pattern, pattern_mismatch, CHUNK};

/// ALPN of the HTTP/0.9-style interop protocol.
pub const ALPN_HQ: &[u8] = b"hq-interop";
/// ALPN of quinn's perf protocol.
pub const ALPN_PERF: &[u8] = b"perf";
/// ALPN of the echo protocol.
pub const ALPN_ECHO: &[u8] = b"echo";
/// ALPN of HTTP/3.
pub const ALPN_H3: &[u8] = quicshard_h3::ALPN;

/// Stream reset code for "file not found" (hq-interop has no status line).
pub const HQ_NOT_FOUND: u32 = 0x194;
/// Stream reset code for a malformed request.
pub const BAD_REQUEST: u32 = 0x190;
/// Connection close code for a connection without a known ALPN.
pub const NO_APPLICATION_PROTOCOL: u32 = 0x178;
/// Longest hq-interop request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// The negotiated ALPN of a connection, if any.
pub fn alpn(conn: &quinn_proto::Connection) -> Option<Vec<u8>> {
    conn.crypto_session()
        .handshake_data()?
        .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The path of `GET /path\r\n` (or without the line end, when the stream finished).
pub fn parse_get(request: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(request).ok()?;
    let line = line.split("\r\n").next()?.trim_end();
    let path = line.strip_prefix("GET ")?;
    path.strip_prefix('/')
        .map(|p| p.split(' ').next().unwrap_or(p))
}

/// Opens `rel` (a request path: percent-decoded, the query ignored) under `root` (canonical),
/// refusing anything that resolves outside it or is not a file; as the h3 file server does.
pub fn open_under(root: &Path, rel: &str) -> Option<File> {
    quicshard_h3::files::open_under(root, rel).map(|(file, _, _)| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_lines() {
        assert_eq!(parse_get(b"GET /a.txt\r\n"), Some("a.txt"));
        assert_eq!(parse_get(b"GET /dir/b"), Some("dir/b"));
        assert_eq!(parse_get(b"POST /a\r\n"), None);
        assert_eq!(parse_get(b"GET a\r\n"), None);
        assert_eq!(parse_get(&[0xff, 0xfe]), None);
    }

    #[test]
    fn refuses_paths_outside_root() {
        let dir = std::env::temp_dir().join(format!("qs-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"x").unwrap();
        let root = dir.join("sub").canonicalize().unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        assert!(open_under(&root, "f").is_some());
        assert!(open_under(&root, "../secret").is_none());
        assert!(open_under(&root, "missing").is_none());
        assert!(open_under(&root, "").is_none(), "a directory is not a file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pattern_matches_the_bench_check() {
        for offset in [0u64, 1, 250, 251, 1 << 40] {
            let p = pattern(offset, 1000);
            assert_eq!(p.len(), 1000);
            for (i, b) in p.iter().enumerate() {
                assert_eq!(u64::from(*b), (offset + i as u64) % 251);
            }
        }
        assert_eq!(pattern(7, u64::MAX).len(), CHUNK);
        assert_eq!(pattern_mismatch(5, pattern(5, 300)), None);
        let mut bad = pattern(5, 300).to_vec();
        bad[17] ^= 1;
        assert_eq!(pattern_mismatch(5, &bad), Some(22));
    }
}
