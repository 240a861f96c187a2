//! The agent: the process that runs *inside* a namespace (started with `ip netns exec`), because
//! entering a namespace from Rust needs `setns(2)` and svcpath has no unsafe code.
//!
//! Modes (the first argument):
//! - `sysctl KEY=VALUE…`: writes `/proc/sys/KEY` (dots become slashes) in the agent's namespace. A
//!   key written `?KEY` is optional (ignored when the kernel lacks it).
//! - `listen [--sysctl KEY=VALUE]… [--tcp ADDR]… [--udp ADDR]… [--max-seconds N]`: binds every
//!   address, prints [`READY`], then for every flow that arrives prints
//!   `@hit TOKEN PROTO LOCAL PEER` (the address the flow arrived at and the source it came from)
//!   and answers the client with `LOCAL PEER`. It exits when its stdin closes (the parent went
//!   away) or after `--max-seconds`.
//! - `send [--sysctl KEY=VALUE]… --timeout-ms N`: reads flows from stdin, one a line
//!   (`TOKEN PROTO SRC_IP SRC_PORT DST`), sends each as a new connection from `SRC_IP:SRC_PORT`
//!   and prints one `@flow TOKEN OUTCOME…` line per flow, in order ([`SendOutcome`]), preceded
//!   for a connected TCP flow by `@time TOKEN NS`, the nanoseconds its `connect()` took.
//!
//! Invariants: every line meant for the parent starts with `@` (anything else on stdout, such as a
//! test harness banner, is ignored by the parent); every blocking socket call has a timeout; the
//! agent never outlives its parent for long (stdin EOF or `--max-seconds`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::VerifyError;
use crate::model::Protocol;

/// The line a listener prints once every socket is bound.
pub const READY: &str = "@ready";
/// The prefix of a listener's report of one arrived flow.
pub const HIT: &str = "@hit";
/// The prefix of a sender's report of one flow.
pub const FLOW: &str = "@flow";
/// The prefix of a sender's report of a TCP flow's connect time.
pub const TIME: &str = "@time";
/// What a client writes first on a connection: this word and the flow's token.
const HELLO: &str = "svcpath";
/// How long a listener waits for a connected client's first line.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// A listener's default lifetime.
const DEFAULT_MAX_SECONDS: u64 = 600;

/// What happened to one flow, as the sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// A backend answered: the address the flow arrived at and the source it saw.
    Reached {
        /// Where the flow arrived (the endpoint after DNAT).
        local: SocketAddr,
        /// The source address and port the backend saw (after any SNAT).
        peer: SocketAddr,
    },
    /// The connection was refused (TCP RST or ICMP port unreachable): `refused REASON`.
    Refused(String),
    /// An ICMP host/network unreachable or similar came back: `unreachable REASON`.
    Unreachable(String),
    /// Nothing came back before the timeout: `timeout`.
    Timeout,
    /// The local kernel refused to send (EPERM: a DROP or REJECT in OUTPUT): `denied REASON`.
    Denied(String),
    /// Any other local error: `error REASON`.
    Error(String),
}

impl SendOutcome {
    /// The `@flow` line for `token`.
    pub fn line(&self, token: u64) -> String {
        let tail = match self {
            SendOutcome::Reached { local, peer } => format!("reached {local} {peer}"),
            SendOutcome::Refused(r) => format!("refused {r}"),
            SendOutcome::Unreachable(r) => format!("unreachable {r}"),
            SendOutcome::Timeout => "timeout".to_owned(),
            SendOutcome::Denied(r) => format!("denied {r}"),
            SendOutcome::Error(r) => format!("error {r}"),
        };
        format!("{FLOW} {token} {tail}")
    }

