//! Kernel steering of datagrams to shards: the `SO_REUSEPORT` group and its classic BPF program.
//!
//! This module owns three things: binding the group of per-shard UDP sockets on one port
//! ([`bind_group`]), the classic BPF program that picks a socket of that group for each datagram
//! ([`steering_program`], attached with [`attach`]), and the userspace twin of the same rule
//! ([`owner_shard`]), which a shard uses to hand off datagrams the kernel could not steer.
//!
//! # The rule
//!
//! Server connection IDs have a fixed length `cid_len` (at most 20): a QUIC-LB part of
//! `cid_len - 1` octets, then the *shard byte*. The shard byte is the shard XOR-ed with a keyed
//! hash of the QUIC-LB part ([`shard_mask`]). The unmasked octet `u = shard_byte ^
//! shard_mask(key, quic_lb_part)` holds the shard in its low seven bits and the *slot* in its top
//! bit ([`Group::Slots`], for a handover between two processes; 0 otherwise): the owning shard is
//! `(u & 0x7f) % n_shards` (`u % n_shards` above 128 shards, which leave no room for the slot).
//! The QUIC-LB part differs in every
//! CID (a random or encrypted nonce), so without the [`ShardKey`] the shard byte is a uniform
//! random octet: two CIDs of one connection (or of one shard) share nothing an observer can
//! compare. Offsets are into the UDP payload.
//!
//! - Short header (`byte[0] & 0x80 == 0`): the DCID is `byte[1..1 + cid_len]`.
//! - Long header (`byte[0] & 0x80 != 0`): `byte[5]` is the DCID length and the DCID starts at
//!   offset 6. If the length is `cid_len` it is one of our CIDs, unmasked as above. Any other
//!   length in `1..=20` is a client-chosen Initial DCID, which the client reuses for its whole
//!   first flight, so `byte[6] % n` is deterministic for it.
//!
//! # Two slots (handover)
//!
//! For a handover between two processes ([`crate::handover`]) the reuseport group holds two
//! slots of `n_shards` sockets each, slot `s`'s shard `i` at index `s * n_shards + i`. A
//! [`Group::Slots`] program sends a datagram for one of our CIDs to the slot its unmasked top
//! bit names (`by_cid`), or to the `active` slot (once the other process is gone); a client-chosen
//! DCID, and a datagram the rule cannot steer, to the `active` slot (the process that accepts new
//! connections). No index ever falls back to the kernel's hash, which would spread over both
//! slots.
//!
//! # The keyed hash
//!
//! [`shard_mask`] reads the QUIC-LB part as big-endian 32-bit words (the last one overlapping
//! its predecessor when the length is not a multiple of 4; octet by octet when it is shorter
//! than 4), folds each into a 32-bit state with a keyed multiply-xorshift round and finishes with
//! murmur3's `fmix32` after a keyed XOR; the mask is the top octet. Every step is a 32-bit
//! `ADD`/`XOR`/`MUL`/`RSH` that classic BPF has, with the key's four words as instruction
//! constants, so the kernel program and the Rust twin compute the same octet. It is a keyed mix,
//! not a MAC: it keeps the shard from an observer without the key; the key is not meant to
//! resist an adversary who can query the server for chosen CIDs.

//! # Fallback
//!
//! The rule falls back when it cannot pick a shard: an empty datagram, a datagram too short to
//! hold the DCID it announces, a long-header DCID length of 0 or above 20 (not QUIC v1; version
//! negotiation is stateless), or `cid_len == 0` for a short header. The BPF program then returns
//! `0xffff_ffff`; any value `>= n` makes the kernel use its 4-tuple hash, which is deterministic
//! per client address. [`owner_shard`] returns `None` for exactly these datagrams.
//!
//! # Portability
//!
//! Linux only (`SO_ATTACH_REUSEPORT_CBPF`, Linux >= 4.5; `BPF_MOD`, Linux >= 3.7).
//!
//! # Implementation notes
//!
//! For `SO_ATTACH_REUSEPORT_CBPF` the kernel pulls the UDP header before running the filter, so
//! packet offset 0 and `BPF_LEN` are the UDP payload. A classic BPF load past the end of the
//! packet silently returns 0 (socket 0), so every load is guarded by a length comparison.
//! The socket at group index `i` is the `i`-th one bound. Closing one socket moves the last
//! socket into its slot, so the group must be kept whole for the program's indices to hold.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use libc::sock_filter;
use socket2::{Domain, Protocol, Socket, Type};

