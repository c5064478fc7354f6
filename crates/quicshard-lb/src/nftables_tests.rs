use super::*;

fn config(extra: &str) -> LbConfig {
    LbConfig::from_toml(&format!(
        r#"
        listen = "10.99.1.1:4433"
        [[quic_lb]]
        id = 1
        server_id_len = 2
        nonce_len = 8
        [[quic_lb]]
        id = 2
        server_id_len = 6
        nonce_len = 4
        [[backend]]
        server_id = "0a01"
        address = "10.99.1.11:4433"
        [[backend]]
        server_id = "0a02"
        address = "10.99.1.12:4433"
        down = true
        [[backend]]
        server_id = "0a03"
        address = "10.99.1.13:5000"
        [[backend]]
        server_id = "010203040506"
        address = "10.99.1.14:4433"
        {extra}
        "#
    ))
    .unwrap()
}

/// The value of the bits `[bit, bit + len)` of `packet`, most significant first (len <= 32).
fn bits(packet: &[u8], bit: usize, len: usize) -> Option<u64> {
    let mut v = 0u64;
    for b in bit..bit + len {
        let octet = *packet.get(b / 8)?;
        v = (v << 1) | u64::from((octet >> (7 - b % 8)) & 1);
    }
    Some(v)
}

/// Evaluates the `@th` matches of chain `quic` like nftables would for the first packet of a
/// 4-tuple (UDP header + `quic`): the DNAT target of the first rule whose matches all hold, or
/// `None` if only the hash rules are left.
fn route(rules: &str, quic: &[u8]) -> Option<String> {
    let packet = [&[0u8; 8][..], quic].concat();
    for rule in rules.lines().filter(|l| l.contains("@th,")) {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let mut all = true;
        for pair in words.windows(2) {
            let Some(spec) = pair[0].strip_prefix("@th,") else {
                continue;
            };
            let (bit, len) = spec.split_once(',').unwrap();
            let (bit, len): (usize, usize) = (bit.parse().unwrap(), len.parse().unwrap());
            let want = match pair[1].strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
                None => pair[1].parse().unwrap(),
            };
            all &= bits(&packet, bit, len) == Some(want);
        }
        if all {
            let to = words.iter().position(|w| *w == "to").unwrap();
            return Some(words[to + 1].to_owned());
        }
    }
    None
}

#[test]
fn short_headers_route_by_server_id_and_the_rest_by_hash() {
    let cfg = config("");
    let rules = ruleset(&cfg).unwrap();
    // Every backend has a server ID rule, the down one too; generated CIDs select it.
    for (i, b) in cfg.backends.iter().enumerate() {
        let q = cfg
            .quic_lb
            .iter()
            .find(|q| q.config.server_id_len() == b.server_id.as_bytes().len())
            .unwrap();
        let codec = quic_lb::Codec::new(q.config);
        let mut gen = quic_lb::Generator::new(codec, b.server_id.as_bytes(), i as u64).unwrap();
        for _ in 0..20 {
            let mut cid = [0u8; quic_lb::MAX_CID_LEN];
            let n = gen.generate(&mut cid).unwrap();
            let short = [&[0x41][..], &cid[..n], b"payload"].concat();
            assert_eq!(
                route(&rules, &short),
                Some(dnat_target(b.address)),
                "{rules}"
            );
            // The same CID in a long header is not matched by server ID.
            let long = [&[0xe0, 0, 0, 0, 1, n as u8][..], &cid[..n]].concat();
            assert_eq!(route(&rules, &long), None);
        }
    }
    // Another config ID or an unknown server ID falls through to the hash.
    assert_eq!(route(&rules, &[0x41, 0x60, 0x0a, 0x01, 9, 9, 9, 9]), None);
    assert_eq!(route(&rules, &[0x41, 0x20, 0x0a, 0x09, 9, 9, 9, 9]), None);
    // The hash spreads over the three backends that are up, with a fixed seed.
    let hashed = |slot: usize, to: &str| {
        format!(
            "jhash ip saddr . udp sport mod 3 seed {HASH_SEED:#010x} == {slot} dnat ip to {to} "
        )
    };
    assert!(rules.contains(&hashed(0, "10.99.1.11:4433")), "{rules}");
    assert!(rules.contains(&hashed(1, "10.99.1.13:5000")));
    assert!(rules.contains(&hashed(2, "10.99.1.14:4433")));
    assert!(!rules.contains("== 3 "));
    assert!(!rules.contains("seed 0x51736864 == 1 dnat ip to 10.99.1.12"));
    // Hooked at NAT prerouting for the service address; the table is replaced as a whole.
    assert!(rules.contains("ip daddr 10.99.1.1 udp dport 4433 jump quic"));
    assert!(rules.contains("type nat hook prerouting priority -100; policy accept;"));
    assert!(rules.starts_with("# "));
    assert!(rules.contains("table ip quicshard\ndelete table ip quicshard\ntable ip quicshard {"));
}

#[test]
fn long_server_ids_take_several_matches() {
    let rules = ruleset(&config("")).unwrap();
    assert!(rules.contains("@th,64,1 0 @th,72,3 1 @th,80,16 0x0a01 dnat ip to 10.99.1.11:4433"));
    assert!(rules.contains(
        "@th,64,1 0 @th,72,3 2 @th,80,32 0x01020304 @th,112,16 0x0506 dnat ip to 10.99.1.14:4433"
    ));
}

#[test]
fn ipv6_and_unspecified_listen() {
    let cfg = LbConfig::from_toml(
        r#"
        listen = "[::]:443"
        [[quic_lb]]
        id = 0
        server_id_len = 1
        nonce_len = 4
        [[backend]]
        server_id = "07"
        address = "[fd00::7]:4433"
        "#,
    )
    .unwrap();
    let rules = ruleset(&cfg).unwrap();
    assert!(rules.contains("table ip6 quicshard {"));
    assert!(rules.contains("\t\tudp dport 443 jump quic"), "{rules}");
    assert!(rules.contains("@th,80,8 0x07 dnat ip6 to [fd00::7]:4433"));
    assert!(rules.contains("jhash ip6 saddr . udp sport mod 1"));
}

#[test]
fn refusals_are_one_line() {
    let refused = |edit: &dyn Fn(&mut LbConfig)| {
        let mut cfg = config("");
        edit(&mut cfg);
        let why = ruleset(&cfg).unwrap_err().to_string();
        assert!(!why.contains('\n'), "{why}");
        why
    };
    let why = refused(&|c| {
        c.quic_lb[1].config = quic_lb::Config::new(2, 6, 4, Some([1; 16])).unwrap();
    });
    assert!(why.starts_with("quic_lb[1] (id 2) is encrypted"), "{why}");
    assert!(refused(&|c| c.mode = ForwardMode::Dsr).starts_with("mode = \"dsr\""));
    assert!(refused(&|c| c.quic_lb.clear()).starts_with("no [[quic_lb]]"));
    let why = refused(&|c| c.backends.iter_mut().for_each(|b| b.down = true));
    assert!(why.starts_with("every backend is down"), "{why}");
    let why = refused(&|c| c.backends[2].address = "[fd00::1]:4433".parse().unwrap());
    assert!(
        why.starts_with("backend[2].address [fd00::1]:4433 is not"),
        "{why}"
    );
}
