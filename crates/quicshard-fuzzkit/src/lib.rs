//! What quicshard's fuzz targets share (`crates/quicshard/tests/fuzz_inbound.rs`, the shard's
//! inbound path, and `crates/quicshard-lb/tests/fuzz_parse.rs`, the load balancer's parser and
//! router): the case count ([`fuzz_config`]), the damage done to a well-formed datagram
//! ([`Damage`]: byte flips, then a cut) and the end-of-run report and checks ([`finish`]).
//! A dev-dependency only; nothing here ships.

use std::fmt::Debug;
use std::time::Instant;

use proptest::prelude::*;
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

/// Damage to a datagram: byte flips at random positions (`(position, xor mask)`, the position
/// taken modulo the length), then a cut (the length kept, modulo the length + 1).
#[derive(Debug, Clone, Default)]
pub struct Damage {
    /// `(position, non-zero xor mask)` pairs.
    pub flips: Vec<(usize, u8)>,
    /// Truncate to this (modulo the length + 1), if any.
    pub cut: Option<usize>,
}

impl Damage {
    /// Applies the damage to `data`; returns whether its first `header_len` bytes came through
    /// whole and unchanged (so what the header said still holds).
    pub fn apply(&self, data: &mut Vec<u8>, header_len: usize) -> bool {
        let mut intact = true;
        if !data.is_empty() {
            for &(i, mask) in &self.flips {
                let i = i % data.len();
                data[i] ^= mask;
                if i < header_len {
                    intact = false;
                }
            }
        }
        if let Some(c) = self.cut {
            let c = c % (data.len() + 1);
            data.truncate(c);
            if c < header_len {
                intact = false;
            }
        }
        intact
    }
}

/// [`Damage`] for a fuzz case: one case in four flips `flips` bytes (`1..=2`, or `0..=2` to let
/// some of those cases through undamaged); three in ten are cut.
pub fn damage(flips: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Damage> {
    let some = proptest::collection::vec((any::<usize>(), 1u8..=255), flips);
    (
        prop_oneof![3 => Just(Vec::new()), 1 => some],
        proptest::option::weighted(0.3, any::<usize>()),
    )
        .prop_map(|(flips, cut)| Damage { flips, cut })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_reports_a_touched_header() {
        let whole = |d: &Damage| d.apply(&mut vec![0u8; 10], 4);
        assert!(whole(&Damage::default()));
        let flip_body = Damage {
            flips: vec![(14, 1)], // 14 % 10: the body
            cut: None,
        };
        assert!(whole(&flip_body));
        let flip_header = Damage {
            flips: vec![(13, 1)], // 13 % 10: the header
            cut: None,
        };
        assert!(!whole(&flip_header));
        let cut_header = Damage {
            flips: vec![],
            cut: Some(3),
        };
        assert!(!whole(&cut_header));
        let mut data = vec![0u8; 10];
        let cut_body = Damage {
            flips: vec![(0, 0xff)],
            cut: Some(17), // 17 % 11: keeps 6
        };
        assert!(!cut_body.apply(&mut data, 4), "the flip hit the header");
        assert_eq!(data, [0xff, 0, 0, 0, 0, 0]);
    }
}
