//! `handles-server`: perf on quicshard's thread-safe handles (see `baseline::handles`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    match baseline::handles::run(baseline::handles::Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handles-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
