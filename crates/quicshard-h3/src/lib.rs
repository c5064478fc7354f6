//! HTTP/3 on quicshard: the [`h3`] crate (hyperium) over the engine's thread-safe async handles,
//! without quinn's runtime.
//!
//! - [`quic`]: the `h3::quic` traits (`Connection`, `OpenStreams`, `SendStream`, `RecvStream`,
//!   `BidiStream`) implemented over [`quicshard::handle::Connection`] and its streams.
//! - [`files`]: [`FileServer`], a static file server (GET / HEAD / 404, per-connection request
//!   limit) serving one connection per call.
//! - [`client`]: [`client::connect`] and [`client::fetch`] for GET / HEAD requests.
//! - `settings`: the SETTINGS rule h3 leaves out (SETTINGS_H3_DATAGRAM needs the peer's
//!   `max_datagram_frame_size`, RFC 9297 §2.1.1), applied by [`quic`] to peers' streams.
//!
//! The engine must run in handle mode (`HandleEngine::builder` or, next to callback protocols
//! on the same port, `HandleEngine::builder_mixed`) and offer ALPN [`ALPN`]. Any executor
//! drives the futures; the shards wake tasks through their wakers.
//!
//! # Examples
//! ```no_run
//! # async fn run(engine: quicshard::HandleEngine) {
//! let files = quicshard_h3::FileServer::new(std::path::Path::new("./www")).unwrap();
//! loop {
//!     let conn = engine.accept_async().await;
//!     let files = files.clone();
//!     std::thread::spawn(move || futures_executor_of_your_choice(files.serve(conn)));
//! }
//! # }
//! # fn futures_executor_of_your_choice<F>(_f: F) {}
//! ```

pub mod client;
pub mod files;
pub mod quic;
mod settings;

pub use files::FileServer;
pub use quic::H3Connection;

/// The ALPN protocol ID of HTTP/3 (RFC 9114).
pub const ALPN: &[u8] = b"h3";
