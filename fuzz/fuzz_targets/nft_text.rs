//! The `nft list ruleset` text reader on arbitrary text: never panics, and every table it accepts
//! can be walked by the nftables model (which may refuse it with an error, but must not panic or
//! hang: jump loops end at the kernel's jump-stack depth).
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::dataplane::nftables::{NftDataplane, NftEnv, NftPacket};
use svcpath::formats::nft_text::parse;
use svcpath::model::Protocol;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(listing) = parse(text) else { return };
    for table in listing.tables {
        let v4 = table.family == svcpath::model::IpFamily::V4;
        let dp = NftDataplane::new(table);
        let (src, dst) = if v4 {
            ("10.0.0.7".parse().unwrap(), "172.30.0.45".parse().unwrap())
        } else {
            ("fd00::7".parse().unwrap(), "fd00:10:96::45".parse().unwrap())
        };
        let env = NftEnv {
            local: vec![if v4 {
                "192.168.0.2".parse().unwrap()
            } else {
                "2001:db8::1".parse().unwrap()
            }],
            sets: listing.affinity.clone(),
            now: 0.0,
        };
        let pkt = NftPacket { src, dst, proto: Protocol::Tcp, dport: 80, in_iface: "eth0".into() };
        if let Ok(outcomes) = dp.trace(&env, &pkt) {
            let total: f64 = outcomes.iter().map(|o| o.probability).sum();
            assert!(
                outcomes.is_empty() || (total - 1.0).abs() < 1e-9,
                "probabilities sum to {total}"
            );
        }
    }
});
