//! The `quicshard cid` contract: stdout, stderr and exit codes.

use std::process::{Command, Output};

const KEY: &str = "8f95f09245765f80256934e50c66207f";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quicshard"))
        .args(args)
        .output()
        .expect("quicshard runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn encode_prints_draft_vector() {
    let o = run(&[
        "cid",
        "encode",
        "--config-id",
        "0",
        "--server-id",
        "ed793a",
        "--nonce",
        "ee080dbf",
        "--key",
        KEY,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0720b1d07b359d3c\n");
    let o = run(&[
        "cid",
        "encode",
        "--config-id",
        "0",
        "--server-id",
        "c4605e",
        "--nonce",
        "4504cc4f",
    ]);
    assert_eq!(stdout(&o), "07c4605e4504cc4f\n");
}

#[test]
fn decode_prints_fields_and_refuses_unroutable() {
    let o = run(&[
        "cid",
        "decode",
        "--server-id-len",
        "10",
        "--nonce-len",
        "5",
        "--key",
        KEY,
        "2fcc381bc74cb4fbad2823a3d1f8fed2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "config_id=1 server_id=ed793a51d49b8f5fab65 nonce=ee080dbf48\n"
    );
    for args in [
        // config bits 0 but only config 1 is routable
        &[
            "cid",
            "decode",
            "--server-id-len",
            "3",
            "--nonce-len",
            "4",
            "--config-id",
            "1",
            "0720b1d07b359d3c",
        ][..],
        // config bits 0b111
        &[
            "cid",
            "decode",
            "--server-id-len",
            "3",
            "--nonce-len",
            "4",
            "e720b1d07b359d3c",
        ],
        // too short for the config
        &[
            "cid",
            "decode",
            "--server-id-len",
            "3",
            "--nonce-len",
            "4",
            "0720b1",
        ],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(o.stdout.is_empty());
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("unroutable"), "{err}");
    }
}

#[test]
fn gen_prints_fresh_decodable_cids() {
    let o = run(&[
        "cid",
        "gen",
        "--config-id",
        "2",
        "--server-id",
        "0a0b",
        "--nonce-len",
        "6",
        "--key",
        KEY,
        "--count",
        "50",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cids: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(cids.len(), 50);
    let unique: std::collections::HashSet<_> = cids.iter().collect();
    assert_eq!(unique.len(), 50, "duplicate CIDs");
    for cid in &cids[..5] {
        let o = run(&[
            "cid",
            "decode",
            "--server-id-len",
            "2",
            "--nonce-len",
            "6",
            "--key",
            KEY,
            cid,
        ]);
        assert!(
            stdout(&o).starts_with("config_id=2 server_id=0a0b nonce="),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn bad_input_is_one_line_exit_2_nothing_on_stdout() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "zz",
                "--nonce",
                "01020304",
            ],
            "hex",
        ),
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "012",
                "--nonce",
                "01020304",
            ],
            "odd",
        ),
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "01",
                "--nonce",
                "01020304",
                "--key",
                "0102",
            ],
            "key",
        ),
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "7",
                "--server-id",
                "01",
                "--nonce",
                "01020304",
            ],
            "config_id",
        ),
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "01",
                "--nonce",
                "010203",
            ],
            "nonce_len",
        ),
        (
            &[
                "cid",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "0102030405060708090a",
                "--nonce",
                "0102030405060708090a",
            ],
            "too long",
        ),
        (
            &["cid", "encode", "--config-id", "0", "--server-id", "01"],
            "--nonce",
        ),
        (
            &[
                "cid",
                "decode",
                "--server-id-len",
                "0",
                "--nonce-len",
                "4",
                "0700000000",
            ],
            "server_id_len",
        ),
        (
            &[
                "cid",
                "decode",
                "--server-id-len",
                "3",
                "--nonce-len",
                "4",
                "07zz",
            ],
            "hex",
        ),
        (
            &[
                "cid",
                "gen",
                "--config-id",
                "0",
                "--server-id",
                "01",
                "--nonce-len",
                "4",
                "--bogus",
            ],
            "--bogus",
        ),
    ];
    for (args, needle) in cases {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
