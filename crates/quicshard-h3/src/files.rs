//! [`FileServer`]: an HTTP/3 static file server for one directory, one async call per
//! connection ([`FileServer::serve`]). It owns request handling (GET, HEAD, 404, 405), path
//! resolution under the root and the per-connection request limit.
//!
//! - `GET /path`: 200 with `content-length`, `content-type` (by extension) and the file's bytes;
//!   `/` and paths ending in `/` mean `index.html` there; the path is percent-decoded segment by
//!   segment and the query ignored.
//! - `HEAD /path`: the same headers, no body.
//! - A missing file, a directory, or a path that would leave the root (`..`, a symlink pointing
//!   outside): 404 with a short text body. Other methods: 405 with `allow: GET, HEAD`.
//! - At most [`FileServer::max_concurrent_requests`] requests of one connection are handled at
//!   once; further request streams wait in QUIC (flow control) until one finishes.
//! - Header sizes: QPACK as the h3 crate implements it (static table, no dynamic table) with the
//!   field section limit [`MAX_FIELD_SECTION`].
//!
//! The runtime is the caller's: `serve` runs every request of a connection inside its own future
//! (no task is spawned). Files are read with blocking `std::fs` calls in 64 KiB chunks, which is
//! fine from the page cache; a slow disk would stall the executor thread.

use std::fs::File;
use std::future::{poll_fn, Future};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h3::server::RequestResolver;
use http::{header, Method, Response, StatusCode};
use quicshard::handle;

use crate::quic::H3Connection;

/// Largest header section (decoded) a request may carry; h3 answers bigger ones with an error.
pub const MAX_FIELD_SECTION: u64 = 16 * 1024;
/// Default of [`FileServer::max_concurrent_requests`].
pub const DEFAULT_MAX_CONCURRENT: usize = 100;
/// Bytes read from a file and sent per DATA frame.
const CHUNK: usize = 64 * 1024;

/// What a [`FileServer`] counted, over all its connections.
#[derive(Debug, Default)]
pub struct FileStats {
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests answered 404.
    pub not_found: AtomicU64,
    /// The most requests of one connection handled at the same time.
    pub peak_concurrent: AtomicUsize,
}

/// Serves the files under one directory over HTTP/3. Cheap to clone (shared root and counters).
#[derive(Debug, Clone)]
pub struct FileServer {
    /// `None`: nothing to serve, every GET is 404.
    root: Option<Arc<PathBuf>>,
    max_concurrent: usize,
    stats: Arc<FileStats>,
}

/// Why serving a connection ended with an error (a clean close by the peer is `Ok`).
pub type ServeError = h3::error::ConnectionError;

impl FileServer {
    /// Serves `root` (a directory; canonicalized here).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: not a directory", root.display()),
            ));
        }
        Ok(Self {
            root: Some(Arc::new(root)),
            ..Self::empty()
        })
    }

    /// A server without files: every GET or HEAD is answered 404.
    pub fn empty() -> Self {
        Self {
            root: None,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            stats: Arc::default(),
        }
    }

    /// Requests handled at once per connection (at least 1). Default [`DEFAULT_MAX_CONCURRENT`].
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent = n.max(1);
        self
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<FileStats> {
        &self.stats
    }

    /// Serves one connection until the peer closes it (`Ok`) or it fails.
    pub async fn serve(&self, conn: handle::Connection) -> Result<(), ServeError> {
        let mut h3 = h3::server::builder()
            .max_field_section_size(MAX_FIELD_SECTION)
            .build::<_, Bytes>(H3Connection::new(conn))
            .await?;
        let active = AtomicUsize::new(0);
        let mut inflight = FuturesUnordered::new();
        let result = loop {
            let accepted = {
                let mut accept = pin!(h3.accept());
                poll_fn(|cx| {
                    while let Poll::Ready(Some(())) = inflight.poll_next_unpin(cx) {}
                    if inflight.len() < self.max_concurrent {
                        return accept.as_mut().poll(cx);
                    }
                    Poll::Pending
                })
                .await
            };
            match accepted {
                Ok(Some(resolver)) => {
                    let now = active.fetch_add(1, Ordering::Relaxed) + 1;
                    self.stats.peak_concurrent.fetch_max(now, Ordering::Relaxed);
                    inflight.push(self.respond(resolver, &active));
                }
                Ok(None) => break Ok(()),
                Err(e) if e.is_h3_no_error() => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        while inflight.next().await.is_some() {}
        result
    }

    /// Answers one request; failures of the stream are logged (they end only this request).
    async fn respond(&self, resolver: RequestResolver<H3Connection, Bytes>, active: &AtomicUsize) {
        if let Err(e) = self.respond_inner(resolver).await {
            tracing::debug!(error = %e, "h3 request failed");
        }
        active.fetch_sub(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    async fn respond_inner(
        &self,
        resolver: RequestResolver<H3Connection, Bytes>,
    ) -> Result<(), h3::error::StreamError> {
        let (req, mut stream) = resolver.resolve_request().await?;
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            let resp = Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .header(header::CONTENT_LENGTH, 0)
                .body(())
                .expect("valid response");
            stream.send_response(resp).await?;
            return stream.finish().await;
        }
        let found = (self.root.as_deref()).and_then(|root| open_under(root, req.uri().path()));
        let Some((mut file, len, full)) = found else {
            self.stats.not_found.fetch_add(1, Ordering::Relaxed);
            let body = Bytes::from_static(b"not found\n");
            let resp = Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CONTENT_LENGTH, body.len())
                .body(())
                .expect("valid response");
            stream.send_response(resp).await?;
            if !head {
                stream.send_data(body).await?;
            }
            return stream.finish().await;
        };
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type(&full))
            .header(header::CONTENT_LENGTH, len)
            .body(())
            .expect("valid response");
        stream.send_response(resp).await?;
        let mut left = if head { 0 } else { len };
        while left > 0 {
            let mut buf = BytesMut::zeroed(CHUNK.min(left as usize));
            let n = match file.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // the file shrank or broke under us: the length promised cannot be kept
                    stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return Ok(());
                }
                Ok(n) => n,
            };
            buf.truncate(n);
            left -= n as u64;
            stream.send_data(buf.freeze()).await?;
        }
        stream.finish().await
    }
}

