//! A connection its peer closed sends nothing more: the engine does not answer the peer's
//! CONNECTION_CLOSE with one of its own (RFC 9000 §10.2.2 makes that packet optional).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use crossbeam_channel::Sender;
use quicshard::quinn_proto::{ConnectionError, Dir, StreamId};
use quicshard::{ConnId, Engine, Handler, Remote, ShardCtx, ShardStats};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The test server's handler around it: when a peer closes a connection, it notes how many
/// datagrams the connection had sent, and on the shard's next loop turn (after the shard drove
/// the connection and sent whatever it had) reports how many more it sent.
struct Watching {
    inner: Server,
    remote: Arc<OnceLock<Remote<Watching>>>,
    sent_after_close: Sender<u64>,
}

fn datagrams_sent(ctx: &mut ShardCtx<'_>, conn: ConnId) -> Option<u64> {
    ctx.connection(conn).map(|c| c.stats().udp_tx.datagrams)
}

impl Handler for Watching {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        self.inner.on_connection(ctx, conn)
    }
    fn on_stream_opened(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.inner.on_stream_opened(ctx, conn, stream)
    }
    fn on_stream_readable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.inner.on_stream_readable(ctx, conn, stream)
    }
    fn on_stream_writable(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.inner.on_stream_writable(ctx, conn, stream)
    }
    fn on_stream_available(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, dir: Dir) {
        self.inner.on_stream_available(ctx, conn, dir)
    }
    fn on_stream_finished(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, stream: StreamId) {
        self.inner.on_stream_finished(ctx, conn, stream)
    }
    fn on_datagram(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, datagram: Bytes) {
        self.inner.on_datagram(ctx, conn, datagram)
    }
    fn on_closed(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId, reason: &ConnectionError) {
        self.inner.on_closed(ctx, conn, reason);
        if !matches!(reason, ConnectionError::ApplicationClosed(_)) {
            return;
        }
        let before = datagrams_sent(ctx, conn).expect("a closing connection is still there");
        let remote = self.remote.get().expect("remote set after start");
        remote
            .run_on(ctx.shard(), move |ctx, h: &mut Watching| {
                // u64::MAX: the connection was already gone, which would be a failure too
                let after = datagrams_sent(ctx, conn).unwrap_or(u64::MAX);
                let _ = h.sent_after_close.send(after.saturating_sub(before));
            })
            .expect("run_on");
    }
}

#[test]
fn no_close_is_sent_back_to_a_peer_that_closed() {
    const CONNECTIONS: u64 = 8;
    let remote = Arc::new(OnceLock::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    let server = Engine::builder({
        let remote = remote.clone();
        move |_| Watching {
            inner: Server::default(),
            remote: remote.clone(),
            sent_after_close: tx.clone(),
        }
    })
    .shards(2)
    .listen("127.0.0.1:0".parse().unwrap())
    .transport(transport())
    .start()
    .unwrap();
    assert!(remote.set(server.remote()).is_ok());
    let (client, outcomes) = client_engine(&server, 1);
    // each client downloads, then closes its connection (code 0, "done")
    start_downloads(&client.remote(), server.local_addr(), CONNECTIONS, |_| {
        10_000
    });
    for o in collect(&outcomes, CONNECTIONS, TIMEOUT) {
        assert_eq!(o.result, Ok(10_000), "download {}", o.tag);
    }
    let sent: Vec<u64> = (0..CONNECTIONS)
        .map(|_| {
            rx.recv_timeout(TIMEOUT)
                .expect("a report per closed connection")
        })
        .collect();
    assert_eq!(
        sent,
        vec![0; CONNECTIONS as usize],
        "datagrams sent after the peer's close"
    );
    let total = ShardStats::sum(&server.stats());
    assert_eq!(total.closed_by_peer, CONNECTIONS);
}
