//! RFC 9297 §2.1.1 against a `FileServer`: a peer that sends SETTINGS_H3_DATAGRAM = 1 without the
//! `max_datagram_frame_size` transport parameter is closed with H3_SETTINGS_ERROR; the same
//! SETTINGS from a peer that sent the parameter are accepted and its request answered. The peer
//! is hand-built on the engine's own client handles: a control stream with a SETTINGS frame and
//! a request stream with a QPACK-encoded GET (static table only).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quicshard::handle::Connection;
use quicshard::quinn_proto::{ConnectionError, TransportConfig};
use quicshard::HandleEngine;
use quicshard_h3::FileServer;

/// H3_SETTINGS_ERROR (RFC 9114 §8.1).
const H3_SETTINGS_ERROR: u64 = 0x109;
/// How long any one step may take.
const LIMIT: Duration = Duration::from_secs(10);

/// The control stream: type 0x00, SETTINGS (0x04) with SETTINGS_H3_DATAGRAM (0x33) = 1.
const CONTROL: [u8; 5] = [0x00, 0x04, 0x02, 0x33, 0x01];

/// A HEADERS frame for `GET https://localhost/` (QPACK: no dynamic table; static indices 17
/// `:method GET`, 23 `:scheme https`, 1 `:path /`, and `:authority` by name reference 0).
fn get_request() -> Vec<u8> {
    let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23, 0xc0 | 1, 0x50, 9];
    block.extend_from_slice(b"localhost");
    let mut frame = vec![0x01, block.len() as u8];
    frame.extend(block);
    frame
}

struct Setup {
    server: Arc<HandleEngine>,
    _rt: tokio::runtime::Runtime,
}

fn server() -> Setup {
    let server = Arc::new(
        HandleEngine::builder()
            .shards(1)
            .alpn(&[quicshard_h3::ALPN])
            .start()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let s = server.clone();
    rt.spawn(async move {
        let files = FileServer::empty();
        loop {
            let conn = s.accept_async().await;
            let files = files.clone();
            tokio::spawn(async move { files.serve(conn).await });
        }
    });
    Setup { server, _rt: rt }
}

/// A client connection whose transport parameters carry `max_datagram_frame_size` or not.
fn peer(setup: &Setup, datagrams: bool) -> (HandleEngine, Connection) {
    let cert = setup.server.certificate().unwrap().to_vec();
    let mut tls = quicshard::tls::client_config_trusting(&cert, &[quicshard_h3::ALPN]).unwrap();
    let mut transport = TransportConfig::default();
    if !datagrams {
        // quinn-proto's default sends the parameter; no receive buffer leaves it out
        transport.datagram_receive_buffer_size(None);
    }
    tls.transport_config(Arc::new(transport));
    let client = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    let conn = client
        .connect_until(
            setup.server.local_addr(),
            "localhost",
            Some(Instant::now() + LIMIT),
        )
        .unwrap();
    assert!(
        conn.max_datagram_size().is_some(),
        "the server supports datagrams"
    );
    (client, conn)
}

/// Sends the control stream and a GET; returns the control stream (kept open: closing it is
/// H3_CLOSED_CRITICAL_STREAM) and the request's receiving half.
fn send_settings_and_get(
    conn: &Connection,
) -> (quicshard::handle::SendStream, quicshard::handle::RecvStream) {
    let mut control = conn.open_uni().unwrap();
    control.write_all(&CONTROL).unwrap();
    control.flush().unwrap();
    let (mut send, recv) = conn.open_bi().unwrap();
    send.write_all(&get_request()).unwrap();
    send.finish().unwrap();
    (control, recv)
}

#[test]
fn h3_datagram_without_the_transport_parameter_is_a_settings_error() {
    let setup = server();
    let (_client, conn) = peer(&setup, false);
    // the server may close as soon as it has read the SETTINGS, so the writes after them may
    // fail; the streams stay open until the close (a closed control stream would be an error
    // of its own)
    let _control = conn.open_uni().ok().map(|mut c| {
        let _ = c.write_all(&CONTROL).and_then(|()| c.flush());
        c
    });
    let _request = conn.open_bi().ok().map(|(mut send, recv)| {
        let _ = send.write_all(&get_request());
        let _ = send.finish();
        (send, recv)
    });
    let why = conn
        .closed_until(Some(Instant::now() + LIMIT))
        .expect("the server closes the connection");
    match why {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), H3_SETTINGS_ERROR, "{c:?}")
        }
        other => panic!("closed with {other:?}, not H3_SETTINGS_ERROR"),
    }
}

#[test]
fn h3_datagram_with_the_transport_parameter_is_accepted() {
    let setup = server();
    let (_client, conn) = peer(&setup, true);
    let (_control, mut recv) = send_settings_and_get(&conn);
    recv.set_timeout(Some(LIMIT));
    // the response's HEADERS frame (type 0x01) arrives: the connection was not closed
    let mut first = [0u8; 1];
    recv.read_exact(&mut first)
        .unwrap_or_else(|e| panic!("no response: {e}; close reason {:?}", conn.close_reason()));
    assert_eq!(first[0], 0x01, "a HEADERS frame");
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
}