/// Longest connection ID QUIC v1 allows (RFC 9000 §17.2).
pub const MAX_CID_LEN: usize = 20;

/// What the BPF program returns to fall back to the kernel's 4-tuple hash (any value `>= n`).
pub const BPF_FALLBACK: u32 = 0xffff_ffff;

/// Requested socket buffer size: room for a burst of datagrams while a shard is busy.
/// The kernel caps it at `net.core.{r,w}mem_max`; failure is ignored.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Long-header form bit of the first byte (RFC 9000 §17.2).
const LONG_HEADER_BIT: u8 = 0x80;
/// Offset of the long-header DCID length byte.
const LONG_DCID_LEN_OFFSET: usize = 5;
/// Offset of the long-header DCID.
const LONG_DCID_OFFSET: usize = 6;

/// The key of the shard byte's mask: four 32-bit words, which become constants of the steering
/// program. One per engine; a process taking over an engine's sockets must be given the same key
/// or it misroutes every existing connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShardKey([u32; 4]);

impl ShardKey {
    /// Length of [`ShardKey::to_bytes`].
    pub const LEN: usize = 16;

    /// A key drawn from the OS random source.
    pub fn random() -> Self {
        Self::from_bytes(rand::random())
    }
    /// The key with these octets (big-endian words).
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        let word =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Self([word(0), word(4), word(8), word(12)])
    }
    /// The key's octets, for handing it to another process.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
    fn multiplier(&self) -> u32 {
        self.0[1] | 1
    }
}

impl std::fmt::Debug for ShardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardKey(..)")
    }
}

/// murmur3 `fmix32` multipliers.
const FMIX1: u32 = 0x85eb_ca6b;
const FMIX2: u32 = 0xc2b2_ae35;
/// Right shift of the per-word round.
const ROUND_SHIFT: u32 = 15;

/// One input unit of [`shard_mask`]: a big-endian word or an octet at an offset of the input.
#[derive(Clone, Copy)]
enum Chunk {
    Word(usize),
    Byte(usize),
}

/// The units [`shard_mask`] reads from `len` octets: words at 0, 4, ... with the last one at
/// `len - 4` (overlapping) when `len >= 4`; otherwise each octet.
fn chunks(len: usize) -> impl Iterator<Item = Chunk> {
    let (words, bytes) = if len >= 4 {
        (len.div_ceil(4), 0)
    } else {
        (0, len)
    };
    (0..words)
        .map(move |i| Chunk::Word((4 * i).min(len - 4)))
        .chain((0..bytes).map(Chunk::Byte))
}

/// The keyed mask of the shard byte: a function of the octets before it (the QUIC-LB part).
/// The shard byte of a CID issued by shard `s` is `s ^ shard_mask(key, quic_lb_part)`.
pub fn shard_mask(key: &ShardKey, part: &[u8]) -> u8 {
    let mut h = key.0[0];
    for chunk in chunks(part.len()) {
        let w = match chunk {
            Chunk::Word(o) => u32::from_be_bytes([part[o], part[o + 1], part[o + 2], part[o + 3]]),
            Chunk::Byte(o) => u32::from(part[o]),
        };
        h = (h ^ w).wrapping_mul(key.multiplier());
        h = (h ^ (h >> ROUND_SHIFT)).wrapping_add(key.0[2]);
    }
    h ^= key.0[3];
    h ^= h >> 16;
    h = h.wrapping_mul(FMIX1);
    h ^= h >> 13;
    h = h.wrapping_mul(FMIX2);
    h ^= h >> 16;
    (h >> 24) as u8
}

