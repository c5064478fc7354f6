//! The two block-cipher algorithms of draft-21 §5.4 over a server ID + nonce plaintext.
//!
//! - Single pass (plaintext exactly 16 octets): one AES-128-ECB block; decoding uses the AES
//!   decrypt direction.
//! - Four pass (any other length 5..=19): a Feistel network whose round function is
//!   `AES-ECB(expand(len, pass, half))`, truncated to the half length. For odd lengths the two
//!   halves share the middle octet: the left half keeps its high nibble, the right half its low
//!   nibble.
//!
//! `expand(len, pass, half)` (draft-21 layout) is the half, zero padding to 14 octets, then the
//! plaintext length and the pass number. The draft-17/18 layout put length and pass first; the
//! `differs` vectors check that it is not what this module computes.
//!
//! # Panics
//! None for lengths a [`crate::Config`] allows (plaintext 5..=19 octets); callers pass exact
//! slices of that length.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Block};

/// Longest half of a four-pass plaintext: ceil(19 / 2).
const MAX_HALF: usize = 10;

/// Size of the buffer the cipher works in: the plaintext at `[..len]`, and room for a 16-octet
/// load or store at any half's offset (at most 9 + 16), so no copy has a variable length.
pub(crate) const SCRATCH: usize = 32;

/// An AES-128 key schedule plus the layout of one plaintext length, ready for both algorithms.
///
/// # Implementation notes
/// Each four-pass half is kept as its own `expand()` block (half, zero padding, length) in a
/// little-endian `u128`, so a round is "OR in the pass octet, encrypt, XOR under a mask": whole
/// 16-octet values, no per-round copies, and no byte-wise stores that the AES load would have to
/// wait for (a store-forwarding stall measured at a third of the time of a byte-wise version).
/// The masks zero the octets past the half and, for odd lengths, the nibble the other half owns.
#[derive(Clone)]
pub(crate) struct Cipher {
    aes: Aes128,
    len: usize,
    half: usize,
    left_mask: u128,
    right_mask: u128,
}

/// The two halves of a four-pass plaintext or ciphertext, each as its `expand()` block.
struct Halves {
    left: u128,
    right: u128,
}

/// Octet 15 of an `expand()` block holds the pass number.
const PASS_SHIFT: u32 = 120;
/// Octet 14 of an `expand()` block holds the plaintext length.
const LEN_SHIFT: u32 = 112;

impl Cipher {
    /// A cipher for plaintexts of `len` octets (5..=19) under `key`.
    pub(crate) fn new(key: &[u8; 16], len: usize) -> Self {
        let half = len.div_ceil(2).min(MAX_HALF);
        let mut left = [0u8; 16];
        let mut right = [0u8; 16];
        left[..half].fill(0xff);
        right[..half].fill(0xff);
        if len % 2 == 1 {
            left[half - 1] = 0xf0;
            right[0] = 0x0f;
        }
        Self {
            aes: Aes128::new(key.into()),
            len,
            half,
            left_mask: u128::from_le_bytes(left),
            right_mask: u128::from_le_bytes(right),
        }
    }

    /// One AES-128-ECB block over `buf[..16]`, in place.
    pub(crate) fn encrypt_single(&self, buf: &mut [u8; SCRATCH]) {
        self.aes
            .encrypt_block(Block::from_mut_slice(&mut buf[..16]));
    }

    /// The inverse of [`Cipher::encrypt_single`].
    pub(crate) fn decrypt_single(&self, buf: &mut [u8; SCRATCH]) {
        self.aes
            .decrypt_block(Block::from_mut_slice(&mut buf[..16]));
    }

    /// Four-pass encryption of `buf[..len]`, in place; octets past `len` are scratch.
    pub(crate) fn encrypt_four_pass(&self, data: &mut [u8; SCRATCH]) {
        let mut h = self.split(data);
        h.right ^= self.round(h.left, 1) & self.right_mask;
        h.left ^= self.round(h.right, 2) & self.left_mask;
        h.right ^= self.round(h.left, 3) & self.right_mask;
        h.left ^= self.round(h.right, 4) & self.left_mask;
        self.join(&h, data);
    }

    /// Four-pass decryption of `body` (exactly the configured length) into `out[..len]`,
    /// reading the ciphertext straight into registers. With `left_only`, the last pass is
    /// skipped and only the left half (the first `floor(len / 2)` octets) is right: enough for a
    /// server ID no longer than the nonce.
    pub(crate) fn decrypt_four_pass_from(
        &self,
        body: &[u8],
        out: &mut [u8; SCRATCH],
        left_only: bool,
    ) {
        let len_octet = (self.len as u128) << LEN_SHIFT;
        let mut h = Halves {
            left: le_bytes(&body[..self.half]) & self.left_mask | len_octet,
            right: le_bytes(&body[self.len - self.half..]) & self.right_mask | len_octet,
        };
        self.decrypt_halves(&mut h, left_only);
        self.join(&h, out);
    }

    fn decrypt_halves(&self, h: &mut Halves, left_only: bool) {
        h.left ^= self.round(h.right, 4) & self.left_mask;
        h.right ^= self.round(h.left, 3) & self.right_mask;
        h.left ^= self.round(h.right, 2) & self.left_mask;
        if !left_only {
            h.right ^= self.round(h.left, 1) & self.right_mask;
        }
    }

    /// `AES(expand(len, pass, half))`, where `half` already carries its padding and length.
    #[inline(always)]
    fn round(&self, half: u128, pass: u8) -> u128 {
        let mut block = Block::from((half | u128::from(pass) << PASS_SHIFT).to_le_bytes());
        self.aes.encrypt_block(&mut block);
        u128::from_le_bytes(block.into())
    }

    fn split(&self, data: &[u8; SCRATCH]) -> Halves {
        let len_octet = (self.len as u128) << LEN_SHIFT;
        Halves {
            left: load(data, 0) & self.left_mask | len_octet,
            right: load(data, self.len - self.half) & self.right_mask | len_octet,
        }
    }

    fn join(&self, h: &Halves, data: &mut [u8; SCRATCH]) {
        let (half, at) = (self.half, self.len - self.half);
        let middle = (h.left.to_le_bytes()[half - 1]) | (h.right as u8);
        store(data, 0, h.left);
        store(data, at, h.right);
        if self.len % 2 == 1 {
            // the middle octet: the left half's high nibble and the right half's low nibble
            data[half - 1] = middle;
        }
    }
}

/// Up to 16 octets as a little-endian `u128`, built in a register.
#[inline(always)]
fn le_bytes(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .rev()
        .fold(0, |acc, &b| acc << 8 | u128::from(b))
}

/// 16 octets at `at` as a little-endian `u128`. Invariant: `at <= SCRATCH - 16` (at most 9).
#[inline(always)]
fn load(buf: &[u8; SCRATCH], at: usize) -> u128 {
    u128::from_le_bytes(buf[at..at + 16].try_into().expect("16 octets"))
}

/// Stores 16 octets at `at`. Invariant as for [`load`].
#[inline(always)]
fn store(buf: &mut [u8; SCRATCH], at: usize, v: u128) {
    buf[at..at + 16].copy_from_slice(&v.to_le_bytes());
}
