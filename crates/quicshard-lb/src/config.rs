//! The load balancer's TOML configuration: parsing, defaults and validation.
//!
//! This module owns [`LbConfig`], the validated configuration every other module reads, and
//! [`ConfigError`], whose `Display` is one line naming the key and the problem, such as
//! `backend[1].address: invalid socket address "x"`. The TOML is walked key by key (rather than
//! derived) so that every error, including a wrong type, names its key; unknown keys are errors.
//!
//! # Examples
//! ```
//! let cfg = quicshard_lb::LbConfig::from_toml(r#"
//!     listen = "127.0.0.1:4433"
//!     [[quic_lb]]
//!     id = 0
//!     server_id_len = 2
//!     nonce_len = 6
//!     [[backend]]
//!     server_id = "0a0b"
//!     address = "127.0.0.1:5000"
//! "#).unwrap();
//! assert_eq!(cfg.backends.len(), 1);
//! let err = quicshard_lb::LbConfig::from_toml("listen = 1").unwrap_err();
//! assert_eq!(err.to_string(), "listen: expected a string, got integer");
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use quic_lb::ServerId;
use toml::{Table, Value};

/// A bad configuration: the key at fault (`backend[1].address`) and what is wrong with it.
/// Remedy: fix that key in the file; the message is meant to be shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// Path of the key, e.g. `quic_lb[0].nonce_len`, or `line N` for a TOML syntax error.
    pub key: String,
    /// What is wrong, on one line.
    pub problem: String,
}

/// How datagrams reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// A stateful UDP relay: one LB socket per client flow toward the backend; replies go back
    /// to the client from the listen socket. Unprivileged.
    Proxy,
    /// Direct server return: the datagram is wrapped in IP-in-UDP (see [`crate::encap`]) and the
    /// backend answers the client itself from the virtual address.
    Dsr,
}

/// How the work of one datagram is spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pipeline {
    /// Receivers → processors → forwarders, each stage its own threads, joined by bounded
    /// queues. For machines with a core per stage thread.
    Staged,
    /// Run to completion: each of `receivers` threads reads a batch, routes it and sends it
    /// itself (and relays proxy replies); `processors` and `forwarders` are not used. Each
    /// thread has its own `SO_REUSEPORT` socket. For machines with fewer cores than stage
    /// threads, where handing batches between threads costs more than the work.
    Inline,
}

/// One QUIC-LB configuration (one config rotation codepoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLbEntry {
    /// The validated codec configuration.
    pub config: quic_lb::Config,
    /// The preset it was written with (`profile`), if any.
    pub profile: Option<Profile>,
}

/// A `[[quic_lb]]` preset for a balancer other than `quicshard lb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Katran's QUIC server-ID routing, CID schema v2 (`katran/lib/bpf/pckt_parsing.h`,
    /// `parse_quic`): the first two bits of the DCID are `10` and octets 1..=3 hold a 24-bit
    /// server ID, which must not be 0 (Katran's `server_id_map` treats 0 as absent). As QUIC-LB:
    /// config ID 4 (default) or 5, plaintext, `server_id_len = 3`; `nonce_len` defaults to
    /// [`KATRAN_NONCE_LEN`].
    Katran,
}

/// Default nonce length of the Katran profile: CIDs of 1 + 3 + 8 (+ the engine's shard byte)
/// octets, above Katran's `QUIC_MIN_CONNID_LEN` of 8.
pub const KATRAN_NONCE_LEN: u64 = 8;

/// One backend server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// The server ID its CIDs carry.
    pub server_id: ServerId,
    /// Where datagrams for it are sent.
    pub address: SocketAddr,
    /// A backend marked down gets no new flows; flows it already has keep going.
    pub down: bool,
}

/// Timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How long a fallback table entry lives without traffic (`flow_idle_secs`, default 30).
    pub flow_idle: Duration,
    /// How long a proxy session (LB socket toward a backend) lives without traffic
    /// (`session_idle_secs`, default 60).
    pub session_idle: Duration,
}

