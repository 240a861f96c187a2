//! Typed IPVS and ipset state: what `ipvsadm -Sn` and `ipset save` describe.
//!
//! These are plain values shared by kube-proxy's IPVS renderer ([`crate::kubeproxy::ipvs`]), the
//! text formats ([`crate::formats::ipvsadm`], [`crate::formats::ipset`]) and the dataplane
//! (the `-m set` match and the IPVS trace). Nothing here talks to a kernel.
//!
//! Invariants:
//! - a [`VirtualServer`] is keyed by protocol, address and port, or by firewall mark
//!   ([`VsKey`]); its [`RealServer`]s are kept in the order given (the kernel's list order is
//!   newest first; `ipvsadm` sorts by address when printing);
//! - an [`IpSetEntry`]'s [`Member`] has the shape its set's [`SetType`] requires; the
//!   constructors in the formats layer refuse anything else;
//! - every value renders to the text its tool prints (`Member` as `10.96.0.10,tcp:80`,
//!   [`Forward`] as `-m`/`Masq`), and the formats layer parses that text back to an equal value.
//!
//! ```
//! use svcpath::model::ipvs::{Member, SetType};
//! use svcpath::model::Protocol;
//! let m = Member::IpPort { ip: "10.96.0.10".parse().unwrap(), proto: Protocol::Tcp, port: 80 };
//! assert_eq!(m.to_string(), "10.96.0.10,tcp:80");
//! assert_eq!(Member::parse(SetType::HashIpPort, "10.96.0.10,tcp:80"), Ok(m));
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::cluster::Protocol;

/// How IPVS forwards to a real server (`IP_VS_CONN_F_FWD_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// NAT (`-m`, `Masq`): what kube-proxy always uses.
    Masq,
    /// Local node (`Local`); `ipvsadm -S` prints it as `-g`.
    Local,
    /// IP-in-IP tunnel (`-i`, `Tunnel`).
    Tunnel,
    /// Direct routing (`-g`, `Route`).
    Route,
}

impl Forward {
    /// The switch `ipvsadm -S` writes (`fwd_switch`): `-m`, `-i` or `-g`.
    pub fn switch(self) -> &'static str {
        match self {
            Forward::Masq => "-m",
            Forward::Tunnel => "-i",
            Forward::Local | Forward::Route => "-g",
        }
    }

    /// The name `ipvsadm -L` prints (`fwd_name`).
    pub fn name(self) -> &'static str {
        match self {
            Forward::Masq => "Masq",
            Forward::Local => "Local",
            Forward::Tunnel => "Tunnel",
            Forward::Route => "Route",
        }
    }
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VsKey {
    /// `-t|-u|--sctp-service ADDR:PORT`.
    Addr {
        /// The protocol.
        proto: Protocol,
        /// The virtual address and port.
        addr: SocketAddr,
    },
    /// `-f MARK [-6]`.
    Fwmark {
        /// The firewall mark.
        mark: u32,
        /// IPv6 (`-6`).
        v6: bool,
    },
}

impl VsKey {
    /// Whether the service is IPv6.
    pub fn is_v6(&self) -> bool {
        match self {
            VsKey::Addr { addr, .. } => addr.is_ipv6(),
            VsKey::Fwmark { v6, .. } => *v6,
        }
    }

    /// The sort key `ipvsadm` uses (`ipvs_cmp_services`): mark, family, protocol, address, port.
    pub fn sort_key(&self) -> (u32, bool, u8, IpAddr, u16) {
        match self {
            VsKey::Addr { proto, addr } => {
                (0, addr.is_ipv6(), proto.number(), addr.ip(), addr.port())
            }
            VsKey::Fwmark { mark, v6 } => (*mark, *v6, 0, IpAddr::from([0, 0, 0, 0]), 0),
        }
    }
}

/// `-p TIMEOUT [-M NETMASK]`: persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PersistenceSpec {
    /// Seconds.
    pub timeout: u32,
    /// The client prefix length the template keys on (32 / 128 when `-M` is absent).
    pub prefix_len: u8,
}

