//! HTTP/3 over the handles on loopback: a quicshard-h3 client against a quicshard-h3
//! `FileServer` on a mixed engine (h3 on handles, another ALPN on a callback handler).
//! Bodies are compared byte for byte; statuses and headers are checked.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use quicshard::HandleEngine;
use quicshard::{ConnId, Handler, ShardCtx};
use quicshard_h3::client::{self, Fetched};
use quicshard_h3::FileServer;

/// A callback handler that closes every connection it gets with code 42 after noting its id.
struct Refuser(Arc<Mutex<Vec<ConnId>>>);

impl Handler for Refuser {
    fn on_connection(&mut self, ctx: &mut ShardCtx<'_>, conn: ConnId) {
        self.0.lock().unwrap().push(conn);
        ctx.close(conn, 42, b"callback side");
    }
}

fn www(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qs-h3-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, size) in [0usize, 1, 1000, 70_000, 1 << 20].into_iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|j| (j * 7 + i * 13) as u8).collect();
        std::fs::write(dir.join(format!("f{i}.bin")), data).unwrap();
    }
    std::fs::write(dir.join("index.html"), b"<h1>hi</h1>").unwrap();
    dir
}

/// A served connection's task: `FileServer::serve` ends once the client closed and every
/// request it accepted is answered (and counted).
type Served = tokio::task::JoinHandle<Result<(), quicshard_h3::files::ServeError>>;

struct Setup {
    server: Arc<HandleEngine>,
    client: HandleEngine,
    refused: Arc<Mutex<Vec<ConnId>>>,
    served: Arc<Mutex<Vec<Served>>>,
    rt: tokio::runtime::Runtime,
}

impl Setup {
    /// Drops the last request sender (h3 then closes the connection with H3_NO_ERROR), waits
    /// for the connection's driver and for the server to have served the connection; returns
    /// how the driver ended.
    async fn end(
        &self,
        send: client::SendRequest,
        driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    ) -> h3::error::ConnectionError {
        drop(send);
        let end = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .unwrap()
            .unwrap();
        self.all_served().await;
        end
    }

    /// Waits (bounded) until every connection accepted so far has been served to its end.
    async fn all_served(&self) {
        let tasks = std::mem::take(&mut *self.served.lock().unwrap());
        assert!(!tasks.is_empty(), "no connection was served");
        for t in tasks {
            let r = tokio::time::timeout(Duration::from_secs(10), t).await;
            r.expect("the connection is served to its end")
                .unwrap()
                .unwrap();
        }
    }
}

fn setup(files: FileServer) -> Setup {
    let refused = Arc::new(Mutex::new(Vec::new()));
    let r = refused.clone();
    let server =
        HandleEngine::builder_mixed(Default::default(), &[quicshard_h3::ALPN], move |_| {
            Box::new(Refuser(r.clone())) as Box<dyn Handler + Send>
        })
        .shards(2)
        .alpn(&[b"h3", b"other"])
        .start()
        .unwrap();
    let cert = server.certificate().unwrap().to_vec();
    let tls = quicshard::tls::client_config_trusting(&cert, &[b"h3", b"other"]).unwrap();
    let client = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = Arc::new(server);
    let s = server.clone();
    let served = Arc::new(Mutex::new(Vec::new()));
    let tasks = served.clone();
    rt.spawn(async move {
        loop {
            let conn = s.accept_async().await;
            let files = files.clone();
            let task = tokio::spawn(async move { files.serve(conn).await });
            tasks.lock().unwrap().push(task);
        }
    });
    Setup {
        server,
        client,
        refused,
        served,
        rt,
    }
}

async fn get(send: &mut client::SendRequest, method: Method, path: &str) -> (Fetched, Vec<u8>) {
    let mut body = Vec::new();
    let f = client::fetch(send, method, "localhost", path, |b| {
        body.extend_from_slice(b);
        Ok(())
    })
    .await
    .unwrap();
    (f, body)
}

