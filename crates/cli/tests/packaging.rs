//! What a user installs: the licence texts the crates declare, and a release binary without
//! debug info (profiling builds use `--profile profiling`).

mod common;

use common::workspace_root;

#[test]
fn both_licences_are_at_the_root() {
    for (file, marker) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        ("LICENSE-APACHE", "Apache License"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(marker), "{file} is not the standard text");
    }
}

/// An optimized build (what `cargo install` and `--release` give) carries no debug info: with
/// `debug = 1` the binary was about 60 MB.
#[test]
fn optimized_binary_has_no_debug_info() {
    if cfg!(debug_assertions) {
        return; // a dev-profile test run builds a debug binary on purpose
    }
    let bin = env!("CARGO_BIN_EXE_quicshard");
    let size = std::fs::metadata(bin).unwrap().len();
    assert!(size < 20 << 20, "{bin}: {size} bytes");
    let elf = std::fs::read(bin).unwrap();
    let has_debug_info = elf.windows(12).any(|w| w == b".debug_info\0");
    assert!(!has_debug_info, "{bin} has a .debug_info section");
}