/// One real server (destination) of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RealServer {
    /// Address and port.
    pub addr: SocketAddr,
    /// Weight (`-w`); 0 quiesces it.
    pub weight: u32,
    /// The forwarding method.
    pub forward: Forward,
    /// Upper connection threshold (`-x`), 0 = none.
    pub u_threshold: u32,
    /// Lower connection threshold (`-y`), 0 = none.
    pub l_threshold: u32,
    /// Active connections (from a `-L` listing; 0 when generated).
    pub active: u32,
    /// Inactive connections (from a `-L` listing; 0 when generated).
    pub inactive: u32,
}

impl RealServer {
    /// A NAT destination with a weight, as kube-proxy adds it.
    pub fn masq(addr: SocketAddr, weight: u32) -> RealServer {
        RealServer {
            addr,
            weight,
            forward: Forward::Masq,
            u_threshold: 0,
            l_threshold: 0,
            active: 0,
            inactive: 0,
        }
    }
}

/// One virtual service with its real servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct VirtualServer {
    /// Protocol/address/port or firewall mark.
    pub key: VsKey,
    /// The scheduler name (`rr`, `wrr`, `sh`, …).
    pub scheduler: String,
    /// Scheduler flags as `ipvsadm -b` names them (`sh-port`, `flag-1`, …).
    pub sched_flags: Vec<String>,
    /// Persistence, if set.
    pub persistence: Option<PersistenceSpec>,
    /// One-packet scheduling (`-o`).
    pub ops: bool,
    /// Persistence engine (`--pe NAME`).
    pub pe: Option<String>,
    /// Destinations in the order given.
    pub real_servers: Vec<RealServer>,
}

impl VirtualServer {
    /// A service with a scheduler and no destinations.
    pub fn new(key: VsKey, scheduler: &str) -> VirtualServer {
        VirtualServer {
            key,
            scheduler: scheduler.to_owned(),
            sched_flags: Vec::new(),
            persistence: None,
            ops: false,
            pe: None,
            real_servers: Vec::new(),
        }
    }
}

/// The whole IPVS table of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct IpvsTable {
    /// The virtual services, in the order given.
    pub services: Vec<VirtualServer>,
}

impl IpvsTable {
    /// The services sorted as `ipvsadm` prints them, each with its destinations sorted by
    /// address and port (`ipvs_sort_services`, `ipvs_sort_dests`).
    pub fn sorted(&self) -> IpvsTable {
        let mut services = self.services.clone();
        services.sort_by_key(|s| s.key.sort_key());
        for s in &mut services {
            s.real_servers.sort_by_key(|r| (r.addr.ip(), r.addr.port()));
        }
        IpvsTable { services }
    }

    /// The service for a protocol, address and port, if any.
    pub fn find(&self, proto: Protocol, addr: SocketAddr) -> Option<&VirtualServer> {
        self.services.iter().find(|s| s.key == VsKey::Addr { proto, addr })
    }
}

/// The ipset types svcpath understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SetType {
    /// `hash:ip`.
    HashIp,
    /// `hash:ip,port`.
    HashIpPort,
    /// `hash:ip,port,ip`.
    HashIpPortIp,
    /// `hash:ip,port,net`.
    HashIpPortNet,
    /// `hash:net`.
    HashNet,
    /// `bitmap:port`.
    BitmapPort,
}

impl SetType {
    /// The name `ipset` uses.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::HashNet => "hash:net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<SetType> {
        [
            SetType::HashIp,
            SetType::HashIpPort,
            SetType::HashIpPortIp,
            SetType::HashIpPortNet,
            SetType::HashNet,
            SetType::BitmapPort,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }

    /// How many dimensions a `--match-set` direction list may name.
    pub fn dimensions(self) -> usize {
        match self {
            SetType::HashIp | SetType::HashNet | SetType::BitmapPort => 1,
            SetType::HashIpPort => 2,
            SetType::HashIpPortIp | SetType::HashIpPortNet => 3,
        }
    }

