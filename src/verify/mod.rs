//! The real kernel: load rules into throwaway network namespaces and send real flows through them.
//!
//! This is the only module of svcpath that touches a kernel. Everything happens inside network
//! namespaces it creates ([`netns::Netns`], named `svcpath-<pid>-<n>-<hex>`) and deletes on every
//! exit path (drop, error, panic, SIGINT/SIGTERM/SIGHUP); a run killed with SIGKILL leaves names
//! that [`cleanup_leftovers`] removes. No command ever runs against the caller's own namespace:
//! rules are loaded with `ip netns exec NAME iptables-*-restore`, links and addresses are made
//! with `ip -n NAME …`, and traffic is sent by agent processes started with `ip netns exec`.
//!
//! - [`kernel_roundtrip`] / [`kernel_accepts`]: `iptables-restore` a dump in a fresh namespace and
//!   read it back with `iptables-save` (the kernel's canonical form).
//! - [`traffic::run_flows`]: a node, a client and one namespace per pod; real TCP/UDP flows; what
//!   each reached and with which source address.
//! - [`check::check`] / [`check::observe`]: `svcpath verify` end to end: the probes
//!   [`crate::study::verify::plan`] asks for, sent through [`traffic`], judged by
//!   [`crate::study::verify::judge`] against svcpath's exact predictions.
//! - [`calibrate::calibrate`]: the kernel's cost per rule and per new connection, from the first
//!   and the last Service of a large synthetic ruleset.
//! - [`agent::run_agent`]: the listener/sender that runs inside the namespaces (the binary exposes
//!   it as the hidden `svcpath __agent` subcommand).
//!
//! What `iptables-restore` does with kube-proxy's dumps (checked on iptables 1.8.9, both the
//! nf_tables and the legacy backend, and pinned by the tests below):
//! - kube-proxy restores with `--noflush`, writing only its own chains (`:KUBE-… - [0:0]`) and
//!   `-A` rules; the jumps from the built-in chains (`-A PREROUTING -j KUBE-SERVICES`, …) are made
//!   separately, rule by rule. A dump without them loads fine but no packet ever reaches it;
//!   [`traffic`] adds kube-proxy's jump rules when the dump lacks them.
//! - Without `--noflush` every table named in the dump is flushed first. With `--noflush`, a
//!   built-in chain line (`:INPUT DROP [0:0]`) only sets the policy: its rules stay. A user chain
//!   line flushes that chain.
//! - A built-in chain declared like a user chain (`:PREROUTING - [0:0]`) is accepted silently.
//! - Errors name a line, but the two backends disagree on which: a jump to an undeclared chain is
//!   reported by legacy at the rule's line (`Couldn't load target`), by nf_tables at the `COMMIT`
//!   line (`Chain 'X' does not exist`), because nf_tables checks the batch when it commits.
//! - `iptables-save` reorders each rule into the kernel's canonical order (`-s`, `-d`, `-i`, `-o`,
//!   `-p` first, then the matches in order, then the target), adds `/32` to host addresses,
//!   quotes comments, prints `--probability` with 11 decimals of the 2^31-step value the kernel
//!   stores (`0.3333333333` → `0.33333333349`, `0.5000000000` → `0.50000000000`), and rewrites
//!   `--or-mark X` as `--set-xmark X/X`, `--xor-mark X` as `--set-xmark X/0x0`. Defaults are
//!   written out: `-j REJECT` gains `--reject-with icmp-port-unreachable`, `-m recent` gains
//!   `--mask 255.255.255.255 --rsource` and its options come back as `--rcheck --seconds N --reap
//!   --name X`. A host comment is quoted even without spaces (`"ns/empty"`). Chains are listed
//!   built-ins first, then user chains sorted by name. Tables come in a fixed order with
//!   nf_tables, and newest-first with legacy (the kernel's table list is a stack).

pub mod agent;
pub mod calibrate;
pub mod check;
pub mod netns;
pub mod traffic;

use std::time::Duration;

use thiserror::Error;

use crate::model::rules::Family;

