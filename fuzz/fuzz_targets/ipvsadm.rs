//! The `ipvsadm` parsers on arbitrary bytes (first byte: even = `-Sn` save format, odd = `-Ln`
//! listing): never panic. An accepted listing renders to text that parses back to the same
//! table, sorted; an accepted save text renders to text that parses back and renders the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::formats::ipvsadm::{parse_list, parse_save, render_list, render_save};
use svcpath::model::ipvs::Forward;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if first & 1 == 0 {
        let Ok(table) = parse_save(text) else { return };
        let rendered = render_save(&table);
        let again = match parse_save(&rendered) {
            Ok(t) => t,
            Err(e) => panic!("rendered save text does not parse: {e}\n{rendered}"),
        };
        assert_eq!(render_save(&again), rendered, "render_save is not a fixed point");
    } else {
        let Ok(table) = parse_list(text) else { return };
        // The documented precondition (finding 10 of issue #8): no one ipvsadm listing shows
        // thresholds together with weights other than 1 or forwarding other than Masq, which
        // only a text switching column sets midway gives.
        let dests = || table.services.iter().flat_map(|s| &s.real_servers);
        if dests().any(|r| r.u_threshold != 0 || r.l_threshold != 0)
            && dests().any(|r| r.weight != 1 || r.forward != Forward::Masq)
        {
            return;
        }
        // Finding 8: the listing carries `pe` only with persistence, as ipvsadm prints it.
        assert!(
            table.services.iter().all(|s| s.pe.is_none() || s.persistence.is_some()),
            "a listing gave a persistence engine without persistence"
        );
        let rendered = render_list(&table);
        match parse_list(&rendered) {
            Ok(again) => {
                assert_eq!(again, table.sorted(), "parse_list(render_list(t)) != t.sorted()")
            }
            Err(e) => panic!("rendered listing does not parse: {e}\n{rendered}"),
        }
    }
});
