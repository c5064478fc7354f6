//! The quinn baseline: `hq-interop`, `perf` and `echo` on quinn 0.11's high-level API, written
//! the way a quinn user would (a task per connection and per stream; perf bodies as
//! `write_chunk` of static `Bytes`, no copy, as `serve` does; files with `write_all` from a
//! buffer), on a multi-threaded tokio runtime with `--shards` worker threads.
//!
//! Settings that matter for a fair comparison with `quicshard serve`: the same rustls config
//! ([`crate::tls`]), quinn-proto's default `TransportConfig` and `EndpointConfig` (which the
//! engine uses too), no Retry, files read on the serving thread from the page cache.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use quicshard_apps::{self as proto, ALPN_ECHO, ALPN_HQ, ALPN_PERF, BAD_REQUEST, HQ_NOT_FOUND};

/// The ALPNs `quicshard serve` offers but h3 (quinn-baseline has no HTTP/3), in its order.
const SERVER_ALPNS: &[&[u8]] = &[ALPN_HQ, ALPN_PERF, ALPN_ECHO];
use crate::{signals, CommonArgs, Fatal};

/// How long a graceful shutdown waits for connections to drain (as `serve`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The socket buffers the engine asks for on each shard's socket (`steer.rs`); quinn's default
/// (the kernel's 208 KiB) drops part of a burst of Initials from many new clients.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Arguments of `quinn-baseline`.
#[derive(clap::Parser, Debug)]
#[command(about = "quinn 0.11 baseline server: hq-interop, perf and echo, like `quicshard serve`")]
pub struct Args {
    /// The flags shared with `quicshard serve`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory served by hq-interop (GET /path); without it every GET is not found.
    #[arg(long)]
    pub root: Option<PathBuf>,
}

/// Serves until SIGINT/SIGTERM.
pub fn run(args: Args) -> Result<(), Fatal> {
    let root = match &args.root {
        Some(r) => Some(Arc::new(
            r.canonicalize()
                .ok()
                .filter(|p| p.is_dir())
                .ok_or_else(|| Fatal(format!("--root {}: not a directory", r.display())))?,
        )),
        None => None,
    };
    let c = &args.common;
    let tls = crate::tls::server_config(c.cert.as_deref(), c.key.as_deref(), SERVER_ALPNS)?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    signals::block()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(c.threads())
        .enable_all()
        .build()?;
    let socket = bind(c.listen)?;
    let endpoint = rt.block_on(async {
        let runtime = Arc::new(quinn::TokioRuntime);
        quinn::Endpoint::new(Default::default(), Some(config), socket, runtime)
    })?;
    println!("listening on {}", endpoint.local_addr()?);
    let ep = endpoint.clone();
    rt.spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    serve_connection(conn, root).await;
                }
            });
        }
    });
    signals::wait()?;
    rt.block_on(async {
        endpoint.close(VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, endpoint.wait_idle()).await;
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// A UDP socket on `addr` with the engine's buffer sizes (capped by `net.core.*mem_max`).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // ignored as in the engine: a smaller buffer only costs drops under bursts
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[derive(Clone, Copy)]
enum Proto {
    Hq,
    Perf,
    Echo,
}

async fn serve_connection(conn: Connection, root: Option<Arc<PathBuf>>) {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let proto = match alpn.as_deref() {
        Some(ALPN_HQ) => Proto::Hq,
        Some(ALPN_PERF) => Proto::Perf,
        Some(ALPN_ECHO) => Proto::Echo,
        _ => {
            let code = VarInt::from_u32(proto::NO_APPLICATION_PROTOCOL);
            conn.close(code, b"no application protocol");
            return;
        }
    };
    // the client closes the connection when its requests are done
    while let Ok((send, recv)) = conn.accept_bi().await {
        let root = root.clone();
        tokio::spawn(async move {
            match proto {
                Proto::Hq => hq(send, recv, root.as_deref().map(|p| p.as_path())).await,
                Proto::Perf => perf(send, recv).await,
                Proto::Echo => echo(send, recv).await,
            }
        });
    }
}

fn reset(send: &mut SendStream, code: u32) {
    let _ = send.reset(VarInt::from_u32(code));
}

/// perf: the 8-byte length, the upload drained, then that many pattern bytes.
async fn perf(mut send: SendStream, mut recv: RecvStream) {
    let mut len = [0u8; 8];
    if recv.read_exact(&mut len).await.is_err() {
        return reset(&mut send, BAD_REQUEST);
    }
    loop {
        match recv.read_chunk(usize::MAX, true).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return reset(&mut send, BAD_REQUEST),
        }
    }
    let (total, mut sent) = (u64::from_be_bytes(len), 0u64);
    while sent < total {
        // the static table as `Bytes`: quinn keeps it without copying, as `serve` does
        let chunk = proto::pattern(sent, total - sent);
        if send.write_chunk(Bytes::from_static(chunk)).await.is_err() {
            return;
        }
        sent += chunk.len() as u64;
    }
    let _ = send.finish();
}

/// echo: every byte back, then FIN.
async fn echo(mut send: SendStream, mut recv: RecvStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                if send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return reset(&mut send, BAD_REQUEST),
        }
    }
    let _ = send.finish();
}

/// hq-interop: `GET /path\r\n` → the file under the root, or a reset.
async fn hq(mut send: SendStream, mut recv: RecvStream, root: Option<&std::path::Path>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let mut fin = false;
    while !request.windows(2).any(|w| w == b"\r\n") {
        match recv.read(&mut buf).await {
            Ok(Some(n)) if request.len() + n <= proto::MAX_REQUEST => {
                request.extend_from_slice(&buf[..n]);
            }
            Ok(Some(_)) | Err(_) => {
                let _ = recv.stop(VarInt::from_u32(BAD_REQUEST));
                return reset(&mut send, BAD_REQUEST);
            }
            Ok(None) => {
                fin = true;
                break;
            }
        }
    }
    if !fin {
        // the request is complete; the rest of the stream is not needed
        let _ = recv.stop(VarInt::from_u32(0));
    }
    let file = proto::parse_get(&request).and_then(|p| proto::open_under(root?, p));
    let Some(mut file) = file else {
        return reset(&mut send, HQ_NOT_FOUND);
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if send.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return reset(&mut send, BAD_REQUEST),
        }
    }
    let _ = send.finish();
}