pub use agent::run_agent;
pub use calibrate::{CalibrateOptions, Calibration, calibrate};
pub use check::{CheckOptions, Observation, check, check_nft, observe, observe_nft};
pub use netns::{Netns, cleanup_leftovers};
pub use traffic::{
    AgentCommand, Flow, FlowResult, Observed, Report, RunOptions, Topology, run_flows,
    run_flows_nft,
};

/// The iptables implementation rules are loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// `iptables-nft`: the xtables API over nf_tables (the default on current distributions).
    #[default]
    Nft,
    /// `iptables-legacy`: the original `ip_tables` kernel tables.
    Legacy,
}

impl Backend {
    /// `nft` or `legacy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The restore program for this backend and family (`iptables-nft-restore`, …).
    pub fn restore_program(self, family: Family) -> String {
        format!("{}-{}-restore", family_tool(family), self.as_str())
    }

    /// The save program for this backend and family (`ip6tables-legacy-save`, …).
    pub fn save_program(self, family: Family) -> String {
        format!("{}-{}-save", family_tool(family), self.as_str())
    }
}

fn family_tool(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// Everything that can go wrong while talking to the kernel.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Not running as root: namespaces and netfilter need CAP_NET_ADMIN and CAP_SYS_ADMIN.
    #[error("svcpath verify needs root (running as uid {uid}); hint: run it with sudo")]
    NotRoot {
        /// The effective uid.
        uid: u32,
    },
    /// A required program is not installed.
    #[error("'{program}' not found in PATH or /usr/sbin; hint: install the {package} package")]
    MissingTool {
        /// The program looked for.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A program could not be started.
    #[error("could not run '{command}': {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A program exited with a failure status.
    #[error("'{command}' failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A program did not finish in time and was killed.
    #[error("'{command}' did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline it overran.
        timeout: Duration,
    },
    /// `iptables-restore` refused the dump.
    #[error(
        "{program} rejected the dump{}: {message}",
        line_suffix(*line, text.as_deref())
    )]
    Restore {
        /// The restore program.
        program: String,
        /// The 1-based dump line it named, if it named one.
        line: Option<usize>,
        /// That line's text.
        text: Option<String>,
        /// Its stderr, trimmed.
        message: String,
    },
    /// A topology or flow list that cannot be built.
    #[error("invalid {what} '{value}': {hint}")]
    Invalid {
        /// What was being checked (`flow 3`, `topology`).
        what: String,
        /// The offending value.
        value: String,
        /// How to fix it.
        hint: String,
    },
    /// An agent process misbehaved (bad arguments, unexpected output, socket setup failure).
    #[error("agent: {message}")]
    Agent {
        /// What went wrong.
        message: String,
    },
    /// svcpath's own model could not predict a flow.
    #[error("svcpath's model: {0}")]
    Model(#[from] crate::study::verify::ModelError),
}

impl From<crate::dataplane::netfilter::EvalError> for VerifyError {
    fn from(e: crate::dataplane::netfilter::EvalError) -> VerifyError {
        VerifyError::Model(e.into())
    }
}