    /// Whether the type takes a `family` option.
    pub fn is_hash(self) -> bool {
        !matches!(self, SetType::BitmapPort)
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One member of a set, shaped by the set's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Member {
    /// `hash:ip`: an address.
    Ip {
        /// The address.
        ip: IpAddr,
    },
    /// `hash:ip,port`: `IP,PROTO:PORT`.
    IpPort {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        proto: Protocol,
        /// The port.
        port: u16,
    },
    /// `hash:ip,port,ip`: `IP,PROTO:PORT,IP2`.
    IpPortIp {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        proto: Protocol,
        /// The port.
        port: u16,
        /// The second address.
        ip2: IpAddr,
    },
    /// `hash:ip,port,net`: `IP,PROTO:PORT,NET`.
    IpPortNet {
        /// The address.
        ip: IpAddr,
        /// The protocol.
        proto: Protocol,
        /// The port.
        port: u16,
        /// The network.
        net: IpNetwork,
    },
    /// `hash:net`: a network.
    Net {
        /// The network.
        net: IpNetwork,
    },
    /// `bitmap:port`: a port.
    Port {
        /// The port.
        port: u16,
    },
}

/// Why a member's text does not fit its set type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a {set_type} member (expected {expected})")]
pub struct MemberError {
    /// The text.
    pub text: String,
    /// The set type.
    pub set_type: &'static str,
    /// What the type wants.
    pub expected: &'static str,
}

fn net_text(net: &IpNetwork) -> String {
    let full = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() == full {
        net.ip().to_string()
    } else {
        format!("{}/{}", net.ip(), net.prefix())
    }
}

fn parse_net(s: &str) -> Option<IpNetwork> {
    let n: IpNetwork = s.parse().ok()?;
    IpNetwork::new(n.network(), n.prefix()).ok()
}

impl Member {
    /// The shape `ipset` wants for a set type, for hints.
    pub fn expected(t: SetType) -> &'static str {
        match t {
            SetType::HashIp => "IP",
            SetType::HashIpPort => "IP,PROTO:PORT",
            SetType::HashIpPortIp => "IP,PROTO:PORT,IP",
            SetType::HashIpPortNet => "IP,PROTO:PORT,NET",
            SetType::HashNet => "NET",
            SetType::BitmapPort => "PORT",
        }
    }

    /// Parses a member as `ipset save` prints it for a set of type `t`.
    ///
    /// # Errors
    /// [`MemberError`] when the text has the wrong shape.
    pub fn parse(t: SetType, text: &str) -> Result<Member, MemberError> {
        let err = || MemberError {
            text: text.to_owned(),
            set_type: t.name(),
            expected: Member::expected(t),
        };
        let proto_port = |s: &str| -> Option<(Protocol, u16)> {
            let (p, port) = s.split_once(':')?;
            let proto = match p {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return None,
            };
            Some((proto, port.parse().ok()?))
        };
        let parts: Vec<&str> = text.split(',').collect();
        let m = match (t, parts.as_slice()) {
            (SetType::HashIp, [ip]) => Member::Ip { ip: ip.parse().map_err(|_| err())? },
            (SetType::HashNet, [net]) => Member::Net { net: parse_net(net).ok_or_else(err)? },
            (SetType::BitmapPort, [port]) => {
                Member::Port { port: port.parse().map_err(|_| err())? }
            }
            (SetType::HashIpPort, [ip, pp]) => {
                let (proto, port) = proto_port(pp).ok_or_else(err)?;
                Member::IpPort { ip: ip.parse().map_err(|_| err())?, proto, port }
            }
            (SetType::HashIpPortIp, [ip, pp, ip2]) => {
                let (proto, port) = proto_port(pp).ok_or_else(err)?;
                Member::IpPortIp {
                    ip: ip.parse().map_err(|_| err())?,
                    proto,
                    port,
                    ip2: ip2.parse().map_err(|_| err())?,
                }
            }
            (SetType::HashIpPortNet, [ip, pp, net]) => {
                let (proto, port) = proto_port(pp).ok_or_else(err)?;
                Member::IpPortNet {
                    ip: ip.parse().map_err(|_| err())?,
                    proto,
                    port,
                    net: parse_net(net).ok_or_else(err)?,
                }
            }
            _ => return Err(err()),
        };
        Ok(m)
    }

    /// The set type this member belongs to.
    pub fn set_type(&self) -> SetType {
        match self {
            Member::Ip { .. } => SetType::HashIp,
            Member::IpPort { .. } => SetType::HashIpPort,
            Member::IpPortIp { .. } => SetType::HashIpPortIp,
            Member::IpPortNet { .. } => SetType::HashIpPortNet,
            Member::Net { .. } => SetType::HashNet,
            Member::Port { .. } => SetType::BitmapPort,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Ip { ip } => write!(f, "{ip}"),
            Member::IpPort { ip, proto, port } => write!(f, "{ip},{proto}:{port}"),
            Member::IpPortIp { ip, proto, port, ip2 } => write!(f, "{ip},{proto}:{port},{ip2}"),
            Member::IpPortNet { ip, proto, port, net } => {
                write!(f, "{ip},{proto}:{port},{}", net_text(net))
            }
            Member::Net { net } => f.write_str(&net_text(net)),
            Member::Port { port } => write!(f, "{port}"),
        }
    }
}