/// The unmasked shard byte of a whole server CID (`cid` not empty).
fn unmask(key: &ShardKey, cid: &[u8]) -> u8 {
    let last = cid.len() - 1;
    cid[last] ^ shard_mask(key, &cid[..last])
}

/// Largest shard count whose CIDs carry a slot bit ([`Group::Slots`]).
pub const MAX_SLOTTED_SHARDS: usize = 128;

/// The slot bit of an unmasked shard byte.
const SLOT_BIT: u8 = 0x80;

/// The shard an unmasked shard byte names among `n` (`n > 0`).
fn shard_of(u: u8, n: usize) -> usize {
    if n <= MAX_SLOTTED_SHARDS {
        usize::from(u & !SLOT_BIT) % n
    } else {
        usize::from(u) % n
    }
}

/// The unmasked shard byte for `shard` in `slot` (0 or 1; 1 needs `shard <` [`MAX_SLOTTED_SHARDS`]).
pub(crate) fn shard_byte(shard: usize, slot: u8) -> u8 {
    // invariant: shard < n_shards <= 256, and slot 1 is only used with n_shards <= 128
    (shard as u8) | if slot == 1 { SLOT_BIT } else { 0 }
}

/// Which sockets of the reuseport group the steering program picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// One socket per shard: shard `i` is socket `i`; datagrams the rule cannot steer fall back
    /// to the kernel's hash.
    Single,
    /// Two slots of `n` sockets ([`crate::handover`]): our CIDs go to the slot in their shard
    /// byte (`by_cid`) or to `active`; everything else goes to `active`.
    Slots {
        /// The slot (0 or 1) of the process that accepts new connections.
        active: u8,
        /// Whether a CID's slot bit picks the slot (both processes run) or `active` does.
        by_cid: bool,
    },
}

/// The group index the steering program returns for `datagram` under `group`; `None` means the
/// kernel's fallback hash ([`Group::Single`] only). Never panics; `n_shards == 0` gives `None`.
pub fn socket_index(
    datagram: &[u8],
    cid_len: usize,
    n_shards: usize,
    key: &ShardKey,
    group: Group,
) -> Option<usize> {
    let Group::Slots { active, by_cid } = group else {
        return owner_shard(datagram, cid_len, n_shards, key);
    };
    if n_shards == 0 {
        return None;
    }
    let base = |slot: u8| usize::from(slot) * n_shards;
    let Some((dcid, ours)) = steer_dcid(datagram, cid_len) else {
        return Some(base(active));
    };
    if !ours {
        return Some(base(active) + usize::from(dcid[0]) % n_shards);
    }
    let u = unmask(key, dcid);
    let slot = if by_cid { u >> 7 } else { active };
    Some(base(slot) + shard_of(u, n_shards))
}

/// The DCID the rule steers by and whether it has our length, or `None` if it falls back.
fn steer_dcid(datagram: &[u8], cid_len: usize) -> Option<(&[u8], bool)> {
    let first = *datagram.first()?;
    if first & LONG_HEADER_BIT == 0 {
        if cid_len == 0 {
            return None;
        }
        return Some((datagram.get(1..1 + cid_len)?, true));
    }
    let dcid_len = usize::from(*datagram.get(LONG_DCID_LEN_OFFSET)?);
    if dcid_len == 0 || dcid_len > MAX_CID_LEN {
        return None;
    }
    let dcid = datagram.get(LONG_DCID_OFFSET..LONG_DCID_OFFSET + dcid_len)?;
    Some((dcid, dcid_len == cid_len))
}

/// Which shard owns this datagram by the steering rule, or `None` if the rule falls back.
///
/// `datagram` is a UDP payload. Never panics; `n_shards == 0` always gives `None`.
pub fn owner_shard(
    datagram: &[u8],
    cid_len: usize,
    n_shards: usize,
    key: &ShardKey,
) -> Option<usize> {
    if n_shards == 0 {
        return None;
    }
    let (dcid, ours) = steer_dcid(datagram, cid_len)?;
    Some(if ours {
        shard_of(unmask(key, dcid), n_shards)
    } else {
        usize::from(dcid[0]) % n_shards
    })
}

