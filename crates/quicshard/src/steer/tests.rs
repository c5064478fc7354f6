//! Unit tests of the steering rule: the BPF program in the interpreter against its Rust twin.

use super::*;
use crate::testing::run_bpf;
use proptest::prelude::*;

const KEY: [u8; 16] = *b"0123456789abcdef";

fn key() -> ShardKey {
    ShardKey::from_bytes(KEY)
}

/// The program's verdict in `owner_shard`'s terms: `>= n` means fall back.
fn bpf_owner(datagram: &[u8], cid_len: usize, n: usize) -> Option<usize> {
    let index = run_bpf(&steering_program(cid_len, n, &key()), datagram).unwrap();
    Some(index as usize).filter(|&i| i < n)
}

/// A CID of `cid_len` octets whose unmasked shard byte is `b`.
fn cid_for(cid_len: usize, fill: u8, b: u8) -> Vec<u8> {
    let mut cid: Vec<u8> = (0..cid_len as u8).map(|i| fill.wrapping_add(i)).collect();
    let last = cid_len - 1;
    cid[last] = b ^ shard_mask(&key(), &cid[..last]);
    cid
}

fn short(dcid: &[u8]) -> Vec<u8> {
    [&[0x41][..], dcid, b"payload"].concat()
}

fn long(dcid: &[u8]) -> Vec<u8> {
    let len = u8::try_from(dcid.len()).unwrap();
    [
        &[0xc3, 0, 0, 0, 1, len][..],
        dcid,
        &[4, 9, 9, 9, 9],
        b"token+payload",
    ]
    .concat()
}

/// Both the twin and the program give `want`.
fn check(datagram: &[u8], cid_len: usize, n: usize, want: Option<usize>) {
    assert_eq!(
        owner_shard(datagram, cid_len, n, &key()),
        want,
        "owner_shard {datagram:02x?}"
    );
    assert_eq!(bpf_owner(datagram, cid_len, n), want, "bpf {datagram:02x?}");
}

#[test]
fn steers_by_shard_byte() {
    for n in 1..=8 {
        for cid_len in [1, 4, 8, 16, 20] {
            for b in [0u8, 1, 5, 7, 200, 255] {
                let cid = cid_for(cid_len, 0xaa, b);
                // the top bit is the slot's: the shard is in the low seven
                let want = Some(usize::from(b & 0x7f) % n);
                check(&short(&cid), cid_len, n, want);
                check(&short(&cid)[..1 + cid_len], cid_len, n, want);
                check(&long(&cid), cid_len, n, want);
                check(&long(&cid)[..6 + cid_len], cid_len, n, want);
                // A client-chosen DCID of another length: its first byte.
                let client_len = if cid_len == 8 { 5 } else { 8 };
                let mut client = vec![0x55; client_len];
                client[0] = b;
                check(&long(&client), cid_len, n, Some(usize::from(b) % n));
            }
        }
    }
}

#[test]
fn above_128_shards_the_whole_byte_is_the_shard() {
    for n in [129, 200, 256] {
        for b in [0u8, 127, 128, 200, 255] {
            let cid = cid_for(18, 0x11, b);
            check(&short(&cid), 18, n, Some(usize::from(b) % n));
        }
    }
}

/// The program's index under `group`, as `socket_index` returns it.
fn bpf_index(datagram: &[u8], cid_len: usize, n: usize, group: Group) -> Option<usize> {
    let index = run_bpf(&program(cid_len, n, &key(), group), datagram).unwrap();
    Some(index as usize).filter(|_| index != BPF_FALLBACK)
}

#[test]
fn two_slots_route_our_cids_by_their_slot_and_the_rest_to_the_active_one() {
    for n in [1, 2, 3, 8, 128] {
        for active in [0u8, 1] {
            let both = Group::Slots {
                active,
                by_cid: true,
            };
            let alone = Group::Slots {
                active,
                by_cid: false,
            };
            let base = usize::from(active) * n;
            for slot in [0u8, 1] {
                for shard in [0, n / 2, n - 1] {
                    let cid = cid_for(18, 0x42, shard_byte(shard, slot));
                    for d in [short(&cid), long(&cid)] {
                        let by_slot = usize::from(slot) * n + shard;
                        assert_eq!(socket_index(&d, 18, n, &key(), both), Some(by_slot));
                        assert_eq!(bpf_index(&d, 18, n, both), Some(by_slot));
                        assert_eq!(socket_index(&d, 18, n, &key(), alone), Some(base + shard));
                        assert_eq!(bpf_index(&d, 18, n, alone), Some(base + shard));
                    }
                }
            }
            // a client-chosen DCID and an unsteerable datagram: the active slot
            let client = long(&[9; 8]);
            for g in [both, alone] {
                assert_eq!(socket_index(&client, 18, n, &key(), g), Some(base + 9 % n));
                assert_eq!(bpf_index(&client, 18, n, g), Some(base + 9 % n));
                assert_eq!(socket_index(&[], 18, n, &key(), g), Some(base));
                assert_eq!(bpf_index(&[], 18, n, g), Some(base));
                assert_eq!(bpf_index(&[0x41, 1], 18, n, g), Some(base));
            }
        }
    }
}

