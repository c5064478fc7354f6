//! Katran routes the CIDs the engine issues under the Katran profile (`[[quic_lb]] profile =
//! "katran"` in `quicshard-lb`: config ID 4 or 5, plaintext, 3-octet server ID).
//!
//! [`katran_parse_quic`] restates Katran's QUIC parsing rule from its source,
//! `katran/lib/bpf/pckt_parsing.h`, function `parse_quic` (facebookincubator/katran), with the
//! constants of `katran/lib/bpf/balancer_consts.h`. Its result is the server ID Katran looks up
//! in `server_id_map`; `None` stands for its `FURTHER_PROCESSING`, after which Katran picks a
//! real by consistent hashing of the flow.

use quicshard::cid::CidConfig;

/// `QUIC_LONG_HEADER`: the form bit.
const QUIC_LONG_HEADER: u8 = 0x80;
/// `QUIC_PACKET_TYPE_MASK` and `QUIC_HANDSHAKE`: long-header types below Handshake (Initial,
/// 0-RTT) carry a client-chosen DCID and go to the consistent hash.
const QUIC_PACKET_TYPE_MASK: u8 = 0x30;
const QUIC_HANDSHAKE: u8 = 0x20;
/// `QUIC_MIN_CONNID_LEN`: Katran reads this many DCID octets and needs at least as many.
const QUIC_MIN_CONNID_LEN: usize = 8;
/// `QUIC_CONNID_VERSION_V1` / `_V2`: the first two bits of the DCID.
const QUIC_CONNID_VERSION_V1: u8 = 0x1;
const QUIC_CONNID_VERSION_V2: u8 = 0x2;

/// Katran's `parse_quic` on a UDP payload.
fn katran_parse_quic(quic: &[u8]) -> Option<u32> {
    let pkt_type = *quic.first()?;
    let conn_id = if pkt_type & QUIC_LONG_HEADER == QUIC_LONG_HEADER {
        // struct quic_long_header: flags, version (4), conn_id_lens, dst_connection_id[8]
        let header = quic.get(..1 + 4 + 1 + QUIC_MIN_CONNID_LEN)?;
        if pkt_type & QUIC_PACKET_TYPE_MASK < QUIC_HANDSHAKE {
            return None;
        }
        if usize::from(header[5]) < QUIC_MIN_CONNID_LEN {
            return None;
        }
        &header[6..]
    } else {
        // struct quic_short_header: flags, connection_id[8]
        &quic.get(..1 + QUIC_MIN_CONNID_LEN)?[1..]
    };
    let c = |i: usize| u32::from(conn_id[i]);
    match conn_id[0] >> 6 {
        QUIC_CONNID_VERSION_V1 => Some(((c(0) & 0x3f) << 10) | (c(1) << 2) | (c(2) >> 6)),
        QUIC_CONNID_VERSION_V2 => Some((c(1) << 16) | (c(2) << 8) | c(3)),
        _ => None,
    }
}

fn short(cid: &[u8]) -> Vec<u8> {
    [&[0x41][..], cid, b"1-RTT payload"].concat()
}

fn long(first: u8, cid: &[u8]) -> Vec<u8> {
    [
        &[first, 0, 0, 0, 1, cid.len() as u8][..],
        cid,
        &[8],
        b"scid....payload",
    ]
    .concat()
}

/// The layout of the Katran profile (`quicshard_lb::config::Profile::Katran`): config ID 4 or
/// 5, 3-octet server ID, plaintext, nonce_len 8 by default.
fn katran_layout(config_id: u8, nonce_len: usize, server_id: [u8; 3], shards: usize) -> CidConfig {
    let config = quic_lb::Config::new(config_id, 3, nonce_len, None).unwrap();
    CidConfig::new(config, &server_id, shards).unwrap()
}

#[test]
fn katran_reads_the_server_id_of_every_cid_the_engine_issues() {
    for config_id in [4, 5] {
        for (server_id, shards, nonce_len) in [
            ([0x00, 0x00, 0x01], 1, 8),
            ([0x0a, 0x0b, 0x0c], 2, 8),
            ([0xff, 0xff, 0xfe], 8, 4),
            ([0x12, 0x34, 0x56], 256, 14),
        ] {
            let layout = katran_layout(config_id, nonce_len, server_id, shards);
            assert!(layout.cid_len() >= QUIC_MIN_CONNID_LEN);
            let want = u32::from_be_bytes([0, server_id[0], server_id[1], server_id[2]]);
            for shard in 0..shards.min(4) {
                let mut g = layout.generator_seeded(shard, 7 + shard as u64);
                for _ in 0..50 {
                    let cid = quinn_proto::ConnectionIdGenerator::generate_cid(&mut g);
                    assert_eq!(cid[0] >> 6, 0b10, "schema v2 bits");
                    assert_eq!(katran_parse_quic(&short(&cid)), Some(want));
                    // Handshake (0xe0) and Retry-typed (0xf0) long headers: by server ID too.
                    assert_eq!(katran_parse_quic(&long(0xe0, &cid)), Some(want));
                    assert_eq!(katran_parse_quic(&long(0xf0, &cid)), Some(want));
                    // Initial (0xc0) and 0-RTT (0xd0): consistent hash, whatever the DCID.
                    assert_eq!(katran_parse_quic(&long(0xc0, &cid)), None);
                    assert_eq!(katran_parse_quic(&long(0xd0, &cid)), None);
                }
            }
        }
    }
}

#[test]
fn other_config_ids_are_not_katran_routable() {
    // First bits 00x, 01x or 11x: not schema v2. Config IDs 2 and 3 (01x) parse as schema v1,
    // a 16-bit ID spread over octets 0-2, which is not the server ID.
    for config_id in [0u8, 1, 2, 3, 6] {
        let layout = katran_layout(config_id, 8, [0x0a, 0x0b, 0x0c], 2);
        let mut g = layout.generator_seeded(1, 3);
        let cid = quinn_proto::ConnectionIdGenerator::generate_cid(&mut g);
        assert_ne!(katran_parse_quic(&short(&cid)), Some(0x0a0b0c));
    }
    // Katran needs 8 DCID octets: a short packet is left to the hash.
    assert_eq!(katran_parse_quic(&[0x41, 0x80, 1, 2, 3]), None);
    assert_eq!(
        katran_parse_quic(&long(0xe0, &[0x80, 1, 2, 3, 4, 5, 6])),
        None
    );
}