    /// Parses a `@flow TOKEN …` line back into its token and outcome.
    pub fn parse(line: &str) -> Option<(u64, SendOutcome)> {
        let rest = line.strip_prefix(FLOW)?.strip_prefix(' ')?;
        let (token, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let token = token.parse().ok()?;
        let (kind, detail) = rest.split_once(' ').unwrap_or((rest, ""));
        let detail = detail.to_owned();
        let outcome = match kind {
            "reached" => {
                let (l, p) = detail.split_once(' ')?;
                SendOutcome::Reached { local: l.parse().ok()?, peer: p.parse().ok()? }
            }
            "refused" => SendOutcome::Refused(detail),
            "unreachable" => SendOutcome::Unreachable(detail),
            "timeout" => SendOutcome::Timeout,
            "denied" => SendOutcome::Denied(detail),
            "error" => SendOutcome::Error(detail),
            _ => return None,
        };
        Some((token, outcome))
    }
}

/// A listener's report: (token, protocol, arrived-at address, seen source).
pub fn parse_hit(line: &str) -> Option<(u64, Protocol, SocketAddr, SocketAddr)> {
    let mut w = line.strip_prefix(HIT)?.split_whitespace();
    let token = w.next()?.parse().ok()?;
    let proto = match w.next()? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let local = w.next()?.parse().ok()?;
    let peer = w.next()?.parse().ok()?;
    Some((token, proto, local, peer))
}

/// The protocol part of an agent's output line: from its first `@` on (a test harness may have
/// printed `test … ... ` before it on the same line); other lines are returned whole.
pub fn protocol_part(line: &str) -> &str {
    line.find('@').map_or(line, |i| &line[i..])
}

/// One flow for a sender: its `stdin` line.
pub fn flow_line(token: u64, proto: Protocol, src: IpAddr, sport: u16, dst: SocketAddr) -> String {
    format!("{token} {} {src} {sport} {dst}", proto.as_str())
}

/// Runs the agent with its arguments (without the program name and the `__agent` word).
///
/// # Errors
/// [`VerifyError::Agent`] for unknown modes or flags, unparsable values, sysctls that cannot be
/// written and sockets that cannot be bound.
pub fn run_agent(args: &[String]) -> Result<(), VerifyError> {
    let (mode, rest) = args
        .split_first()
        .ok_or_else(|| agent_err("no mode given; expected 'sysctl', 'listen' or 'send'"))?;
    match mode.as_str() {
        "sysctl" => rest.iter().try_for_each(|kv| write_sysctl(kv)),
        "listen" => listen(&ListenArgs::parse(rest)?),
        "send" => send(&SendArgs::parse(rest)?),
        other => Err(agent_err(&format!(
            "unknown mode '{other}'; expected 'sysctl', 'listen' or 'send'"
        ))),
    }
}

fn agent_err(message: &str) -> VerifyError {
    VerifyError::Agent { message: message.to_owned() }
}

fn write_sysctl(kv: &str) -> Result<(), VerifyError> {
    let (key, value) = kv
        .split_once('=')
        .ok_or_else(|| agent_err(&format!("sysctl '{kv}' has no '='; write KEY=VALUE")))?;
    let (optional, key) = match key.strip_prefix('?') {
        Some(k) => (true, k),
        None => (false, key),
    };
    if key.is_empty() || key.contains("..") || key.contains('/') {
        return Err(agent_err(&format!(
            "sysctl key '{key}' is not a dotted name like net.ipv4.ip_forward"
        )));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    match std::fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(_) if optional => Ok(()),
        Err(e) => Err(agent_err(&format!("cannot set sysctl '{key}' to '{value}': {e}"))),
    }
}

fn parse_value<T: FromStr>(flag: &str, value: Option<&String>) -> Result<T, VerifyError> {
    let value = value.ok_or_else(|| agent_err(&format!("flag '{flag}' needs a value")))?;
    value.parse().map_err(|_| agent_err(&format!("bad value '{value}' for '{flag}'")))
}

struct ListenArgs {
    sysctls: Vec<String>,
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    max_seconds: u64,
}

impl ListenArgs {
    fn parse(args: &[String]) -> Result<ListenArgs, VerifyError> {
        let mut out = ListenArgs {
            sysctls: vec![],
            tcp: vec![],
            udp: vec![],
            max_seconds: DEFAULT_MAX_SECONDS,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--sysctl" => out.sysctls.push(parse_value(flag, it.next())?),
                "--tcp" => out.tcp.push(parse_value(flag, it.next())?),
                "--udp" => out.udp.push(parse_value(flag, it.next())?),
                "--max-seconds" => out.max_seconds = parse_value(flag, it.next())?,
                other => return Err(agent_err(&format!("unknown listen flag '{other}'"))),
            }
        }
        Ok(out)
    }
}

