//! `quicshard get` as a process against `quicshard serve`: where files land (the URL's path under
//! --output, percent-decoded, without the query), collisions and escapes refused before any
//! download, --output - in URL order, IPv6 literals, every address of a name tried, the system
//! trust store (a test CA through SSL_CERT_FILE), and --new-cid-after (a move to a new server CID
//! mid-download, or a one-line failure when none happened).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ca_and_server_cert, qs, tempdir, Proc};

/// Files under the served root: `(relative path, contents)`.
const FILES: &[(&str, &[u8])] = &[
    ("a/n.txt", b"from a\n"),
    ("b/n.txt", b"from b, longer\n"),
    ("d/sp ace.txt", b"a space in the name\n"),
];

fn root() -> std::path::PathBuf {
    let root = tempdir("get-root");
    for (name, data) in FILES {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    root
}

fn serve_on(listen: &str, root: &Path, extra: &[&str]) -> Proc {
    let args = [
        &[
            "serve",
            "--listen",
            listen,
            "--shards",
            "1",
            "--root",
            root.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    Proc::start(&args)
}

/// `quicshard get` with a clean environment for the trust store.
fn get(args: &[&str]) -> Output {
    get_cmd(args).output().unwrap()
}

fn get_cmd(args: &[&str]) -> Command {
    let mut c = qs();
    c.arg("get").args(args);
    c.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn one_line_failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure; stderr: {}",
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    err
}

#[test]
fn paths_are_kept_decoded_and_without_the_query_over_both_alpns() {
    let root = root();
    let server = serve_on("127.0.0.1:0", &root, &[]);
    for alpn in ["h3", "hq-interop"] {
        let out = tempdir("get-out");
        let urls = [
            format!("https://localhost:{}/a/n.txt", server.port),
            format!("https://localhost:{}/b/n.txt", server.port),
            format!("https://localhost:{}/d/sp%20ace.txt?x=1&y=2", server.port),
        ];
        let mut args = vec![
            "--insecure",
            "--alpn",
            alpn,
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend(urls.iter().map(String::as_str));
        let o = get(&args);
        assert!(o.status.success(), "{alpn}: {}", stderr(&o));
        for (name, data) in FILES {
            let got =
                std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{alpn} {name}: {e}"));
            assert_eq!(&got[..], *data, "{alpn} {name}");
        }
        // nothing else: no file named after the query or the encoded name
        let mut names: Vec<_> = std::fs::read_dir(out.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["sp ace.txt"], "{alpn}");
    }
}

#[test]
fn colliding_and_escaping_names_are_refused_before_anything_is_downloaded() {
    let root = root();
    let server = serve_on("127.0.0.1:0", &root, &[]);
    let out = tempdir("get-collide");
    let base = format!("https://localhost:{}", server.port);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![format!("{base}/a/n.txt"), format!("{base}/a/n.txt?v=2")],
            "both be written to",
        ),
        (
            vec![format!("{base}/a/n.txt"), format!("{base}/a/n%2Etxt")],
            "both be written to",
        ),
        (
            vec![format!("{base}/a"), format!("{base}/a/n.txt")],
            "needs as a directory",
        ),
        (
            vec![
                format!("{base}/b/n.txt"),
                format!("{base}/..%2F..%2Fetc%2Fpasswd"),
            ],
            "escapes",
        ),
    ];
    for (urls, needle) in cases {
        let mut args = vec!["--insecure", "--output", out.to_str().unwrap()];
        args.extend(urls.iter().map(String::as_str));
        let o = get(&args);
        let err = one_line_failure(&o);
        assert!(err.contains(needle), "{urls:?}: {err}");
        assert_eq!(o.status.code(), Some(2), "{urls:?}");
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "{urls:?}: something was written"
        );
    }
    let stats = server.stop();
    let text = String::from_utf8_lossy(&stats.stderr);
    assert!(
        text.contains("accepted 0 "),
        "the server saw a connection: {text}"
    );
}

#[test]
fn output_dash_writes_bodies_to_stdout_in_url_order() {
    let root = root();
    let server = serve_on("127.0.0.1:0", &root, &[]);
    let url = |p: &str| format!("https://localhost:{}/{p}", server.port);
    let urls = [
        url("b/n.txt"),
        url("a/n.txt"),
        url("b/n.txt"),
        url("d/sp%20ace.txt"),
    ];
    let mut args = vec!["--insecure", "--output", "-"];
    args.extend(urls.iter().map(String::as_str));
    let o = get(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = [FILES[1].1, FILES[0].1, FILES[1].1, FILES[2].1].concat();
    assert_eq!(o.stdout, expected);
}

#[test]
fn ipv6_literal_urls_work() {
    let root = root();
    let server = serve_on("[::1]:0", &root, &[]);
    let out = tempdir("get-v6");
    let url = format!("https://[::1]:{}/a/n.txt", server.port);
    let o = get(&["--insecure", "--output", out.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("a/n.txt")).unwrap(), FILES[0].1);
}

#[test]
fn every_address_of_the_name_is_tried_and_named_in_the_error() {
    let root = root();
    // the server is on IPv4 only; the name resolves to ::1 first
    let server = serve_on("127.0.0.1:0", &root, &[]);
    let out = tempdir("get-fallback");
    let resolve = format!("localhost:{}:[::1],127.0.0.1", server.port);
    let url = format!("https://localhost:{}/a/n.txt", server.port);
    let o = get(&[
        "--insecure",
        "--timeout",
        "1",
        "--resolve",
        &resolve,
        "--output",
        out.to_str().unwrap(),
        &url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("from 127.0.0.1:{}", server.port)),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(out.join("a/n.txt")).unwrap(), FILES[0].1);
    drop(server);

    // nobody anywhere: both addresses and what happened at each
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resolve = format!("localhost:{free}:[::1],127.0.0.1");
    let url = format!("https://localhost:{free}/a/n.txt");
    let o = get(&[
        "--insecure",
        "--timeout",
        "1",
        "--resolve",
        &resolve,
        "--output",
        out.to_str().unwrap(),
        &url,
    ]);
    let err = one_line_failure(&o);
    for addr in [format!("[::1]:{free}"), format!("127.0.0.1:{free}")] {
        assert!(
            err.contains(&format!("{addr}: no handshake within 1 s")),
            "{err}"
        );
    }
}

#[test]
fn the_system_trust_store_is_the_default() {
    let dir = tempdir("get-trust");
    let [ca, ca_key, cert, key] = ca_and_server_cert(&dir, "sys");
    let [other_ca, ..] = ca_and_server_cert(&dir, "other");
    let root = root();
    let server = serve_on(
        "127.0.0.1:0",
        &root,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}/a/n.txt", server.port);
    let out = tempdir("get-trust-out");
    let out_s = out.to_str().unwrap();
    // the test CA installed as the trust store: verified without --ca or --insecure
    let o = get_cmd(&["--output", out_s, &url])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("a/n.txt")).unwrap(), FILES[0].1);
    // another CA in the store: refused, in one sentence
    let o = get_cmd(&["--output", out_s, &url])
        .env("SSL_CERT_FILE", &other_ca)
        .output()
        .unwrap();
    let err = one_line_failure(&o);
    assert!(
        err.contains("the certificate is not signed by a trusted CA"),
        "{err}"
    );
    assert!(
        !err.contains("UnknownIssuer") && !err.contains("Other("),
        "{err}"
    );
    // an empty trust store says where it looked
    let empty = tempdir("get-empty-store");
    let o = get_cmd(&["--output", out_s, &url])
        .env("SSL_CERT_DIR", &empty)
        .output()
        .unwrap();
    let err = one_line_failure(&o);
    assert!(err.contains("no trusted roots"), "{err}");
    drop(server);

    // a CA certificate used as the server's certificate
    let server = serve_on(
        "127.0.0.1:0",
        &root,
        &[
            "--cert",
            ca.to_str().unwrap(),
            "--key",
            ca_key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}/a/n.txt", server.port);
    let o = get_cmd(&["--output", out_s, &url])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .unwrap();
    let err = one_line_failure(&o);
    assert!(
        err.contains("the certificate is a CA certificate used as a server certificate"),
        "{err}"
    );
}

#[test]
fn a_slow_download_shows_a_progress_bar_on_a_terminal_only() {
    let root = root();
    let server = serve_on("127.0.0.1:0", &root, &[]);
    // 400 ms each way: the handshake and the request take well over the bar's 1 s delay
    let slow = Proc::start(&[
        "impair",
        "--listen",
        "127.0.0.1:0",
        "--forward",
        &format!("127.0.0.1:{}", server.port),
        "--delay",
        "400",
    ]);
    let out = tempdir("get-bar");
    let url = format!("https://localhost:{}/a/n.txt", slow.port);
    // script(1) runs get on a pseudo-terminal: stderr is a terminal there
    let cmd = format!(
        "{} get --insecure --output {} {url}",
        env!("CARGO_BIN_EXE_quicshard"),
        out.display()
    );
    let tty = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("SSL_CERT_FILE")
        .output()
        .expect("script(1) from util-linux");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("/1 files"), "no progress bar: {shown:?}");
    // the same download with stderr not a terminal: only the summary line
    let piped = get(&["--insecure", "--output", out.to_str().unwrap(), &url]);
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(!stderr(&piped).contains("/1 files"), "{}", stderr(&piped));
    assert_eq!(stderr(&piped).lines().count(), 1, "{}", stderr(&piped));
}

