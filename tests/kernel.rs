//! The real kernel as an oracle: every dump svcpath writes loads with `iptables-restore` in a
//! throwaway network namespace, and the kernel's own `iptables-save` of it (tokens reordered,
//! probabilities rewritten, module defaults filled in) traces exactly like svcpath's text.
//!
//! These tests need root, `ip` and the iptables tools; where they cannot run they print
//! `skipped: …` and pass (CI installs the tools and runs as root).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use svcpath::dataplane::netfilter::Env;
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::endpoints::service_ports;
use svcpath::kubeproxy::iptables::{self, NodeEnv};
use svcpath::model::default::default_cluster;
use svcpath::model::{Cluster, IpFamily, NodeView, load};
use svcpath::study::dataplane::{Dataplane, rules_family};
use svcpath::study::trace::{TraceRequest, trace};
use svcpath::verify::{self, Backend};

use crate::harness::{data, dirs_with, have_nfacct, root};

/// Whether the kernel tests can run here; prints why not.
fn kernel_available(backend: Backend) -> bool {
    if let Err(e) = verify::check_environment(backend) {
        eprintln!("skipped: kernel test needs root and the iptables tools: {e}");
        return false;
    }
    if !have_nfacct("kernel test") {
        return false;
    }
    if let Err(e) = verify::probe_backend(backend, svcpath::model::rules::Family::V4) {
        eprintln!("skipped: {backend:?} backend unusable here: {e}");
        return false;
    }
    true
}

struct Case {
    name: String,
    cluster: Cluster,
    node: NodeView,
    family: IpFamily,
}

fn cases() -> Vec<Case> {
    let mut out = vec![{
        let cluster = default_cluster();
        let node = cluster.node_view(None, &[]).unwrap();
        Case { name: "default".into(), cluster, node, family: IpFamily::V4 }
    }];
    let mut files: Vec<PathBuf> = dirs_with(&data("kubeproxy"), "cluster.yaml")
        .into_iter()
        .map(|d| d.join("cluster.yaml"))
        .collect();
    files.extend(
        dirs_with(&root().join("rulesets"), "cluster.yaml")
            .into_iter()
            .map(|d| d.join("cluster.yaml")),
    );
    for f in files {
        // The large-cluster case is 1000 endpoints of the same shape; one load of it is enough
        // for the acceptance and keeps the suite quick.
        if f.to_string_lossy().contains("LargeClusterMode/below") {
            continue;
        }
        let cluster = load::load_path(&f).unwrap_or_else(|e| panic!("{e}")).cluster;
        let node = cluster.node_view(None, &[]).unwrap();
        let name = f.strip_prefix(root()).unwrap_or(&f).display().to_string();
        let v6 =
            cluster.services.iter().any(|s| s.cluster_ips.first().is_some_and(IpAddr::is_ipv6))
                && !cluster.services.iter().any(|s| s.cluster_ips.iter().any(IpAddr::is_ipv4));
        out.push(Case {
            name: name.clone(),
            cluster: cluster.clone(),
            node: node.clone(),
            family: if v6 { IpFamily::V6 } else { IpFamily::V4 },
        });
        if !v6 && cluster.services.iter().any(|s| s.cluster_ips.iter().any(IpAddr::is_ipv6)) {
            out.push(Case { name: format!("{name} (IPv6)"), cluster, node, family: IpFamily::V6 });
        }
    }
    out
}

/// [`cases`] and the clusters of kube-proxy's transcribed nftables tests (their node-port
/// addresses, ServiceCIDRs and IPv6 cases are nftables-specific).
fn nft_cases() -> Vec<Case> {
    let mut out = cases();
    for dir in dirs_with(&data("kubeproxy-nftables"), "cluster.yaml") {
        let cluster =
            load::load_path(&dir.join("cluster.yaml")).unwrap_or_else(|e| panic!("{e}")).cluster;
        let node = cluster.node_view(None, &[]).unwrap();
        let name = dir.strip_prefix(root()).unwrap_or(&dir).display().to_string();
        let v6 = name.contains("ipv6");
        let family = if v6 { IpFamily::V6 } else { IpFamily::V4 };
        out.push(Case { name, cluster, node, family });
    }
    out
}