/// The regular file `path` (a request path) names under `root` (canonical), with its length and
/// canonical path; `None` if it does not exist, is not a regular file, or resolves outside
/// `root`.
pub fn open_under(root: &Path, path: &str) -> Option<(File, u64, PathBuf)> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut rel = PathBuf::new();
    for part in path.split('/') {
        // percent-encoding decoded per segment: an encoded `/` stays inside its segment, where
        // the component check below refuses it
        let part = percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .ok()?;
        let part: &str = &part;
        match Path::new(part).components().next() {
            None => {}
            Some(Component::Normal(p)) if Path::new(part).components().count() == 1 => rel.push(p),
            // `..`, `.`, a root or a prefix: refuse rather than interpret
            Some(_) => return None,
        }
    }
    if path.is_empty() || path.ends_with('/') {
        rel.push("index.html");
    }
    let full = root.join(rel).canonicalize().ok()?;
    if !full.starts_with(root) {
        return None;
    }
    let file = File::open(&full).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta.len(), full))
}

/// A `content-type` for a file, by its extension (`application/octet-stream` when unknown).
pub fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let dir = std::env::temp_dir().join(format!("qs-h3-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"abc").unwrap();
        std::fs::write(dir.join("sub/index.html"), b"<p>").unwrap();
        let root = dir.canonicalize().unwrap();
        assert_eq!(open_under(&root, "/a.txt").map(|f| f.1), Some(3));
        assert_eq!(open_under(&root, "/a.txt?x=1").map(|f| f.1), Some(3));
        assert_eq!(
            open_under(&root, "/a%2Etxt").map(|f| f.1),
            Some(3),
            "percent-decoded"
        );
        assert!(open_under(&root, "/sub%2F..%2F..%2Fa.txt").is_none());
        assert_eq!(open_under(&root, "/sub/").map(|f| f.1), Some(3));
        assert!(open_under(&root, "/missing").is_none());
        assert!(
            open_under(&root, "/sub").is_none(),
            "a directory is not a file"
        );
        assert!(open_under(&root, "/../a.txt").is_none());
        assert!(open_under(&root, "/sub/../a.txt").is_none());
        assert!(open_under(&root, "/./a.txt").is_none());
        assert!(open_under(&root, "/..").is_none());
        let outside = format!("/..{}", root.display());
        assert!(open_under(&root, &outside).is_none());
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).unwrap();
        assert!(
            open_under(&root, "/link").is_none(),
            "symlink out of the root"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn content_types() {
        let ct = |p: &str| content_type(Path::new(p));
        assert_eq!(ct("/x/a.HTML"), "text/html; charset=utf-8");
        assert_eq!(ct("/a.bin"), "application/octet-stream");
        assert_eq!(ct("/noext"), "application/octet-stream");
    }
}
