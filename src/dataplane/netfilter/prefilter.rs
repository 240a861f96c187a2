//! The faithful walk's header pre-test: each rule's `-p`, `-s` and `-d` packed into 20 bytes, one
//! array per chain, so a chain of thousands of rules that all fail on the header (kube-proxy's
//! `KUBE-SERVICES` for every Service but one) is skipped by a tight loop over a few cache lines
//! instead of a call per rule.
//!
//! The kernel does the same split: `ip_packet_match` tests the fixed `ipt_ip` header of a rule
//! before any match module runs. The pre-test only ever says "cannot match": a rule it lets through
//! is evaluated in full ([`super::eval`] re-tests its header, interfaces and fragment flag), so the
//! walk visits, counts and records exactly the rules it did before. It covers IPv4 packets and
//! IPv4 rule addresses; anything else (an IPv6 address on either side) is let through.
//!
//! ```text
//! rule `-d 10.96.0.10/32 -p tcp …`   →  Pre { dst: 0x0a60000a, dst_mask: !0, proto: 6, proto_mask: 0xff, … }
//! packet to 10.96.0.11, tcp          →  (0x0a60000b ^ 0x0a60000a) & !0 != 0  →  cannot match
//! ```

use std::net::IpAddr;

use super::compile::{CompiledTable, Header, Net};

const NEG_SRC: u8 = 1;
const NEG_DST: u8 = 2;
const NEG_PROTO: u8 = 4;
/// The header has an address the pre-test does not cover (IPv6): always let through.
const OPAQUE: u8 = 8;
/// The header has `-p`.
const HAS_PROTO: u8 = 16;

/// One rule's header as masks (20 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pre {
    dst: u32,
    /// The destination mask when a destination outside it rejects the rule outright: the `-d`
    /// mask when it is not negated, 0 otherwise (no `-d`, `! -d`, an IPv6 header).
    dst_reject: u32,
    src: u32,
    src_mask: u32,
    proto: u8,
    flags: u8,
    /// The `-d` prefix length (the mask of a negated destination).
    dst_len: u8,
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

impl Pre {
    /// The pre-test of a compiled rule header.
    pub fn of(h: &Header) -> Pre {
        let mut pre = Pre::default();
        let mut net = |spec: Option<(bool, Net)>, neg_bit: u8| -> Option<(u32, u32)> {
            let (neg, net) = spec?;
            if neg {
                pre.flags |= neg_bit;
            }
            let v4 = net.v4();
            if v4.is_none() {
                pre.flags |= OPAQUE;
            }
            v4
        };
        let src = net(h.src(), NEG_SRC);
        let dst = net(h.dst(), NEG_DST);
        (pre.src, pre.src_mask) = src.unwrap_or((0, 0));
        if let Some((addr, m)) = dst {
            pre.dst = addr;
            pre.dst_len = m.count_ones() as u8;
            if pre.flags & (NEG_DST | OPAQUE) == 0 {
                pre.dst_reject = m;
            }
        }
        if let Some((neg, p)) = h.proto() {
            pre.proto = p;
            pre.flags |= HAS_PROTO;
            if neg {
                pre.flags |= NEG_PROTO;
            }
        }
        pre
    }

    /// Whether every packet may pass this header (no `-p`, `-s` or `-d`, or one the pre-test does
    /// not cover).
    fn always(&self) -> bool {
        self.flags & OPAQUE != 0 || (self.flags == 0 && self.src_mask == 0 && self.dst_len == 0)
    }

    /// Whether a packet from `src` to `dst` with protocol `proto` may pass this header (`false`
    /// only when the header's `-p`, `-s` or `-d` rejects it).
    #[inline]
    pub fn may_match(&self, src: u32, dst: u32, proto: u8) -> bool {
        let f = self.flags;
        if f & OPAQUE != 0 {
            return true;
        }
        let s = ((src ^ self.src) & self.src_mask == 0) != (f & NEG_SRC != 0);
        let d = ((dst ^ self.dst) & mask(self.dst_len) == 0) != (f & NEG_DST != 0);
        let p = f & HAS_PROTO == 0 || ((proto == self.proto) != (f & NEG_PROTO != 0));
        s & d & p
    }
}

/// The pre-tests of every chain of every table: per table, one array of every chain's rules in
/// chain order, and where each chain starts in it (one allocation per table, not per chain: a
/// large dump has a million chains of two rules).
///
/// A chain shorter than [`MIN_RULES`] has none (an empty slice): a walk through two or three
/// rules gains nothing from skipping them in a loop, and kube-proxy's million two-rule endpoint
/// chains would otherwise take 40 MB of pre-tests at 100k Services. Nor do a chain's last rules
/// whose pre-test every packet passes (the slice stops before them): kube-proxy's Service chains
/// end in one `-m statistic` rule per endpoint, which took 20 MB of pre-tests at 100k Services
/// that never skipped a rule.
#[derive(Debug, Clone, Default)]
pub struct Prefilters {
    tables: Vec<TablePre>,
}

