//! Diagnostic outputs the subcommands share: qlog traces (`--qlog-dir` or `QLOGDIR`), TLS key
//! logs (`SSLKEYLOGFILE`) and the `--stats-file` check made before anything runs.

use std::path::Path;
use std::sync::Arc;

use quicshard::{Builder, Handler};

use crate::Failure;

/// The environment variable naming the qlog directory (as quiche and curl read it).
pub(crate) const QLOG_ENV: &str = "QLOGDIR";
/// The environment variable naming the TLS key log file (NSS format, read by rustls).
pub(crate) const KEYLOG_ENV: &str = "SSLKEYLOGFILE";

/// Settles where qlog traces go: `flag` (`--qlog-dir`) wins over `QLOGDIR`; the choice is put in
/// `QLOGDIR` for [`with_qlog`], and the directory is created if missing. Call it before any
/// thread starts (it may set an environment variable).
pub(crate) fn qlog_setup(flag: Option<&Path>) -> Result<(), Failure> {
    if let Some(dir) = flag {
        std::env::set_var(QLOG_ENV, dir);
    }
    let Some(dir) = std::env::var_os(QLOG_ENV).filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Usage(format!("qlog directory {}: {e}", dir.display())))
}

/// `b` tracing every connection into `QLOGDIR` if it is set (see [`qlog_setup`]).
pub(crate) fn with_qlog<H: Handler, L>(b: Builder<H, L>) -> Builder<H, L> {
    match std::env::var_os(QLOG_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => b.qlog_dir(dir),
        None => b,
    }
}

/// Whether TLS secrets are to be logged (`SSLKEYLOGFILE` is set).
pub(crate) fn keylog_wanted() -> bool {
    std::env::var_os(KEYLOG_ENV).is_some_and(|f| !f.is_empty())
}

/// `b` logging the server's TLS secrets to `SSLKEYLOGFILE` if it is set.
pub(crate) fn with_keylog<H: Handler, L>(b: Builder<H, L>) -> Builder<H, L> {
    if keylog_wanted() {
        b.key_log(Arc::new(quicshard::rustls::KeyLogFile::new()))
    } else {
        b
    }
}

/// Checks that `--stats-file` can be written (its directory exists and the file can be created)
/// before the command runs, rather than failing at exit after the run.
pub(crate) fn check_stats_file(path: Option<&Path>) -> Result<(), Failure> {
    let Some(path) = path else {
        return Ok(());
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|e| Failure::Usage(format!("--stats-file {}: {e}", path.display())))
}
