//! `serve`'s HTTP/3 side: the mixed engine (ALPN `h3` on async handles, `hq-interop`, `perf` and
//! `echo` on the callback [`Server`]) and a small tokio runtime whose accept loop serves each h3
//! connection with a [`quicshard_h3::FileServer`] on `--root`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quicshard::handle::HandleBuilder;
use quicshard::HandleEngine;
use quicshard::{Handler, ShardStats};
use quicshard_h3::FileServer;

use super::server::Server;
use super::ALPN_H3;
use crate::Failure;

/// Tokio worker threads for the h3 connections (the shards do the QUIC work).
const H3_WORKERS: usize = 2;

/// The engine builder of `serve`: h3 connections become handles, the rest go to a [`Server`]
/// per shard serving `root`.
pub(crate) fn builder(root: Option<Arc<PathBuf>>) -> HandleBuilder {
    HandleEngine::builder_mixed(Default::default(), &[ALPN_H3], move |_| {
        Box::new(Server::new(root.clone())) as Box<dyn Handler + Send>
    })
}

/// The running h3 accept loop.
pub(crate) struct H3Service {
    rt: tokio::runtime::Runtime,
    files: FileServer,
}

/// Starts the accept loop: every h3 connection is served by its own task with at most
/// `max_requests` requests at once.
pub(crate) fn spawn(
    engine: &Arc<HandleEngine>,
    root: Option<&std::path::Path>,
    max_requests: usize,
) -> Result<H3Service, Failure> {
    let files = match root {
        Some(r) => FileServer::new(r).map_err(|e| Failure::Usage(format!("--root: {e}")))?,
        None => FileServer::empty(),
    }
    .max_concurrent_requests(max_requests);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(H3_WORKERS)
        .thread_name("h3")
        .enable_all()
        .build()
        .map_err(|e| Failure::Refused(format!("h3 runtime: {e}")))?;
    let (engine, f) = (engine.clone(), files.clone());
    rt.spawn(async move {
        loop {
            let conn = engine.accept_async().await;
            let files = f.clone();
            tokio::spawn(async move {
                if let Err(e) = files.serve(conn).await {
                    tracing::debug!(error = %e, "h3 connection ended");
                }
            });
        }
    });
    Ok(H3Service { rt, files })
}

impl H3Service {
    /// Stops the h3 tasks (their connections close), then shuts the engine down.
    pub(crate) fn shutdown(self, engine: Arc<HandleEngine>, drain: Duration) -> Vec<ShardStats> {
        let stats = self.files.stats();
        tracing::info!(
            requests = stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            not_found = stats.not_found.load(std::sync::atomic::Ordering::Relaxed),
            "h3 done"
        );
        // the accept loop and the connection tasks hold the other references
        self.rt.shutdown_timeout(drain);
        match Arc::try_unwrap(engine) {
            Ok(e) => e.shutdown(drain),
            Err(e) => {
                tracing::warn!("h3 tasks still hold the engine; stopping without a drain");
                e.stats()
            }
        }
    }
}
