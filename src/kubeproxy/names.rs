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

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

use crate::model::Protocol;

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

fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let mut encoded = data_encoding::BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// The 16-character suffix shared by a service port's SVC, SVL, EXT and FW chains.
pub fn service_port_hash(spn: &str, proto: Protocol) -> String {
    let mut s = String::with_capacity(spn.len() + 4);
    s.push_str(spn);
    s.push_str(proto.as_str());
    hash16(&s)
}

/// `KUBE-SVC-…`: the cluster-policy chain of a service port.
pub fn service_chain(spn: &str, proto: Protocol) -> String {
    format!("{SVC_PREFIX}{}", service_port_hash(spn, proto))
}

/// `KUBE-SVL-…`: the local-policy chain of a service port.
pub fn service_local_chain(spn: &str, proto: Protocol) -> String {
    format!("{SVL_PREFIX}{}", service_port_hash(spn, proto))
}

/// `KUBE-EXT-…`: the external-traffic chain of a service port.
pub fn external_chain(spn: &str, proto: Protocol) -> String {
    format!("{EXT_PREFIX}{}", service_port_hash(spn, proto))
}

/// `KUBE-FW-…`: the load-balancer firewall chain of a service port.
pub fn firewall_chain(spn: &str, proto: Protocol) -> String {
    format!("{FW_PREFIX}{}", service_port_hash(spn, proto))
}

/// `ip:port` as Go's `net.JoinHostPort` writes it (`[v6]:port` for IPv6).
pub fn endpoint_string(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// `KUBE-SEP-…`: the chain of one endpoint of a service port.
pub fn endpoint_chain(spn: &str, proto: Protocol, endpoint: &str) -> String {
    let mut s = String::with_capacity(spn.len() + 4 + endpoint.len());
    s.push_str(spn);
    s.push_str(proto.as_str());
    s.push_str(endpoint);
    format!("{SEP_PREFIX}{}", hash16(&s))
}

/// Whether a chain name is one of kube-proxy's per-service chains.
pub fn is_service_chain(name: &str) -> bool {
    [SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX].iter().any(|p| name.starts_with(p))
}

/// kube-proxy's `computeProbability(n)`: `1/n` with ten decimals (`%0.10f`).
pub fn probability_text(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn probabilities_have_ten_decimals() {
        assert_eq!(probability_text(2), "0.5000000000");
        assert_eq!(probability_text(3), "0.3333333333");
        assert_eq!(probability_text(6), "0.1666666667");
        assert_eq!(probability_text(7), "0.1428571429");
    }
}