/// A validated load balancer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbConfig {
    /// Address clients send to (`listen`).
    pub listen: SocketAddr,
    /// Forwarding mode (`mode`, `"proxy"` by default).
    pub mode: ForwardMode,
    /// The address the backends answer from in DSR mode (`virtual_address`, default `listen`;
    /// must be a specific IP in DSR mode).
    pub virtual_address: SocketAddr,
    /// Thread layout (`pipeline`, `"staged"` by default, or `"inline"`).
    pub pipeline: Pipeline,
    /// Receiver threads (`receivers`, default 1); in the inline pipeline, the worker threads.
    pub receivers: usize,
    /// Processor threads (`processors`, default 1).
    pub processors: usize,
    /// Forwarder threads (`forwarders`, default 1).
    pub forwarders: usize,
    /// Slow-path threads (`slow_path`, default 1).
    pub slow_path: usize,
    /// Datagrams read per batch (`read_batch`, default 256).
    pub read_batch: usize,
    /// Datagrams written per batch (`write_batch`, default 256).
    pub write_batch: usize,
    /// Most proxy sessions at once (`max_sessions`, default 65536); more new flows are dropped.
    pub max_sessions: usize,
    /// DCID length assumed for short headers whose config bits are unknown or 0b111
    /// (`unroutable_cid_len`, default: the longest configured CID, or 8).
    pub unroutable_cid_len: usize,
    /// QUIC-LB configurations, one per codepoint (`[[quic_lb]]`).
    pub quic_lb: Vec<QuicLbEntry>,
    /// Backends (`[[backend]]`).
    pub backends: Vec<BackendConfig>,
    /// Timers (`[timers]`).
    pub timers: Timers,
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "mode",
    "virtual_address",
    "pipeline",
    "receivers",
    "processors",
    "forwarders",
    "slow_path",
    "read_batch",
    "write_batch",
    "max_sessions",
    "unroutable_cid_len",
    "quic_lb",
    "backend",
    "timers",
];
const QUIC_LB_KEYS: &[&str] = &[
    "id",
    "server_id_len",
    "nonce_len",
    "extra_len",
    "key",
    "profile",
];
const BACKEND_KEYS: &[&str] = &["server_id", "address", "down"];
const TIMER_KEYS: &[&str] = &["flow_idle_secs", "session_idle_secs"];

/// Largest batch accepted: bounds the per-thread arrays and the pool.
pub const MAX_BATCH: usize = 4096;
/// Most threads per stage accepted: more is certainly a typo on any machine we run on.
pub const MAX_THREADS: usize = 256;

fn err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn check_keys(table: &Table, path: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    match table.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(err(
            join(path, k),
            format!("unknown key (expected one of: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn type_name(v: &Value) -> &'static str {
    v.type_str()
}

fn get_str<'a>(t: &'a Table, path: &str, k: &str) -> Result<Option<&'a str>, ConfigError> {
    match t.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(err(
            join(path, k),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

fn get_uint(
    t: &Table,
    path: &str,
    k: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    match t.get(k) {
        None => Ok(None),
        Some(Value::Integer(i)) => match u64::try_from(*i) {
            Ok(u) if range.contains(&u) => Ok(Some(u)),
            _ => Err(err(
                join(path, k),
                format!(
                    "{i} is out of range: must be {}..={}",
                    range.start(),
                    range.end()
                ),
            )),
        },
        Some(v) => Err(err(
            join(path, k),
            format!("expected an integer, got {}", type_name(v)),
        )),
    }
}

fn get_count(t: &Table, k: &str, default: usize, max: usize) -> Result<usize, ConfigError> {
    Ok(get_uint(t, "", k, 1..=max as u64)?.map_or(default, |v| v as usize))
}

/// A top-level string key that must name one of `choices`; absent means the first.
fn get_choice<T: Copy>(t: &Table, k: &str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
    let Some(v) = get_str(t, "", k)? else {
        return Ok(choices[0].1);
    };
    match choices.iter().find(|(name, _)| *name == v) {
        Some(&(_, value)) => Ok(value),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(err(
                k,
                format!("unknown {k} {v:?}: expected {}", names.join(" or ")),
            ))
        }
    }
}

fn get_addr(t: &Table, path: &str, k: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(s) = get_str(t, path, k)? else {
        return Ok(None);
    };
    s.parse()
        .map(Some)
        .map_err(|_| err(join(path, k), format!("invalid socket address {s:?}")))
}

fn require<T>(v: Option<T>, path: &str, k: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| err(join(path, k), "missing"))
}

fn get_tables<'a>(t: &'a Table, k: &str) -> Result<Vec<&'a Table>, ConfigError> {
    match t.get(k) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_table().ok_or_else(|| {
                    err(
                        format!("{k}[{i}]"),
                        format!("expected a table, got {}", type_name(v)),
                    )
                })
            })
            .collect(),
        Some(v) => Err(err(
            k,
            format!(
                "expected an array of tables ([[{k}]]), got {}",
                type_name(v)
            ),
        )),
    }
}