fn line_suffix(line: Option<usize>, text: Option<&str>) -> String {
    match (line, text) {
        (Some(l), Some(t)) => format!(" at line {l} \"{t}\""),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

/// Checks that this process can create namespaces and load rules with `backend`.
///
/// # Errors
/// [`VerifyError::NotRoot`] when not running as uid 0, [`VerifyError::MissingTool`] when `ip` or
/// the backend's `iptables-*-restore`/`-save` programs are missing.
pub fn check_environment(backend: Backend) -> Result<(), VerifyError> {
    let uid = netns::effective_uid().unwrap_or(u32::MAX);
    if uid != 0 {
        return Err(VerifyError::NotRoot { uid });
    }
    require_tool(netns::IP, "iproute2")?;
    for family in [Family::V4, Family::V6] {
        require_tool(&backend.restore_program(family), "iptables")?;
        require_tool(&backend.save_program(family), "iptables")?;
    }
    Ok(())
}

fn require_tool(program: &str, package: &'static str) -> Result<(), VerifyError> {
    match netns::find_program(program) {
        Some(_) => Ok(()),
        None => Err(VerifyError::MissingTool { program: program.to_owned(), package }),
    }
}

/// Checks that `backend` really works here for `family`: the programs exist and the kernel takes
/// an empty `filter` table in a fresh namespace (iptables-legacy needs the `ip_tables` modules,
/// which some kernels no longer ship).
///
/// # Errors
/// As [`kernel_accepts`].
pub fn probe_backend(backend: Backend, family: Family) -> Result<(), VerifyError> {
    kernel_accepts("*filter\nCOMMIT\n", family, backend)
}

/// Loads `dump` into a fresh namespace with `iptables-restore` and returns what `iptables-save`
/// prints back: the kernel's canonical form of the same rules (its `# Generated`/`# Completed`
/// comment lines included; see [`strip_save_comments`]).
///
/// # Errors
/// [`VerifyError::Restore`] with the line `iptables-restore` named when it refuses the dump; the
/// errors of [`check_environment`] and [`Netns::create`].
pub fn kernel_roundtrip(
    dump: &str,
    family: Family,
    backend: Backend,
) -> Result<String, VerifyError> {
    check_environment(backend)?;
    let ns = Netns::create()?;
    load_dump(&ns, dump, family, backend, &[])?;
    let save = backend.save_program(family);
    Ok(ns.exec(&save, &[], None, netns::ADMIN_TIMEOUT)?.check()?.stdout)
}

/// The kernel's view of a loaded nf_tables ruleset, in nft's two listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftListings {
    /// `nft list ruleset`.
    pub text: String,
    /// `nft -j list ruleset` (what [`crate::formats::nft_json`] reads).
    pub json: String,
}

/// Loads `nft -f` input into a fresh namespace and returns how the kernel lists it back.
///
/// # Errors
/// [`VerifyError::NotRoot`], [`VerifyError::MissingTool`] when `nft` is missing,
/// [`VerifyError::Restore`] with the line `nft` named when it refuses the input; the errors of
/// [`Netns::create`].
pub fn nft_roundtrip(text: &str) -> Result<NftListings, VerifyError> {
    check_nft_environment()?;
    let ns = Netns::create()?;
    load_nft(&ns, text)?;
    let list = |args: &[&str]| -> Result<String, VerifyError> {
        Ok(ns.exec("nft", args, None, netns::ADMIN_TIMEOUT)?.check()?.stdout)
    };
    Ok(NftListings { text: list(&["list", "ruleset"])?, json: list(&["-j", "list", "ruleset"])? })
}

/// Checks that this process can create namespaces and load nf_tables rules with `nft`.
///
/// # Errors
/// [`VerifyError::NotRoot`], or [`VerifyError::MissingTool`] when `ip` or `nft` is missing.
pub fn check_nft_environment() -> Result<(), VerifyError> {
    let uid = netns::effective_uid().unwrap_or(u32::MAX);
    if uid != 0 {
        return Err(VerifyError::NotRoot { uid });
    }
    require_tool(netns::IP, "iproute2")?;
    require_tool("nft", "nftables")
}

/// Feeds `text` to `nft -f -` inside `ns`, turning a refusal into [`VerifyError::Restore`] with
/// the line `nft` named.
pub(crate) fn load_nft(ns: &Netns, text: &str) -> Result<(), VerifyError> {
    let out = ns.exec("nft", &["-f", "-"], Some(text.as_bytes()), netns::ADMIN_TIMEOUT)?;
    if out.success() {
        return Ok(());
    }
    // nft names the place as `/dev/stdin:LINE:COLUMN-COLUMN: Error: …`.
    let line = out
        .stderr
        .split("/dev/stdin:")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok());
    let line_text = line.and_then(|l| text.lines().nth(l.checked_sub(1)?)).map(str::to_owned);
    Err(VerifyError::Restore {
        program: "nft".to_owned(),
        line,
        text: line_text,
        message: compact_stderr(&out.stderr),
    })
}

/// Checks that the kernel accepts `dump` (loads it in a fresh namespace, then throws it away).
///
/// # Errors
/// As [`kernel_roundtrip`].
pub fn kernel_accepts(dump: &str, family: Family, backend: Backend) -> Result<(), VerifyError> {
    check_environment(backend)?;
    let ns = Netns::create()?;
    load_dump(&ns, dump, family, backend, &[])
}