struct SendArgs {
    sysctls: Vec<String>,
    timeout: Duration,
}

impl SendArgs {
    fn parse(args: &[String]) -> Result<SendArgs, VerifyError> {
        let mut out = SendArgs { sysctls: vec![], timeout: Duration::from_millis(500) };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            match flag.as_str() {
                "--sysctl" => out.sysctls.push(parse_value(flag, it.next())?),
                "--timeout-ms" => {
                    out.timeout = Duration::from_millis(parse_value(flag, it.next())?)
                }
                other => return Err(agent_err(&format!("unknown send flag '{other}'"))),
            }
        }
        Ok(out)
    }
}

type Out = Arc<Mutex<std::io::Stdout>>;

fn emit(out: &Out, line: &str) {
    if let Ok(mut o) = out.lock() {
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }
}

fn listen(args: &ListenArgs) -> Result<(), VerifyError> {
    args.sysctls.iter().try_for_each(|kv| write_sysctl(kv))?;
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let mut tcp = Vec::new();
    for addr in &args.tcp {
        let l = TcpListener::bind(addr)
            .map_err(|e| agent_err(&format!("cannot listen on tcp {addr}: {e}")))?;
        tcp.push(l);
    }
    let mut udp = Vec::new();
    for addr in &args.udp {
        let s = UdpSocket::bind(addr)
            .map_err(|e| agent_err(&format!("cannot bind udp {addr}: {e}")))?;
        udp.push(s);
    }
    for l in tcp {
        let out = out.clone();
        std::thread::spawn(move || serve_tcp(&l, &out));
    }
    for s in udp {
        let out = out.clone();
        std::thread::spawn(move || serve_udp(&s, &out));
    }
    emit(&out, READY);
    let max = Duration::from_secs(args.max_seconds);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = done_tx.send(());
    });
    // Either the parent closed our stdin, or the lifetime ran out.
    let _ = done_rx.recv_timeout(max);
    Ok(())
}

fn serve_tcp(listener: &TcpListener, out: &Out) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let out = out.clone();
        std::thread::spawn(move || answer_tcp(conn, &out));
    }
}

fn answer_tcp(mut conn: TcpStream, out: &Out) {
    let (Ok(local), Ok(peer)) = (conn.local_addr(), conn.peer_addr()) else { return };
    let _ = conn.set_read_timeout(Some(HELLO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(HELLO_TIMEOUT));
    let mut line = String::new();
    let Ok(reader) = conn.try_clone() else { return };
    if BufReader::new(reader).read_line(&mut line).is_err() {
        return;
    }
    let Some(token) = hello_token(&line) else { return };
    emit(out, &format!("{HIT} {token} tcp {local} {peer}"));
    let _ = conn.write_all(format!("{local} {peer}\n").as_bytes());
}

fn serve_udp(sock: &UdpSocket, out: &Out) {
    let Ok(local) = sock.local_addr() else { return };
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]);
        let Some(token) = hello_token(&text) else { continue };
        emit(out, &format!("{HIT} {token} udp {local} {peer}"));
        let _ = sock.send_to(format!("{local} {peer}\n").as_bytes(), peer);
    }
}

fn hello_token(line: &str) -> Option<u64> {
    let mut w = line.split_whitespace();
    (w.next()? == HELLO).then_some(())?;
    w.next()?.parse().ok()
}

