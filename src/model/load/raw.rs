//! The wire shapes: hand-written serde structs for the fields of the Kubernetes objects svcpath
//! reads, as `kubectl get -o yaml|json` prints them.
//!
//! Invariants:
//! - Every field is optional unless the API server always sets it; `null` is accepted wherever
//!   an absent field is (hence `Option<Vec<_>>` rather than `#[serde(default)] Vec<_>`).
//! - Unknown fields are ignored silently: real objects carry `managedFields`, `status`,
//!   annotations and fields of newer API versions.
//! - Checks that concern one value (a port range, an address, an enum) live in a leaf type's
//!   `Deserialize`, so serde_yaml_ng attaches the value's path and line to the error. Checks that
//!   need several fields live in [`super::convert`].
//! - No `Deserialize` here panics or allocates in proportion to anything but its input.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::convert::parse_ip_sloppy;
use crate::model::{IpFamily, IpMode, Protocol};

/// The largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API accepts (one day).
pub(crate) const MAX_AFFINITY_TIMEOUT: u32 = 86400;

/// The longest port name the API accepts (`IANA_SVC_NAME`).
const MAX_PORT_NAME_LEN: usize = 15;

// ---------------------------------------------------------------------------------------------
// Leaf types: one value, checked where it is read.

/// Reads a string and checks it inside the visitor, so the error carries the value's own path
/// and line (an error raised after `String::deserialize` returns would point at the parent).
struct CheckedStr<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for CheckedStr<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
}

/// Reads an integer and checks it inside the visitor (see [`CheckedStr`]).
struct CheckedInt<F>(F);

impl<T, F: FnOnce(i128) -> Result<T, String>> Visitor<'_> for CheckedInt<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.0)(i128::from(v)).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.0)(i128::from(v)).map_err(E::custom)
    }
}

/// A port number 1-65535 (`spec.ports[].port`, legacy `Endpoints` ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortNum(pub u16);

impl<'de> Deserialize<'de> for PortNum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortVisitor { allow_zero: false }).map(|p| PortNum(p.unwrap_or(0)))
    }
}

/// A port number 0-65535 where 0 means "not set" (`nodePort`, `healthCheckNodePort`,
/// EndpointSlice ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptPort(pub Option<u16>);

impl<'de> Deserialize<'de> for OptPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortVisitor { allow_zero: true }).map(OptPort)
    }
}

struct PortVisitor {
    allow_zero: bool,
}

impl PortVisitor {
    fn check<E: de::Error>(&self, v: i128) -> Result<Option<u16>, E> {
        let low = if self.allow_zero { 0 } else { 1 };
        match u16::try_from(v) {
            Ok(0) if self.allow_zero => Ok(None),
            Ok(p) if p >= 1 => Ok(Some(p)),
            _ => Err(E::custom(format_args!("{v} is out of range {low}-65535"))),
        }
    }
}

impl Visitor<'_> for PortVisitor {
    type Value = Option<u16>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number 1-65535")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.check(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.check(i128::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(E::custom(format_args!(
            "expected a port number 1-65535, found the string '{v}' (write it without quotes)"
        )))
    }
}

/// `targetPort`: the API's `IntOrString`. A number 0-65535 or a port name; 0 and `""` mean
/// "unset" (the API server then defaults it to `port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrStr {
    /// A number (0 = unset).
    Int(u16),
    /// A valid port name (`""` = unset).
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrStrVisitor)
    }
}

struct IntOrStrVisitor;

impl IntOrStrVisitor {
    fn int<E: de::Error>(v: i128) -> Result<IntOrStr, E> {
        u16::try_from(v)
            .map(IntOrStr::Int)
            .map_err(|_| E::custom(format_args!("{v} is out of range 1-65535")))
    }
}