/// Feeds `dump` to the backend's restore program inside `ns` (`extra` flags such as
/// `--noflush`), turning a refusal into [`VerifyError::Restore`].
pub(crate) fn load_dump(
    ns: &Netns,
    dump: &str,
    family: Family,
    backend: Backend,
    extra: &[&str],
) -> Result<(), VerifyError> {
    ensure_nfacct(ns, dump)?;
    let program = backend.restore_program(family);
    let out = ns.exec(&program, extra, Some(dump.as_bytes()), netns::ADMIN_TIMEOUT)?;
    if out.success() {
        return Ok(());
    }
    let line = restore_error_line(&out.stderr);
    let text = line.and_then(|l| dump.lines().nth(l.checked_sub(1)?)).map(str::to_owned);
    Err(VerifyError::Restore { program, line, text, message: compact_stderr(&out.stderr) })
}

/// The `--nfacct-name` objects a dump refers to, in order of first use.
pub fn nfacct_names(dump: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in dump.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "--nfacct-name"
                && let Some(name) = words.next()
            {
                let name = name.trim_matches('"').to_owned();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Creates the nfacct counters a dump uses, as kube-proxy does before it syncs (the kernel refuses
/// `-m nfacct` rules whose object does not exist).
fn ensure_nfacct(ns: &Netns, dump: &str) -> Result<(), VerifyError> {
    let names = nfacct_names(dump);
    if names.is_empty() {
        return Ok(());
    }
    require_tool("nfacct", "nfacct")?;
    for name in names {
        ns.exec("nfacct", &["add", &name], None, netns::ADMIN_TIMEOUT)?.check()?;
    }
    Ok(())
}

/// The line number an `iptables-restore` error names (`Error occurred at line: 4`,
/// `line 4 failed`, `COMMIT expected at line 3`).
pub fn restore_error_line(stderr: &str) -> Option<usize> {
    for marker in ["at line: ", "at line ", "line "] {
        for (i, _) in stderr.match_indices(marker) {
            let digits: String =
                stderr[i + marker.len()..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

/// Joins the meaningful stderr lines (dropping the `Try '… -h'` advice).
fn compact_stderr(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `iptables-save` output without its `# Generated by …` / `# Completed on …` lines (which carry
/// the date).
pub fn strip_save_comments(save: &str) -> String {
    save.lines().filter(|l| !l.starts_with('#')).fold(String::new(), |mut acc, l| {
        acc.push_str(l);
        acc.push('\n');
        acc
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether this process is root; prints a visible skip notice for `test` when not.
    pub(crate) fn have_root(test: &str) -> bool {
        let root = netns::effective_uid() == Some(0) && netns::find_program(netns::IP).is_some();
        if !root {
            eprintln!("skipped: {test} needs root and iproute2 (network namespaces)");
        }
        root
    }

    /// Whether `backend` works here (root, its programs, a kernel that takes its rules); prints a
    /// visible skip notice for `test` when not.
    pub(crate) fn have_backend(test: &str, backend: Backend) -> bool {
        if !have_root(test) {
            return false;
        }
        match probe_backend(backend, Family::V4) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipped: {test}: {e}");
                false
            }
        }
    }

    const SMALL_DUMP: &str = "\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.3333333333 -j KUBE-MARK-MASQ
COMMIT
";

    /// The caller's own rules (all backends, both families), comments stripped.
    pub(crate) fn host_save() -> String {
        // Reading the caller's rules is allowed; changing them is not.
        let mut out = String::new();
        for p in [
            "iptables-nft-save",
            "iptables-legacy-save",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
        ] {
            if let Ok(o) =
                netns::run_bounded(&mut std::process::Command::new(p), None, netns::ADMIN_TIMEOUT)
            {
                out.push_str(&strip_save_comments(&o.stdout));
            }
        }
        out
    }

    /// Namespaces named for this process that no live guard holds and that still exist.
    fn ours_leaked() -> Vec<String> {
        let pid = std::process::id();
        let listed = netns::list_namespaces();
        let live = netns::live_namespaces();
        listed
            .into_iter()
            .filter(|n| netns::parse_name(n).is_some_and(|(p, _)| p == pid))
            .filter(|n| !live.contains(n))
            // A guard dropped between the two snapshots is gone by now.
            .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
            .collect()
    }

    #[test]
    fn roundtrip_reorders_rules_canonically() {
        for backend in [Backend::Nft, Backend::Legacy] {
            if !have_backend("roundtrip_reorders_rules_canonically", backend) {
                continue;
            }
            let before = host_save();
            let saved = kernel_roundtrip(SMALL_DUMP, Family::V4, backend).unwrap();
            let saved = strip_save_comments(&saved);
            assert!(
                saved.contains(
                    "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j KUBE-SVC-X\n"
                ),
                "{backend:?}:\n{saved}"
            );
            assert!(saved.contains("--probability 0.33333333349 -j KUBE-MARK-MASQ\n"), "{saved}");
            assert!(
                saved.contains("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n"),
                "{saved}"
            );
            // Built-in chains appear although the dump never declared them.
            assert!(saved.contains(":PREROUTING ACCEPT [0:0]\n"), "{saved}");
            assert_eq!(before, host_save(), "host rules changed");
        }
    }

    /// Two tables through the kernel: the complete canonical text (`iptables-save` adds the
    /// built-in chains, sorts user chains, groups rules by chain, fills in defaults such as
    /// `--reject-with`, `--mask … --rsource`), and the backends' table order.
    #[test]
    fn roundtrip_full_dump_is_canonical() {
        const DUMP: &str = r#"*filter
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.20 -p tcp -m comment --comment ns/empty -m tcp --dport 80 -j REJECT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m recent --name KUBE-SEP-Y --rcheck --seconds 10800 --reap -j KUBE-MARK-MASQ
-A KUBE-SVC-X -p tcp -m recent --set --name KUBE-SEP-Y -m tcp -j DNAT --to-destination 10.180.0.1:80
COMMIT
"#;
        const SAVED: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "ns/empty" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-MARK-MASQ
-A KUBE-SVC-X -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -j KUBE-MARK-MASQ
-A KUBE-SVC-X -p tcp -m recent --set --name KUBE-SEP-Y --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.180.0.1:80
COMMIT
"#;
        for backend in [Backend::Nft, Backend::Legacy] {
            if !have_backend("roundtrip_full_dump_is_canonical", backend) {
                continue;
            }
            let saved = strip_save_comments(&kernel_roundtrip(DUMP, Family::V4, backend).unwrap());
            match backend {
                Backend::Nft => assert_eq!(saved, SAVED),
                Backend::Legacy => {
                    // Same tables, newest first: nat (loaded second) before filter.
                    let (filter, nat) = SAVED.split_at(SAVED.find("*nat").unwrap_or(0));
                    assert_eq!(saved, format!("{nat}{filter}"));
                }
            }
        }
    }

    #[test]
    fn roundtrip_ipv6_dump() {
        if !have_backend("roundtrip_ipv6_dump", Backend::Nft) {
            return;
        }
        let dump = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d fd00::10 -p udp -m udp --dport 53 -j RETURN\nCOMMIT\n";
        let saved = kernel_roundtrip(dump, Family::V6, Backend::Nft).unwrap();
        assert!(
            saved.contains("-A KUBE-SERVICES -d fd00::10/128 -p udp -m udp --dport 53 -j RETURN"),
            "{saved}"
        );
    }

    #[test]
    fn broken_dump_error_names_the_line() {
        for backend in [Backend::Nft, Backend::Legacy] {
            if !have_backend("broken_dump_error_names_the_line", backend) {
                continue;
            }
            let dump = "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -m statistic --mode random --probability 2 -j RETURN\nCOMMIT\n";
            let err =
                kernel_accepts(dump, Family::V4, backend).expect_err("probability 2 is refused");
            match &err {
                VerifyError::Restore { line, text, message, .. } => {
                    assert_eq!(*line, Some(3), "{err}");
                    assert!(
                        text.as_deref().is_some_and(|t| t.contains("--probability 2")),
                        "{err}"
                    );
                    assert!(message.contains("--probability"), "{err}");
                }
                other => panic!("unexpected error {other}"),
            }
            assert!(err.to_string().contains("at line 3"), "{err}");
        }
    }

    #[test]
    fn undeclared_jump_is_reported_at_rule_or_commit_line() {
        let dump = "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -j KUBE-Z\nCOMMIT\n";
        for (backend, want) in [(Backend::Legacy, 3), (Backend::Nft, 4)] {
            if !have_backend("undeclared_jump_is_reported_at_rule_or_commit_line", backend) {
                continue;
            }
            let err = kernel_accepts(dump, Family::V4, backend).expect_err("KUBE-Z is undeclared");
            assert!(
                matches!(err, VerifyError::Restore { line: Some(l), .. } if l == want),
                "{backend:?}: {err}"
            );
        }
    }

    #[test]
    fn noflush_builtin_declaration_keeps_rules_and_sets_policy() {
        for backend in [Backend::Nft, Backend::Legacy] {
            if !have_backend("noflush_builtin_declaration_keeps_rules_and_sets_policy", backend) {
                continue;
            }
            let ns = Netns::create().unwrap();
            let first = "*filter\n:KUBE-X - [0:0]\n-A INPUT -j KUBE-X\n-A KUBE-X -s 1.2.3.4 -j DROP\nCOMMIT\n";
            load_dump(&ns, first, Family::V4, backend, &[]).unwrap();
            let kube = "*filter\n:INPUT DROP [0:0]\n:KUBE-X - [0:0]\n-A KUBE-X -j RETURN\nCOMMIT\n";
            load_dump(&ns, kube, Family::V4, backend, &["--noflush"]).unwrap();
            let save =
                ns.exec(backend.save_program(Family::V4), &[], None, netns::ADMIN_TIMEOUT).unwrap();
            let save = strip_save_comments(&save.stdout);
            assert!(save.contains(":INPUT DROP [0:0]\n"), "{backend:?} policy:\n{save}");
            assert!(
                save.contains("-A INPUT -j KUBE-X\n"),
                "{backend:?} builtin rules kept:\n{save}"
            );
            assert!(!save.contains("1.2.3.4"), "{backend:?} user chain flushed:\n{save}");
        }
    }

    #[test]
    fn no_namespace_of_ours_is_left_behind() {
        if !have_root("no_namespace_of_ours_is_left_behind") {
            return;
        }
        let _ = kernel_accepts(SMALL_DUMP, Family::V4, Backend::Nft);
        let _ = kernel_accepts("*nat\nbogus\nCOMMIT\n", Family::V4, Backend::Nft);
        assert_eq!(ours_leaked(), Vec::<String>::new());
    }

    #[test]
    fn restore_error_line_reads_both_backends() {
        assert_eq!(restore_error_line("x\nError occurred at line: 4\nTry `x'"), Some(4));
        assert_eq!(restore_error_line("iptables-restore: line 7 failed"), Some(7));
        assert_eq!(restore_error_line("iptables-nft-restore: COMMIT expected at line 3"), Some(3));
        assert_eq!(restore_error_line("no number here"), None);
    }

    #[test]
    fn not_root_message_quotes_uid() {
        let e = VerifyError::NotRoot { uid: 1000 };
        assert_eq!(
            e.to_string(),
            "svcpath verify needs root (running as uid 1000); hint: run it with sudo"
        );
    }

    #[test]
    fn backend_program_names() {
        assert_eq!(Backend::Nft.restore_program(Family::V4), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.save_program(Family::V6), "ip6tables-legacy-save");
    }

    /// Not a test: the agent entry point for the traffic tests. The test binary re-runs itself
    /// with only this test selected and `SVCPATH_TEST_AGENT` set (see
    /// [`traffic::AgentCommand::test_harness`]); without the variable it does nothing.
    #[test]
    fn agent_entry() {
        if let Some(args) = std::env::var_os(traffic::TEST_AGENT_ENV) {
            let args: Vec<String> =
                args.to_string_lossy().split('\u{1f}').map(str::to_owned).collect();
            let code = match run_agent(&args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("svcpath agent: {e}");
                    2
                }
            };
            std::process::exit(code);
        }
    }
}
