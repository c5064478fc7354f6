//! What the three application protocols share between the servers, byte for byte the same as
//! `quicshard serve` (`crates/cli/src/apps`):
//!
//! - `hq-interop`: request `GET /path\r\n`, response the file's bytes then FIN; a missing file
//!   (or a path outside the root) is a stream reset with [`HQ_NOT_FOUND`];
//! - `perf`: 8-byte big-endian length, the upload, FIN; then that many bytes back and FIN. The
//!   bytes are [`pattern`] bytes (offset mod 251), which `quicshard bench` verifies;
//! - `echo`: each stream's bytes back, then FIN.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

/// ALPN of the HTTP/0.9-style interop protocol.
pub const ALPN_HQ: &[u8] = b"hq-interop";
/// ALPN of quinn's perf protocol.
pub const ALPN_PERF: &[u8] = b"perf";
/// ALPN of the echo protocol.
pub const ALPN_ECHO: &[u8] = b"echo";
/// Every ALPN `quicshard serve` offers, in its order.
pub const SERVER_ALPNS: &[&[u8]] = &[ALPN_HQ, ALPN_PERF, ALPN_ECHO];

/// Stream reset code for "file not found".
pub const HQ_NOT_FOUND: u32 = 0x194;
/// Stream reset code for a malformed request.
pub const BAD_REQUEST: u32 = 0x190;
/// Connection close code for a connection without a known ALPN (as `serve`).
pub const NO_APPLICATION_PROTOCOL: u32 = 0x178;
/// Longest hq-interop request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// The pattern's period: the byte at offset `o` is `o % PERIOD`.
const PERIOD: usize = 251;
/// Largest slice [`pattern`] returns (as `serve`'s 64 KiB chunks, rounded to the period).
pub const CHUNK: usize = PERIOD * 261;

/// Up to `max` (at most [`CHUNK`]) perf bytes starting at download offset `offset`.
pub fn pattern(offset: u64, max: u64) -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let all = BYTES.get_or_init(|| (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect());
    let start = (offset % PERIOD as u64) as usize;
    let len = max.min(CHUNK as u64) as usize;
    &all[start..start + len]
}

/// The path of `GET /path\r\n` (or without the line end, when the stream finished).
pub fn parse_get(request: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(request).ok()?;
    let line = line.split("\r\n").next()?.trim_end();
    let path = line.strip_prefix("GET ")?.strip_prefix('/')?;
    Some(path.split(' ').next().unwrap_or(path))
}

/// Opens `rel` under `root` (canonical), refusing anything that resolves outside it or is not a
/// file.
pub fn open_under(root: &Path, rel: &str) -> Option<File> {
    let path = root.join(rel).canonicalize().ok()?;
    if !path.starts_with(root) || !path.is_file() {
        return None;
    }
    File::open(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matches_the_bench_check() {
        for offset in [0u64, 1, 250, 251, 1 << 40] {
            let p = pattern(offset, 1000);
            assert_eq!(p.len(), 1000);
            for (i, b) in p.iter().enumerate() {
                assert_eq!(*b as u64, (offset + i as u64) % 251);
            }
        }
        assert_eq!(pattern(7, u64::MAX).len(), CHUNK);
    }

    #[test]
    fn parses_get_lines() {
        assert_eq!(parse_get(b"GET /a.txt\r\n"), Some("a.txt"));
        assert_eq!(parse_get(b"GET /dir/b"), Some("dir/b"));
        assert_eq!(parse_get(b"POST /a\r\n"), None);
        assert_eq!(parse_get(b"GET a\r\n"), None);
    }
}
