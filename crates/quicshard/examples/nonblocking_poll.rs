//! Non-blocking handles driven from one thread each through a [`Poller`] fd in a `mio::Poll`: a
//! client thread runs 100 concurrent streams on one connection (open, write 32 KiB, finish, read
//! the echo, check it), a server thread accepts and echoes them. No thread ever blocks in a
//! handle; each waits only in its own `mio::Poll`. Exits 0 on success.
//!
//! `cargo run -p quicshard --example nonblocking_poll`

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use quicshard::handle::{
    ConnError, Connection, Poller, ReadError, RecvStream, SendStream, WriteError,
};
use quicshard::quinn_proto::{TransportConfig, VarInt};
use quicshard::HandleEngine;

const STREAMS: usize = 100;
const BYTES: usize = 32 * 1024;
const LIMIT: Duration = Duration::from_secs(60);

fn byte(stream: usize, i: usize) -> u8 {
    (i.wrapping_mul(7) ^ stream.wrapping_mul(131)) as u8
}

/// The poller's fd in a mio loop: waits until some registered handle has news.
struct Loop {
    poll: mio::Poll,
    events: Events,
    poller: Poller,
    tokens: Vec<usize>,
    end: Instant,
}

impl Loop {
    fn new() -> Self {
        let poll = mio::Poll::new().unwrap();
        let poller = Poller::new().unwrap();
        poll.registry()
            .register(
                &mut SourceFd(&poller.as_raw_fd()),
                Token(0),
                Interest::READABLE,
            )
            .unwrap();
        Self {
            poll,
            events: Events::with_capacity(4),
            poller,
            tokens: Vec::new(),
            end: Instant::now() + LIMIT,
        }
    }

    /// The next batch of tokens (waits in epoll).
    fn next(&mut self) -> Vec<usize> {
        loop {
            assert!(Instant::now() < self.end, "example timed out");
            if self.poller.drain(&mut self.tokens) > 0 {
                return std::mem::take(&mut self.tokens);
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_secs(1)))
                .unwrap();
        }
    }
}

struct Echo {
    send: SendStream,
    recv: RecvStream,
    buf: Vec<u8>,
    off: usize,
    len: usize,
    eof: bool,
}

impl Echo {
    /// Moves bytes until a side would block; `true` once the stream is fully echoed.
    fn pump(&mut self) -> bool {
        loop {
            if self.off < self.len {
                match self.send.write(&self.buf[self.off..self.len]) {
                    Ok(n) => self.off += n,
                    Err(WriteError::WouldBlock) => return false,
                    Err(e) => panic!("server write: {e}"),
                }
            } else if self.eof {
                self.send.finish().unwrap();
                return true;
            } else {
                match self.recv.read(&mut self.buf) {
                    Ok(0) => self.eof = true,
                    Ok(n) => (self.off, self.len) = (0, n),
                    Err(ReadError::WouldBlock) => return false,
                    Err(e) => panic!("server read: {e}"),
                }
            }
        }
    }
}

/// Accepts one connection and echoes every stream on it, from this thread only.
fn server(engine: &HandleEngine) -> usize {
    let mut lp = Loop::new();
    const ENGINE: usize = 0;
    const CONN: usize = 1;
    lp.poller.register(engine, ENGINE);
    let mut conn: Option<Connection> = None;
    let mut echoes: Vec<Option<Echo>> = Vec::new();
    let (mut served, mut closed) = (0, false);
    while !(closed && echoes.iter().all(Option::is_none)) {
        for t in lp.next() {
            match t {
                ENGINE => {
                    if let Ok(c) = engine.try_accept() {
                        c.set_nonblocking(true);
                        lp.poller.register(&c, CONN);
                        conn = Some(c);
                    }
                }
                CONN => {
                    while let Some(c) = &conn {
                        match c.accept_bi() {
                            Ok((send, recv)) => {
                                send.set_nonblocking(true);
                                recv.set_nonblocking(true);
                                let tok = 2 + echoes.len();
                                lp.poller.register(&send, tok);
                                lp.poller.register(&recv, tok);
                                echoes.push(Some(Echo {
                                    send,
                                    recv,
                                    buf: vec![0; 16 * 1024],
                                    off: 0,
                                    len: 0,
                                    eof: false,
                                }));
                            }
                            Err(ConnError::WouldBlock) => break,
                            Err(ConnError::ConnectionLost(_)) => {
                                closed = true;
                                break;
                            }
                            Err(e) => panic!("accept_bi: {e}"),
                        }
                    }
                }
                tok => {
                    let slot = &mut echoes[tok - 2];
                    if slot.as_mut().is_some_and(Echo::pump) {
                        *slot = None;
                        served += 1;
                    }
                }
            }
        }
    }
    served
}