#[test]
fn new_cid_after_moves_the_connection_to_a_new_cid_or_fails_saying_why() {
    let root = root();
    let big: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let server = serve_on("127.0.0.1:0", &root, &[]);
    let url = format!("https://localhost:{}/big.bin", server.port);
    let out = tempdir("get-cid");
    let out_s = out.to_str().unwrap();
    // moved a fifth into the download (hq-interop implied), the file byte-exact
    let o = get(&[
        "--insecure",
        "--new-cid-after",
        "200000",
        "--output",
        out_s,
        &url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("CID moves 1"), "{}", stderr(&o));
    assert!(std::fs::read(out.join("big.bin")).unwrap() == big);
    // without the option the connection keeps its CID
    let o = get(&[
        "--insecure",
        "--alpn",
        "hq-interop",
        "--output",
        out_s,
        &url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("CID moves 0"), "{}", stderr(&o));
    // a download shorter than BYTES never moves: a one-line failure naming the option
    let o = get(&[
        "--insecure",
        "--new-cid-after",
        "2000000",
        "--output",
        out_s,
        &url,
    ]);
    let err = one_line_failure(&o);
    assert!(
        err.contains("--new-cid-after 2000000: 0 of 1 connection(s) moved"),
        "{err}"
    );
    // h3 has no such option
    let o = get(&[
        "--insecure",
        "--alpn",
        "h3",
        "--new-cid-after",
        "1",
        "--output",
        out_s,
        &url,
    ]);
    let err = one_line_failure(&o);
    assert!(err.contains("need --alpn hq-interop"), "{err}");
}
