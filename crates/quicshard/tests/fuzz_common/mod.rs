//! What the two fuzz targets share (`quicshard/tests/fuzz_inbound.rs`, and
//! `quicshard-lb/tests/fuzz_parse.rs`, which includes this file by path): the case count and the
//! end-of-run report and checks.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::fmt::Debug;
use std::time::Instant;

use proptest::test_runner::{Config, TestError};

/// Cases per property: `FUZZ_CASES` or 20 000.
pub fn fuzz_config() -> Config {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    Config {
        cases,
        // a failure prints its minimal case; nothing is written into the source tree
        failure_persistence: None,
        ..Config::default()
    }
}

/// Prints the run, fails on a property failure, and (from 10 000 cases on, where it is certain)
/// checks that every branch got more than one case in `share`.
pub fn finish<T: Debug>(
    result: Result<(), TestError<T>>,
    coverage: &dyn Debug,
    cases: u64,
    start: Instant,
    share: u64,
    branches: &[(&str, u64)],
) {
    eprintln!("{cases} cases in {:?}: {coverage:?}", start.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
    if cases >= 10_000 {
        for (name, n) in branches {
            assert!(*n > cases / share, "{name}: only {n} of {cases} cases");
        }
    }
}
