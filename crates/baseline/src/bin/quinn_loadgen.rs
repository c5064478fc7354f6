//! `quinn-loadgen`: request/response and handshake load on quinn 0.11's client API (see
//! `baseline::loadgen`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    match baseline::loadgen::run(baseline::loadgen::Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quinn-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
