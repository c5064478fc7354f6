//! Per-connection qlog traces ([`crate::Builder::qlog_dir`]): one file per connection and role,
//! `<odcid-hex>_server.sqlog` or `<odcid-hex>_client.sqlog`, written by quinn-proto's `qlog`
//! feature as JSON-SEQ (RFC 7464: each record is an RS byte, one JSON object and a newline), the
//! `.sqlog` format qvis and the qlog tools read.
//!
//! quinn-proto takes the trace writer from the connection's `TransportConfig`, which is not
//! `Clone`: each traced connection gets its own, made by the engine's transport factory
//! ([`crate::Builder::transport_factory`]) or quinn-proto's defaults, and its own copy of the
//! server or client config carrying it. This costs a file, a config and a buffer per connection
//! and one JSON record per packet, only when tracing is on; off, no connection pays anything.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{
    ClientConfig, ConnectionId, ConnectionIdGenerator, QlogConfig, RandomConnectionIdGenerator,
    ServerConfig, TransportConfig,
};

/// Makes the transport config of one connection.
pub type TransportFactory = Arc<dyn Fn() -> TransportConfig + Send + Sync>;

/// Length of the original destination CIDs a traced client connection picks: quinn-proto's own
/// default for Initial DCIDs (the maximum, 20 octets).
const CLIENT_ODCID_LEN: usize = 20;

/// Where and how traces are written; shared by all shards.
pub(crate) struct Qlog {
    dir: PathBuf,
    transport: Option<TransportFactory>,
}

impl Qlog {
    /// Traces into `dir`, which must be an existing directory.
    pub(crate) fn new(dir: PathBuf, transport: Option<TransportFactory>) -> std::io::Result<Self> {
        let meta = std::fs::metadata(&dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{}: not a directory", dir.display()),
            ));
        }
        Ok(Self { dir, transport })
    }

    /// The file a connection's trace goes to.
    pub(crate) fn path(dir: &Path, odcid: &ConnectionId, server: bool) -> PathBuf {
        use std::fmt::Write;
        let mut name = String::with_capacity(2 * odcid.len() + 13);
        for b in odcid.iter() {
            let _ = write!(name, "{b:02x}");
        }
        name.push_str(if server { "_server" } else { "_client" });
        name.push_str(".sqlog");
        dir.join(name)
    }

    /// A transport config writing `odcid`'s trace; `None` (logged) if the file cannot be created.
    fn transport(
        &self,
        odcid: &ConnectionId,
        server: bool,
        now: Instant,
    ) -> Option<TransportConfig> {
        let path = Self::path(&self.dir, odcid, server);
        let file = match File::create(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "qlog: cannot create the trace");
                return None;
            }
        };
        let mut q = QlogConfig::default();
        q.writer(Box::new(BufWriter::new(file)))
            .title(Some(format!(
                "quicshard {}",
                if server { "server" } else { "client" }
            )))
            .start_time(now);
        let mut t = self
            .transport
            .as_ref()
            .map_or_else(TransportConfig::default, |f| f());
        t.qlog_stream(q.into_stream());
        Some(t)
    }

    /// The server config for the incoming connection `odcid`: `base` with a traced transport.
    pub(crate) fn server_config(
        &self,
        base: &ServerConfig,
        odcid: &ConnectionId,
        now: Instant,
    ) -> Option<Arc<ServerConfig>> {
        let t = self.transport(odcid, true, now)?;
        let mut cfg = base.clone();
        cfg.transport_config(Arc::new(t));
        Some(Arc::new(cfg))
    }

    /// The client config for a new connection: `base` with a traced transport and the original
    /// destination CID the trace is named by.
    pub(crate) fn client_config(&self, base: &ClientConfig, now: Instant) -> ClientConfig {
        let odcid = RandomConnectionIdGenerator::new(CLIENT_ODCID_LEN).generate_cid();
        let mut cfg = base.clone();
        if let Some(t) = self.transport(&odcid, false, now) {
            cfg.transport_config(Arc::new(t));
            cfg.initial_dst_cid_provider(Arc::new(move || odcid));
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_is_odcid_hex_and_role() {
        let cid = ConnectionId::new(&[0x01, 0xab, 0xff]);
        let dir = Path::new("/q");
        assert_eq!(
            Qlog::path(dir, &cid, true),
            Path::new("/q/01abff_server.sqlog")
        );
        assert_eq!(
            Qlog::path(dir, &cid, false),
            Path::new("/q/01abff_client.sqlog")
        );
    }

    #[test]
    fn a_fixed_transport_config_is_refused_with_qlog() {
        struct Nop;
        impl crate::Handler for Nop {}
        let start = |b: crate::Builder<Nop>| b.shards(1).qlog_dir(std::env::temp_dir()).start();
        let fixed = crate::Engine::builder(|_| Nop).transport(TransportConfig::default());
        assert!(matches!(start(fixed), Err(crate::StartError::Qlog(_))));
        let made = crate::Engine::builder(|_| Nop).transport_factory(TransportConfig::default);
        let engine = start(made).expect("a transport factory works with qlog");
        engine.shutdown(std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let f = std::env::temp_dir().join(format!("quicshard-qlog-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        assert!(Qlog::new(f.clone(), None).is_err());
        std::fs::remove_file(&f).unwrap();
        assert!(Qlog::new(std::env::temp_dir(), None).is_ok());
    }
}
