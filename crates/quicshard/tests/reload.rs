//! `Engine::set_server_tls`: after the call, new handshakes on every shard see the new
//! certificate, a connection opened before it keeps working, and a session from before it
//! still resumes.

use std::time::{Duration, Instant};

use quicshard::tls;
use quicshard::HandleEngine;

const LIMIT: Duration = Duration::from_secs(10);

/// A client engine trusting only `roots`.
fn client(roots: &[quicshard::rustls::pki_types::CertificateDer<'static>]) -> HandleEngine {
    HandleEngine::builder()
        .shards(1)
        .client_config(tls::client_config_trusting(roots, &[b"t"]).unwrap())
        .start()
        .unwrap()
}

#[test]
fn new_handshakes_on_every_shard_see_the_new_certificate() {
    let (chain_a, key_a) = tls::self_signed(&["localhost"]).unwrap();
    let (chain_b, key_b) = tls::self_signed(&["localhost"]).unwrap();
    let server = HandleEngine::builder()
        .shards(2)
        .server_tls(tls::server_config(chain_a.clone(), key_a, &[b"t"]).unwrap())
        .start()
        .unwrap();
    let addr = server.local_addr();
    let deadline = || Some(Instant::now() + LIMIT);
    let (trusts_a, trusts_b) = (client(&chain_a), client(&chain_b));
    let before = trusts_a
        .connect_until(addr, "localhost", deadline())
        .unwrap();
    assert!(trusts_b
        .connect_until(addr, "localhost", deadline())
        .is_err());

    server
        .set_server_tls(tls::server_config(chain_b.clone(), key_b, &[b"t"]).unwrap())
        .unwrap();
    // clients on 16 ports: steering (BPF or the kernel's 4-tuple hash) spreads them over both
    // shards (all on one has odds of 2 in 65536)
    for _ in 0..16 {
        client(&chain_b)
            .connect_until(addr, "localhost", deadline())
            .expect("the new certificate");
    }
    // a client that never connected checks the certificate and refuses it; one holding a
    // session ticket from before the reload resumes (no certificate in a resumed handshake)
    assert!(client(&chain_a)
        .connect_until(addr, "localhost", deadline())
        .is_err());
    trusts_a
        .connect_until(addr, "localhost", deadline())
        .expect("a session from before the reload resumes");
    assert!(
        before.close_reason().is_none(),
        "{:?}",
        before.close_reason()
    );
    let stats = server.stats();
    assert!(
        stats.iter().all(|s| s.handshakes > 0),
        "every shard served a handshake: {:?}",
        stats.iter().map(|s| s.handshakes).collect::<Vec<_>>()
    );
}