fn send(args: &SendArgs) -> Result<(), VerifyError> {
    args.sysctls.iter().try_for_each(|kv| write_sysctl(kv))?;
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let (token, proto, src, dst) = parse_flow_line(&line)?;
        let outcome = match proto {
            Protocol::Tcp => {
                let (outcome, connect) = send_tcp(token, src, dst, args.timeout);
                if let Some(d) = connect {
                    emit(&out, &time_line(token, d));
                }
                outcome
            }
            Protocol::Udp => send_udp(token, src, dst, args.timeout),
            Protocol::Sctp => SendOutcome::Error("sctp-unsupported".to_owned()),
        };
        emit(&out, &outcome.line(token));
    }
    Ok(())
}

fn parse_flow_line(line: &str) -> Result<(u64, Protocol, SocketAddr, SocketAddr), VerifyError> {
    let bad =
        || agent_err(&format!("bad flow line '{line}'; expected TOKEN PROTO SRC_IP SRC_PORT DST"));
    let w: Vec<&str> = line.split_whitespace().collect();
    let [token, proto, src, sport, dst] = w.as_slice() else { return Err(bad()) };
    let proto = match *proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return Err(bad()),
    };
    let src: IpAddr = src.parse().map_err(|_| bad())?;
    let sport: u16 = sport.parse().map_err(|_| bad())?;
    Ok((
        token.parse().map_err(|_| bad())?,
        proto,
        SocketAddr::new(src, sport),
        dst.parse().map_err(|_| bad())?,
    ))
}

fn classify(e: &std::io::Error) -> SendOutcome {
    use std::io::ErrorKind as K;
    let text = e.to_string().replace(' ', "_");
    match e.kind() {
        K::ConnectionRefused | K::ConnectionReset => SendOutcome::Refused(text),
        K::TimedOut | K::WouldBlock => SendOutcome::Timeout,
        K::PermissionDenied => SendOutcome::Denied(text),
        K::HostUnreachable | K::NetworkUnreachable => SendOutcome::Unreachable(text),
        _ => SendOutcome::Error(text),
    }
}

fn parse_reply(text: &str) -> Option<SendOutcome> {
    let mut w = text.split_whitespace();
    let local = w.next()?.parse().ok()?;
    let peer = w.next()?.parse().ok()?;
    Some(SendOutcome::Reached { local, peer })
}

/// A sender's report of how long a TCP flow's `connect()` took (SYN out, SYN-ACK back: the one
/// packet that walks the nat rules, and its answer): `@time TOKEN NANOSECONDS`.
pub fn time_line(token: u64, connect: Duration) -> String {
    format!("{TIME} {token} {}", connect.as_nanos())
}

