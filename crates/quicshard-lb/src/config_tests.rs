//! Unit tests of configuration parsing: every error names its key on one line.

use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:4433"
mode = "proxy"
receivers = 2
read_batch = 32
[[quic_lb]]
id = 0
server_id_len = 2
nonce_len = 6
key = "8f95f09245765f80256934e50c66207f"
[[quic_lb]]
id = 1
server_id_len = 2
nonce_len = 8
extra_len = 1
[[backend]]
server_id = "0a0b"
address = "127.0.0.1:5000"
[[backend]]
server_id = "0c0d"
address = "127.0.0.1:5001"
down = true
[timers]
flow_idle_secs = 5
"#;

fn bad(text: &str) -> String {
    LbConfig::from_toml(text).unwrap_err().to_string()
}

fn with(extra: &str) -> String {
    format!("{GOOD}\n{extra}")
}

fn replace(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn good_config_and_defaults() {
    let c = LbConfig::from_toml(GOOD).unwrap();
    assert_eq!(c.mode, ForwardMode::Proxy);
    assert_eq!(c.pipeline, crate::Pipeline::Staged);
    let inline = replace(
        "mode = \"proxy\"",
        "mode = \"proxy\"\npipeline = \"inline\"",
    );
    let inline = LbConfig::from_toml(&inline).unwrap();
    assert_eq!(inline.pipeline, crate::Pipeline::Inline);
    assert_eq!(
        (c.receivers, c.processors, c.forwarders, c.slow_path),
        (2, 1, 1, 1)
    );
    assert_eq!((c.read_batch, c.write_batch), (32, 256));
    assert_eq!(c.quic_lb.len(), 2);
    assert_eq!(c.quic_lb[1].config.cid_len(), 12);
    assert_eq!(c.unroutable_cid_len, 12);
    assert!(c.backends[1].down && !c.backends[0].down);
    assert_eq!(c.timers.flow_idle, Duration::from_secs(5));
    assert_eq!(c.timers.session_idle, Duration::from_secs(60));
    assert_eq!(c.virtual_address, c.listen);
}

#[test]
fn errors_are_one_line_and_name_the_key() {
    let cases: Vec<(String, &str)> = vec![
        (
            replace("127.0.0.1:5001", "x"),
            "backend[1].address: invalid socket address \"x\"",
        ),
        (
            replace("nonce_len = 6", "nonce_len = 2"),
            "quic_lb[0].nonce_len: 2 is out of range",
        ),
        (replace("id = 1", "id = 0"), "quic_lb[1].id: duplicate id 0"),
        (
            replace("id = 1", "id = 7"),
            "quic_lb[1].id: 7 is out of range",
        ),
        (
            replace("server_id = \"0c0d\"", "server_id = \"0c0d0e\""),
            "backend[1].server_id: is 3 bytes",
        ),
        (
            replace("server_id = \"0c0d\"", "server_id = \"0a0b\""),
            "backend[1].server_id: duplicate server_id 0a0b",
        ),
        (
            replace("server_id = \"0c0d\"", "server_id = \"zz\""),
            "backend[1].server_id: invalid hex",
        ),
        (
            replace("key = \"8f95", "key = \"f95"),
            "quic_lb[0].key: invalid hex",
        ),
        (
            replace("key = \"8f95f092", "key = \"f092"),
            "quic_lb[0].key: key must be 16 bytes",
        ),
        (
            replace("nonce_len = 8", "nonce_len = 17"),
            "quic_lb[1].extra_len: server_id_len + nonce_len + extra_len = 20",
        ),
        (
            replace("mode = \"proxy\"", "mode = \"nat\""),
            "mode: unknown mode \"nat\"",
        ),
        (
            replace("mode = \"proxy\"", "mode = \"dsr\"\nlisten = \"0.0.0.0:1\""),
            "line",
        ),
        (
            replace("mode = \"proxy\"", "mode = \"proxy\"\npipeline = \"fast\""),
            "pipeline: unknown pipeline \"fast\"",
        ),
        (
            replace("receivers = 2", "receivers = 0"),
            "receivers: 0 is out of range",
        ),
        (
            replace("receivers = 2", "receivers = \"2\""),
            "receivers: expected an integer, got string",
        ),
        (
            replace("read_batch = 32", "read_batch = 100000"),
            "read_batch: 100000 is out of range",
        ),
        (
            replace("down = true", "down = 1"),
            "backend[1].down: expected a boolean",
        ),
        (
            replace("down = true", "dwn = true"),
            "backend[1].dwn: unknown key",
        ),
        (
            with("bogus = 1").replacen("listen", "bogus = 1\nlisten", 1),
            "bogus: unknown key",
        ),
        (
            replace("flow_idle_secs = 5", "flow_idle = 5"),
            "timers.flow_idle: unknown key",
        ),
        (
            replace("flow_idle_secs = 5", "flow_idle_secs = 0"),
            "timers.flow_idle_secs: 0 is out of range",
        ),
        (
            replace("listen = \"127.0.0.1:4433\"", ""),
            "listen: missing",
        ),
        (
            replace("address = \"127.0.0.1:5000\"", ""),
            "backend[0].address: missing",
        ),
        (
            replace("server_id_len = 2\nnonce_len = 6", "nonce_len = 6"),
            "quic_lb[0].server_id_len: missing",
        ),
        (
            "listen = \"127.0.0.1:1\"".to_owned(),
            "backend: at least one",
        ),
        (
            "listen = \"127.0.0.1:1\"\nbackend = 3".to_owned(),
            "backend: expected an array of tables",
        ),
        ("listen = [".to_owned(), "line 1:"),
    ];
    for (text, want) in cases {
        let got = bad(&text);
        assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        assert!(!got.contains('\n'), "multi-line error: {got:?}");
    }
}

#[test]
fn dsr_needs_a_specific_virtual_address() {
    let dsr = replace("mode = \"proxy\"", "mode = \"dsr\"");
    assert_eq!(LbConfig::from_toml(&dsr).unwrap().mode, ForwardMode::Dsr);
    let t = dsr.replacen("127.0.0.1:4433", "0.0.0.0:4433", 1);
    assert!(bad(&t).starts_with("virtual_address: 0.0.0.0:4433 is unspecified"));
    let t = format!("virtual_address = \"10.0.0.1:443\"\n{t}");
    let c = LbConfig::from_toml(&t).unwrap();
    assert_eq!(c.virtual_address, "10.0.0.1:443".parse().unwrap());
}

#[test]
fn katran_profile_is_config_4_plaintext_3_octet_server_ids() {
    let katran = |q: &str| {
        LbConfig::from_toml(&format!(
            "listen = \"127.0.0.1:4433\"\n[[quic_lb]]\nprofile = \"katran\"\n{q}\n\
             [[backend]]\nserver_id = \"0a0b0c\"\naddress = \"127.0.0.1:5000\"\n"
        ))
    };
    let cfg = katran("").unwrap();
    let q = cfg.quic_lb[0];
    assert_eq!(q.profile, Some(Profile::Katran));
    assert_eq!(
        q.config,
        quic_lb::Config::new(4, 3, KATRAN_NONCE_LEN as usize, None).unwrap()
    );
    assert_eq!(
        katran("id = 5\nnonce_len = 5").unwrap().quic_lb[0]
            .config
            .config_id(),
        5
    );
    let e = |q: &str| katran(q).unwrap_err().to_string();
    assert_eq!(
        e("id = 1"),
        "quic_lb[0].id: the katran profile needs id 4 or 5 (first CID bits 10)"
    );
    assert_eq!(
        e("server_id_len = 2"),
        "quic_lb[0].server_id_len: the katran profile has 3-octet server IDs"
    );
    assert!(e("key = \"8f95f09245765f80256934e50c66207f\"")
        .starts_with("quic_lb[0].key: the katran profile is plaintext"));
    let bad = LbConfig::from_toml(
        "listen = \"127.0.0.1:4433\"\n[[quic_lb]]\nprofile = \"envoy\"\n\
         [[backend]]\nserver_id = \"0a0b0c\"\naddress = \"127.0.0.1:5000\"\n",
    );
    assert_eq!(
        bad.unwrap_err().to_string(),
        "quic_lb[0].profile: unknown profile \"envoy\": expected \"katran\""
    );
    let zero = LbConfig::from_toml(
        "listen = \"127.0.0.1:4433\"\n[[quic_lb]]\nprofile = \"katran\"\n\
         [[backend]]\nserver_id = \"000000\"\naddress = \"127.0.0.1:5000\"\n",
    );
    assert!(zero
        .unwrap_err()
        .to_string()
        .starts_with("backend[0].server_id: server ID 000000 is reserved"));
}
