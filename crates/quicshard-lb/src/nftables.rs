//! An nftables ruleset that routes quicshard servers with no quicshard code on the path.
//!
//! This module owns [`ruleset`]: a pure function from a validated [`LbConfig`] to the text of an
//! nftables ruleset for `nft -f` (`quicshard lb --config FILE --emit-nftables` prints it). Only
//! plaintext `[[quic_lb]]` configs can be routed this way: the server ID sits in the clear at a
//! fixed offset of every connection ID, which nftables matches with raw payload expressions
//! (`@th,OFFSET,LENGTH`, in bits from the start of the UDP header).
//!
//! # The rules
//!
//! All rules live in one table (`ip quicshard` or `ip6 quicshard`) whose chain hooks NAT
//! prerouting, so they run only for the first packet of a 4-tuple: conntrack keeps every
//! established 4-tuple on the backend its first packet chose, and translates the replies back.
//!
//! 1. Datagrams to the service address (`listen`) jump to chain `quic`.
//! 2. A short header (form bit 0) whose DCID has a configured config ID (first three bits of
//!    the CID) and a backend's server ID (CID octets `1..=server_id_len`) is DNAT-ed to that
//!    backend, also when it is marked `down`: its existing connections keep reaching it after a
//!    client changes address or port.
//! 3. Everything else from a new 4-tuple (long headers: Initials, 0-RTT, Handshake; short
//!    headers with an unknown config ID or server ID) is spread by a seeded `jhash` of the
//!    client's address and port over the backends not marked `down`.
//!
//! The ruleset starts by deleting the table it defines, so loading a new one (a backend marked
//! `down`, one added) replaces the old one atomically without touching established flows.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::{BackendConfig, ForwardMode, LbConfig};

/// Name of the nftables table the ruleset defines (and deletes first).
pub const TABLE: &str = "quicshard";

/// Seed of the `jhash` spreading new connections. Fixed, so every rule computes the same hash
/// for a 4-tuple (nftables draws a random seed per expression when none is given).
pub const HASH_SEED: u32 = 0x5173_6864;

/// Bit offset of the first QUIC octet in `@th` (after the 8-octet UDP header).
const QUIC_BIT: usize = 64;
/// Server ID octets matched by one raw payload expression (nftables registers are 32 bits wide
/// for comparisons of this kind; longer IDs take several matches).
const MATCH_OCTETS: usize = 4;

/// Why a configuration has no nftables ruleset: one line, meant to be shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// The address family of the ruleset: nftables table family and its address keywords.
struct Family {
    table: &'static str,
    addr: &'static str,
}

const IPV4: Family = Family {
    table: "ip",
    addr: "ip",
};
const IPV6: Family = Family {
    table: "ip6",
    addr: "ip6",
};

/// `ADDR:PORT` as nftables' `dnat to` takes it (IPv6 in brackets).
fn dnat_target(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

/// The raw payload matches of a short header with config ID `id` and server ID `sid`.
fn short_header_match(id: u8, sid: &[u8]) -> String {
    // nftables takes `@th` only after a transport protocol match; form bit 0; config ID in the
    // top three bits of the CID's first octet (payload octet 1)
    let mut m = format!(
        "meta l4proto udp @th,{},1 0 @th,{},3 {id}",
        QUIC_BIT,
        QUIC_BIT + 8
    );
    // the server ID starts at CID octet 1 = payload octet 2
    for (i, chunk) in sid.chunks(MATCH_OCTETS).enumerate() {
        let bit = QUIC_BIT + 16 + i * MATCH_OCTETS * 8;
        let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let _ = write!(m, " @th,{bit},{} 0x{hex}", chunk.len() * 8);
    }
    m
}

/// The nftables ruleset for `cfg`, or why there is none.
///
/// Refused: `mode = "dsr"` (the ruleset translates addresses, replies return through the
/// router), no `[[quic_lb]]` config, an encrypted config (only `quicshard lb` can decrypt server
/// IDs), a backend of another address family than `listen`, or no backend that is not `down`.
pub fn ruleset(cfg: &LbConfig) -> Result<String, Refused> {
    let refuse = |why: String| Err(Refused(why));
    if cfg.mode == ForwardMode::Dsr {
        return refuse(
            "mode = \"dsr\": the nftables ruleset translates addresses (DNAT) and replies return \
             through the router; use mode = \"proxy\""
                .into(),
        );
    }
    if cfg.quic_lb.is_empty() {
        return refuse("no [[quic_lb]] config: nftables routes by plaintext server IDs".into());
    }
    if let Some((i, q)) = cfg
        .quic_lb
        .iter()
        .enumerate()
        .find(|(_, q)| q.config.key().is_some())
    {
        return refuse(format!(
            "quic_lb[{i}] (id {}) is encrypted: only `quicshard lb` can decrypt its server IDs; \
             nftables needs plaintext configs (no key)",
            q.config.config_id()
        ));
    }
    let family = if cfg.listen.is_ipv4() { IPV4 } else { IPV6 };
    if let Some((i, b)) = cfg
        .backends
        .iter()
        .enumerate()
        .find(|(_, b)| b.address.is_ipv4() != cfg.listen.is_ipv4())
    {
        return refuse(format!(
            "backend[{i}].address {} is not of listen's address family ({}): one family per \
             ruleset",
            b.address, cfg.listen
        ));
    }
    let up: Vec<(usize, &BackendConfig)> = cfg
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.down)
        .collect();
    if up.is_empty() {
        return refuse("every backend is down: new connections would have nowhere to go".into());
    }

    let (t, a) = (family.table, family.addr);
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("# quicshard: QUIC servers routed by plaintext QUIC-LB server IDs. Load with `nft -f`.");
    line("# Short headers from a new 4-tuple: DNAT by the server ID in the DCID. Everything else");
    line("# from a new 4-tuple: a hash of the client address and port over the backends not down.");
    line("# Conntrack keeps each established 4-tuple on its backend.");
    line(&format!("table {t} {TABLE}"));
    line(&format!("delete table {t} {TABLE}"));
    line(&format!("table {t} {TABLE} {{"));
    line("\tchain prerouting {");
    line("\t\ttype nat hook prerouting priority -100; policy accept;");
    let daddr = if cfg.listen.ip().is_unspecified() {
        String::new()
    } else {
        format!("{a} daddr {} ", cfg.listen.ip())
    };
    line(&format!(
        "\t\t{daddr}udp dport {} jump quic",
        cfg.listen.port()
    ));
    line("\t}");
    line("\tchain quic {");
    for q in &cfg.quic_lb {
        let (id, len) = (q.config.config_id(), q.config.server_id_len());
        for (i, b) in cfg.backends.iter().enumerate() {
            if b.server_id.as_bytes().len() != len {
                continue;
            }
            line(&format!(
                "\t\t{} dnat {a} to {} comment \"backend[{i}] {} config {id}\"",
                short_header_match(id, b.server_id.as_bytes()),
                dnat_target(b.address),
                b.server_id,
            ));
        }
    }
    for (slot, (i, b)) in up.iter().enumerate() {
        line(&format!(
            "\t\tjhash {a} saddr . udp sport mod {} seed {HASH_SEED:#010x} == {slot} dnat {a} to \
             {} comment \"backend[{i}] {} new connections\"",
            up.len(),
            dnat_target(b.address),
            b.server_id,
        ));
    }
    line("\t}");
    line("}");
    Ok(out)
}

#[cfg(test)]
#[path = "nftables_tests.rs"]
mod tests;