/// The fewest rules a chain has pre-tests for.
pub const MIN_RULES: usize = 4;

#[derive(Debug, Clone, Default)]
struct TablePre {
    pre: Box<[Pre]>,
    /// Chain `c`'s pre-tests are `pre[starts[c]..starts[c + 1]]`.
    starts: Box<[u32]>,
}

impl Prefilters {
    /// The pre-tests of compiled tables.
    pub fn new(tables: &[CompiledTable]) -> Prefilters {
        let tables = tables
            .iter()
            .map(|t| {
                let rules = (t.chains.iter().map(|c| c.len())).filter(|&n| n >= MIN_RULES).sum();
                let mut pre = Vec::with_capacity(rules);
                let mut starts = Vec::with_capacity(t.chains.len() + 1);
                for c in &t.chains {
                    starts.push(pre.len() as u32);
                    if c.len() >= MIN_RULES {
                        let from = pre.len();
                        pre.extend(t.rules_of(c).iter().map(|r| Pre::of(&r.header)));
                        // The rules after the last that can reject a packet need none.
                        let kept =
                            pre[from..].iter().rposition(|p| !p.always()).map_or(0, |i| i + 1);
                        pre.truncate(from + kept);
                    }
                }
                starts.push(pre.len() as u32);
                TablePre { pre: pre.into_boxed_slice(), starts: starts.into_boxed_slice() }
            })
            .collect();
        Prefilters { tables }
    }

    /// The pre-tests of one chain's first rules (empty when out of range or shorter than
    /// [`MIN_RULES`]; the rules after them may match any packet).
    #[inline]
    pub fn chain(&self, table: usize, chain: usize) -> &[Pre] {
        let Some(t) = self.tables.get(table) else { return &[] };
        match (t.starts.get(chain), t.starts.get(chain + 1)) {
            (Some(&a), Some(&b)) => t.pre.get(a as usize..b as usize).unwrap_or_default(),
            _ => &[],
        }
    }

    /// The first position at or after `from` whose rule may match an IPv4 packet, or `pre.len()`.
    #[inline]
    pub fn skip(pre: &[Pre], from: usize, src: u32, dst: u32, proto: u8) -> usize {
        let rest = pre.get(from..).unwrap_or_default();
        for (i, r) in rest.iter().enumerate() {
            // The common case first: a destination the rule does not cover.
            if (dst ^ r.dst) & r.dst_reject != 0 {
                continue;
            }
            if r.may_match(src, dst, proto) {
                return from + i;
            }
        }
        from + rest.len()
    }
}

