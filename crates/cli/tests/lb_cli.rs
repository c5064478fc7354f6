//! `quicshard lb` in proxy mode on loopback in front of two `quicshard serve` backends that
//! issue QUIC-LB CIDs: downloads through the LB are byte-exact, both backends serve, and every
//! connection stays on one backend. (The namespace tests cover DSR and multi-host setups.)

mod common;

use std::path::Path;

use common::{qs, tempdir, Proc};

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sum(stats: &serde_json::Value, key: &str) -> u64 {
    stats["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[key].as_u64().unwrap())
        .sum()
}

#[test]
fn proxy_mode_routes_connections_to_backends_by_cid() {
    let dir = tempdir("lb");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.join("www/f.bin"), &data).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:0"
mode = "proxy"
[[quic_lb]]
id = 1
server_id_len = 2
nonce_len = 8
key = "8f95f09245765f80256934e50c66207f"
[[backend]]
server_id = "0a01"
address = "127.0.0.1:{p1}"
[[backend]]
server_id = "0a02"
address = "127.0.0.1:{p2}"
"#
        ),
    )
    .unwrap();
    let www = dir.join("www");
    let backend = |port: u16, sid: &str, stats: &str| {
        Proc::start(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "2",
            "--root",
            www.to_str().unwrap(),
            "--server-id",
            sid,
            "--quic-lb-config",
            config.to_str().unwrap(),
            "--stats-file",
            dir.join(stats).to_str().unwrap(),
        ])
    };
    let b1 = backend(p1, "0a01", "b1.json");
    let b2 = backend(p2, "0a02", "b2.json");
    let lb_stats = dir.join("lb.json");
    let lb = Proc::start(&[
        "lb",
        "--config",
        config.to_str().unwrap(),
        "--stats-file",
        lb_stats.to_str().unwrap(),
    ]);
    const CONNECTIONS: u64 = 12;
    for i in 0..CONNECTIONS {
        let out = dir.join(format!("dl{i}"));
        let o = qs()
            .args(["get", "--insecure", "--output", out.to_str().unwrap()])
            .arg(format!("https://localhost:{}/f.bin", lb.port))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "get {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::read(out.join("f.bin")).unwrap(),
            data,
            "download {i}"
        );
    }
    // stop the LB first so the backends' closes are not counted against it
    assert!(lb.stop().status.success());
    assert!(b1.stop().status.success() && b2.stop().status.success());
    let (s1, s2) = (json(&dir.join("b1.json")), json(&dir.join("b2.json")));
    let (a1, a2) = (
        sum(&s1, "connections_accepted"),
        sum(&s2, "connections_accepted"),
    );
    assert_eq!(
        a1 + a2,
        CONNECTIONS,
        "each connection was accepted by exactly one backend"
    );
    assert!(a1 > 0 && a2 > 0, "both backends used: {a1} / {a2}");
    // a connection split over two backends would show as unknown-CID drops or extra handshakes
    assert_eq!(
        sum(&s1, "dropped_unknown_cid") + sum(&s2, "dropped_unknown_cid"),
        0
    );
    assert_eq!(sum(&s1, "handshakes") + sum(&s2, "handshakes"), CONNECTIONS);
    let lbj = json(&lb_stats);
    assert!(
        lbj["routing"]["routed_by_cid"].as_u64().unwrap() > 0,
        "{lbj}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_lb_config_is_one_line_naming_the_key() {
    let dir = tempdir("lbbad");
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "listen = \"127.0.0.1:0\"\n[[backend]]\nserver_id = \"0a\"\naddress = \"nowhere\"\n",
    )
    .unwrap();
    let o = qs()
        .args(["lb", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("backend[0].address"), "{err}");
    let o = qs()
        .args(["lb", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--emit-nftables` prints the ruleset for plaintext configs and starts nothing; an encrypted
/// config is refused with one line and exit status 1.
#[test]
fn emit_nftables_prints_a_ruleset_or_refuses_in_one_line() {
    let dir = tempdir("nft");
    let config = dir.join("lb.toml");
    let plain = r#"listen = "10.0.0.1:4433"
[[quic_lb]]
id = 1
server_id_len = 2
nonce_len = 8
[[backend]]
server_id = "0a01"
address = "10.0.0.11:4433"
"#;
    std::fs::write(&config, plain).unwrap();
    let out = qs()
        .args(["lb", "--config"])
        .arg(&config)
        .arg("--emit-nftables")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rules = String::from_utf8(out.stdout).unwrap();
    assert!(rules.contains("table ip quicshard {"), "{rules}");
    assert!(
        rules.contains("@th,80,16 0x0a01 dnat ip to 10.0.0.11:4433"),
        "{rules}"
    );

    let encrypted = plain.replace(
        "nonce_len = 8\n",
        "nonce_len = 8\nkey = \"8f95f09245765f80256934e50c66207f\"\n",
    );
    std::fs::write(&config, encrypted).unwrap();
    let out = qs()
        .args(["lb", "--config"])
        .arg(&config)
        .arg("--emit-nftables")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("is encrypted: only `quicshard lb` can decrypt"),
        "{err}"
    );
}
