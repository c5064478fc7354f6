//! SIGTERM to `quicshard serve` in the middle of 50 transfers: every response the server had
//! started arrives whole at the client (the server drains before it closes), and serve exits 0.
//!
//! The client is the quicshard engine itself with a small hq-interop [`Handler`] written here, so
//! the test sees every stream's bytes and how it ended, and signals the server at a moment it
//! knows: right after the first transfer completed, while the others are in flight.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{tempdir, Proc};
use crossbeam_channel::{Receiver, Sender};
use quicshard::quinn_proto::{ConnectionError, Dir, ReadError, StreamId};
use quicshard::{ConnId, Engine, Handler, ShardCtx, ShardId};

/// Connections to the server, and transfers (streams) on each: 50 transfers.
const CONNECTIONS: usize = 5;
const STREAMS_PER_CONNECTION: usize = 10;
/// Size of each served file: large enough that 50 of them take a while on loopback.
const FILE_BYTES: usize = 512 << 10;
/// No event from the client for this long fails the test.
const STALL: Duration = Duration::from_secs(30);

/// How a transfer ended, as the client saw it.
#[derive(Debug)]
enum Ended {
    /// FIN received: the whole body.
    Complete { file: usize, body: Vec<u8> },
    /// Reset by the server or cut by the connection's end.
    Cut {
        file: usize,
        got: usize,
        why: String,
    },
}

/// hq-interop client: on each connection, GET STREAMS_PER_CONNECTION files, report each ending.
struct Downloader {
    events: Sender<Ended>,
    /// Per stream: which file and the bytes so far.
    streams: HashMap<(ConnId, StreamId), (usize, Vec<u8>)>,
    /// Per connection: the index of its first file.
    first_file: HashMap<ConnId, usize>,
}

impl Downloader {
    fn end(&mut self, key: (ConnId, StreamId), fin: bool, why: &str) {
        if let Some((file, body)) = self.streams.remove(&key) {
            let ev = if fin {
                Ended::Complete { file, body }
            } else {
                Ended::Cut {
                    file,
                    got: body.len(),
                    why: why.to_string(),
                }
            };
            let _ = self.events.send(ev);
        }
    }
}

impl Handler for Downloader {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        let first = self.first_file[&conn];
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        for i in 0..STREAMS_PER_CONNECTION {
            let sid = c
                .streams()
                .open(Dir::Bi)
                .expect("the server allows 100 streams");
            let request = format!("GET /f{}\r\n", first + i);
            let mut send = c.send_stream(sid);
            // 12 bytes always fit in a fresh stream's window
            assert_eq!(send.write(request.as_bytes()).unwrap(), request.len());
            send.finish().unwrap();
            self.streams.insert((conn, sid), (first + i, Vec::new()));
        }
    }

    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        let Some(c) = ctx.connection(conn) else {
            return;
        };
        let Some((_, body)) = self.streams.get_mut(&(conn, stream)) else {
            return;
        };
        let mut recv = c.recv_stream(stream);
        let Ok(mut chunks) = recv.read(true) else {
            return;
        };
        let end = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
                Ok(None) => break Some((true, String::new())),
                Err(ReadError::Blocked) => break None,
                Err(ReadError::Reset(code)) => break Some((false, format!("reset {code}"))),
            }
        };
        let _ = chunks.finalize();
        if let Some((fin, why)) = end {
            self.end((conn, stream), fin, &why);
        }
    }

    fn on_closed(&mut self, _ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {
        let open: Vec<_> = self
            .streams
            .keys()
            .filter(|k| k.0 == conn)
            .copied()
            .collect();
        for key in open {
            self.end(key, false, &format!("connection ended: {reason}"));
        }
    }
}

/// Starts the client engine and its CONNECTIONS connections to `server`.
fn start_client(server: SocketAddr) -> (Engine<Downloader>, Receiver<Ended>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let tls = quicshard::tls::insecure_client_config(&[b"hq-interop"]).unwrap();
    let engine = Engine::builder(move |_| Downloader {
        events: tx.clone(),
        streams: HashMap::new(),
        first_file: HashMap::new(),
    })
    .shards(1)
    .listen("127.0.0.1:0".parse().unwrap())
    .client_config(tls)
    .start()
    .unwrap();
    for c in 0..CONNECTIONS {
        engine
            .remote()
            .run_on(ShardId(0), move |ctx, d| {
                let id = ctx.connect(server, "localhost").expect("connect");
                d.first_file.insert(id, c * STREAMS_PER_CONNECTION);
            })
            .unwrap();
    }
    (engine, rx)
}

#[test]
fn sigterm_during_50_transfers_delivers_every_started_response() {
    let root = tempdir("shutdown");
    let files: Vec<Vec<u8>> = (0..CONNECTIONS * STREAMS_PER_CONNECTION)
        .map(|i| {
            // distinct contents per file, so a body delivered on the wrong stream shows
            let body: Vec<u8> = (0..FILE_BYTES)
                .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8)
                .collect();
            std::fs::write(root.join(format!("f{i}")), &body).unwrap();
            body
        })
        .collect();
    let server = Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--root",
        root.to_str().unwrap(),
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let (client, events) = start_client(addr);
    let mut server = Some(server);

    let mut ended = Vec::new();
    let mut out = None;
    let mut complete_at_signal = 0;
    while ended.len() < files.len() {
        let ev = events
            .recv_timeout(STALL)
            .unwrap_or_else(|_| panic!("no transfer ended for {STALL:?}; ended: {ended:?}"));
        ended.push(ev);
        if let Some(s) = server.take() {
            // the first transfer ended: the other 49 are in flight
            complete_at_signal = ended.len();
            out = Some(std::thread::spawn(move || s.stop()));
        }
    }
    client.shutdown(Duration::from_secs(1));
    let out = out.unwrap().join().unwrap();
    assert!(
        out.status.success(),
        "serve exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        complete_at_signal < files.len(),
        "the signal came after every transfer: the test proved nothing"
    );
    for ev in &ended {
        match ev {
            Ended::Complete { file, body } => assert!(
                body == &files[*file],
                "f{file}: {} bytes arrived, not the file's {}",
                body.len(),
                FILE_BYTES
            ),
            Ended::Cut { file, got, why } => {
                panic!("f{file} was cut after {got} of {FILE_BYTES} bytes: {why}")
            }
        }
    }
}