/// The classic BPF program implementing the same rule as [`owner_shard`].
///
/// It returns a socket index `< n_shards`, or [`BPF_FALLBACK`].
///
/// # Panics
///
/// If `cid_len > MAX_CID_LEN`, `n_shards == 0` or `n_shards > u32::MAX` (configuration errors).
pub fn steering_program(cid_len: usize, n_shards: usize, key: &ShardKey) -> Vec<sock_filter> {
    program(cid_len, n_shards, key, Group::Single)
}

/// The classic BPF program implementing [`socket_index`] for `group`.
///
/// # Panics
///
/// As [`steering_program`]; also if `group` is [`Group::Slots`] with more than
/// [`MAX_SLOTTED_SHARDS`] shards or a slot above 1.
pub fn program(cid_len: usize, n_shards: usize, key: &ShardKey, group: Group) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_ADD, BPF_ALU, BPF_B, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_LEN, BPF_MISC, BPF_RET, BPF_TAX, BPF_W, BPF_X,
    };
    use Label::{Fallback, Long, Next, Other};
    assert!(cid_len <= MAX_CID_LEN, "cid_len {cid_len} > {MAX_CID_LEN}");
    assert!(n_shards > 0, "n_shards must be at least 1");
    let n = u32::try_from(n_shards).expect("n_shards fits in u32");
    if let Group::Slots { active, .. } = group {
        assert!(
            n_shards <= MAX_SLOTTED_SHARDS && active <= 1,
            "two slots need n_shards <= {MAX_SLOTTED_SHARDS} and slot 0 or 1"
        );
    }
    // what the program returns when it cannot steer, and the first index of the active slot
    let (fallback, active_base) = match group {
        Group::Single => (BPF_FALLBACK, 0),
        Group::Slots { active, .. } => (u32::from(active) * n, u32::from(active) * n),
    };
    // Invariant: cid_len <= 20, so these small offsets fit in u32.
    let c = cid_len as u32;
    let (dcid_len_at, dcid_at) = (LONG_DCID_LEN_OFFSET as u32, LONG_DCID_OFFSET as u32);

    let ld_len = Op::Stmt(BPF_LD | BPF_W | BPF_LEN, 0);
    let ldb = |offset: u32| Op::Stmt(BPF_LD | BPF_B | BPF_ABS, offset);
    let jump = |code: u32, k: u32, jt: Label, jf: Label| Op::Jump(BPF_JMP | code, k, jt, jf);

    let mut ops = vec![
        ld_len,
        jump(BPF_JEQ | BPF_K, 0, Fallback, Next),
        ldb(0),
        jump(BPF_JSET | BPF_K, u32::from(LONG_HEADER_BIT), Long, Next),
    ];
    // Short header: the CID is byte[1..1 + cid_len].
    if cid_len == 0 {
        ops.push(Op::Stmt(BPF_RET | BPF_K, fallback));
    } else {
        ops.extend([ld_len, jump(BPF_JGE | BPF_K, c + 1, Next, Fallback)]);
        unmask_ops(&mut ops, 1, cid_len, n, key, group);
    }
    // Long header: check the DCID length byte, then that the whole DCID is present.
    ops.extend([
        Op::Mark(Long),
        ld_len,
        jump(BPF_JGE | BPF_K, dcid_len_at + 1, Next, Fallback),
        ldb(dcid_len_at),
        jump(BPF_JEQ | BPF_K, 0, Fallback, Next),
        jump(BPF_JGT | BPF_K, MAX_CID_LEN as u32, Fallback, Next),
        Op::Stmt(BPF_ALU | BPF_ADD | BPF_K, dcid_at),
        Op::Stmt(BPF_MISC | BPF_TAX, 0),
        ld_len,
        jump(BPF_JGE | BPF_X, 0, Next, Fallback),
        ldb(dcid_len_at),
        jump(BPF_JEQ | BPF_K, c, Next, Other),
    ]);
    // One of our CIDs (cid_len >= 1 here: length 0 already fell back).
    if cid_len > 0 {
        unmask_ops(&mut ops, dcid_at, cid_len, n, key, group);
    }
    ops.extend([
        // A client-chosen DCID: its first byte, in the active slot.
        Op::Mark(Other),
        ldb(dcid_at),
        Op::Stmt(BPF_ALU | libc::BPF_MOD | BPF_K, n),
        Op::Stmt(BPF_ALU | BPF_ADD | BPF_K, active_base),
        Op::Stmt(BPF_RET | libc::BPF_A, 0),
        Op::Mark(Fallback),
        Op::Stmt(BPF_RET | BPF_K, fallback),
    ]);
    assemble(&ops)
}

