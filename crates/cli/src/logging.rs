//! The command's log output: `tracing` events on stderr, filtered by `RUST_LOG` (default `warn`;
//! an invalid filter is an error, not a silent fallback), as text (ANSI colour only when stderr
//! is a terminal) or as one JSON object per line (`--log-format json`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::Failure;

/// The filter used when `RUST_LOG` is unset or empty.
const DEFAULT_FILTER: &str = "warn";

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The filter of `RUST_LOG`, checked.
fn filter() -> Result<EnvFilter, Failure> {
    let spec = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        Ok(_) | Err(std::env::VarError::NotPresent) => DEFAULT_FILTER.to_string(),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(Failure::Usage("RUST_LOG: not valid UTF-8".into()))
        }
    };
    EnvFilter::builder()
        .parse(&spec)
        .map_err(|e| Failure::Usage(format!("RUST_LOG={spec}: {e}")))
}

/// Installs the global subscriber.
pub(crate) fn init(format: LogFormat) -> Result<(), Failure> {
    let filter = filter()?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| Failure::Refused(format!("logging: {e}")))
}