/// Packets worth comparing: every entry point of every Service port, from a pod, from outside and
/// from the node.
fn probes(case: &Case) -> Vec<TraceRequest> {
    let fam = case.family;
    let pod: IpAddr = match case.cluster.config.cluster_cidrs.iter().find(|n| fam.contains(&n.ip()))
    {
        Some(n) => match n.ip() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) | 0x77).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) | 0x77).into()),
        },
        None => {
            if fam == IpFamily::V4 {
                "10.244.9.9".parse().unwrap()
            } else {
                "fd00:99::9".parse().unwrap()
            }
        }
    };
    let outside: IpAddr = if fam == IpFamily::V4 {
        "203.0.113.2".parse().unwrap()
    } else {
        "2001:db8:ffff::2".parse().unwrap()
    };
    let node_ip = case.node.addresses_of(fam).find(|a| !a.is_loopback());
    let mut sources = vec![pod, outside];
    sources.extend(node_ip);
    let mut out = Vec::new();
    for sp in service_ports(&case.cluster, &case.node, fam) {
        let mut dests: Vec<(IpAddr, u16)> = vec![(sp.cluster_ip, sp.port.port)];
        dests.extend(sp.external_ips.iter().map(|ip| (*ip, sp.port.port)));
        dests.extend(sp.lb_vips.iter().map(|ip| (*ip, sp.port.port)));
        if let (Some(np), Some(nip)) = (sp.node_port, node_ip) {
            dests.push((nip, np));
        }
        for (dst, dport) in dests {
            for &src in &sources {
                out.push(TraceRequest {
                    src,
                    src_note: String::new(),
                    dst,
                    dport,
                    proto: sp.proto,
                    seed: None,
                    in_iface: "eth0".into(),
                });
            }
        }
    }
    out
}

type Summary = BTreeMap<(String, String, bool), f64>;

fn summary(dp: &Dataplane, req: &TraceRequest) -> Summary {
    let env = Env { local: dp.local.clone(), ..Env::default() };
    let t = trace(dp, req, &env).unwrap();
    let mut m = Summary::new();
    for o in t.outcomes {
        *m.entry((o.endpoint.unwrap_or_default(), o.verdict, o.masquerade)).or_default() +=
            o.probability;
    }
    m
}

fn roundtrip_all(backend: Backend) {
    if !kernel_available(backend) {
        return;
    }
    let mut failures = Vec::new();
    let mut compared = 0;
    let all = cases();
    for case in &all {
        let sync = iptables::sync(&case.cluster, &case.node, case.family, NodeEnv::default());
        let ours = iptables_save::render(&sync.node_dump());
        let fam = rules_family(case.family);
        let save = match verify::kernel_roundtrip(&ours, fam, backend) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{}: the kernel refused svcpath's dump: {e}", case.name));
                continue;
            }
        };
        let local = case.node.addresses.clone();
        let a = Dataplane::from_text(ours, "svcpath", fam, local.clone()).unwrap();
        let b = match Dataplane::from_text(save.clone(), "iptables-save", fam, local) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!(
                    "{}: svcpath cannot read the kernel's iptables-save: {e}\n{save}",
                    case.name
                ));
                continue;
            }
        };
        for req in probes(case) {
            let (x, y) = (summary(&a, &req), summary(&b, &req));
            compared += 1;
            let same = x.len() == y.len()
                && x.iter().zip(&y).all(|((k1, p1), (k2, p2))| k1 == k2 && (p1 - p2).abs() < 1e-9);
            if !same {
                failures.push(format!(
                    "{}: {} {} -> {}:{}: svcpath text {x:?} vs kernel save {y:?}",
                    case.name, req.proto, req.src, req.dst, req.dport
                ));
            }
        }
    }
    eprintln!(
        "{backend:?}: {} clusters loaded, {compared} packets traced on both texts",
        all.len()
    );
    assert!(compared > 100, "only {compared} packets compared");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Issue #2 acceptance: the kernel (iptables-nft) accepts every generated dump, and its
/// iptables-save traces identically.
#[test]
fn kernel_accepts_every_dump_and_its_save_traces_identically_nft() {
    roundtrip_all(Backend::Nft);
}

