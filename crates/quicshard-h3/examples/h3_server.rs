//! An HTTP/3 file server from a callback-free async handler: a handle-mode engine, an accept
//! loop on tokio, one `FileServer::serve` task per connection.
//!
//! ```sh
//! cargo run -p quicshard-h3 --example h3_server             # self-check, exits 0 on success
//! cargo run -p quicshard-h3 --example h3_server -- ./www    # serve ./www on 127.0.0.1:4433
//! ```
//!
//! Without arguments it writes a few files to a temporary directory, serves them, downloads them
//! with a quicshard-h3 client in the same process (concurrently, over one connection), compares
//! them byte for byte, checks a 404, and exits 0 only if everything matched.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use http::{Method, StatusCode};
use quicshard::HandleEngine;
use quicshard_h3::{client, FileServer, ALPN};

/// The accept loop: every connection is served by its own task.
async fn serve(engine: Arc<HandleEngine>, files: FileServer) {
    loop {
        let conn = engine.accept_async().await;
        let files = files.clone();
        tokio::spawn(async move {
            if let Err(e) = files.serve(conn).await {
                eprintln!("connection ended: {e}");
            }
        });
    }
}

/// Downloads every file of `dir` from the server and compares it; Err says what differed.
async fn check(engine: &HandleEngine, server: &HandleEngine, dir: &Path) -> Result<(), String> {
    let conn = engine
        .connect_async(server.local_addr(), "localhost")
        .await
        .map_err(|e| e.to_string())?;
    let (send, drive) = client::connect(conn).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(drive);
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let want = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let f = client::fetch(&mut send, Method::GET, "localhost", &name, |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .await
            .map_err(|e| format!("{name}: {e}"))?;
            if f.status != StatusCode::OK || got != want {
                return Err(format!(
                    "{name}: status {}, {} of {} bytes match",
                    f.status,
                    got.len(),
                    want.len()
                ));
            }
            Ok::<_, String>(got.len())
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    let mut send2 = send.clone();
    let missing = client::fetch(&mut send2, Method::GET, "localhost", "/nope", |_| Ok(()))
        .await
        .map_err(|e| e.to_string())?;
    if missing.status != StatusCode::NOT_FOUND {
        return Err(format!("/nope: status {}, want 404", missing.status));
    }
    drop((send, send2));
    let end = driver.await.map_err(|e| e.to_string())?;
    if !end.is_h3_no_error() {
        return Err(format!("connection ended with {end}"));
    }
    println!(
        "downloaded {total} bytes in {} files, all equal; 404 ok",
        std::fs::read_dir(dir).map_err(|e| e.to_string())?.count()
    );
    Ok(())
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let arg = std::env::args().nth(1);
    let (dir, listen) = match &arg {
        Some(d) => (
            Path::new(d).to_path_buf(),
            "127.0.0.1:4433".parse().unwrap(),
        ),
        None => {
            let d = std::env::temp_dir().join(format!("h3_server-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("temp dir");
            for (name, size) in [
                ("index.html", 100usize),
                ("small.txt", 1000),
                ("big.bin", 3 << 20),
            ] {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                std::fs::write(d.join(name), data).expect("write file");
            }
            (d, "127.0.0.1:0".parse().unwrap())
        }
    };
    let files = FileServer::new(&dir).expect("a readable directory");
    let server = Arc::new(
        HandleEngine::builder()
            .shards(2)
            .listen(listen)
            .alpn(&[ALPN])
            .start()
            .expect("server engine"),
    );
    println!("listening on {}", server.local_addr());
    rt.spawn(serve(server.clone(), files));
    if arg.is_some() {
        rt.block_on(std::future::pending::<()>());
    }
    let cert = server
        .certificate()
        .expect("self-signed certificate")
        .to_vec();
    let tls = quicshard::tls::client_config_trusting(&cert, &[ALPN]).expect("client TLS");
    let client = HandleEngine::builder()
        .shards(1)
        .client_config(tls)
        .start()
        .expect("client engine");
    let result = rt.block_on(check(&client, &server, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h3_server self-check failed: {e}");
            ExitCode::FAILURE
        }
    }
}