struct Check {
    send: SendStream,
    recv: RecvStream,
    id: usize,
    written: usize,
    got: Vec<u8>,
    done: bool,
}

impl Check {
    fn pump(&mut self, data: &[u8]) {
        while self.written < BYTES {
            match self.send.write(&data[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == BYTES {
                        self.send.finish().unwrap();
                    }
                }
                Err(WriteError::WouldBlock) => break,
                Err(e) => panic!("client write: {e}"),
            }
        }
        let mut buf = [0u8; 8192];
        while !self.done {
            match self.recv.read(&mut buf) {
                Ok(0) => {
                    assert!(self.got == data, "stream {}: echo differs", self.id);
                    self.done = true;
                }
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(ReadError::WouldBlock) => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
}

/// Runs all client streams from this thread only.
fn client(conn: Connection) {
    let mut lp = Loop::new();
    const CONN: usize = 0;
    conn.set_nonblocking(true);
    lp.poller.register(&conn, CONN);
    let data: Vec<Vec<u8>> = (0..STREAMS)
        .map(|s| (0..BYTES).map(|i| byte(s, i)).collect())
        .collect();
    let mut checks: Vec<Check> = Vec::new();
    // edge-triggered: operate until WouldBlock first, then wait for news
    let mut batch = vec![CONN];
    while checks.len() < STREAMS || !checks.iter().all(|c| c.done) {
        for t in std::mem::take(&mut batch) {
            if t == CONN {
                while checks.len() < STREAMS {
                    match conn.open_bi() {
                        Ok((send, recv)) => {
                            send.set_nonblocking(true);
                            recv.set_nonblocking(true);
                            let id = checks.len();
                            lp.poller.register(&send, id + 1);
                            lp.poller.register(&recv, id + 1);
                            checks.push(Check {
                                send,
                                recv,
                                id,
                                written: 0,
                                got: Vec::new(),
                                done: false,
                            });
                        }
                        Err(ConnError::WouldBlock) => break,
                        Err(e) => panic!("open_bi: {e}"),
                    }
                }
            } else {
                let c = &mut checks[t - 1];
                c.pump(&data[c.id]);
            }
        }
        if checks.len() < STREAMS || !checks.iter().all(|c| c.done) {
            batch = lp.next();
        }
    }
    conn.close(VarInt::from_u32(0), b"done");
}

fn main() {
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(128));
    let server_engine = HandleEngine::builder()
        .shards(2)
        .transport(transport)
        .start()
        .expect("server");
    let tls =
        quicshard::tls::client_config_trusting(server_engine.certificate().unwrap(), &[]).unwrap();
    let client_engine = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .expect("client");
    let started = Instant::now();
    let served = std::thread::scope(|s| {
        let srv = s.spawn(|| server(&server_engine));
        let conn = client_engine
            .connect_until(
                server_engine.local_addr(),
                "localhost",
                Some(Instant::now() + LIMIT),
            )
            .expect("connect");
        client(conn);
        srv.join().unwrap()
    });
    assert_eq!(served, STREAMS);
    println!(
        "nonblocking_poll: {STREAMS} streams x {} KiB echoed and verified from one thread per side in {:?}",
        BYTES / 1024,
        started.elapsed()
    );
}
