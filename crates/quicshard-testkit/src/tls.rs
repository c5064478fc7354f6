//! Deterministic TLS for a simulation: every byte rustls draws comes from one seeded PRNG, so a
//! seed replays the same handshakes bit for bit.
//!
//! - [`SeededRandom`]: rustls' `SecureRandom` over a ChaCha PRNG (`rand`'s `StdRng`) seeded by
//!   the simulation (ClientHello / ServerHello randoms, ticket nonces and IDs, age offsets).
//! - [`SeededX25519`]: the one key-exchange group, X25519 from `x25519-dalek` with private keys
//!   drawn from that PRNG (*ring*'s X25519 draws from the OS through a sealed trait).
//! - [`certificate`]: a self-signed Ed25519 certificate whose key comes from the seed (Ed25519
//!   signatures are deterministic; the serial number is fixed).
//! - [`server_config`] / [`client_config`]: rustls configs with that provider and the virtual
//!   clock as their time provider (ticket ages and lifetimes follow virtual time).
//!
//! **Never for production**: the keys are predictable by design. The provider and its group are
//! leaked (`&'static`, as `CryptoProvider` requires): a few hundred bytes per simulation.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{NamedGroup, PeerMisbehaved};

use crate::clock::Clock;

/// The server name the certificate is for.
pub const SERVER_NAME: &str = "sim.quicshard.test";

/// The ALPN protocol the simulation's server and clients speak.
pub const ALPN: &[u8] = b"quicshard-sim";

/// rustls' randomness from a seeded PRNG (see the module docs).
#[derive(Debug)]
pub struct SeededRandom(Mutex<StdRng>);

impl SeededRandom {
    /// A PRNG seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// `N` bytes from the PRNG.
    pub fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        self.lock().fill_bytes(&mut out);
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StdRng> {
        // a panic while holding it cannot leave a PRNG half-updated in a way that matters
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.lock().fill_bytes(buf);
        Ok(())
    }
}

/// X25519 with private keys from a [`SeededRandom`].
#[derive(Debug)]
pub struct SeededX25519(&'static SeededRandom);

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let secret = x25519_dalek::StaticSecret::from(self.0.bytes::<32>());
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(Box::new(ActiveX25519 { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct ActiveX25519 {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl ActiveKeyExchange for ActiveX25519 {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer_pub_key
            .try_into()
            .map_err(|_| rustls::Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// *ring*'s provider (the engine's cipher-suite order) with seeded randomness and the seeded
/// X25519 as its only group.
pub fn provider(seed: u64) -> Arc<CryptoProvider> {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom::new(seed)));
    let kx: &'static SeededX25519 = Box::leak(Box::new(SeededX25519(random)));
    Arc::new(CryptoProvider {
        secure_random: random,
        kx_groups: vec![kx],
        ..quicshard::tls::ring_provider()
    })
}

/// A self-signed Ed25519 certificate for [`SERVER_NAME`] whose key derives from `seed`.
pub fn certificate(
    seed: u64,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    // PKCS#8 v1 of an Ed25519 key (RFC 8410): a fixed prefix, then the 32-octet seed
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let secret = SeededRandom::new(seed ^ 0x6365_7274).bytes::<32>();
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(&secret);
    let pkcs8 = PrivatePkcs8KeyDer::from(der);
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.serial_number = Some(rcgen::SerialNumber::from(seed.to_be_bytes().to_vec()));
    let cert = params.self_signed(&key)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// A TLS 1.3 server config with [`provider`]`(seed)`, the certificate of [`certificate`] and
/// the virtual clock.
pub fn server_config(seed: u64, clock: &Clock) -> Result<rustls::ServerConfig, rustls::Error> {
    let (cert, key) =
        certificate(seed).map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
    let mut cfg =
        rustls::ServerConfig::builder_with_details(provider(seed ^ 1), Arc::new(clock.clone()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// A TLS 1.3 client config trusting the certificate of `server_seed`, with
/// [`provider`]`(seed)`, the virtual clock and early data on.
pub fn client_config(
    seed: u64,
    server_seed: u64,
    clock: &Clock,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let (cert, _) = certificate(server_seed)
        .map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut cfg =
        rustls::ClientConfig::builder_with_details(provider(seed), Arc::new(clock.clone()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = true;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_certificate_and_randomness() {
        assert_eq!(certificate(7).unwrap().0, certificate(7).unwrap().0);
        assert_ne!(certificate(7).unwrap().0, certificate(8).unwrap().0);
        assert_eq!(
            SeededRandom::new(3).bytes::<16>(),
            SeededRandom::new(3).bytes::<16>()
        );
    }

    #[test]
    fn seeded_x25519_agrees_with_itself() {
        let r: &'static SeededRandom = Box::leak(Box::new(SeededRandom::new(1)));
        let g = SeededX25519(r);
        let (a, b) = (g.start().unwrap(), g.start().unwrap());
        assert_ne!(a.pub_key(), b.pub_key());
        let pa = a.pub_key().to_vec();
        let sa = a.complete(b.pub_key()).unwrap();
        let sb = b.complete(&pa).unwrap();
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
    }
}