/// The same with iptables-legacy, where the kernel has it.
#[test]
fn kernel_accepts_every_dump_and_its_save_traces_identically_legacy() {
    roundtrip_all(Backend::Legacy);
}

/// The kernel rewrites kube-proxy's spelling; svcpath reads it back as the same rule set.
#[test]
fn kernel_canonical_order_of_the_default_cluster() {
    if !kernel_available(Backend::Nft) {
        return;
    }
    let c = default_cluster();
    let node = c.node_view(None, &[]).unwrap();
    let ours = iptables_save::render(
        &iptables::sync(&c, &node, IpFamily::V4, NodeEnv::default()).node_dump(),
    );
    let save =
        verify::kernel_roundtrip(&ours, svcpath::model::rules::Family::V4, Backend::Nft).unwrap();
    assert!(save.contains("-d 10.96.0.10/32 -p tcp -m comment --comment \"default/my-app-service:http cluster IP\" -m tcp --dport 80"), "{save}");
    assert!(save.contains("--probability 0.33333333349"), "{save}");
}

/// xt_recent remembers at most `ip_list_tot` addresses per list and forgets the least recently
/// seen one first. The kernel's own list, filled through `/proc/net/xt_recent/NAME` (which adds
/// and refreshes entries with the same code as `--set`), holds exactly the addresses svcpath's
/// model keeps.
#[test]
fn kernel_recent_list_evicts_like_the_model() {
    use svcpath::dataplane::netfilter::{Effect, RecentState};
    if !kernel_available(Backend::Nft) {
        return;
    }
    let tot: usize = std::fs::read_to_string("/sys/module/xt_recent/parameters/ip_list_tot")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    let ns = verify::Netns::create().unwrap();
    let timeout = std::time::Duration::from_secs(20);
    let rules = "*filter\n-A INPUT -m recent --name SVCPATH-T --rcheck --seconds 60 --reap -j ACCEPT\nCOMMIT\n";
    let restore = Backend::Nft.restore_program(svcpath::model::rules::Family::V4);
    let out = ns.exec(&restore, &[], Some(rules.as_bytes()), timeout).unwrap();
    assert!(out.success(), "{restore}: {}", out.stderr);
    // Addresses in the order they are added or refreshed: the first `tot` new ones, three of
    // the oldest refreshed, then more new ones than the refreshed three leave room for.
    let addr = |n: usize| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
    let mut order: Vec<usize> = (1..=tot).collect();
    order.extend([1, 5, 2]);
    order.extend(tot + 1..=tot + 7);
    let script: String = order
        .iter()
        .map(|&n| format!("echo +{} > /proc/net/xt_recent/SVCPATH-T\n", addr(n)))
        .chain(["cat /proc/net/xt_recent/SVCPATH-T\n".to_owned()])
        .collect();
    let out = ns.exec("sh", &["-e"], Some(script.as_bytes()), timeout).unwrap();
    assert!(out.success(), "sh: {}", out.stderr);
    let mut kernel: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("src=")?.split_whitespace().next().map(str::to_owned))
        .collect();
    kernel.sort();

    let mut model = RecentState { capacity: tot, ..RecentState::default() };
    for (i, &n) in order.iter().enumerate() {
        let a: IpAddr = addr(n).parse().unwrap();
        model.apply(&Effect::RecentSet { list: "SVCPATH-T".into(), addr: a }, i as f64);
    }
    let mut ours: Vec<String> =
        model.lists["SVCPATH-T"].addresses().map(|a| a.to_string()).collect();
    ours.sort();
    assert_eq!(kernel.len(), tot, "the kernel keeps ip_list_tot addresses");
    assert_eq!(kernel, ours);
    // Refreshed early addresses survive; the oldest never refreshed ones are gone.
    assert!(kernel.contains(&addr(1)) && kernel.contains(&addr(5)) && kernel.contains(&addr(2)));
    assert!(!kernel.contains(&addr(3)) && !kernel.contains(&addr(4)), "{kernel:?}");
}

