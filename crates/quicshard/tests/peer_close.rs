//! A connection its peer closed sends nothing more: the engine does not answer the peer's
//! CONNECTION_CLOSE with one of its own (RFC 9000 §10.2.2 makes that packet optional).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use quicshard::quinn_proto::ConnectionError;
use quicshard::{ConnId, Engine, Remote, ShardCtx, ShardStats};

const TIMEOUT: Duration = Duration::from_secs(60);

fn datagrams_sent(ctx: &mut ShardCtx<'_>, conn: ConnId) -> Option<u64> {
    ctx.connection(conn).map(|c| c.stats().udp_tx.datagrams)
}

#[test]
fn no_close_is_sent_back_to_a_peer_that_closed() {
    const CONNECTIONS: u64 = 8;
    let remote: Arc<OnceLock<Remote<Server>>> = Arc::new(OnceLock::new());
    let (tx, rx) = crossbeam_channel::unbounded();
    // when a peer closes a connection, the server notes how many datagrams the connection had
    // sent, and on the shard's next loop turn (after the shard drove the connection and sent
    // whatever it had) reports how many more it sent
    let server = Engine::builder({
        let remote = remote.clone();
        move |_| {
            let (remote, tx) = (remote.clone(), tx.clone());
            Server::with_close_hook(move |ctx, conn, reason| {
                if !matches!(reason, ConnectionError::ApplicationClosed(_)) {
                    return;
                }
                let before = datagrams_sent(ctx, conn).expect("a closing connection is there");
                let tx = tx.clone();
                let remote = remote.get().expect("remote set after start");
                remote
                    .run_on(ctx.shard(), move |ctx, _| {
                        // u64::MAX: the connection was already gone, a failure too
                        let after = datagrams_sent(ctx, conn).unwrap_or(u64::MAX);
                        let _ = tx.send(after.saturating_sub(before));
                    })
                    .expect("run_on");
            })
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