impl Visitor<'_> for IntOrStrVisitor {
    type Value = IntOrStr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number or a port name")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrStr, E> {
        Self::int(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrStr, E> {
        Self::int(i128::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrStr, E> {
        if v.is_empty() {
            return Ok(IntOrStr::Str(String::new()));
        }
        if v.bytes().all(|b| b.is_ascii_digit()) {
            // intstr keeps a quoted number as a string, and the API rejects it as a port name.
            return Err(E::custom(format_args!(
                "'{v}' is a quoted number, which the API reads as a port name and rejects: \
                 write {v} without quotes"
            )));
        }
        match port_name_problem(v) {
            None => Ok(IntOrStr::Str(v.to_owned())),
            Some(problem) => {
                Err(E::custom(format_args!("'{v}' is not a valid port name: {problem}")))
            }
        }
    }
}

/// Why `name` is not an `IANA_SVC_NAME` (the API's rule for named ports), or `None`.
pub(crate) fn port_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > MAX_PORT_NAME_LEN {
        return Some("it must be at most 15 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("it may contain only lower-case letters, digits and '-'");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("it must contain at least one letter");
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Some("'-' may not start or end it, nor be doubled");
    }
    None
}

/// A protocol as the API spells it: `TCP`, `UDP` or `SCTP` (case-sensitive, as validation is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proto(pub Protocol);

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CheckedStr(|s: &str| match s {
            "TCP" => Ok(Proto(Protocol::Tcp)),
            "UDP" => Ok(Proto(Protocol::Udp)),
            "SCTP" => Ok(Proto(Protocol::Sctp)),
            other => {
                Err(format!("unsupported protocol '{other}': use TCP, UDP or SCTP (upper case)"))
            }
        }))
    }
}

/// An IP address, parsed as kube-proxy's `ParseIPSloppy` does (IPv4 octets may have leading zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ip(pub IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CheckedStr(|s: &str| {
            parse_ip_sloppy(s).map(Ip).ok_or_else(|| format!("'{s}' is not an IP address"))
        }))
    }
}

/// A value of `spec.clusterIP` / `spec.clusterIPs[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterIp {
    /// `""`: not allocated yet.
    Unset,
    /// `None`: a headless Service.
    Headless,
    /// An address.
    Addr(IpAddr),
}

impl<'de> Deserialize<'de> for ClusterIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CheckedStr(|s: &str| match s {
            "" => Ok(ClusterIp::Unset),
            "None" => Ok(ClusterIp::Headless),
            other => parse_ip_sloppy(other).map(ClusterIp::Addr).ok_or_else(|| {
                format!(
                    "'{other}' is not an IP address (use an address, \"None\" for a headless \
                     Service, or leave it out)"
                )
            }),
        }))
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds`: 1-86400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AffinityTimeout(pub u32);

impl<'de> Deserialize<'de> for AffinityTimeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_i64(CheckedInt(|v: i128| match u32::try_from(v) {
            Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Ok(AffinityTimeout(t)),
            _ => Err(format!("{v} is out of range 1-{MAX_AFFINITY_TIMEOUT} seconds")),
        }))
    }
}

/// `iptables.masqueradeBit`: 0-31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MasqBit(pub u8);

impl<'de> Deserialize<'de> for MasqBit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_i64(CheckedInt(|v: i128| match u8::try_from(v) {
            Ok(b) if b <= 31 => Ok(MasqBit(b)),
            _ => Err(format!("{v} is out of range 0-31")),
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Enumerations, spelled as the API spells them.

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawTrafficPolicy {
    /// `Cluster`, or the legacy spelling `Global` the API once accepted.
    #[serde(alias = "Global")]
    Cluster,
    /// `Local`.
    Local,
}

/// `spec.sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawAffinity {
    None,
    ClientIP,
}

/// `spec.ipFamilies[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawFamily {
    IPv4,
    IPv6,
}

impl From<RawFamily> for IpFamily {
    fn from(f: RawFamily) -> IpFamily {
        match f {
            RawFamily::IPv4 => IpFamily::V4,
            RawFamily::IPv6 => IpFamily::V6,
        }
    }
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawIpMode {
    #[serde(rename = "VIP")]
    Vip,
    Proxy,
}

impl From<RawIpMode> for IpMode {
    fn from(m: RawIpMode) -> IpMode {
        match m {
            RawIpMode::Vip => IpMode::Vip,
            RawIpMode::Proxy => IpMode::Proxy,
        }
    }
}

/// An EndpointSlice's `addressType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawAddressType {
    IPv4,
    IPv6,
    #[serde(rename = "FQDN")]
    Fqdn,
}

// ---------------------------------------------------------------------------------------------
// Objects.

/// The part of `metadata` svcpath uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Meta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// The first pass's view of one document: enough to name it and choose its shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, expecting = "a Kubernetes object (a mapping with apiVersion and kind)")]
pub(crate) struct Header {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Meta>,
    pub items: Option<Vec<Option<ItemHeader>>>,
}

/// The first pass's view of one entry of a List's `items`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, expecting = "a Kubernetes object (a mapping with apiVersion and kind)")]
pub(crate) struct ItemHeader {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: Option<Meta>,
}

