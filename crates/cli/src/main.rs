//! The `quicshard` command. Each subcommand lives in its own module; this file parses arguments
//! and turns every failure into one line on stderr and a non-zero exit.

mod apps;
mod bench;
mod cid;
mod client_tickets;
mod demo;
mod diag;
mod get;
mod impair;
mod lb;
mod loadgen;
mod logging;
mod metrics;
mod relay;
mod serve;
mod signals;
mod tlsfiles;
mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// quicshard: a multi-core QUIC engine and QUIC-LB toolkit.
#[derive(Parser)]
#[command(name = "quicshard", version, about)]
struct Cli {
    /// Log line format on stderr (`RUST_LOG` sets the filter; default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server and a load generator on loopback and report (no arguments needed).
    Demo(demo::Args),
    /// Serve files (hq-interop), perf and echo on N shards.
    Serve(Box<serve::Args>),
    /// Download URLs over one connection (h3 or hq-interop), verifying the server against the
    /// system's trust store.
    Get(get::Args),
    /// Generate load against a server (perf protocol).
    Bench(bench::Args),
    /// Run the QUIC-LB load balancer (TOML config; SIGHUP reloads it).
    Lb(lb::Args),
    /// UDP impairment proxy: loss, delay, jitter, reordering, rate limit, blackouts.
    Impair(impair::Args),
    /// Encode, decode and generate QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21).
    Cid(cid::Args),
    /// Pub/sub relay (ALPN `relay`): publishers' messages to every subscriber of the topic.
    Relay(relay::Args),
}

/// How a subcommand failed: the message is printed as one line.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments or input: exit 2.
    Usage(String),
    /// The operation ran and said no (e.g. an unroutable CID): exit 1.
    Refused(String),
}

/// A count flag (`--shards`, `--threads`): absent, or checked to be 1..=256 (the engine's shard
/// limit).
pub(crate) fn count_flag(flag: &str, n: Option<usize>) -> Result<Option<usize>, Failure> {
    match n {
        Some(n) if n == 0 || n > 256 => {
            Err(Failure::Usage(format!("--{flag} {n}: must be 1..=256")))
        }
        n => Ok(n),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(e),
    };
    let result = logging::init(cli.log_format).and_then(|()| match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(*args),
        Command::Get(args) => get::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Lb(args) => lb::run(args),
        Command::Impair(args) => impair::run(args),
        Command::Cid(args) => cid::run(args),
        Command::Relay(args) => relay::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Refused(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

/// `--help` and `--version` print as usual; any other parse error is one line, exit 2.
fn clap_failure(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprintln!("error: missing subcommand; see `quicshard --help`");
        return ExitCode::from(2);
    }
    eprintln!("{}", one_line(&e.render().to_string()));
    ExitCode::from(2)
}

/// clap's message as one line: its first paragraph says what is wrong (a missing argument's
/// name is on the next line), and its `tip:` lines (a similar argument, `--` before a value that
/// starts with `-`) are kept after a `;`; the usage text is left out.
fn one_line(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n");
    let fold = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut line = fold(paragraphs.next().unwrap_or("error: invalid arguments"));
    for tip in paragraphs
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| l.starts_with("tip:"))
    {
        line.push_str("; ");
        line.push_str(&fold(tip));
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn clap_errors_are_one_line_with_their_tips() {
        let e = Cli::try_parse_from(["quicshard", "serve", "--shard", "2"])
            .err()
            .expect("--shard is not a flag");
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("'--shard'"), "{line}");
        assert!(
            line.contains("tip: a similar argument exists: '--shards'"),
            "{line}"
        );
        assert!(!line.contains("Usage"), "{line}");
    }
}
