//! `quinn-baseline`: quinn 0.11 serving what `quicshard serve` serves (see `baseline::quinn_server`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    match baseline::quinn_server::run(baseline::quinn_server::Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quinn-baseline: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
