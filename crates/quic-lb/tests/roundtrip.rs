//! Property tests: every length and split, every mode, random keys; garbage never panics.

use proptest::prelude::*;
use quic_lb::{Codec, Config, Decoder, Mode, Unroutable};

/// (server_id, nonce, key, config_id) for every total length 5..=19 and every split.
fn case() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Option<[u8; 16]>, u8)> {
    (5usize..=19)
        .prop_flat_map(|total| (Just(total), 1..=total - 4))
        .prop_flat_map(|(total, sid_len)| {
            (
                proptest::collection::vec(any::<u8>(), sid_len),
                proptest::collection::vec(any::<u8>(), total - sid_len),
                proptest::option::of(any::<[u8; 16]>()),
                0u8..=6,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decode_inverts_encode((sid, nonce, key, id) in case(), extra in proptest::collection::vec(any::<u8>(), 0..=1), random in any::<u8>()) {
        let config = Config::new(id, sid.len(), nonce.len(), key).unwrap();
        let codec = Codec::new(config);
        let mut cid = [0u8; 20];
        let n = codec.encode(&sid, &nonce, random, &mut cid).unwrap();
        prop_assert_eq!(n, 1 + sid.len() + nonce.len());
        prop_assert_eq!(cid[0] >> 5, id);
        prop_assert_eq!((cid[0] & 0x1f) as usize, n - 1);
        if key.is_some() && sid.len() + nonce.len() > 5 {
            // an encrypted body differs from the plaintext except by (rare) chance
            let body: Vec<u8> = sid.iter().chain(&nonce).copied().collect();
            prop_assume!(cid[1..n] != body[..]);
        }
        // extra bytes after the QUIC-LB part are ignored
        let mut with_extra = cid[..n].to_vec();
        with_extra.extend_from_slice(&extra);
        let d = codec.decode(&with_extra).unwrap();
        prop_assert_eq!(d.server_id(), &sid[..]);
        prop_assert_eq!(d.nonce(), &nonce[..]);
        let only = codec.decode_server_id(&with_extra).unwrap();
        prop_assert_eq!(only.as_bytes(), &sid[..]);
        // one octet short is unroutable, never a panic or a wrong answer
        prop_assert!(too_short(codec.decode(&cid[..n - 1]).err()));
    }

    #[test]
    fn random_bytes_never_panic((sid, nonce, key, id) in case(), garbage in proptest::collection::vec(any::<u8>(), 0..=24)) {
        let config = Config::new(id, sid.len(), nonce.len(), key).unwrap();
        let codec = Codec::new(config);
        let mut decoder = Decoder::new();
        decoder.insert(codec.clone());
        let r = decoder.decode(&garbage);
        match garbage.first().map(|b| b >> 5) {
            None => prop_assert!(r.is_err()),
            Some(7) => prop_assert_eq!(r.unwrap_err(), Unroutable::Reserved),
            Some(bits) if bits != id => prop_assert_eq!(r.unwrap_err(), Unroutable::UnknownConfig(bits)),
            Some(_) if garbage.len() < config.lb_len() => prop_assert!(too_short(r.err())),
            Some(_) => {
                // any long-enough CID of a known config decodes, and re-encodes to itself
                let d = r.unwrap();
                let mut again = [0u8; 20];
                let n = codec.encode(d.server_id(), d.nonce(), garbage[0], &mut again).unwrap();
                prop_assert_eq!(&again[1..n], &garbage[1..n]);
            }
        }
        let _ = decoder.decode_server_id(&garbage);
    }
}

fn too_short(e: Option<Unroutable>) -> bool {
    matches!(e, Some(Unroutable::TooShort { .. }))
}

#[test]
fn decoder_picks_codec_by_config_bits() {
    let key = [0x42; 16];
    let old = Codec::new(Config::new(0, 2, 6, None).unwrap());
    let new = Codec::new(Config::new(3, 4, 12, Some(key)).unwrap());
    assert_eq!(new.config().mode(), Mode::SinglePass);
    let mut decoder = Decoder::new();
    decoder.insert(old.clone());
    decoder.insert(new.clone());
    let mut a = [0u8; 20];
    let na = old.encode(&[1, 2], &[0; 6], 0, &mut a).unwrap();
    let mut b = [0u8; 20];
    let nb = new.encode(&[3, 4, 5, 6], &[9; 12], 0, &mut b).unwrap();
    assert_eq!(
        decoder.decode_server_id(&a[..na]).unwrap().as_bytes(),
        &[1, 2]
    );
    assert_eq!(
        decoder.decode_server_id(&b[..nb]).unwrap().as_bytes(),
        &[3, 4, 5, 6]
    );
    decoder.remove(0);
    assert_eq!(
        decoder.decode(&a[..na]).unwrap_err(),
        Unroutable::UnknownConfig(0)
    );
    let mut reserved = b;
    reserved[0] |= 0xe0;
    assert_eq!(
        decoder.decode(&reserved[..nb]).unwrap_err(),
        Unroutable::Reserved
    );
    assert!(decoder.decode(&[]).is_err());
}

#[test]
fn random_first_octet_bits_when_not_self_encoding() {
    let config = Config::new(5, 3, 4, None)
        .unwrap()
        .with_self_encoded_length(false);
    let codec = Codec::new(config);
    let mut cid = [0u8; 20];
    codec
        .encode(&[1, 2, 3], &[4, 5, 6, 7], 0b1_0110, &mut cid)
        .unwrap();
    assert_eq!(cid[0], (5 << 5) | 0b1_0110);
    let with_shard_byte = Config::new(5, 3, 4, None)
        .unwrap()
        .with_extra_len(1)
        .unwrap();
    Codec::new(with_shard_byte)
        .encode(&[1, 2, 3], &[4, 5, 6, 7], 0, &mut cid)
        .unwrap();
    assert_eq!(
        cid[0] & 0x1f,
        8,
        "self-encoded length counts the extra octet"
    );
}

#[test]
fn server_ids_compare_by_their_octets_only() {
    use std::collections::HashSet;
    // the same server ID decoded from CIDs with different nonces is one map key
    let codec = Codec::new(Config::new(0, 2, 6, Some([5; 16])).unwrap());
    let mut keys = HashSet::new();
    for n in 0..50u8 {
        let mut cid = [0u8; 20];
        let len = codec
            .encode(&[0xab, 0xcd], &[n, 1, 2, 3, 4, 5], 0, &mut cid)
            .unwrap();
        keys.insert(codec.decode_server_id(&cid[..len]).unwrap());
    }
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys.iter().next().unwrap(),
        &quic_lb::ServerId::new(&[0xab, 0xcd]).unwrap()
    );
    assert_ne!(
        quic_lb::ServerId::new(&[0xab]).unwrap(),
        quic_lb::ServerId::new(&[0xab, 0]).unwrap()
    );
}