/// Appends `return index(u)` for the `cid_len`-octet CID at packet offset `base`, which the
/// caller has checked is all there, where `u = cid[last] ^ shard_mask(key, cid[..last])` and
/// `index` is the shard (`shard_of`) plus the first index of its slot under `group`.
/// [`shard_mask`]'s state lives in `A`; `X` holds it while a word is loaded.
fn unmask_ops(ops: &mut Vec<Op>, base: u32, cid_len: usize, n: u32, key: &ShardKey, group: Group) {
    use libc::{
        BPF_A, BPF_ABS, BPF_ADD, BPF_ALU, BPF_AND, BPF_B, BPF_IMM, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    // `BPF_LD | BPF_W | BPF_ABS` reads a big-endian word, like `shard_mask`.
    let alu_k = |op: u32, k: u32| Op::Stmt(BPF_ALU | op | BPF_K, k);
    let tax = Op::Stmt(BPF_MISC | BPF_TAX, 0);
    let xor_x = Op::Stmt(BPF_ALU | BPF_XOR | BPF_X, 0);
    // A ^= A >> shift
    let xorshift = |ops: &mut Vec<Op>, shift: u32| {
        ops.extend([tax, alu_k(BPF_RSH, shift), xor_x]);
    };
    // Invariant: cid_len <= 20, so offsets fit in u32.
    let at = |offset: usize| base + offset as u32;
    let last = cid_len - 1;
    ops.push(Op::Stmt(BPF_LD | BPF_IMM, key.0[0]));
    for chunk in chunks(last) {
        ops.push(tax);
        ops.push(match chunk {
            Chunk::Word(o) => Op::Stmt(BPF_LD | BPF_W | BPF_ABS, at(o)),
            Chunk::Byte(o) => Op::Stmt(BPF_LD | BPF_B | BPF_ABS, at(o)),
        });
        ops.extend([xor_x, alu_k(BPF_MUL, key.multiplier())]);
        xorshift(ops, ROUND_SHIFT);
        ops.push(alu_k(BPF_ADD, key.0[2]));
    }
    ops.push(alu_k(BPF_XOR, key.0[3]));
    xorshift(ops, 16);
    ops.push(alu_k(BPF_MUL, FMIX1));
    xorshift(ops, 13);
    ops.push(alu_k(BPF_MUL, FMIX2));
    xorshift(ops, 16);
    ops.extend([
        alu_k(BPF_RSH, 24),
        tax,
        Op::Stmt(BPF_LD | BPF_B | BPF_ABS, at(last)),
        xor_x,
    ]);
    // A = u: the shard (and its slot's first index), as `shard_of` and `socket_index`
    let slotted = n as usize <= MAX_SLOTTED_SHARDS;
    let shard_in_slot = |ops: &mut Vec<Op>, slot_base: u32| {
        if slotted {
            ops.push(alu_k(BPF_AND, u32::from(!SLOT_BIT)));
        }
        ops.extend([alu_k(BPF_MOD, n), alu_k(BPF_ADD, slot_base)]);
        ops.push(Op::Stmt(BPF_RET | BPF_A, 0));
    };
    match group {
        Group::Single => shard_in_slot(ops, 0),
        Group::Slots {
            active,
            by_cid: false,
        } => shard_in_slot(ops, u32::from(active) * n),
        Group::Slots { by_cid: true, .. } => {
            // slot 1 if the slot bit is set: skip slot 0's four instructions
            ops.push(Op::Skip(
                BPF_JMP | BPF_JSET | BPF_K,
                u32::from(SLOT_BIT),
                4,
                0,
            ));
            shard_in_slot(ops, 0);
            shard_in_slot(ops, n);
        }
    }
}

/// Jump targets of the steering program; `Next` is the following instruction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Next,
    Long,
    Other,
    Fallback,
}