/// Every cluster's nftables table (kube-proxy's nftables proxier) loads with `nft -f` in a
/// throwaway namespace; the kernel's `nft list ruleset` has the same chains, sets, maps, DNATs
/// and map elements, and both its `nft -j list ruleset` (svcpath::formats::nft_json) and its
/// `nft list ruleset` (svcpath::formats::nft_text) read back as the same table.
#[test]
fn kernel_loads_every_nftables_table_and_lists_it_back() {
    use svcpath::formats::{nft, nft_json, nft_text};
    use svcpath::kubeproxy::nftables;
    use svcpath::model::nft::Expr;
    if let Err(e) = verify::nft_roundtrip("") {
        eprintln!("skipped: the nftables kernel test needs root and nft: {e}");
        return;
    }
    let mut checked = 0;
    for case in nft_cases() {
        let table = nftables::sync(&case.cluster, &case.node, case.family);
        let text = nft::render(&table);
        let listed = verify::nft_roundtrip(&text)
            .unwrap_or_else(|e| panic!("{}: the kernel refused the table: {e}\n{text}", case.name));
        // The text listing.
        let l = &listed.text;
        for c in &table.chains {
            assert!(l.contains(&format!("chain {} {{", c.name)), "{}: {}", case.name, c.name);
        }
        for s in &table.sets {
            assert!(l.contains(&format!("set {} {{", s.name)), "{}: {}", case.name, s.name);
        }
        for m in &table.maps {
            assert!(l.contains(&format!("map {} {{", m.name)), "{}: {}", case.name, m.name);
        }
        let rules = || table.chains.iter().flat_map(|c| &c.rules);
        let dnats = rules().filter(|r| r.exprs.iter().any(|e| matches!(e, Expr::Dnat { .. })));
        assert_eq!(l.matches(" dnat ").count(), dnats.count(), "{}", case.name);
        // Each map element's verdict is listed once (`KEY : goto CHAIN` or `: drop`).
        let verdicts: usize = table.maps.iter().map(|m| m.elements.len()).sum();
        let numgen: usize = rules()
            .filter_map(|r| match r.exprs.first() {
                Some(Expr::Numgen(v)) => Some(v.len()),
                _ => None,
            })
            .sum();
        let listed_verdicts = l.matches(" : goto ").count()
            + l.matches(" : drop").count()
            + l.matches(" : jump ").count();
        assert_eq!(listed_verdicts, verdicts + numgen, "{}", case.name);
        // The JSON listing, read back.
        let listing =
            nft_json::parse(&listed.json).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(listing.tables.len(), 1, "{}", case.name);
        let (back, ours) = (
            crate::kubeproxy_nftables::canonical(&listing.tables[0]),
            crate::kubeproxy_nftables::canonical(&table),
        );
        let only = |a: &str, b: &str| -> Vec<String> {
            a.lines().filter(|l| !b.lines().any(|m| m == *l)).map(str::to_owned).collect()
        };
        assert!(
            back == ours,
            "{}: read back only {:#?}\nrendered only {:#?}",
            case.name,
            only(&back, &ours),
            only(&ours, &back)
        );
        // The text listing, read back: the same table as rendered and as the JSON read, with
        // the table and chain comments that the JSON listing leaves out.
        let from_text =
            nft_text::parse(&listed.text).unwrap_or_else(|e| panic!("{}: {e}\n{l}", case.name));
        assert_eq!(from_text.tables.len(), 1, "{}", case.name);
        assert!(from_text.warnings.is_empty(), "{}: {:?}", case.name, from_text.warnings);
        assert!(from_text.affinity.is_empty(), "{}", case.name);
        let text_back = crate::kubeproxy_nftables::canonical(&from_text.tables[0]);
        assert!(
            text_back == ours,
            "{}: read from the text only {:#?}\nrendered only {:#?}",
            case.name,
            only(&text_back, &ours),
            only(&ours, &text_back)
        );
        assert_eq!(text_back, back, "{}", case.name);
        let t = &from_text.tables[0];
        assert_eq!(t.comment, table.comment, "{}", case.name);
        for c in &table.chains {
            let listed_chain = t.chain(&c.name).map(|lc| (&lc.comment, &lc.base));
            assert_eq!(listed_chain, Some((&c.comment, &c.base)), "{}: {}", case.name, c.name);
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} clusters checked");
}
