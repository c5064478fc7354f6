//! The client side: [`connect`] turns a handle-mode connection into an h3 client (a
//! [`SendRequest`] plus the driver future the caller runs), and [`fetch`] makes one request,
//! handing the body to a sink as it arrives ([`request`] and [`response`] are its two halves). Used by `quicshard get` / `bench` and the examples.

use std::future::{poll_fn, Future};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use quicshard::handle;

use crate::files::MAX_FIELD_SECTION;
use crate::quic::{H3Connection, Opener};

/// Sends requests on one connection; clone it for concurrent requests. When every clone is
/// dropped, h3 closes the connection with H3_NO_ERROR.
pub type SendRequest = h3::client::SendRequest<Opener, Bytes>;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request stream or the connection failed (reset, closed, protocol error).
    #[error("h3: {0}")]
    H3(#[from] h3::error::StreamError),
    /// The request could not be built (a path or authority that is not a valid URI).
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    /// The sink refused the body.
    #[error("writing the body: {0}")]
    Sink(#[from] std::io::Error),
}

/// What a request got back (the body went to the sink).
#[derive(Debug)]
pub struct Fetched {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// Body bytes received.
    pub body_len: u64,
}

/// Starts HTTP/3 on a connection: the request sender and the connection's driver, a future that
/// must run (spawn it) for requests to progress and resolves when the connection ends.
pub async fn connect(
    conn: handle::Connection,
) -> Result<
    (
        SendRequest,
        impl Future<Output = h3::error::ConnectionError> + Send + 'static,
    ),
    h3::error::ConnectionError,
> {
    let (mut driver, send) = h3::client::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .build::<_, _, Bytes>(H3Connection::new(conn))
        .await?;
    let drive = async move { poll_fn(|cx| driver.poll_close(cx)).await };
    Ok((send, drive))
}

/// A request in flight: its headers are sent, the request is not finished yet.
pub type RequestStream = h3::client::RequestStream<crate::quic::BidiStream<Bytes>, Bytes>;

/// One request without a body: `method` `https://authority/path`. The body goes to `sink` chunk
/// by chunk; the result has the status and headers whatever the status is. The same as
/// [`request`] then [`response`].
pub async fn fetch(
    send: &mut SendRequest,
    method: Method,
    authority: &str,
    path: &str,
    sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Fetched, FetchError> {
    let stream = request(send, method, authority, path).await?;
    response(stream, sink).await
}

/// Sends a request's headers (`method` `https://authority/path`); [`response`] ends it.
pub async fn request(
    send: &mut SendRequest,
    method: Method,
    authority: &str,
    path: &str,
) -> Result<RequestStream, FetchError> {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let req = Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"))
        .body(())?;
    Ok(send.send_request(req).await?)
}

/// Finishes a request sent with [`request`] and reads its response, the body to `sink`.
///
/// A server may answer before the request ended and stop the request stream (RFC 9114, section
/// 4.1.2); finishing then fails, and the response still counts: "clients MUST NOT discard
/// complete responses as a result of having their request terminated abruptly".
pub async fn response(
    mut stream: RequestStream,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Fetched, FetchError> {
    match stream.finish().await {
        Ok(()) | Err(h3::error::StreamError::RemoteTerminate { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let resp = stream.recv_response().await?;
    let mut body_len = 0u64;
    while let Some(mut chunk) = stream.recv_data().await? {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            sink(c)?;
            body_len += c.len() as u64;
            let n = c.len();
            chunk.advance(n);
        }
    }
    Ok(Fetched {
        status: resp.status(),
        headers: resp.headers().clone(),
        body_len,
    })
}
