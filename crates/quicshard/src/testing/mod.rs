//! Public items that exist only for tests, benches, fuzzing and the simulator (hidden from the
//! docs; not a stable API): the pure pieces of the datagram input path, for the property tests
//! (`tests/fuzz_*.rs`), and [`SimServer`] (`testing/sim.rs`) for `crates/quicshard-testkit`.
//!
//! A datagram on the shared port goes: [`handoff_target`] (steering: another shard's? hand it
//! off) → [`check_before_endpoint`] (drop empty, truncated or foreign short headers) →
//! `quinn_proto::Endpoint::handle`. Handed-off datagrams skip the first step on the owner.
//! [`run_bpf`] interprets the steering program, so tests can hold it to `owner_shard`.

mod sim;

pub use crate::shard::inbound::{check_before_endpoint, handoff_target, EarlyDrop};
pub use sim::{sock_filter, SimServer, SimSetup};

/// Runs a classic BPF program like the kernel's `SO_ATTACH_REUSEPORT_CBPF` path does, for the
/// opcodes the steering program uses. A load past the end is an error here (the kernel would
/// silently return 0, i.e. socket 0): the program must guard every load.
pub fn run_bpf(program: &[libc::sock_filter], packet: &[u8]) -> Result<u32, String> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ADD, BPF_ALU, BPF_AND, BPF_B, BPF_IMM, BPF_JEQ, BPF_JGE, BPF_JGT,
        BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LEN, BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_RSH,
        BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let insn = program.get(pc).ok_or("fell off the end of the program")?;
        pc += 1;
        let (code, k) = (u32::from(insn.code), insn.k);
        if code == BPF_LD | BPF_W | BPF_LEN {
            a = u32::try_from(packet.len()).unwrap();
        } else if code == BPF_LD | BPF_B | BPF_ABS {
            a = u32::from(
                *packet
                    .get(k as usize)
                    .ok_or(format!("load of byte {k} past the end"))?,
            );
        } else if code == BPF_LD | BPF_W | BPF_ABS {
            // big-endian, like the kernel's word loads
            let at = k as usize;
            let word = packet
                .get(at..at.saturating_add(4))
                .ok_or(format!("load of word {k} past the end"))?;
            a = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        } else if code == BPF_LD | BPF_IMM {
            a = k;
        } else if code & 0x07 == BPF_ALU {
            let src = if code & BPF_X != 0 { x } else { k };
            a = match code & 0xf0 {
                BPF_ADD => a.wrapping_add(src),
                BPF_MUL => a.wrapping_mul(src),
                BPF_XOR => a ^ src,
                BPF_AND => a & src,
                BPF_RSH if src < 32 => a >> src,
                BPF_MOD => a.checked_rem(src).ok_or("mod by 0")?,
                _ => return Err(format!("unsupported ALU op {code:#x} {src}")),
            };
        } else if code == BPF_MISC | BPF_TAX {
            x = a;
        } else if code == BPF_RET | BPF_A {
            return Ok(a);
        } else if code == BPF_RET | BPF_K {
            return Ok(k);
        } else if code & 0x07 == BPF_JMP {
            let src = if code & BPF_X != 0 { x } else { k };
            let taken = match code & 0xf0 {
                BPF_JEQ => a == src,
                BPF_JGE => a >= src,
                BPF_JGT => a > src,
                BPF_JSET => a & src != 0,
                _ => return Err(format!("unsupported jump {code:#x}")),
            };
            pc += usize::from(if taken { insn.jt } else { insn.jf });
        } else {
            return Err(format!("unsupported opcode {code:#x}"));
        }
    }
}