/// A v1 Service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawService {
    pub metadata: Option<Meta>,
    pub spec: Option<RawServiceSpec>,
    pub status: Option<RawServiceStatus>,
}

/// A Service's `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawServiceSpec {
    #[serde(rename = "type")]
    pub service_type: Option<RawServiceType>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<ClusterIp>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<ClusterIp>>,
    pub ports: Option<Vec<RawServicePort>>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Vec<String>>,
    pub load_balancer_source_ranges: Option<Vec<String>>,
    pub session_affinity: Option<RawAffinity>,
    pub session_affinity_config: Option<RawAffinityConfig>,
    pub external_traffic_policy: Option<RawTrafficPolicy>,
    pub internal_traffic_policy: Option<RawTrafficPolicy>,
    pub health_check_node_port: Option<OptPort>,
    pub ip_families: Option<Vec<RawFamily>>,
}

/// `spec.ports[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawServicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<Proto>,
    pub port: PortNum,
    #[serde(default)]
    pub target_port: Option<IntOrStr>,
    #[serde(default)]
    pub node_port: Option<OptPort>,
}

/// `spec.sessionAffinityConfig`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<RawClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawClientIpConfig {
    pub timeout_seconds: Option<AffinityTimeout>,
}

/// A Service's `status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawServiceStatus {
    pub load_balancer: Option<RawLoadBalancerStatus>,
}

/// `status.loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawLoadBalancerStatus {
    pub ingress: Option<Vec<RawIngress>>,
}

/// `status.loadBalancer.ingress[]` (entries with only a `hostname` have no `ip`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawIngress {
    pub ip: Option<Ip>,
    pub ip_mode: Option<RawIpMode>,
}

/// A discovery.k8s.io EndpointSlice (v1, and v1beta1's `topology` for node and zone).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawEndpointSlice {
    pub metadata: Option<Meta>,
    pub address_type: Option<RawAddressType>,
    pub endpoints: Option<Vec<RawEndpoint>>,
    pub ports: Option<Vec<RawEndpointPort>>,
}

/// `endpoints[]` of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawEndpoint {
    pub addresses: Option<Vec<String>>,
    pub conditions: Option<RawConditions>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// v1beta1 only: `kubernetes.io/hostname` and `topology.kubernetes.io/zone`.
    pub topology: Option<BTreeMap<String, String>>,
    pub hints: Option<RawHints>,
}

/// `endpoints[].hints`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawHints {
    pub for_zones: Option<Vec<RawHintName>>,
    pub for_nodes: Option<Vec<RawHintName>>,
}

/// `hints.forZones[]` / `hints.forNodes[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawHintName {
    pub name: Option<String>,
}

/// `endpoints[].conditions`: three optional booleans.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// `ports[]` of an EndpointSlice.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawEndpointPort {
    pub name: Option<String>,
    pub port: Option<OptPort>,
    pub protocol: Option<Proto>,
}

/// A legacy v1 Endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawEndpoints {
    pub metadata: Option<Meta>,
    pub subsets: Option<Vec<RawSubset>>,
}

/// `subsets[]` of an Endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawSubset {
    pub addresses: Option<Vec<RawEndpointAddress>>,
    pub not_ready_addresses: Option<Vec<RawEndpointAddress>>,
    pub ports: Option<Vec<RawLegacyPort>>,
}

/// `subsets[].addresses[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawEndpointAddress {
    pub ip: Ip,
    #[serde(default)]
    pub node_name: Option<String>,
}

/// `subsets[].ports[]`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawLegacyPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: PortNum,
    #[serde(default)]
    pub protocol: Option<Proto>,
}

/// A networking.k8s.io/v1 ServiceCIDR.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawServiceCidr {
    pub spec: Option<RawServiceCidrSpec>,
}

/// A ServiceCIDR's `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawServiceCidrSpec {
    pub cidrs: Option<Vec<String>>,
}

/// A v1 Node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawNode {
    pub metadata: Option<Meta>,
    pub spec: Option<RawNodeSpec>,
    pub status: Option<RawNodeStatus>,
}

/// A Node's `spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawNodeSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

/// A Node's `status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawNodeStatus {
    pub addresses: Option<Vec<RawNodeAddress>>,
}

/// `status.addresses[]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawNodeAddress {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub address: Option<String>,
}

/// A v1 ConfigMap (only `data`, for kubeadm's `kube-system/kube-proxy`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConfigMap {
    pub metadata: Option<Meta>,
    pub data: Option<BTreeMap<String, String>>,
}