/// Both addresses as IPv4 numbers, when both are IPv4.
#[inline]
pub fn v4_pair(src: IpAddr, dst: IpAddr) -> Option<(u32, u32)> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some((u32::from(s), u32::from(d))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        let n: ipnetwork::IpNetwork = s.parse().unwrap();
        Net::new(n.ip(), n.prefix())
    }

    fn header(
        proto: Option<(bool, u8)>,
        src: Option<(bool, &str)>,
        dst: Option<(bool, &str)>,
    ) -> Header {
        Header::new(proto, src.map(|(n, s)| (n, net(s))), dst.map(|(n, s)| (n, net(s))))
    }

    fn v4(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    /// The pre-test never rejects a packet the full header test accepts, and rejects exactly
    /// those it refuses on `-p`/`-s`/`-d`, for IPv4 on both sides.
    #[test]
    fn agrees_with_the_header_test_on_addresses_and_protocol() {
        let specs = [
            header(None, None, None),
            header(Some((false, 6)), None, Some((false, "10.96.0.10/32"))),
            header(Some((true, 17)), Some((true, "10.0.0.0/8")), None),
            header(None, Some((false, "0.0.0.0/0")), Some((true, "0.0.0.0/0"))),
            header(Some((false, 17)), Some((false, "10.1.0.0/16")), Some((true, "10.96.0.0/12"))),
        ];
        let packets = [
            ("10.1.0.1", "10.96.0.10", 6u8),
            ("10.1.0.1", "10.96.0.11", 6),
            ("192.168.1.1", "10.96.0.10", 17),
            ("10.2.0.1", "8.8.8.8", 17),
            ("10.1.9.9", "10.100.0.1", 17),
        ];
        for h in &specs {
            let pre = Pre::of(h);
            for (s, d, p) in packets {
                let full = h.proto().is_none_or(|(neg, q)| (p == q) != neg)
                    && h.src().is_none_or(|(neg, n)| n.contains(s.parse().unwrap()) != neg)
                    && h.dst().is_none_or(|(neg, n)| n.contains(d.parse().unwrap()) != neg);
                assert_eq!(pre.may_match(v4(s), v4(d), p), full, "{h:?} {s} {d} {p}");
            }
        }
    }

    #[test]
    fn an_ipv6_address_is_always_let_through() {
        let h = header(None, None, Some((false, "fd00::1/128")));
        assert!(Pre::of(&h).may_match(v4("10.0.0.1"), v4("10.0.0.2"), 6));
        let pres = [Pre::of(&header(Some((false, 17)), None, None)), Pre::of(&h)];
        assert_eq!(Prefilters::skip(&pres, 0, 1, 2, 6), 1);
        assert_eq!(Prefilters::skip(&pres[..1], 0, 1, 2, 6), 1);
    }

    proptest::proptest! {
        /// On random IPv4 headers and packets, the pre-test rejects exactly what the full header
        /// test rejects (there are no interfaces or fragment flags here).
        #[test]
        fn agrees_with_header_matches(
            proto in proptest::option::of((proptest::bool::ANY, 0u8..20)),
            src in proptest::option::of((proptest::bool::ANY, 0u32..16, 0u8..=32)),
            dst in proptest::option::of((proptest::bool::ANY, 0u32..16, 0u8..=32)),
            pkt in (0u32..16, 0u32..16, 0u8..20),
        ) {
            // Addresses drawn from a few values spread over the whole space.
            let spread = |k: u32| k.wrapping_mul(0x1357_9bdf) ^ (k << 28);
            let net = |(neg, k, len): (bool, u32, u8)| {
                (neg, Net::new(std::net::Ipv4Addr::from(spread(k)).into(), len))
            };
            let h = Header::new(proto, src.map(net), dst.map(net));
            let (s, d, p) = (spread(pkt.0), spread(pkt.1), pkt.2);
            let mut packet = super::super::Packet::tcp(
                std::net::Ipv4Addr::from(s).into(),
                std::net::Ipv4Addr::from(d).into(),
                80,
            );
            packet.proto = p;
            let full = super::super::eval::header_matches(
                &h,
                &packet,
                packet.src,
                packet.dst,
                false,
                super::super::eval::Hook::Prerouting,
            );
            let pres = [Pre::of(&h)];
            proptest::prop_assert_eq!(pres[0].may_match(s, d, p), full);
            proptest::prop_assert_eq!(Prefilters::skip(&pres, 0, s, d, p) == 0, full);
        }
    }

    #[test]
    fn only_chains_of_at_least_min_rules_have_pre_tests() {
        let mut text =
            String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:SHORT - [0:0]\n:LONG - [0:0]\n");
        for i in 0..MIN_RULES - 1 {
            text.push_str(&format!("-A SHORT -d 10.0.0.{i}/32 -j ACCEPT\n"));
        }
        for i in 0..MIN_RULES {
            text.push_str(&format!("-A LONG -d 10.0.1.{i}/32 -j ACCEPT\n"));
        }
        text.push_str("COMMIT\n");
        let rs =
            crate::formats::iptables_save::parse(&text, crate::model::rules::Family::V4).unwrap();
        let tables = super::super::compile::compile(&rs).unwrap();
        let pre = Prefilters::new(&tables);
        let (short, long) = (tables[0].chain("SHORT").unwrap(), tables[0].chain("LONG").unwrap());
        assert!(pre.chain(0, short).is_empty());
        assert_eq!(pre.chain(0, long).len(), MIN_RULES);
        // The long chain's pre-tests are its own rules': a packet to its third address skips two.
        let skip = Prefilters::skip(pre.chain(0, long), 0, v4("10.9.9.9"), v4("10.0.1.2"), 6);
        assert_eq!(skip, 2);
    }

    #[test]
    fn a_chain_s_last_rules_that_every_packet_passes_have_no_pre_tests() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:SVC - [0:0]\n:X - [0:0]\n\
                    -A SVC -d 10.0.0.1/32 -p tcp -j X\n-A SVC -m statistic --mode random \
                    --probability 0.5 -j X\n-A SVC ! -p udp -j X\n-A SVC -j X\n-A SVC -j X\n\
                    COMMIT\n";
        let rs =
            crate::formats::iptables_save::parse(text, crate::model::rules::Family::V4).unwrap();
        let tables = super::super::compile::compile(&rs).unwrap();
        let svc = tables[0].chain("SVC").unwrap();
        let pre = Prefilters::new(&tables);
        // Up to the `! -p udp` rule: the two `-j X` after it have none.
        assert_eq!(pre.chain(0, svc).len(), 3);
        // A TCP packet to another address passes the first rule over and stops at the second.
        assert_eq!(Prefilters::skip(pre.chain(0, svc), 0, 1, v4("10.0.0.2"), 6), 1);
        // A UDP packet to it passes over the third as well, and stops where the pre-tests end.
        assert_eq!(Prefilters::skip(pre.chain(0, svc), 2, 1, v4("10.0.0.1"), 17), 3);
    }
}
