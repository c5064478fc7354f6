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

/// An AES-128 key schedule ready for both algorithms.
#[derive(Clone)]
pub(crate) struct Cipher {
    aes: Aes128,
}

/// Which half a round writes to: it decides how an odd-length half is masked.
#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
}

/// Halves of a four-pass plaintext or ciphertext, each `half` octets.
struct Halves {
    left: [u8; MAX_HALF],
    right: [u8; MAX_HALF],
    half: usize,
    len: usize,
}

impl Cipher {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Self {
            aes: Aes128::new(key.into()),
        }
    }

    /// One AES-128-ECB block, in place.
    pub(crate) fn encrypt_single(&self, block: &mut [u8; 16]) {
        self.aes.encrypt_block(Block::from_mut_slice(block));
    }

    /// The inverse of [`Cipher::encrypt_single`].
    pub(crate) fn decrypt_single(&self, block: &mut [u8; 16]) {
        self.aes.decrypt_block(Block::from_mut_slice(block));
    }

    /// Four-pass encryption of `data` (5..=19 octets), in place.
    pub(crate) fn encrypt_four_pass(&self, data: &mut [u8]) {
        let mut h = Halves::split(data);
        self.round(&mut h, 1, Side::Right);
        self.round(&mut h, 2, Side::Left);
        self.round(&mut h, 3, Side::Right);
        self.round(&mut h, 4, Side::Left);
        h.join(data);
    }

    /// Four-pass decryption of `data`, in place. With `left_only`, the last pass is skipped and
    /// only the left half (the first `floor(len / 2)` octets of `data`) is right: enough for a
    /// server ID no longer than the nonce.
    pub(crate) fn decrypt_four_pass(&self, data: &mut [u8], left_only: bool) {
        let mut h = Halves::split(data);
        self.round(&mut h, 4, Side::Left);
        self.round(&mut h, 3, Side::Right);
        self.round(&mut h, 2, Side::Left);
        if !left_only {
            self.round(&mut h, 1, Side::Right);
        }
        h.join(data);
    }

    /// `target ^= truncate(AES(expand(len, pass, other)))`, masked for odd lengths.
    fn round(&self, h: &mut Halves, pass: u8, side: Side) {
        let (input, target) = match side {
            Side::Right => (&h.left, &mut h.right),
            Side::Left => (&h.right, &mut h.left),
        };
        let mut block = Block::default();
        block[..h.half].copy_from_slice(&input[..h.half]);
        block[14] = h.len as u8;
        block[15] = pass;
        self.aes.encrypt_block(&mut block);
        for (t, b) in target[..h.half].iter_mut().zip(block.iter()) {
            *t ^= b;
        }
        if h.len % 2 == 1 {
            match side {
                Side::Left => target[h.half - 1] &= 0xf0,
                Side::Right => target[0] &= 0x0f,
            }
        }
    }
}

impl Halves {
    fn split(data: &[u8]) -> Self {
        let len = data.len();
        let half = len.div_ceil(2);
        let mut h = Self {
            left: [0; MAX_HALF],
            right: [0; MAX_HALF],
            half,
            len,
        };
        h.left[..half].copy_from_slice(&data[..half]);
        h.right[..half].copy_from_slice(&data[len - half..]);
        if len % 2 == 1 {
            h.left[half - 1] &= 0xf0;
            h.right[0] &= 0x0f;
        }
        h
    }

    fn join(&self, data: &mut [u8]) {
        let half = self.half;
        data[..half].copy_from_slice(&self.left[..half]);
        if self.len % 2 == 1 {
            data[half - 1] |= self.right[0];
            data[half..].copy_from_slice(&self.right[1..half]);
        } else {
            data[half..].copy_from_slice(&self.right[..half]);
        }
    }
}
