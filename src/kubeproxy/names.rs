//! Chain names and fixed values kube-proxy uses. Every derived name is built by exactly one
//! function here.
//!
//! kube-proxy names a service port's chains `PREFIX + base32(sha256(SPN + proto))[..16]` and an
//! endpoint's chain `KUBE-SEP- + base32(sha256(SPN + proto + ip:port))[..16]`, where SPN is
//! `namespace/name[:port]` and proto is lower case (pkg/proxy/iptables/proxier.go, `portProtoHash`,
//! `servicePortEndpointChainName`).
//!
//! ```
//! use svcpath::kubeproxy::names::service_chain;
//! use svcpath::model::Protocol;
//! assert_eq!(service_chain("default/kubernetes:https", Protocol::Tcp), "KUBE-SVC-NPX46M4PTMTKRN6Y");
//! ```

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::model::Protocol;
use crate::model::rules::Name;

/// nat and filter: the service dispatch chain.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// filter: rejects for external entry points without endpoints.
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter: forwarding accept rules.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// nat and filter: NodePort dispatch and health-check accepts.
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// filter: load-balancer source-range drops.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: the localnet guard (shared with kubelet).
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// nat: masquerades marked traffic.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";

/// Prefix of a service port's cluster-policy chain.
pub const SVC_PREFIX: &str = "KUBE-SVC-";
/// Prefix of a service port's local-policy chain.
pub const SVL_PREFIX: &str = "KUBE-SVL-";
/// Prefix of a service port's external-traffic chain.
pub const EXT_PREFIX: &str = "KUBE-EXT-";
/// Prefix of a service port's load-balancer firewall chain.
pub const FW_PREFIX: &str = "KUBE-FW-";
/// Prefix of an endpoint's chain.
pub const SEP_PREFIX: &str = "KUBE-SEP-";

/// The threshold above which kube-proxy drops per-endpoint comments (`largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The nfacct counter on KUBE-FORWARD's INVALID drop.
pub const NFACCT_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// The nfacct counter on localhost NodePort accepts.
pub const NFACCT_LOCALHOST_NODEPORTS: &str = "localhost_nps_accepted_pkts";

