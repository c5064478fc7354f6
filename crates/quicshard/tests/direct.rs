//! The direct backend beyond the handle conformance suite (`handles.rs` runs that against it):
//! an app-owned event loop over `poll_fd` / `next_deadline` / `tick` on UDP, the contentive
//! model with many threads, the timer-assist thread, and the locking-off ownership check.
//!
//! Every wait is bounded by a deadline.

mod handles_common;

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use handles_common::*;
use quicshard::direct::DirectConfig;
use quicshard::handle::{ConnError, HandleConfig, ReadError, WriteError};
use quicshard::quinn_proto::{ConnectionError, TransportConfig, VarInt};
use quicshard::HandleEngine;
use quicshard::ShardStats;

/// One echoed stream on the server of `serve_echo_with_own_loop`.
struct Echo {
    recv: quicshard::handle::RecvStream,
    send: quicshard::handle::SendStream,
    /// Read, not yet written back.
    buf: Vec<u8>,
    fin: bool,
}

impl Echo {
    /// Moves what it can without blocking; `true` once everything was echoed and finished.
    fn pump(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        while !self.fin {
            match self.recv.read(&mut tmp) {
                Ok(0) => self.fin = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(ReadError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while !self.buf.is_empty() {
            match self.send.write(&self.buf) {
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(WriteError::WouldBlock) => return false,
                Err(e) => panic!("{e}"),
            }
        }
        self.fin && self.send.finish().is_ok()
    }
}

/// Echo server on a UDP direct engine, driven by this thread's own mio loop watching
/// `poll_fd`: non-blocking handles only, one stream per connection.
fn serve_echo_with_own_loop(server: HandleEngine, streams: usize) {
    let fd: RawFd = server.poll_fd().expect("a UDP direct engine is pollable");
    let mut poll = mio::Poll::new().unwrap();
    poll.registry()
        .register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(0),
            mio::Interest::READABLE,
        )
        .unwrap();
    let mut events = mio::Events::with_capacity(4);
    let end = Instant::now() + LONG;
    let mut conns = Vec::new();
    let mut echoes: Vec<Echo> = Vec::new();
    let mut done = 0;
    let mut ticks = 0u64;
    while done < streams {
        assert!(
            Instant::now() < end,
            "server loop: {done} of {streams} streams done"
        );
        let timeout = server
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        poll.poll(&mut events, Some(timeout)).unwrap();
        assert!(server.tick(), "nobody else drives this engine");
        ticks += 1;
        loop {
            match server.try_accept() {
                Ok(c) => {
                    c.set_nonblocking(true);
                    conns.push(c);
                }
                Err(quicshard::handle::AcceptError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // a client closes once it has its echo: then its connection leaves the list
        conns.retain(|c| match c.accept_bi() {
            Ok((send, recv)) => {
                send.set_nonblocking(true);
                recv.set_nonblocking(true);
                echoes.push(Echo {
                    recv,
                    send,
                    buf: Vec::new(),
                    fin: false,
                });
                true
            }
            Err(ConnError::WouldBlock) => true,
            Err(ConnError::ConnectionLost(_)) => false,
            Err(e) => panic!("{e}"),
        });
        let before = echoes.len();
        echoes.retain_mut(|e| !e.pump());
        done += before - echoes.len();
    }
    // the clients close once they have their echo
    for c in &conns {
        c.set_nonblocking(false);
        let _ = c.closed_until(deadline());
    }
    assert!(ticks > 1);
    let stats = server.shutdown(Duration::from_secs(1));
    assert_eq!(stats.len(), 1, "a direct engine has one shard");
}

#[test]
fn udp_engine_in_an_app_owned_event_loop() {
    let server = HandleEngine::builder()
        .transport(transport())
        .start_direct(DirectConfig::default())
        .unwrap();
    assert!(server.is_direct());
    let addr = server.local_addr();
    let cert = server.certificate().unwrap().to_vec();
    let streams = 6;
    let app = std::thread::spawn(move || serve_echo_with_own_loop(server, streams));
    // the client: an ordinary worker-backend engine, blocking calls
    let tls = quicshard::tls::client_config_trusting(&cert, &[]).unwrap();
    let client = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    assert!(!client.is_direct() && client.poll_fd().is_none() && !client.tick());
    let mut conns = Vec::new();
    for i in 0..streams {
        let c = client.connect_until(addr, "localhost", deadline()).unwrap();
        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
        let data = payload(i as u64, 50_000 + i * 7_000);
        send.write_all_until(&data, deadline()).unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end_until(1 << 20, deadline()).unwrap();
        assert!(back == data, "stream {i}: echo differs");
        c.close(VarInt::from_u32(0), b"done");
        conns.push(c);
    }
    app.join().unwrap();
}

/// 8 app threads share one memory pair; whichever is blocked drives both engines.
#[test]
fn contentive_threads_share_the_engine() {
    let p = Pair::memory(HandleConfig::default(), DirectConfig::default());
    let (s, c) = p.connect();
    let threads = 8;
    let per_thread = 25u64;
    std::thread::scope(|scope| {
        // the server: one thread per incoming stream would be too many; 4 echo workers
        for _ in 0..4 {
            let s = s.clone();
            scope.spawn(move || loop {
                let (mut send, mut recv) = match s.accept_bi_until(deadline()) {
                    Ok(x) => x,
                    Err(ConnError::ConnectionLost(_)) => return,
                    Err(e) => panic!("{e}"),
                };
                let got = recv.read_to_end_until(1 << 20, deadline()).unwrap();
                send.write_all_until(&got, deadline()).unwrap();
                send.finish().unwrap();
            });
        }
        let clients: Vec<_> = (0..threads)
            .map(|t| {
                let c = c.clone();
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let tag = t * 1000 + i;
                        let data = payload(tag, 1000 + (tag as usize * 131) % 20_000);
                        let (mut send, mut recv) = c.open_bi_until(deadline()).unwrap();
                        send.write_all_until(&data, deadline()).unwrap();
                        send.finish().unwrap();
                        let back = recv.read_to_end_until(1 << 20, deadline()).unwrap();
                        assert!(back == data, "stream {tag}: echo differs");
                    }
                })
            })
            .collect();
        for h in clients {
            h.join().unwrap();
        }
        c.close(VarInt::from_u32(0), b"done");
    });
    let st = ShardStats::sum(&p.client.stats());
    assert_eq!(st.dropped_link_full, 0);
    assert_eq!(st.handshakes, 1);
}

/// With the timer-assist thread, timers run while no app thread is in the engine: an idle
/// timeout closes the connection although the app only watches the counters.
#[test]
fn timer_assist_runs_timers_while_the_app_is_away() {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(VarInt::from_u32(300).into()));
    let cfg = DirectConfig {
        locking: true,
        timer_assist: true,
    };
    let (server, client) = quicshard::direct::memory_pair(
        HandleEngine::builder().transport(t),
        HandleEngine::builder(),
        cfg,
    )
    .unwrap();
    let c = client
        .connect_until(server.local_addr(), "localhost", deadline())
        .unwrap();
    let _s = server.accept_until(deadline()).unwrap();
    // the app stays out of the engine: it only reads atomics
    let end = Instant::now() + Duration::from_secs(20);
    while ShardStats::sum(&client.stats()).connections_closed == 0 {
        assert!(Instant::now() < end, "the idle timeout never fired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.close_reason(), Some(ConnectionError::TimedOut));
}

#[test]
fn timer_assist_needs_locking() {
    let cfg = DirectConfig {
        locking: false,
        timer_assist: true,
    };
    let r = quicshard::direct::memory_pair(HandleEngine::builder(), HandleEngine::builder(), cfg);
    let e = r.err().expect("refused");
    assert!(e.to_string().contains("needs locking"), "{e}");
}

/// Without locking the engine belongs to the thread that first drove it.
#[test]
fn without_locking_a_second_driving_thread_panics() {
    let cfg = DirectConfig {
        locking: false,
        timer_assist: false,
    };
    let p = Pair::memory(HandleConfig::default(), cfg);
    let (s, c) = p.connect();
    let t = std::thread::spawn(move || {
        let _ = c.open_bi_until(Some(Instant::now() + Duration::from_secs(5)));
        let (_send, mut recv) = c.open_bi_until(deadline()).unwrap();
        // blocks: needs a turn of the engine, which this thread may not take
        let _ = recv.read_until(&mut [0; 1], Some(Instant::now() + Duration::from_secs(5)));
    });
    let e = t.join().expect_err("the second thread must panic");
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("without locking"), "{msg}");
    drop(s);
}
