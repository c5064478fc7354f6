//! Every vector of `vectors.toml` (copied from the draft with its errata noted in the file).

use quic_lb::{Codec, Config};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    vector: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    config_id: u8,
    server_id: String,
    nonce: String,
    key: Option<String>,
    cid: String,
    expect: String,
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("vectors.toml");
    toml::from_str::<File>(text)
        .expect("vectors.toml parses")
        .vector
}

fn codec(v: &Vector) -> (Codec, Vec<u8>, Vec<u8>, Vec<u8>) {
    let sid = hex::decode(&v.server_id).unwrap();
    let nonce = hex::decode(&v.nonce).unwrap();
    let key = v.key.as_ref().map(|k| hex::decode(k).unwrap());
    let config = Config::with_key_slice(v.config_id, sid.len(), nonce.len(), key.as_deref())
        .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    (Codec::new(config), sid, nonce, hex::decode(&v.cid).unwrap())
}

#[test]
fn match_vectors_encode_and_decode_exactly() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.expect == "match") {
        let (codec, sid, nonce, cid) = codec(v);
        let mut out = [0u8; 20];
        let n = codec.encode(&sid, &nonce, 0, &mut out).unwrap();
        assert_eq!(hex::encode(&out[..n]), v.cid, "{}: encode", v.name);
        let d = codec.decode(&cid).unwrap();
        assert_eq!(d.config_id(), v.config_id, "{}", v.name);
        assert_eq!(d.server_id(), &sid[..], "{}: server id", v.name);
        assert_eq!(d.nonce(), &nonce[..], "{}: nonce", v.name);
        let s = codec.decode_server_id(&cid).unwrap();
        assert_eq!(s.as_bytes(), &sid[..], "{}: server id only", v.name);
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} match vectors");
}

#[test]
fn superseded_vectors_are_not_produced() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.expect == "differs") {
        let (codec, sid, nonce, cid) = codec(v);
        let mut out = [0u8; 20];
        let n = codec.encode(&sid, &nonce, 0, &mut out).unwrap();
        assert_ne!(
            &out[..n],
            &cid[..],
            "{}: superseded layout reproduced",
            v.name
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}