/// A kubeproxy.config.k8s.io KubeProxyConfiguration (v1alpha1, and v1alpha2's
/// `detectLocal.clusterCIDRs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawProxyConfig {
    pub hostname_override: Option<String>,
    pub mode: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<RawDetectLocal>,
    pub iptables: Option<RawIptablesConfig>,
    pub nftables: Option<RawNftablesConfig>,
    pub node_port_addresses: Option<Vec<String>>,
    pub ipvs: Option<RawIpvsConfig>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawDetectLocal {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Option<Vec<String>>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawNftablesConfig {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<MasqBit>,
}

/// `iptables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct RawIptablesConfig {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<MasqBit>,
    pub localhost_node_ports: Option<bool>,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawIpvsConfig {
    pub scheduler: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, String> {
        serde_yaml_ng::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn port_rejects_zero_and_out_of_range_and_quoted() {
        assert_eq!(yaml::<PortNum>("80"), Ok(PortNum(80)));
        assert!(yaml::<PortNum>("0").unwrap_err().contains("0 is out of range 1-65535"));
        assert!(yaml::<PortNum>("70000").unwrap_err().contains("70000 is out of range 1-65535"));
        assert!(yaml::<PortNum>("-1").unwrap_err().contains("-1 is out of range"));
        assert!(yaml::<PortNum>("'80'").unwrap_err().contains("without quotes"));
    }

    #[test]
    fn opt_port_reads_zero_as_unset() {
        assert_eq!(yaml::<OptPort>("0"), Ok(OptPort(None)));
        assert_eq!(yaml::<OptPort>("30080"), Ok(OptPort(Some(30080))));
        assert!(yaml::<OptPort>("65536").unwrap_err().contains("out of range 0-65535"));
    }

    #[test]
    fn target_port_is_intstr() {
        assert_eq!(yaml::<IntOrStr>("8080"), Ok(IntOrStr::Int(8080)));
        assert_eq!(yaml::<IntOrStr>("http-alt"), Ok(IntOrStr::Str("http-alt".into())));
        assert_eq!(yaml::<IntOrStr>("''"), Ok(IntOrStr::Str(String::new())));
        assert!(yaml::<IntOrStr>("'8080'").unwrap_err().contains("write 8080 without quotes"));
        assert!(yaml::<IntOrStr>("Http").unwrap_err().contains("lower-case"));
        assert!(yaml::<IntOrStr>("a-very-long-port-name").unwrap_err().contains("15"));
    }

    #[test]
    fn port_name_rules_follow_iana_svc_name() {
        assert_eq!(port_name_problem("http"), None);
        assert_eq!(port_name_problem("h2c-8080"), None);
        assert!(port_name_problem("123").is_some());
        assert!(port_name_problem("-http").is_some());
        assert!(port_name_problem("ht--tp").is_some());
    }

    #[test]
    fn protocol_is_case_sensitive_like_the_api() {
        assert_eq!(yaml::<Proto>("UDP"), Ok(Proto(Protocol::Udp)));
        assert!(yaml::<Proto>("tcp").unwrap_err().contains("unsupported protocol 'tcp'"));
    }

    #[test]
    fn cluster_ip_values() {
        assert_eq!(yaml::<ClusterIp>("None"), Ok(ClusterIp::Headless));
        assert_eq!(yaml::<ClusterIp>("''"), Ok(ClusterIp::Unset));
        assert_eq!(
            yaml::<ClusterIp>("10.96.0.010"),
            Ok(ClusterIp::Addr("10.96.0.10".parse().unwrap()))
        );
        assert!(yaml::<ClusterIp>("10.96.0.300").unwrap_err().contains("'10.96.0.300'"));
    }

    #[test]
    fn traffic_policy_accepts_legacy_global() {
        assert_eq!(yaml::<RawTrafficPolicy>("Global"), Ok(RawTrafficPolicy::Cluster));
        assert!(yaml::<RawTrafficPolicy>("Nearest").is_err());
    }

    #[test]
    fn affinity_timeout_and_masquerade_bit_ranges() {
        assert_eq!(yaml::<AffinityTimeout>("86400"), Ok(AffinityTimeout(86400)));
        assert!(yaml::<AffinityTimeout>("86401").unwrap_err().contains("1-86400"));
        assert!(yaml::<AffinityTimeout>("0").is_err());
        assert_eq!(yaml::<MasqBit>("31"), Ok(MasqBit(31)));
        assert!(yaml::<MasqBit>("32").unwrap_err().contains("0-31"));
    }
}
