//! `quicshard serve --config FILE` and SIGHUP: settings from the file (relative paths from its
//! directory), the certificate reloaded for new handshakes, and a change that needs a restart
//! refused while the running configuration stays.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{ca_and_server_cert, qs, tempdir, Proc};

/// How long serve may take to log a reload.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn get(port: u16, ca: &Path) -> Output {
    qs().args(["get", "--output", "-", "--ca", ca.to_str().unwrap()])
        .arg(format!("https://localhost:{port}/f.txt"))
        .output()
        .unwrap()
}

fn ok(o: &Output) -> bool {
    o.status.success() && o.stdout == b"served\n"
}

fn write_config(dir: &Path, shards: u32) {
    std::fs::write(
        dir.join("serve.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\nshards = {shards}\nroot = \"www\"\n\
             cert = \"cert.pem\"\nkey = \"key.pem\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn sighup_gives_new_handshakes_the_new_certificate() {
    let dir = tempdir("serve-config");
    let [ca_a, _, cert_a, key_a] = ca_and_server_cert(&dir, "a");
    let [ca_b, _, cert_b, key_b] = ca_and_server_cert(&dir, "b");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/f.txt"), b"served\n").unwrap();
    std::fs::copy(&cert_a, dir.join("cert.pem")).unwrap();
    std::fs::copy(&key_a, dir.join("key.pem")).unwrap();
    write_config(&dir, 1);
    let config = dir.join("serve.toml");
    let mut server = Proc::start(&["serve", "--config", config.to_str().unwrap()]);

    // the file's root, certificate and key are in force
    assert!(
        ok(&get(server.port, &ca_a)),
        "{:?}",
        get(server.port, &ca_a)
    );
    assert!(!get(server.port, &ca_b).status.success());

    // new certificate and key in place, then SIGHUP
    std::fs::copy(&cert_b, dir.join("cert.pem")).unwrap();
    std::fs::copy(&key_b, dir.join("key.pem")).unwrap();
    server.signal(libc::SIGHUP);
    server.stderr_line("reloaded", LOG_WAIT);
    let o = get(server.port, &ca_b);
    assert!(ok(&o), "{}", String::from_utf8_lossy(&o.stderr));
    let o = get(server.port, &ca_a);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not signed by a trusted CA"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // a setting that needs a restart: refused by name, the running configuration stays
    write_config(&dir, 2);
    std::fs::copy(&cert_a, dir.join("cert.pem")).unwrap();
    std::fs::copy(&key_a, dir.join("key.pem")).unwrap();
    server.signal(libc::SIGHUP);
    let line = server.stderr_line("reload refused", LOG_WAIT);
    assert!(
        line.contains("shards cannot change without a restart"),
        "{line}"
    );
    assert!(
        ok(&get(server.port, &ca_b)),
        "the reloaded certificate stays"
    );
}

#[test]
fn flags_override_the_file_and_bad_files_are_one_line() {
    let dir = tempdir("serve-config-bad");
    std::fs::write(dir.join("typo.toml"), "shard = 2\n").unwrap();
    std::fs::write(
        dir.join("shards.toml"),
        "listen = \"127.0.0.1:0\"\nshards = 0\n",
    )
    .unwrap();
    for (file, needle) in [
        ("typo.toml", "unknown field `shard`"),
        ("missing.toml", "missing.toml"),
    ] {
        let o = qs()
            .args(["serve", "--config", dir.join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{file}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(
            err.matches(&*dir.join(file).display().to_string()).count(),
            1,
            "{err}"
        );
    }
    // the file's `shards = 0` is refused, but --shards on the command line wins over it
    let bad = qs()
        .args([
            "serve",
            "--config",
            dir.join("shards.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--shards 0"));
    let server = Proc::start(&[
        "serve",
        "--config",
        dir.join("shards.toml").to_str().unwrap(),
        "--shards",
        "2",
    ]);
    let out = server.stop();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("shard 1:"), "two shards: {text}");
}
