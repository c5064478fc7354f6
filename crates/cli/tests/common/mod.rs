//! Helpers for tests that run the `quicshard` binary as a process.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// The binary under test.
pub(crate) fn qs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quicshard"))
}

/// A running `quicshard` server-like command that announced `listening on IP:PORT`; killed on
/// drop unless stopped.
pub(crate) struct Proc {
    child: Option<Child>,
    pub(crate) port: u16,
    /// stderr's lines, once [`Proc::stderr_line`] took stderr over.
    stderr: Option<std::sync::mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `quicshard ARGS` and waits for its ready line.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(qs().args(args), 0).0
    }

    /// Starts `cmd` and waits for its ready line and the `more` stdout lines after it (returned,
    /// without their newlines).
    pub(crate) fn start_with(cmd: &mut Command, more: usize) -> (Self, Vec<String>) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{cmd:?}: first line {line:?}"));
        let port = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
        let mut lines = Vec::new();
        for _ in 0..more {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            lines.push(l.trim_end().to_string());
        }
        (
            Self {
                child: Some(child),
                port,
                stderr: None,
            },
            lines,
        )
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process.
    pub(crate) fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("not stopped yet");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
    }

    /// The next stderr line containing `needle`, waiting at most `limit` (panics after, with
    /// what was read). The lines before it are consumed.
    pub(crate) fn stderr_line(&mut self, needle: &str, limit: std::time::Duration) -> String {
        let child = self.child.as_mut().expect("not stopped yet");
        let lines = self.stderr.get_or_insert_with(|| {
            let err = child.stderr.take().expect("stderr piped");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no stderr line with {needle:?} within {limit:?}; saw {seen:?}"),
            }
        }
    }

    /// The process id (e.g. to read `/proc/PID/status`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the process to exit by itself within `limit` (killed and failed after): the exit
    /// status and what was printed after the ready line.
    pub(crate) fn wait(mut self, limit: std::time::Duration) -> Output {
        let child = self.child.take().expect("not stopped yet");
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the process did not exit within {limit:?}");
            }
        }
    }

    /// SIGTERM, then wait: the exit status and what was printed after the ready line.
    pub(crate) fn stop(mut self) -> Output {
        let child = self.child.take().expect("not stopped yet");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait_with_output().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A unique, existing temporary directory.
pub(crate) fn tempdir(tag: &str) -> std::path::PathBuf {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one(0u8);
    let d = std::env::temp_dir().join(format!("qs-{tag}-{}-{unique}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The workspace's root directory.
pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python with aioquic: `$QUICSHARD_PYTHON`, else the workspace's `.venv` (made by
/// `scripts/test`). Panics with what to do when there is none: tests that need a peer never skip.
pub(crate) fn aioquic_python() -> std::path::PathBuf {
    venv_python("aioquic")
}

/// A Python that can import `module` (`$QUICSHARD_PYTHON`, else the workspace's `.venv`, which
/// `scripts/test` creates with aioquic and prometheus-client); panics with what to do otherwise.
pub(crate) fn venv_python(module: &str) -> std::path::PathBuf {
    let p = std::env::var_os("QUICSHARD_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import {module}: run scripts/test once (it creates .venv) or set QUICSHARD_PYTHON",
        p.display()
    );
    p
}

/// `quicshard serve` on 127.0.0.1 with one shard and an empty root.
pub(crate) fn serve_one_shard() -> Proc {
    let root = tempdir("serve-root");
    Proc::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--root",
        root.to_str().unwrap(),
    ])
}

/// `quicshard bench --json` against 127.0.0.1:PORT (`localhost`, insecure) with `args`; the
/// parsed report. Fails the test if bench fails.
pub(crate) fn bench_json(port: u16, args: &[&str]) -> serde_json::Value {
    let o = qs()
        .args(["bench", "--connect", &format!("127.0.0.1:{port}")])
        .args(["--server-name", "localhost", "--insecure", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A CA and a server certificate it signed for `localhost`, as PEM files in `dir`:
/// `{tag}-ca.pem`, `{tag}-ca.key`, `{tag}-cert.pem`, `{tag}-cert.key`; returns their paths in
/// that order.
pub(crate) fn ca_and_server_cert(dir: &std::path::Path, tag: &str) -> [std::path::PathBuf; 4] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("quicshard test CA {tag}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let paths =
        ["ca.pem", "ca.key", "cert.pem", "cert.key"].map(|n| dir.join(format!("{tag}-{n}")));
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], ca_key.serialize_pem()).unwrap();
    std::fs::write(&paths[2], leaf.pem()).unwrap();
    std::fs::write(&paths[3], leaf_key.serialize_pem()).unwrap();
    paths
}