#[test]
#[should_panic(expected = "two slots")]
fn two_slots_need_room_for_the_bit() {
    let _ = program(
        18,
        129,
        &key(),
        Group::Slots {
            active: 0,
            by_cid: true,
        },
    );
}

#[test]
fn falls_back_when_it_cannot_steer() {
    for n in 1..=8 {
        for cid_len in [1, 4, 8, 20] {
            let cid = vec![0x07; cid_len];
            check(&[], cid_len, n, None);
            check(&[0x41], cid_len, n, None);
            check(&short(&cid)[..cid_len], cid_len, n, None);
            check(&long(&cid)[..5 + cid_len], cid_len, n, None);
            check(&long(&cid)[..5], cid_len, n, None);
            check(&long(&[]), cid_len, n, None);
            check(&long(&[0x07; 21]), cid_len, n, None);
            check(&long(&[0x07; 3])[..8], cid_len, n, None);
        }
        // No CID to steer by for short headers; long ones still steer by the client's DCID.
        check(&short(&[9; 8]), 0, n, None);
        check(&long(&[9; 8]), 0, n, Some(9 % n));
    }
    assert_eq!(owner_shard(&short(&[9; 8]), 8, 0, &key()), None);
}

#[test]
fn key_round_trips_and_matters() {
    assert_eq!(key().to_bytes(), KEY);
    assert_eq!(format!("{:?}", key()), "ShardKey(..)");
    // The same CID steers elsewhere under another key for some shard count.
    let cid = cid_for(18, 3, 1);
    let other = ShardKey::from_bytes([7; 16]);
    assert!((2..=8).any(|n| {
        owner_shard(&short(&cid), 18, n, &key()) != owner_shard(&short(&cid), 18, n, &other)
    }));
}

#[test]
#[should_panic(expected = "n_shards")]
fn program_rejects_zero_shards() {
    let _ = steering_program(8, 0, &key());
}

fn datagram() -> impl Strategy<Value = (Vec<u8>, usize, usize)> {
    (0..=MAX_CID_LEN, 1usize..=8, any::<u8>(), 0usize..60).prop_flat_map(
        |(cid_len, n, first, len)| {
            let dcid_len = prop_oneof![Just(cid_len as u8), 0u8..=22, any::<u8>()];
            (proptest::collection::vec(any::<u8>(), len), dcid_len).prop_map(
                move |(mut bytes, dcid_len)| {
                    if let Some(b) = bytes.first_mut() {
                        *b = first;
                    }
                    if let Some(b) = bytes.get_mut(LONG_DCID_LEN_OFFSET) {
                        *b = dcid_len;
                    }
                    (bytes, cid_len, n)
                },
            )
        },
    )
}

proptest! {
    #[test]
    fn never_panics(bytes in any::<Vec<u8>>(), cid_len in 0usize..40, n in 0usize..12) {
        if let Some(shard) = owner_shard(&bytes, cid_len, n, &key()) {
            prop_assert!(shard < n);
        }
    }

    #[test]
    fn program_matches_twin((bytes, cid_len, n) in datagram(), key in any::<[u8; 16]>()) {
        let key = ShardKey::from_bytes(key);
        let program = steering_program(cid_len, n, &key);
        let index = run_bpf(&program, &bytes).map_err(TestCaseError::fail)?;
        let bpf = Some(index as usize).filter(|&i| i < n);
        prop_assert_eq!(bpf, owner_shard(&bytes, cid_len, n, &key));
    }

    #[test]
    fn slotted_program_matches_twin((bytes, cid_len, n) in datagram(), key in any::<[u8; 16]>(),
                                    active in 0u8..=1, by_cid in any::<bool>()) {
        let key = ShardKey::from_bytes(key);
        let group = Group::Slots { active, by_cid };
        let index = run_bpf(&program(cid_len, n, &key, group), &bytes)
            .map_err(TestCaseError::fail)?;
        prop_assert!((index as usize) < 2 * n);
        prop_assert_eq!(Some(index as usize), socket_index(&bytes, cid_len, n, &key, group));
    }

    #[test]
    fn mask_reads_every_octet(part in proptest::collection::vec(any::<u8>(), 0..20),
                              at in any::<usize>(), flip in 1u8..=255) {
        // Changing any octet of the QUIC-LB part changes the mask for some key: here, the
        // mask over 64 keys is not the same function of both inputs.
        let mut other = part.clone();
        if let Some(b) = other.get_mut(at % part.len().max(1)) {
            *b ^= flip;
            let differs = (0u8..64).any(|k| {
                let key = ShardKey::from_bytes([k; 16]);
                shard_mask(&key, &part) != shard_mask(&key, &other)
            });
            prop_assert!(differs);
        }
    }
}