/// One instruction of the steering program before jump offsets are resolved.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A non-jump instruction: code and `k`.
    Stmt(u32, u32),
    /// A conditional jump: code, `k`, target if true, target if false.
    Jump(u32, u32, Label, Label),
    /// A conditional jump by fixed offsets: code, `k`, instructions skipped if true, if false.
    Skip(u32, u32, u8, u8),
    /// Marks where a label points; emits nothing.
    Mark(Label),
}

/// Resolves labels into classic BPF's forward relative jump offsets.
fn assemble(ops: &[Op]) -> Vec<sock_filter> {
    let mut marks = Vec::new();
    let mut pc = 0usize;
    for op in ops {
        match op {
            Op::Mark(label) => marks.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let offset = |from: usize, label: Label| -> u8 {
        if label == Label::Next {
            return 0;
        }
        let (_, to) = *marks
            .iter()
            .find(|(l, _)| *l == label)
            .expect("label is marked");
        u8::try_from(to - from - 1).expect("jump is forward and short")
    };
    let code = |code: u32| u16::try_from(code).expect("BPF opcodes fit in u16");
    let mut program = Vec::with_capacity(pc);
    for op in ops {
        let pc = program.len();
        match *op {
            Op::Stmt(c, k) => program.push(sock_filter {
                code: code(c),
                jt: 0,
                jf: 0,
                k,
            }),
            Op::Jump(c, k, jt, jf) => program.push(sock_filter {
                code: code(c),
                jt: offset(pc, jt),
                jf: offset(pc, jf),
                k,
            }),
            Op::Skip(c, k, jt, jf) => program.push(sock_filter {
                code: code(c),
                jt,
                jf,
                k,
            }),
            Op::Mark(_) => {}
        }
    }
    program
}

/// Binds `n_shards` UDP sockets with `SO_REUSEPORT` to `addr`, in shard order, non-blocking.
///
/// The socket at index `i` of the result is index `i` of the kernel's reuseport group. With port
/// 0 the first bind picks the port and the rest bind to it. IPv6 sockets are `IPV6_V6ONLY`. Each
/// socket asks for 4 MiB receive and send buffers (failure is ignored; the kernel caps them).
///
/// # Errors
///
/// `InvalidInput` if `n_shards == 0`; otherwise the first socket, option or bind error.
pub fn bind_group(addr: SocketAddr, n_shards: usize) -> io::Result<Vec<UdpSocket>> {
    if n_shards == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "n_shards must be at least 1",
        ));
    }
    // SO_REUSEPORT lets any socket of the same user join a group, so a second server on the same
    // port would silently share it. A plain bind first fails if anyone holds the port (and picks
    // a free one for port 0); the group then binds that port right after.
    let mut addr = addr;
    {
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        probe.bind(&addr.into())?;
        addr.set_port(probe.local_addr()?.as_socket().map_or(0, |a| a.port()));
    }
    let mut sockets = Vec::with_capacity(n_shards);
    for _ in 0..n_shards {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Ignored: a smaller buffer only costs drops under bursts.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        sockets.push(UdpSocket::from(socket));
    }
    Ok(sockets)
}

/// Attaches `program` with `SO_ATTACH_REUSEPORT_CBPF` to one socket of a reuseport group.
///
/// The program applies to the whole group; attach it after the last bind.
///
/// # Errors
///
/// `InvalidInput` if the program is longer than `u16::MAX` instructions; otherwise the
/// `setsockopt` error: `EINVAL` for a program the kernel checker rejects, `EPERM`/`ENOPROTOOPT`
/// where the option is not allowed or not supported.
pub fn attach(socket: &UdpSocket, program: &[sock_filter]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` valid instructions that outlive the call; the kernel only
    // reads (copies) them. The option length is the size of `fprog`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