/// The first 16 characters of `base32(sha256(parts concatenated))`: base32 turns each 5 bytes
/// into 8 characters, so they come from the first 10 bytes of the digest.
fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut digest = [0u8; 10];
    if len <= ONE_BLOCK {
        // The padded message is one block: compressed once, without the hasher's buffering
        // (service port names and endpoints are this short, and a sync hashes one per endpoint).
        let mut block = [0u8; 64];
        let mut at = 0;
        for p in parts {
            block[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        // FIPS 180-4, 5.1.1: a 1 bit, zeros, then the length in bits as 64 bits big-endian.
        block[at] = 0x80;
        block[56..].copy_from_slice(&(len as u64 * 8).to_be_bytes());
        let mut state = SHA256_H0;
        sha2::block_api::compress256(&mut state, std::slice::from_ref(&block));
        let mut first = [0u8; 12];
        for (out, word) in first.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest.copy_from_slice(&first[..10]);
    } else {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        digest.copy_from_slice(&h.finalize()[..10]);
    }
    base32_16(&digest)
}

/// RFC 4648 base32 (upper case, no padding) of 10 bytes: 16 characters, 5 bits each.
fn base32_16(bytes: &[u8; 10]) -> [u8; 16] {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = [0u8; 16];
    for (group, chars) in bytes.chunks_exact(5).zip(out.chunks_exact_mut(8)) {
        let bits = group.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        for (k, c) in chars.iter_mut().enumerate() {
            *c = ALPHABET[(bits >> (35 - 5 * k)) as usize & 31];
        }
    }
    out
}

/// The longest message whose padding fits one SHA-256 block (64 bytes less the 0x80 byte and
/// the 8-byte length).
const ONE_BLOCK: usize = 55;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// nftables mode's chain-name base (`hashAndTruncate` in pkg/proxy/nftables/proxier.go): the
/// first 8 characters of `base32(sha256(name))`, `-`, then `name`, cut to 240 characters (the
/// last three `...`) if longer.
///
/// ```
/// use svcpath::kubeproxy::names::nft_chain_base;
/// assert_eq!(nft_chain_base("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
/// // An IPv6 endpoint's name can pass 240 characters; it is cut and ends in `...`.
/// let long = format!("{}/{}/tcp/{}__{}/65535", "n".repeat(63), "s".repeat(63), "p".repeat(63),
///     "fd00.0.0.0.0.0.0.1234.5678.9abc.def0.1234.5678.9abc.def0");
/// let base = nft_chain_base(&long);
/// assert_eq!(base.len(), 240);
/// assert!(base.ends_with("..."));
/// ```
pub fn nft_chain_base(name: &str) -> String {
    const BASE_MAX: usize = 256 - 16;
    let digest = Sha256::digest(name.as_bytes());
    let mut hash = [b'A'; 8];
    data_encoding::BASE32.encode_mut(&digest[..5], &mut hash);
    let mut out = String::with_capacity(9 + name.len());
    out.push_str(std::str::from_utf8(&hash).unwrap_or_default());
    out.push('-');
    out.push_str(name);
    if out.len() > BASE_MAX {
        // Every byte is ASCII (namespace, name, port name, protocol, address, port).
        let mut cut = BASE_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// `prefix` followed by a 16-character hash.
fn chain_name(prefix: &str, hash: &[u8; 16]) -> Name {
    let mut buf = [0u8; 32];
    let n = prefix.len().min(16);
    buf[..n].copy_from_slice(&prefix.as_bytes()[..n]);
    buf[n..n + 16].copy_from_slice(hash);
    // Both parts are ASCII.
    Name::new(std::str::from_utf8(&buf[..n + 16]).unwrap_or_default())
}

fn port_hash(spn: &str, proto: Protocol) -> [u8; 16] {
    hash16(&[spn.as_bytes(), proto.as_str().as_bytes()])
}

/// The 16-character suffix shared by a service port's SVC, SVL, EXT and FW chains.
pub fn service_port_hash(spn: &str, proto: Protocol) -> String {
    String::from_utf8_lossy(&port_hash(spn, proto)).into_owned()
}

/// `KUBE-SVC-…`: the cluster-policy chain of a service port.
pub fn service_chain(spn: &str, proto: Protocol) -> Name {
    chain_name(SVC_PREFIX, &port_hash(spn, proto))
}

/// `KUBE-SVL-…`: the local-policy chain of a service port.
pub fn service_local_chain(spn: &str, proto: Protocol) -> Name {
    chain_name(SVL_PREFIX, &port_hash(spn, proto))
}

/// `KUBE-EXT-…`: the external-traffic chain of a service port.
pub fn external_chain(spn: &str, proto: Protocol) -> Name {
    chain_name(EXT_PREFIX, &port_hash(spn, proto))
}

/// `KUBE-FW-…`: the load-balancer firewall chain of a service port.
pub fn firewall_chain(spn: &str, proto: Protocol) -> Name {
    chain_name(FW_PREFIX, &port_hash(spn, proto))
}

/// The four chains of one service port (SVC, SVL, EXT, FW), hashing its name once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChains {
    /// `KUBE-SVC-…` ([`service_chain`]).
    pub svc: Name,
    /// `KUBE-SVL-…` ([`service_local_chain`]).
    pub svl: Name,
    /// `KUBE-EXT-…` ([`external_chain`]).
    pub ext: Name,
    /// `KUBE-FW-…` ([`firewall_chain`]).
    pub fw: Name,
}

/// [`service_chain`], [`service_local_chain`], [`external_chain`] and [`firewall_chain`] at once.
pub fn port_chains(spn: &str, proto: Protocol) -> PortChains {
    let h = port_hash(spn, proto);
    PortChains {
        svc: chain_name(SVC_PREFIX, &h),
        svl: chain_name(SVL_PREFIX, &h),
        ext: chain_name(EXT_PREFIX, &h),
        fw: chain_name(FW_PREFIX, &h),
    }
}

/// The chains of one service port, each named on first use from one hash of the port's name
/// (most service ports never use their SVL, EXT or FW chain).
#[derive(Debug)]
pub struct LazyPortChains {
    hash: [u8; 16],
    svc: OnceCell<Name>,
    svl: OnceCell<Name>,
    ext: OnceCell<Name>,
    fw: OnceCell<Name>,
}

impl LazyPortChains {
    /// Hashes the service port name once.
    pub fn new(spn: &str, proto: Protocol) -> LazyPortChains {
        LazyPortChains {
            hash: port_hash(spn, proto),
            svc: OnceCell::new(),
            svl: OnceCell::new(),
            ext: OnceCell::new(),
            fw: OnceCell::new(),
        }
    }

    /// [`service_chain`].
    pub fn svc(&self) -> &Name {
        self.svc.get_or_init(|| chain_name(SVC_PREFIX, &self.hash))
    }

    /// [`service_local_chain`].
    pub fn svl(&self) -> &Name {
        self.svl.get_or_init(|| chain_name(SVL_PREFIX, &self.hash))
    }

    /// [`external_chain`].
    pub fn ext(&self) -> &Name {
        self.ext.get_or_init(|| chain_name(EXT_PREFIX, &self.hash))
    }

    /// [`firewall_chain`].
    pub fn fw(&self) -> &Name {
        self.fw.get_or_init(|| chain_name(FW_PREFIX, &self.hash))
    }
}

/// `ip:port` as Go's `net.JoinHostPort` writes it (`[v6]:port` for IPv6).
pub fn endpoint_string(ip: IpAddr, port: u16) -> Name {
    match ip {
        IpAddr::V4(v4) => {
            // At most 21 bytes (`255.255.255.255:65535`), written by hand into a buffer (one
            // per endpoint per sync): each octet is one fixed-size copy from a table, where
            // copying a formatted number's few bytes would cost a `memcpy` call each.
            let mut buf = [0u8; 24];
            let mut n = 0;
            for octet in v4.octets() {
                let (text, len) = OCTET_DOT[usize::from(octet)];
                buf[n..n + 4].copy_from_slice(&text);
                n += usize::from(len);
            }
            // The last octet's dot becomes the colon.
            buf[n - 1] = b':';
            let digits = match port {
                0..10 => 1,
                10..100 => 2,
                100..1000 => 3,
                1000..10000 => 4,
                _ => 5,
            };
            let mut rest = port;
            for at in (n..n + digits).rev() {
                buf[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            // Digits, dots and a colon: ASCII.
            Name::new(std::str::from_utf8(&buf[..n + digits]).unwrap_or_default())
        }
        IpAddr::V6(_) => Name::new(SocketAddr::new(ip, port).to_string()),
    }
}

/// Each octet's decimal digits and a dot, padded to four bytes, and how many bytes count.
static OCTET_DOT: [([u8; 4], u8); 256] = octet_dot();

const fn octet_dot() -> [([u8; 4], u8); 256] {
    let mut table = [([0; 4], 0); 256];
    let mut x = 0;
    while x < 256 {
        let (h, t, o) = (b'0' + (x / 100) as u8, b'0' + (x / 10 % 10) as u8, b'0' + (x % 10) as u8);
        table[x] = match x {
            0..10 => ([o, b'.', 0, 0], 2),
            10..100 => ([t, o, b'.', 0], 3),
            _ => ([h, t, o, b'.'], 4),
        };
        x += 1;
    }
    table
}

/// `KUBE-SEP-…`: the chain of one endpoint of a service port.
pub fn endpoint_chain(spn: &str, proto: Protocol, endpoint: &str) -> Name {
    chain_name(
        SEP_PREFIX,
        &hash16(&[spn.as_bytes(), proto.as_str().as_bytes(), endpoint.as_bytes()]),
    )
}

/// Whether a chain name is one of kube-proxy's per-service chains.
pub fn is_service_chain(name: &str) -> bool {
    [SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX].iter().any(|p| name.starts_with(p))
}

/// kube-proxy's `computeProbability(n)`: `1/n` with ten decimals (`%0.10f`).
pub fn probability_text(n: usize) -> Cow<'static, str> {
    /// Cascades up to this length (every real Service) reuse texts formatted once.
    const CACHED: usize = 1024;
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    let format = |n: usize| format!("{:.10}", 1.0 / n as f64);
    if n < CACHED {
        let texts = TEXTS.get_or_init(|| (0..CACHED).map(format).collect());
        if let Some(t) = texts.get(n) {
            return Cow::Borrowed(t);
        }
    }
    Cow::Owned(format(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash16_of_one_block_or_more_is_sha256_base32() {
        // Every length up to and past one block, split into parts at different places.
        let text: Vec<u8> = (0..130u8).map(|i| b'0' + i % 75).collect();
        for len in 0..text.len() {
            let msg = &text[..len];
            let digest = Sha256::digest(msg);
            let mut want = [b'A'; 16];
            data_encoding::BASE32.encode_mut(&digest[..10], &mut want);
            let (a, rest) = msg.split_at(len / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            assert_eq!(hash16(&[a, b, c]), want, "{len} bytes");
            assert_eq!(hash16(&[msg]), want, "{len} bytes in one part");
        }
    }

    #[test]
    fn chain_hashes_match_kube_proxy_test_data() {
        // TestOverallIPTablesRules: ns1/svc1:p80 and its endpoint 10.180.0.1:80.
        assert_eq!(service_chain("ns1/svc1:p80", Protocol::Tcp), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            endpoint_chain("ns5/svc5:p80", Protocol::Tcp, "10.180.0.3:80"),
            "KUBE-SEP-I77PXRDZVX7PMWMN"
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint_string("fd00::1".parse().unwrap(), 80), "[fd00::1]:80");
        assert_eq!(endpoint_string("10.180.0.1".parse().unwrap(), 80), "10.180.0.1:80");
        assert_eq!(endpoint_string("255.0.10.9".parse().unwrap(), 65535), "255.0.10.9:65535");
        assert_eq!(endpoint_string("0.0.0.0".parse().unwrap(), 0), "0.0.0.0:0");
    }

    #[test]
    fn endpoint_strings_spell_every_octet_and_port_length_as_go_does() {
        let ports = [0, 9, 10, 99, 100, 999, 1000, 8080, 9999, 10000, 65535];
        for x in 0..=255u8 {
            for (k, &port) in ports.iter().enumerate() {
                let ip = std::net::Ipv4Addr::new(x, 255 - x, x / 3, (x ^ k as u8).wrapping_mul(7));
                let want = SocketAddr::new(ip.into(), port).to_string();
                assert_eq!(endpoint_string(ip.into(), port), want.as_str());
            }
        }
    }

    #[test]
    fn port_chains_agree_with_the_single_name_functions() {
        let c = port_chains("ns1/svc1:p80", Protocol::Udp);
        assert_eq!(c.svc, service_chain("ns1/svc1:p80", Protocol::Udp));
        assert_eq!(c.svl, service_local_chain("ns1/svc1:p80", Protocol::Udp));
        assert_eq!(c.ext, external_chain("ns1/svc1:p80", Protocol::Udp));
        assert_eq!(c.fw, firewall_chain("ns1/svc1:p80", Protocol::Udp));
        assert_eq!(&c.fw[..8], "KUBE-FW-");
        assert_eq!(c.fw.len(), 24);
        assert_eq!(service_port_hash("ns1/svc1:p80", Protocol::Tcp), "XPGD46QRK7WJZT7O");
        let lazy = LazyPortChains::new("ns1/svc1:p80", Protocol::Udp);
        assert_eq!((lazy.fw(), lazy.ext()), (&c.fw, &c.ext));
        assert_eq!((lazy.svl(), lazy.svc()), (&c.svl, &c.svc));
    }

    #[test]
    fn probabilities_have_ten_decimals() {
        assert_eq!(probability_text(2), "0.5000000000");
        assert_eq!(probability_text(3), "0.3333333333");
        assert_eq!(probability_text(6), "0.1666666667");
        assert_eq!(probability_text(7), "0.1428571429");
        assert_eq!(probability_text(1), "1.0000000000");
        assert_eq!(probability_text(4096), "0.0002441406");
    }
}