fn hex_bytes(s: &str, key: &str) -> Result<Vec<u8>, ConfigError> {
    hex::decode(s).map_err(|e| err(key, format!("invalid hex {s:?}: {e}")))
}

fn parse_toml(text: &str) -> Result<Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        err(format!("line {line}"), e.message().replace('\n', " "))
    })
}

fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))
}

/// Only the `[[quic_lb]]` tables of a load balancer's TOML file, validated as the load balancer
/// validates them; every other key is ignored. This is what a backend server needs to issue CIDs
/// the load balancer can route (`quicshard serve --quic-lb-config FILE`).
pub fn quic_lb_from_file(path: &std::path::Path) -> Result<Vec<QuicLbEntry>, ConfigError> {
    LbConfig::quic_lb_entries(&parse_toml(&read_file(path)?)?)
}

impl LbConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_table(&parse_toml(text)?)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::from_toml(&read_file(path)?)
    }

    fn from_table(t: &Table) -> Result<Self, ConfigError> {
        check_keys(t, "", TOP_KEYS)?;
        let listen = require(get_addr(t, "", "listen")?, "", "listen")?;
        let mode = get_choice(
            t,
            "mode",
            &[("proxy", ForwardMode::Proxy), ("dsr", ForwardMode::Dsr)],
        )?;
        let pipeline = get_choice(
            t,
            "pipeline",
            &[("staged", Pipeline::Staged), ("inline", Pipeline::Inline)],
        )?;
        let virtual_address = get_addr(t, "", "virtual_address")?.unwrap_or(listen);
        if mode == ForwardMode::Dsr && virtual_address.ip().is_unspecified() {
            return Err(err(
                "virtual_address",
                format!(
                    "{virtual_address} is unspecified: dsr mode needs the address clients send to"
                ),
            ));
        }
        let quic_lb = Self::quic_lb_entries(t)?;
        let backends = Self::backend_entries(t, &quic_lb)?;
        let longest = quic_lb.iter().map(|q| q.config.cid_len()).max();
        let unroutable_cid_len =
            get_uint(t, "", "unroutable_cid_len", 1..=quic_lb::MAX_CID_LEN as u64)?
                .map_or(longest.unwrap_or(8), |v| v as usize);
        let timers = match t.get("timers") {
            None => Table::new(),
            Some(Value::Table(tt)) => tt.clone(),
            Some(v) => {
                return Err(err(
                    "timers",
                    format!("expected a table, got {}", type_name(v)),
                ))
            }
        };
        check_keys(&timers, "timers", TIMER_KEYS)?;
        let secs = |k, d| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(
                get_uint(&timers, "timers", k, 1..=86_400)?.unwrap_or(d),
            ))
        };
        Ok(Self {
            listen,
            mode,
            virtual_address,
            pipeline,
            receivers: get_count(t, "receivers", 1, MAX_THREADS)?,
            processors: get_count(t, "processors", 1, MAX_THREADS)?,
            forwarders: get_count(t, "forwarders", 1, MAX_THREADS)?,
            slow_path: get_count(t, "slow_path", 1, MAX_THREADS)?,
            read_batch: get_count(t, "read_batch", 256, MAX_BATCH)?,
            write_batch: get_count(t, "write_batch", 256, MAX_BATCH)?,
            max_sessions: get_count(t, "max_sessions", 65_536, 1 << 24)?,
            unroutable_cid_len,
            quic_lb,
            backends,
            timers: Timers {
                flow_idle: secs("flow_idle_secs", 30)?,
                session_idle: secs("session_idle_secs", 60)?,
            },
        })
    }

    fn quic_lb_entries(t: &Table) -> Result<Vec<QuicLbEntry>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, q) in get_tables(t, "quic_lb")?.into_iter().enumerate() {
            let p = format!("quic_lb[{i}]");
            check_keys(q, &p, QUIC_LB_KEYS)?;
            let profile = match get_str(q, &p, "profile")? {
                None => None,
                Some("katran") => Some(Profile::Katran),
                Some(other) => {
                    return Err(err(
                        join(&p, "profile"),
                        format!("unknown profile {other:?}: expected \"katran\""),
                    ))
                }
            };
            let id = match profile {
                None => require(get_uint(q, &p, "id", 0..=6)?, &p, "id")? as u8,
                Some(Profile::Katran) => get_uint(q, &p, "id", 4..=5)
                    .map_err(|e| {
                        err(
                            e.key,
                            "the katran profile needs id 4 or 5 (first CID bits 10)",
                        )
                    })?
                    .unwrap_or(4) as u8,
            };
            if !seen.insert(id) {
                return Err(err(
                    join(&p, "id"),
                    format!("duplicate id {id}: each config rotation codepoint may appear once"),
                ));
            }
            let katran = profile == Some(Profile::Katran);
            let sid_len = match get_uint(q, &p, "server_id_len", 1..=18)? {
                Some(3) | None if katran => 3,
                Some(_) if katran => {
                    return Err(err(
                        join(&p, "server_id_len"),
                        "the katran profile has 3-octet server IDs",
                    ))
                }
                v => require(v, &p, "server_id_len")?,
            };
            let nonce_len =
                get_uint(q, &p, "nonce_len", 4..=18)?.or(katran.then_some(KATRAN_NONCE_LEN));
            let nonce_len = require(nonce_len, &p, "nonce_len")?;
            if katran && q.contains_key("key") {
                return Err(err(
                    join(&p, "key"),
                    "the katran profile is plaintext: Katran reads the server ID in the clear",
                ));
            }
            let extra = get_uint(q, &p, "extra_len", 0..=14)?.unwrap_or(0);
            let key = match get_str(q, &p, "key")? {
                Some(h) => Some(hex_bytes(h, &join(&p, "key"))?),
                None => None,
            };
            let config = quic_lb::Config::with_key_slice(
                id,
                sid_len as usize,
                nonce_len as usize,
                key.as_deref(),
            )
            .and_then(|c| c.with_extra_len(extra as usize))
            .map_err(|e| {
                use quic_lb::ConfigError as E;
                let k = match e {
                    E::ConfigId(_) => "id",
                    E::ServerIdLen(_) | E::ServerIdMismatch { .. } => "server_id_len",
                    E::NonceLen(_) => "nonce_len",
                    E::TooLong(_) if extra > 0 => "extra_len",
                    E::TooLong(_) => "nonce_len",
                    E::KeyLen(_) => "key",
                };
                err(join(&p, k), e.to_string())
            })?;
            out.push(QuicLbEntry { config, profile });
        }
        Ok(out)
    }

    fn backend_entries(
        t: &Table,
        quic_lb: &[QuicLbEntry],
    ) -> Result<Vec<BackendConfig>, ConfigError> {
        let tables = get_tables(t, "backend")?;
        if tables.is_empty() {
            return Err(err("backend", "at least one [[backend]] is required"));
        }
        let lens: Vec<usize> = quic_lb.iter().map(|q| q.config.server_id_len()).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, b) in tables.into_iter().enumerate() {
            let p = format!("backend[{i}]");
            check_keys(b, &p, BACKEND_KEYS)?;
            let key = join(&p, "server_id");
            let sid = hex_bytes(
                require(get_str(b, &p, "server_id")?, &p, "server_id")?,
                &key,
            )?;
            let server_id = ServerId::new(&sid)
                .ok_or_else(|| err(&key, format!("must be 1..=18 bytes, got {}", sid.len())))?;
            if !lens.is_empty() && !lens.contains(&sid.len()) {
                return Err(err(
                    key,
                    format!(
                        "is {} bytes but no [[quic_lb]] has server_id_len {} (have {lens:?})",
                        sid.len(),
                        sid.len()
                    ),
                ));
            }
            let katran = quic_lb.iter().any(|q| {
                q.profile == Some(Profile::Katran) && q.config.server_id_len() == sid.len()
            });
            if katran && sid.iter().all(|&b| b == 0) {
                return Err(err(
                    key,
                    "server ID 000000 is reserved under the katran profile (Katran treats 0 as no server)",
                ));
            }
            if !seen.insert(server_id) {
                return Err(err(key, format!("duplicate server_id {server_id}")));
            }
            let address = require(get_addr(b, &p, "address")?, &p, "address")?;
            let down = match b.get("down") {
                None => false,
                Some(Value::Boolean(d)) => *d,
                Some(v) => {
                    return Err(err(
                        join(&p, "down"),
                        format!("expected a boolean, got {}", type_name(v)),
                    ))
                }
            };
            out.push(BackendConfig {
                server_id,
                address,
                down,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