fn header(f: &Fetched, name: &str) -> String {
    f.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn files_statuses_and_heads() {
    let dir = www("files");
    let files = FileServer::new(&dir).unwrap();
    let stats = files.stats().clone();
    let s = setup(files);
    let addr = s.server.local_addr();
    s.rt.block_on(async {
        let conn = s.client.connect_async(addr, "localhost").await.unwrap();
        assert_eq!(conn.alpn().unwrap().as_deref(), Some(&b"h3"[..]));
        let (mut send, drive) = client::connect(conn).await.unwrap();
        let driver = tokio::spawn(drive);
        // every file, concurrently, compared byte for byte
        let mut tasks = Vec::new();
        for i in 0..5 {
            let mut send = send.clone();
            let want = std::fs::read(dir.join(format!("f{i}.bin"))).unwrap();
            tasks.push(tokio::spawn(async move {
                let (f, body) = get(&mut send, Method::GET, &format!("/f{i}.bin")).await;
                assert_eq!(f.status, StatusCode::OK);
                assert_eq!(header(&f, "content-length"), want.len().to_string());
                assert_eq!(header(&f, "content-type"), "application/octet-stream");
                assert!(body == want, "f{i}.bin differs");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (f, body) = get(&mut send, Method::GET, "/").await;
        assert_eq!(
            (f.status, body.as_slice()),
            (StatusCode::OK, &b"<h1>hi</h1>"[..])
        );
        assert_eq!(header(&f, "content-type"), "text/html; charset=utf-8");
        let (f, body) = get(&mut send, Method::HEAD, "/f4.bin").await;
        assert_eq!(f.status, StatusCode::OK);
        assert_eq!(header(&f, "content-length"), (1 << 20).to_string());
        assert!(body.is_empty(), "HEAD has no body");
        let (f, _) = get(&mut send, Method::GET, "/missing.txt").await;
        assert_eq!(f.status, StatusCode::NOT_FOUND);
        let (f, _) = get(&mut send, Method::GET, "/../etc/passwd").await;
        assert_eq!(f.status, StatusCode::NOT_FOUND);
        let (f, _) = get(&mut send, Method::GET, "/%2e%2e/etc/passwd").await;
        assert_eq!(f.status, StatusCode::NOT_FOUND);
        let (f, _) = get(&mut send, Method::DELETE, "/f1.bin").await;
        assert_eq!(f.status, StatusCode::METHOD_NOT_ALLOWED);
        // the last sender closes the connection with H3_NO_ERROR
        let end = s.end(send, driver).await;
        assert!(end.is_h3_no_error(), "{end:?}");
    });
    assert_eq!(stats.requests.load(Ordering::Relaxed), 11);
    assert_eq!(stats.not_found.load(Ordering::Relaxed), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A server answers from the request's headers and stops the rest of the request with
/// H3_NO_ERROR (RFC 9114, section 4.1.2); the client keeps the complete response.
#[test]
fn a_response_before_the_request_ends() {
    let dir = www("early");
    let want = std::fs::read(dir.join("f3.bin")).unwrap();
    let s = setup(FileServer::new(&dir).unwrap());
    let addr = s.server.local_addr();
    s.rt.block_on(async {
        let conn = s.client.connect_async(addr, "localhost").await.unwrap();
        let quic = conn.clone();
        let (mut send, drive) = client::connect(conn).await.unwrap();
        let driver = tokio::spawn(drive);
        // the headers go out, the request does not end until the server has stopped it
        let mut stream = client::request(&mut send, Method::GET, "localhost", "/f3.bin")
            .await
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while quic.stats().unwrap().frame_rx.stop_sending == 0 {
            assert!(tokio::time::Instant::now() < until, "no STOP_SENDING came");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // a shard answers queries after reading its socket and before handling the connection's
        // events: a later query comes after the turn that saw STOP_SENDING handled the stop,
        // unless a loop budget carried that connection's drive into the next turn (under load):
        // each query is one more whole turn, and three cover a carried drive
        for _ in 0..3 {
            quic.stats().unwrap();
        }
        match stream.finish().await {
            Err(h3::error::StreamError::RemoteTerminate { code, .. }) => {
                assert_eq!(code, h3::error::Code::H3_NO_ERROR)
            }
            other => panic!("finishing a stopped request: {other:?}"),
        }
        let mut body = Vec::new();
        let f = client::response(stream, |b| {
            body.extend_from_slice(b);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(f.status, StatusCode::OK);
        assert!(body == want, "{} of {} bytes", body.len(), want.len());
        s.end(send, driver).await;
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_requests_are_limited_per_connection() {
    let dir = www("limit");
    let files = FileServer::new(&dir).unwrap().max_concurrent_requests(2);
    let stats = files.stats().clone();
    let s = setup(files);
    let addr = s.server.local_addr();
    s.rt.block_on(async {
        let conn = s.client.connect_async(addr, "localhost").await.unwrap();
        let (send, drive) = client::connect(conn).await.unwrap();
        let driver = tokio::spawn(drive);
        let want = Arc::new(std::fs::read(dir.join("f4.bin")).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (mut send, want) = (send.clone(), want.clone());
                tokio::spawn(async move {
                    let (f, body) = get(&mut send, Method::GET, "/f4.bin").await;
                    assert_eq!(f.status, StatusCode::OK);
                    assert!(body == *want);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        s.end(send, driver).await;
    });
    assert_eq!(stats.requests.load(Ordering::Relaxed), 16);
    let peak = stats.peak_concurrent.load(Ordering::Relaxed);
    assert!((1..=2).contains(&peak), "peak {peak} requests at once");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_alpns_go_to_the_callback_handler() {
    let dir = www("mixed");
    let s = setup(FileServer::new(&dir).unwrap());
    let cert = s.server.certificate().unwrap().to_vec();
    let tls = quicshard::tls::client_config_trusting(&cert, &[b"other"]).unwrap();
    let other = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .unwrap();
    let addr = s.server.local_addr();
    let conn = other.connect(addr, "localhost").unwrap();
    // the callback side closes it with its own code; the handle side never sees it
    let err = conn.accept_bi().unwrap_err();
    assert!(
        format!("{err:?}").contains("42"),
        "closed by the fallback with code 42: {err:?}"
    );
    assert_eq!(s.refused.lock().unwrap().len(), 1);
    assert!(matches!(
        s.server.try_accept(),
        Err(quicshard::handle::AcceptError::WouldBlock)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
