//! `--metrics ADDR` of `serve` and `lb`: Prometheus metrics on `GET /metrics` over HTTP/1.1.
//!
//! One thread owns a `TcpListener` and answers one request at a time (a scraper polls every few
//! seconds; a slow or silent client is cut off by [`IO_TIMEOUT`]), with `Connection: close`.
//! The body is the OpenMetrics text format written by the `prometheus-client` crate, from
//! counters read at the time of the request:
//! - `serve` ([`EngineCollector`]): every [`ShardStats`] field as
//!   `quicshard_<field>_total{shard="N"}`, the [`GAUGES`] as `quicshard_<field>{shard="N"}`, and
//!   the handshake durations as the histogram `quicshard_handshake_duration_seconds{shard="N"}`;
//! - `lb` ([`LbCollector`]): every counter of `quicshard_lb::Stats` as
//!   `quicshard_lb_<stage>_<field>_total`, its sizes and levels ([`LB_GAUGES`]) as gauges.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use quicshard::stats::{StatsReader, GAUGES, HANDSHAKE_BUCKETS_MICROS};
use quicshard::ShardStats;

use crate::Failure;

/// How long one request may take to arrive or its answer to leave.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request head read (a scrape's is a few hundred bytes).
const MAX_HEAD: usize = 8192;
/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The load balancer's `Stats` members that are levels or sizes, not counts.
pub(crate) const LB_GAUGES: &[&str] = &["sizes", "pool_free", "tables", "sessions"];

/// The running metrics thread.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Binds `addr` (a bind error is a one-line failure) and serves `collector` until
/// [`MetricsServer::stop`].
pub(crate) fn start(addr: SocketAddr, collector: impl Collector) -> Result<MetricsServer, Failure> {
    let listener =
        TcpListener::bind(addr).map_err(|e| Failure::Refused(format!("--metrics {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Refused(format!("--metrics {addr}: {e}")))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else {
                    continue;
                };
                if let Err(e) = answer(conn, &registry) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })
        .map_err(|e| Failure::Refused(format!("--metrics: spawn: {e}")))?;
    Ok(MetricsServer { addr, stop, thread })
}

impl MetricsServer {
    /// The bound address (with the actual port if 0 was asked for).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops and joins the thread (a connection of its own wakes its `accept`).
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if self.thread.join().is_err() {
            tracing::error!("metrics thread panicked");
        }
    }
}

/// Reads one request and answers it.
fn answer(mut conn: TcpStream, registry: &Registry) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = [0u8; MAX_HEAD];
    let mut len = 0;
    let (status, body) = loop {
        let n = conn.read(&mut head[len..])?;
        if n == 0 {
            return Ok(()); // closed before a whole request
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head[..len]) {
            Ok(httparse::Status::Complete(_)) => break route(req.method, req.path, registry),
            Ok(httparse::Status::Partial) if len < head.len() => continue,
            Ok(httparse::Status::Partial) => {
                break ("431 Request Header Fields Too Large", String::new())
            }
            Err(_) => break ("400 Bad Request", String::new()),
        }
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain"
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// The status and body for a request.
fn route(method: Option<&str>, path: Option<&str>, registry: &Registry) -> (&'static str, String) {
    let path = path.unwrap_or("");
    if path.split('?').next() != Some("/metrics") {
        return ("404 Not Found", "only /metrics is served\n".into());
    }
    if method != Some("GET") {
        return ("405 Method Not Allowed", "GET /metrics\n".into());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ("200 OK", body),
        Err(_) => ("500 Internal Server Error", String::new()),
    }
}

/// The engine's counters, gauges and handshake histogram, per shard.
#[derive(Debug)]
pub(crate) struct EngineCollector(pub(crate) StatsReader);

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let names = ShardStats::default().fields().map(|(name, _)| name);
        for (i, name) in names.enumerate() {
            let gauge = GAUGES.contains(&name);
            let kind = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let metric = format!("quicshard_{name}");
            let help = format!("ShardStats::{name} of each shard");
            let mut m = encoder.encode_descriptor(&metric, &help, None, kind)?;
            for (shard, s) in stats.iter().enumerate() {
                let v = s.fields().nth(i).map_or(0, |(_, v)| v);
                let labels = [("shard", shard.to_string())];
                let mut f = m.encode_family(&labels)?;
                if gauge {
                    f.encode_gauge(&(v as i64))?;
                } else {
                    f.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "quicshard_handshake_duration",
            "From a connection's acceptance or initiation to its handshake's completion",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (shard, h) in self.0.handshake_times().iter().enumerate() {
            let buckets: Vec<(f64, u64)> = HANDSHAKE_BUCKETS_MICROS
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::MAX])
                .zip(h.counts)
                .collect();
            let labels = [("shard", shard.to_string())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_micros as f64 / 1e6,
                h.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// The load balancer's counters: a function returning its `Stats` as JSON (nested objects of
/// numbers), flattened into `quicshard_lb_<path>`.
pub(crate) struct LbCollector(pub(crate) Box<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for LbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LbCollector")
    }
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut flat = Vec::new();
        flatten("quicshard_lb", &(self.0)(), false, &mut flat);
        for (name, v, gauge) in flat {
            let kind = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let help = format!("load balancer: {}", &name["quicshard_lb_".len()..]);
            let mut m = encoder.encode_descriptor(&name, &help, None, kind)?;
            if gauge {
                m.encode_gauge(&(v as i64))?;
            } else {
                m.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        Ok(())
    }
}

/// Every number under `v` as `(prefix_path, value, is_gauge)`; a top-level member named in
/// [`LB_GAUGES`] makes everything under it a gauge.
fn flatten(prefix: &str, v: &serde_json::Value, gauge: bool, out: &mut Vec<(String, u64, bool)>) {
    match v {
        serde_json::Value::Object(m) => {
            let top = prefix == "quicshard_lb";
            for (k, v) in m {
                let g = gauge || (top && LB_GAUGES.contains(&k.as_str()));
                flatten(&format!("{prefix}_{k}"), v, g, out);
            }
        }
        serde_json::Value::Number(n) => {
            out.push((prefix.to_string(), n.as_u64().unwrap_or(0), gauge))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lb_stats_flatten_with_gauges() {
        let v =
            serde_json::json!({"sizes": {"pool": 8}, "receivers": {"received": 3}, "sessions": 2});
        let mut out = Vec::new();
        flatten("quicshard_lb", &v, false, &mut out);
        out.sort();
        assert_eq!(
            out,
            vec![
                ("quicshard_lb_receivers_received".to_string(), 3, false),
                ("quicshard_lb_sessions".to_string(), 2, true),
                ("quicshard_lb_sizes_pool".to_string(), 8, true),
            ]
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let r = Registry::default();
        assert_eq!(route(Some("GET"), Some("/"), &r).0, "404 Not Found");
        assert_eq!(
            route(Some("POST"), Some("/metrics"), &r).0,
            "405 Method Not Allowed"
        );
        let (status, body) = route(Some("GET"), Some("/metrics?x=1"), &r);
        assert_eq!(status, "200 OK");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