/// Parses a [`time_line`] back into its token and nanoseconds.
pub fn parse_time(line: &str) -> Option<(u64, u64)> {
    let mut w = line.strip_prefix(TIME)?.split_whitespace();
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

/// Sends one TCP flow; also returns how long a successful `connect()` took.
fn send_tcp(
    token: u64,
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> (SendOutcome, Option<Duration>) {
    let sock = match Socket::new(Domain::for_address(dst), Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return (SendOutcome::Error(e.to_string().replace(' ', "_")), None),
    };
    // Close with RST-free FIN; reuse lets a port in TIME_WAIT be bound again on long runs.
    let _ = sock.set_reuse_address(true);
    if let Err(e) = sock.bind(&src.into()) {
        return (SendOutcome::Error(format!("bind_{src}:_{e}").replace(' ', "_")), None);
    }
    let started = Instant::now();
    if let Err(e) = sock.connect_timeout(&dst.into(), timeout) {
        return (classify(&e), None);
    }
    let connect = started.elapsed();
    (exchange(token, sock.into(), timeout), Some(connect))
}

fn exchange(token: u64, mut stream: TcpStream, timeout: Duration) -> SendOutcome {
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(e) = stream.write_all(format!("{HELLO} {token}\n").as_bytes()) {
        return classify(&e);
    }
    let mut reply = String::new();
    match BufReader::new(&mut stream).read_line(&mut reply) {
        Ok(_) => parse_reply(&reply).unwrap_or(SendOutcome::Timeout),
        Err(e) => classify(&e),
    }
}

fn send_udp(token: u64, src: SocketAddr, dst: SocketAddr, timeout: Duration) -> SendOutcome {
    let sock = match UdpSocket::bind(src) {
        Ok(s) => s,
        Err(e) => return SendOutcome::Error(format!("bind_{src}:_{e}").replace(' ', "_")),
    };
    if let Err(e) = sock.connect(dst) {
        return classify(&e);
    }
    let _ = sock.set_read_timeout(Some(timeout));
    if let Err(e) = sock.send(format!("{HELLO} {token}\n").as_bytes()) {
        return classify(&e);
    }
    let mut buf = [0u8; 256];
    match sock.recv(&mut buf) {
        Ok(n) => parse_reply(&String::from_utf8_lossy(&buf[..n])).unwrap_or(SendOutcome::Timeout),
        Err(e) => classify(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_outcome_lines_roundtrip() {
        let cases = [
            SendOutcome::Reached {
                local: "10.0.0.1:80".parse().unwrap(),
                peer: "[fd00::1]:4000".parse().unwrap(),
            },
            SendOutcome::Refused("Connection_refused".to_owned()),
            SendOutcome::Unreachable("No_route".to_owned()),
            SendOutcome::Timeout,
            SendOutcome::Denied("Operation_not_permitted".to_owned()),
            SendOutcome::Error("x".to_owned()),
        ];
        for c in cases {
            assert_eq!(SendOutcome::parse(&c.line(42)), Some((42, c.clone())), "{}", c.line(42));
        }
        assert_eq!(SendOutcome::parse("@flow x timeout"), None);
        assert_eq!(parse_time(&time_line(7, Duration::from_micros(250))), Some((7, 250_000)));
        assert_eq!(SendOutcome::parse(&time_line(7, Duration::from_micros(1))), None);
        assert_eq!(SendOutcome::parse("running 1 test"), None);
    }

    #[test]
    fn hit_lines_parse() {
        let (t, p, l, s) = parse_hit("@hit 7 udp 10.244.0.2:53 10.0.0.9:20001").unwrap();
        assert_eq!((t, p), (7, Protocol::Udp));
        assert_eq!(l.to_string(), "10.244.0.2:53");
        assert_eq!(s.to_string(), "10.0.0.9:20001");
        assert!(parse_hit("@hit 7 sctp 1.1.1.1:1 2.2.2.2:2").is_none());
    }

    #[test]
    fn flow_line_parses_back() {
        let l = flow_line(
            3,
            Protocol::Tcp,
            "10.0.0.9".parse().unwrap(),
            20001,
            "10.96.0.10:80".parse().unwrap(),
        );
        assert_eq!(l, "3 tcp 10.0.0.9 20001 10.96.0.10:80");
        let (t, p, s, d) = parse_flow_line(&l).unwrap();
        assert_eq!(
            (t, p, s.to_string(), d.to_string()),
            (3, Protocol::Tcp, "10.0.0.9:20001".into(), "10.96.0.10:80".into())
        );
        assert!(parse_flow_line("3 tcp 10.0.0.9 x 10.96.0.10:80").is_err());
    }

    #[test]
    fn agent_rejects_unknown_mode_and_flags() {
        let e = run_agent(&["dance".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("unknown mode 'dance'"), "{e}");
        let e = run_agent(&["listen".to_owned(), "--bogus".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("'--bogus'"), "{e}");
        let e = run_agent(&["sysctl".to_owned(), "net/../../etc=1".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("not a dotted name"), "{e}");
    }

    #[test]
    fn protocol_part_skips_harness_prefix() {
        assert_eq!(protocol_part("test verify::tests::agent_entry ... @ready"), READY);
        assert_eq!(protocol_part("@flow 1 timeout"), "@flow 1 timeout");
        assert_eq!(protocol_part("running 1 test"), "running 1 test");
    }

    #[test]
    fn hello_token_requires_the_magic_word() {
        assert_eq!(hello_token("svcpath 12\n"), Some(12));
        assert_eq!(hello_token("GET / HTTP/1.1"), None);
    }
}
