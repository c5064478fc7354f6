//! One stateless ticket key: tickets sealed with ChaCha20-Poly1305 under a random key, in the
//! format of rustls' *ring* ticketer (`key name (16) | nonce (12) | ciphertext | tag (16)`, the
//! key name as associated data). The difference: each ticket's nonce comes from
//! [`BufferedRandom`](crate::random::BufferedRandom) where *ring*'s ticketer makes a `getrandom`
//! call per ticket (two per handshake). Key rotation is rustls' `TicketRotator`, around this.
//! Each ticket a key decrypts counts as a resumption on the calling shard
//! (`ShardStats::resumptions`).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
#[cfg(test)]
use rustls::crypto::GetRandomFailed;
use rustls::crypto::SecureRandom;
use rustls::server::ProducesTickets;

#[cfg(test)]
use crate::random::os_fill;
use crate::random::BUFFERED_RANDOM;

const KEY_NAME_LEN: usize = 16;

/// One ticket key (see the module docs).
pub(super) struct AeadTicketKey {
    key: LessSafeKey,
    name: [u8; KEY_NAME_LEN],
    /// The longest ticket this key has sealed: longer ones are refused before any decryption
    /// (as rustls' ticketer does, against partitioning-oracle attacks).
    longest: AtomicUsize,
}

impl std::fmt::Debug for AeadTicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AeadTicketKey").finish_non_exhaustive()
    }
}

impl AeadTicketKey {
    /// A fresh random key and key name, from the OS.
    #[cfg(test)]
    pub(super) fn new() -> Result<Self, GetRandomFailed> {
        let mut key = [0u8; 32];
        os_fill(&mut key)?;
        let mut name = [0u8; KEY_NAME_LEN];
        os_fill(&mut name)?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| GetRandomFailed)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            name,
            longest: AtomicUsize::new(0),
        })
    }
}

impl AeadTicketKey {
    /// The key of `epoch` under `master`: key and key name are HKDF-SHA256 expansions of it, so
    /// every process holding `master` seals and opens the same tickets ([`super::keyed`]).
    pub(super) fn derived(master: &ring::hkdf::Prk, epoch: u64) -> Self {
        let e = epoch.to_be_bytes();
        let mut key = [0u8; 32];
        expand(master, &[b"quicshard ticket key", &e], &mut key);
        let mut name = [0u8; KEY_NAME_LEN];
        expand(master, &[b"quicshard ticket key name", &e], &mut name);
        // invariant: a 32-octet key is what ChaCha20-Poly1305 takes
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-octet key");
        Self {
            key: LessSafeKey::new(key),
            name,
            // another process may have sealed longer tickets than this one has: bound the
            // length by what rustls' tickets can be instead of by what this key sealed
            longest: AtomicUsize::new(MAX_DERIVED_TICKET_LEN),
        }
    }
}

/// Longest ticket a derived key opens. Why: rustls' TLS 1.3 tickets are a few hundred octets
/// (a client certificate chain can add a few kilobytes); anything longer is not ours.
const MAX_DERIVED_TICKET_LEN: usize = 16 * 1024;

/// Fills `out` with the HKDF-SHA256 expansion of `prk` for `info`.
fn expand(prk: &ring::hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    // invariant: the lengths asked for (16, 32) are far below HKDF-SHA256's 255 * 32 limit
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length in range");
}

impl ProducesTickets for AeadTicketKey {
    fn enabled(&self) -> bool {
        true
    }

    /// Unused: the rotator around this key answers for the lifetime.
    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // a random nonce: a counter would tell clients how many tickets were issued
        let mut nonce = [0u8; NONCE_LEN];
        BUFFERED_RANDOM.fill(&mut nonce).ok()?;
        let head = KEY_NAME_LEN + NONCE_LEN;
        let mut out = Vec::with_capacity(head + plain.len() + CHACHA20_POLY1305.tag_len());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.name),
                &mut out[head..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        self.longest.fetch_max(out.len(), Relaxed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > self.longest.load(Relaxed) {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(KEY_NAME_LEN)?;
        if name != self.name {
            return None; // another key's ticket (the rotator tries the previous key next)
        }
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(self.name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        // one key decrypts a ticket (the rotator stops at the first that does): a resumption
        crate::stats::count_resumption();
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let k = AeadTicketKey::new().unwrap();
        let (a, b) = (
            k.encrypt(b"session").unwrap(),
            k.encrypt(b"session").unwrap(),
        );
        assert_eq!(a.len(), KEY_NAME_LEN + NONCE_LEN + 7 + 16);
        assert_eq!(a[..KEY_NAME_LEN], b[..KEY_NAME_LEN], "one key name");
        assert_ne!(a[KEY_NAME_LEN..], b[KEY_NAME_LEN..], "nonces differ");
        assert_eq!(k.decrypt(&a).as_deref(), Some(&b"session"[..]));
        assert_eq!(k.decrypt(&b).as_deref(), Some(&b"session"[..]));
    }

    #[test]
    fn refuses_altered_foreign_short_and_overlong_tickets() {
        let k = AeadTicketKey::new().unwrap();
        let t = k.encrypt(b"session").unwrap();
        for i in [0, KEY_NAME_LEN, KEY_NAME_LEN + NONCE_LEN, t.len() - 1] {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(k.decrypt(&bad), None, "byte {i} altered");
        }
        assert_eq!(
            AeadTicketKey::new().unwrap().decrypt(&t),
            None,
            "another key"
        );
        assert_eq!(k.decrypt(&t[..KEY_NAME_LEN + 3]), None, "cut short");
        let mut long = t.clone();
        long.push(0);
        assert_eq!(k.decrypt(&long), None, "longer than any ticket sealed");
        assert_eq!(k.decrypt(&t).as_deref(), Some(&b"session"[..]));
    }
}
