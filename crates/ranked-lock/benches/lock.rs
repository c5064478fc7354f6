//! Cost of a ranked lock over a plain `std::sync::Mutex`: one uncontended lock + unlock each,
//! and the same with an outer ranked lock held (the common nested case).
//!
//! `cargo bench -p ranked-lock --bench lock`
#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ranked_lock::{Mutex, Rank};

fn bench(c: &mut Criterion) {
    let plain = std::sync::Mutex::new(0u64);
    let ranked = Mutex::new(Rank::new(10, "bench"), 0u64);
    let outer = Mutex::new(Rank::new(5, "outer"), 0u64);
    let mut g = c.benchmark_group("lock+unlock");
    g.bench_function("std::sync::Mutex", |b| {
        b.iter(|| *black_box(&plain).lock().unwrap() += 1)
    });
    g.bench_function("ranked_lock::Mutex", |b| {
        b.iter(|| *black_box(&ranked).lock() += 1)
    });
    g.bench_function("ranked, nested under another", |b| {
        let _o = outer.lock();
        b.iter(|| *black_box(&ranked).lock() += 1)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
