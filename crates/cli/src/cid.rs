//! `quicshard cid`: encode, decode and generate QUIC-LB connection IDs from the command line.

use clap::Subcommand;
use quic_lb::{config_bits, Codec, Config, Generator, Hex, UNROUTABLE_CONFIG_ID};

use crate::Failure;

/// Arguments of `quicshard cid`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Encode one CID (length self-encoded) and print it as hex.
    Encode {
        /// Config rotation codepoint, 0..=6.
        #[arg(long)]
        config_id: u8,
        /// Server ID, hex.
        #[arg(long, value_parser = parse_hex)]
        server_id: Bytes,
        /// Nonce, hex (at least 4 bytes).
        #[arg(long, value_parser = parse_hex)]
        nonce: Bytes,
        /// AES-128 key, 32 hex digits; omit for plaintext.
        #[arg(long, value_parser = parse_hex)]
        key: Option<Bytes>,
    },
    /// Decode a CID and print `config_id=N server_id=HEX nonce=HEX`; exit 1 if unroutable.
    Decode {
        /// Server ID length in bytes.
        #[arg(long)]
        server_id_len: usize,
        /// Nonce length in bytes.
        #[arg(long)]
        nonce_len: usize,
        /// AES-128 key, 32 hex digits; omit for plaintext.
        #[arg(long, value_parser = parse_hex)]
        key: Option<Bytes>,
        /// Only this config codepoint is routable (default: whatever the CID says).
        #[arg(long)]
        config_id: Option<u8>,
        /// The CID, hex.
        #[arg(value_parser = parse_hex)]
        cid: Bytes,
    },
    /// Print fresh CIDs for a server, one a line.
    Gen {
        /// Config rotation codepoint, 0..=6.
        #[arg(long)]
        config_id: u8,
        /// Server ID, hex.
        #[arg(long, value_parser = parse_hex)]
        server_id: Bytes,
        /// Nonce length in bytes (at least 4).
        #[arg(long)]
        nonce_len: usize,
        /// AES-128 key, 32 hex digits; omit for plaintext.
        #[arg(long, value_parser = parse_hex)]
        key: Option<Bytes>,
        /// How many CIDs.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
}

/// Hex-decoded bytes (a newtype so clap does not treat `Vec<u8>` as repeated values).
#[derive(Clone, Debug)]
pub(crate) struct Bytes(Vec<u8>);

fn parse_hex(s: &str) -> Result<Bytes, String> {
    if s.len() % 2 == 1 {
        return Err(format!("odd number of hex digits ({})", s.len()));
    }
    hex::decode(s)
        .map(Bytes)
        .map_err(|e| format!("not hex: {e}"))
}

fn config(
    id: u8,
    sid_len: usize,
    nonce_len: usize,
    key: Option<&Bytes>,
) -> Result<Config, Failure> {
    Config::with_key_slice(id, sid_len, nonce_len, key.map(|k| &k.0[..]))
        .map_err(|e| Failure::Usage(e.to_string()))
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    match args.op {
        Op::Encode {
            config_id,
            server_id,
            nonce,
            key,
        } => {
            let codec = Codec::new(config(
                config_id,
                server_id.0.len(),
                nonce.0.len(),
                key.as_ref(),
            )?);
            let mut cid = [0u8; quic_lb::MAX_CID_LEN];
            let n = codec
                .encode(&server_id.0, &nonce.0, 0, &mut cid)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            println!("{}", Hex(&cid[..n]));
        }
        Op::Decode {
            server_id_len,
            nonce_len,
            key,
            config_id,
            cid,
        } => {
            let cid = cid.0;
            let bits = cid.first().map(|b| config_bits(*b));
            // Validate the lengths and key before looking at the CID's own bits.
            config(
                config_id.unwrap_or(0),
                server_id_len,
                nonce_len,
                key.as_ref(),
            )?;
            let id = match (config_id, bits) {
                (Some(id), _) => id,
                (None, Some(bits)) if bits != UNROUTABLE_CONFIG_ID => bits,
                (None, _) => UNROUTABLE_CONFIG_ID,
            };
            let decoded = if id == UNROUTABLE_CONFIG_ID {
                Err(quic_lb::Unroutable::Reserved)
            } else {
                Codec::new(config(id, server_id_len, nonce_len, key.as_ref())?).decode(&cid)
            };
            let d = decoded.map_err(|e| Failure::Refused(e.to_string()))?;
            println!(
                "config_id={} server_id={} nonce={}",
                d.config_id(),
                Hex(d.server_id()),
                Hex(d.nonce())
            );
        }
        Op::Gen {
            config_id,
            server_id,
            nonce_len,
            key,
            count,
        } => {
            let codec = Codec::new(config(
                config_id,
                server_id.0.len(),
                nonce_len,
                key.as_ref(),
            )?);
            let mut generator = Generator::new(codec, &server_id.0, rand::random())
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut cid = [0u8; quic_lb::MAX_CID_LEN];
            for _ in 0..count {
                let n = generator
                    .generate(&mut cid)
                    .map_err(|e| Failure::Refused(e.to_string()))?;
                use std::io::Write;
                writeln!(out, "{}", Hex(&cid[..n])).map_err(|e| Failure::Refused(e.to_string()))?;
            }
        }
    }
    Ok(())
}