/// One `add` line: a member and its extension values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IpSetEntry {
    /// The member.
    pub member: Member,
    /// `comment "TEXT"` (sets created with the `comment` extension).
    pub comment: Option<String>,
    /// Other extension values as written (`timeout 30`, `nomatch`, …), in order.
    pub extra: Vec<String>,
}

impl IpSetEntry {
    /// A plain entry, as kube-proxy adds them.
    pub fn new(member: Member) -> IpSetEntry {
        IpSetEntry { member, comment: None, extra: Vec::new() }
    }
}

/// The family option of a hash set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetFamily {
    /// `inet`.
    Inet,
    /// `inet6`.
    Inet6,
}

impl SetFamily {
    /// `inet` or `inet6`.
    pub fn name(self) -> &'static str {
        match self {
            SetFamily::Inet => "inet",
            SetFamily::Inet6 => "inet6",
        }
    }
}

/// One set: its `create` line and its members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct IpSet {
    /// The set name (at most 31 bytes).
    pub name: String,
    /// Its type.
    pub set_type: SetType,
    /// `family inet|inet6` (hash types).
    pub family: Option<SetFamily>,
    /// The other create options in written order: `(name, value)`, value absent for flags
    /// such as `comment` (`hashsize 1024`, `maxelem 65536`, `range 0-65535`, `bucketsize 12`, …).
    pub options: Vec<(String, Option<String>)>,
    /// The members in order.
    pub entries: Vec<IpSetEntry>,
}

impl IpSet {
    /// Whether `member` is in the set.
    pub fn contains(&self, member: &Member) -> bool {
        self.entries.iter().any(|e| &e.member == member)
    }

    /// The value of a create option, if present.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_roundtrips_for_every_type() {
        for (t, text) in [
            (SetType::HashIp, "10.96.0.1"),
            (SetType::HashIpPort, "fd00::1,udp:53"),
            (SetType::HashIpPortIp, "10.180.0.1,tcp:80,10.180.0.1"),
            (SetType::HashIpPortNet, "1.2.3.4,tcp:80,10.0.0.0/8"),
            (SetType::HashNet, "10.0.0.0/8"),
            (SetType::BitmapPort, "30080"),
        ] {
            let m = Member::parse(t, text).unwrap();
            assert_eq!(m.to_string(), text);
            assert_eq!(m.set_type(), t);
        }
    }

    #[test]
    fn member_rejects_wrong_shape_with_expected_form() {
        let e = Member::parse(SetType::HashIpPort, "10.0.0.1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'10.0.0.1' is not a hash:ip,port member (expected IP,PROTO:PORT)"
        );
        assert!(Member::parse(SetType::HashIpPort, "10.0.0.1,icmp:8").is_err());
    }

    #[test]
    fn host_net_prints_without_prefix() {
        let m = Member::parse(SetType::HashNet, "10.0.0.1/32").unwrap();
        assert_eq!(m.to_string(), "10.0.0.1");
    }

    #[test]
    fn table_sorts_like_ipvsadm() {
        let a = VsKey::Addr { proto: Protocol::Udp, addr: "10.0.0.1:53".parse().unwrap() };
        let b = VsKey::Addr { proto: Protocol::Tcp, addr: "10.0.0.9:80".parse().unwrap() };
        let mut vs = VirtualServer::new(a, "rr");
        vs.real_servers.push(RealServer::masq("10.1.0.9:53".parse().unwrap(), 1));
        vs.real_servers.push(RealServer::masq("10.1.0.2:53".parse().unwrap(), 1));
        let t = IpvsTable { services: vec![vs, VirtualServer::new(b, "rr")] }.sorted();
        assert_eq!(t.services[0].key, b, "tcp (6) sorts before udp (17)");
        assert_eq!(t.services[1].real_servers[0].addr.to_string(), "10.1.0.2:53");
    }
}
