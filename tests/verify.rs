//! `svcpath verify` end to end against the real kernel: the default cluster, every sample under
//! `rulesets/`, a deliberately wrong model, calibration, and nothing left behind after a run or
//! a SIGINT.
//!
//! These tests need root, `ip` and the iptables tools; where they cannot run they print
//! `skipped: …` and pass (CI installs the tools and runs as root).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::default::{DEFAULT_YAML, default_cluster};
use svcpath::model::{IpFamily, load};
use svcpath::study::dataplane::Dataplane;
use svcpath::study::verify::{self as sv, Expectation, Fate, PlanOptions, Setting, SourceClass};
use svcpath::verify::traffic::AgentCommand;
use svcpath::verify::{self, Backend, CheckOptions};

use crate::harness::{dirs_with, have_nfacct, root, svcpath, temp_with};

/// The svcpath binary these tests run.
const BIN: &str = env!("CARGO_BIN_EXE_svcpath");

/// Whether verify can run here; prints why not.
fn kernel_available(test: &str, backend: Backend) -> bool {
    if let Err(e) = verify::check_environment(backend) {
        eprintln!("skipped: {test} needs root and the iptables tools: {e}");
        return false;
    }
    if !have_nfacct(test) {
        return false;
    }
    if let Err(e) = verify::probe_backend(backend, svcpath::model::rules::Family::V4) {
        eprintln!("skipped: {test}: {backend:?} backend unusable here: {e}");
        return false;
    }
    true
}

/// The host's own rules, every backend and family, without the dated comment lines.
fn host_save() -> String {
    let mut out = String::new();
    for p in
        ["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"]
    {
        if let Ok(o) = Command::new(p).stderr(Stdio::null()).output() {
            out.push_str(&verify::strip_save_comments(&String::from_utf8_lossy(&o.stdout)));
        }
    }
    out
}

/// svcpath namespaces whose creating process is gone (what a run left behind).
fn orphaned_namespaces() -> Vec<String> {
    verify::netns::list_namespaces()
        .into_iter()
        .filter(|n| {
            verify::netns::parse_name(n)
                .is_some_and(|(pid, _)| !Path::new(&format!("/proc/{pid}")).exists())
        })
        // Listed just before its process deleted it and exited: gone now.
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect()
}

/// svcpath namespaces created by process `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    verify::netns::list_namespaces()
        .into_iter()
        .filter(|n| verify::netns::parse_name(n).is_some_and(|(p, _)| p == pid))
        .collect()
}

/// A Service without endpoints, added to the default cluster.
const EMPTY_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\n\
spec:\n  type: ClusterIP\n  clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20]\n  ports:\n\
\x20 - {name: web, protocol: TCP, port: 80, targetPort: 8080}\n";

fn probes_to<'v>(run: &'v Value, dst: &str) -> Vec<&'v Value> {
    run["judgement"]["probes"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["entry"]["dst"] == dst).collect())
        .unwrap_or_default()
}

fn class_of(p: &Value) -> &str {
    p["class"].as_str().unwrap_or("")
}

/// Acceptance: the default cluster passes (three endpoints, shares within bounds, masquerade as
/// predicted for pod and external sources) and a Service without endpoints is REJECTed; nothing
/// is left behind and the host's rules are untouched.
#[test]
fn verify_default_cluster_and_a_service_without_endpoints() {
    if !kernel_available("verify_default_cluster_and_a_service_without_endpoints", Backend::Nft) {
        return;
    }
    let before = host_save();
    let dir = temp_with(&[("c.yaml", &format!("{DEFAULT_YAML}\n---\n{EMPTY_SERVICE}"))]);
    let started = Instant::now();
    let out = svcpath()
        .args(["verify", "--json", "--timeout-ms", "250", "--cluster"])
        .arg(dir.path().join("c.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let run: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!(
        "default + empty: {} flows in {:?}, {:.0} flows/s",
        run["flows"],
        started.elapsed(),
        run["flows_per_second"].as_f64().unwrap_or(0.0)
    );
    let svc = probes_to(&run, "10.96.0.10:80");
    let classes: Vec<&str> = svc.iter().map(|p| class_of(p)).collect();
    assert_eq!(classes, ["pod", "hairpin", "node", "external"]);
    for p in &svc {
        let rows = p["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{p}");
        for r in rows {
            assert!(r["observed"].as_u64().unwrap() > 0, "{p}");
            assert_eq!(r["fate"]["kind"], "endpoint");
            let masq = r["masquerade"].as_bool().unwrap();
            match class_of(p) {
                "pod" => assert!(!masq, "a pod keeps its source: {p}"),
                "external" => assert!(masq, "an outside client is masqueraded: {p}"),
                // An endpoint reaching itself is masqueraded, reaching another one is not.
                "hairpin" => assert_eq!(masq, r["fate"]["endpoint"] == "10.1.0.1:8080", "{p}"),
                _ => {}
            }
        }
        assert!(p["chi_square"][2].as_f64().unwrap() >= sv::ALPHA, "{p}");
        assert_eq!(p["problems"].as_array().unwrap().len(), 0);
    }
    let empty = probes_to(&run, "10.96.0.20:80");
    assert_eq!(empty.len(), 3);
    for p in empty {
        let rows = p["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{p}");
        assert_eq!(
            rows[0]["fate"]["kind"], "refused",
            "REJECT for a Service without endpoints: {p}"
        );
        assert_eq!(rows[0]["observed"], p["flows"]);
    }
    assert_eq!(orphaned_namespaces(), Vec::<String>::new());
    assert_eq!(before, host_save(), "the host's rules changed");
}

/// Every `rulesets/**/cluster.yaml` (and the default cluster), in each family its Services use;
/// the default cluster also with iptables-legacy.
#[test]
fn verify_every_ruleset_sample() {
    if !kernel_available("verify_every_ruleset_sample", Backend::Nft) {
        return;
    }
    let before = host_save();
    let mut files: Vec<PathBuf> = vec![root().join("rulesets/default.yaml")];
    files.extend(
        dirs_with(&root().join("rulesets"), "cluster.yaml")
            .into_iter()
            .map(|d| d.join("cluster.yaml")),
    );
    let legacy = verify::probe_backend(Backend::Legacy, svcpath::model::rules::Family::V4).is_ok();
    let started = Instant::now();
    let mut runs = 0;
    for f in &files {
        let cluster = load::load_path(f).unwrap_or_else(|e| panic!("{e}")).cluster;
        let ips: Vec<IpAddr> =
            cluster.services.iter().flat_map(|s| s.cluster_ips.iter().copied()).collect();
        let mut families = Vec::new();
        if ips.iter().any(IpAddr::is_ipv4) {
            families.push("ipv4");
        }
        if ips.iter().any(IpAddr::is_ipv6) {
            families.push("ipv6");
        }
        let mut backends = vec!["nft"];
        if legacy && f.ends_with("default.yaml") {
            backends.push("legacy");
        }
        for family in &families {
            for backend in &backends {
                let t = Instant::now();
                let out = svcpath()
                    .args(["verify", "--flows", "40", "--timeout-ms", "250", "--family", family])
                    .args(["--iptables", backend, "--cluster"])
                    .arg(f)
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{} ({family}, {backend}):\n{stdout}\n{}",
                    f.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let summary = stdout.lines().nth(1).unwrap_or("");
                eprintln!("{} {family} {backend}: {summary} [{:?}]", f.display(), t.elapsed());
                runs += 1;
            }
        }
    }
    eprintln!("{runs} verify runs in {:?}", started.elapsed());
    assert_eq!(orphaned_namespaces(), Vec::<String>::new());
    assert_eq!(before, host_save(), "the host's rules changed");
}

/// The check can fail: real observations of the default cluster agree with svcpath, but not with
/// a model that moves one endpoint's probability to another, or that predicts no masquerade.
#[test]
fn a_wrong_model_makes_verify_fail() {
    if !kernel_available("a_wrong_model_makes_verify_fail", Backend::Nft) {
        return;
    }
    let cluster = default_cluster();
    let node = cluster.node_view(None, &[]).unwrap();
    let dp = Dataplane::from_cluster(&cluster, "default", &node, IpFamily::V4, NodeEnv::default())
        .unwrap();
    let setting = Setting::from_cluster(&cluster, &node, IpFamily::V4);
    let agent =
        AgentCommand { program: PathBuf::from(BIN), prefix: vec!["__agent".to_owned()], env: None };
    let mut opts = CheckOptions::with_agent(agent);
    opts.plan = PlanOptions { flows: 60, max_flows: 60 };
    opts.flow_timeout = Duration::from_millis(250);
    let obs = verify::observe(&dp, &setting, &opts).unwrap();
    let right = sv::judge(&dp, &obs.plan, &obs.seen).unwrap();
    assert!(right.ok(), "{:#?}", right.probes);

    let exp = sv::expectations(&dp, &obs.plan, &obs.seen).unwrap();
    let mut at = 0;
    for probe in &obs.plan.probes {
        let n = probe.sources.len();
        let seen = &obs.seen[at..at + n];
        // One endpoint's probability flipped onto the next.
        let flipped: Vec<Expectation> = exp[at..at + n]
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let p0 = e[0].probability;
                e[0].probability = 0.0;
                e[1].probability += p0;
                e
            })
            .collect();
        let r = sv::compare(probe, &flipped, seen, &obs.plan.node_addrs);
        assert!(!r.ok(), "{} {}: a flipped probability passed", probe.entry.dst, probe.class);
        // Masquerade predicted the other way round (only tellable where the source is not the
        // node's own address).
        if probe.class != SourceClass::Node {
            let unmasked: Vec<Expectation> = exp[at..at + n]
                .iter()
                .map(|e| {
                    e.iter().map(|p| sv::Predicted { masquerade: !p.masquerade, ..*p }).collect()
                })
                .collect();
            let r = sv::compare(probe, &unmasked, seen, &obs.plan.node_addrs);
            assert!(r.masquerade_mismatches > 0, "{}: masquerade flip passed", probe.class);
            assert!(!r.ok());
        }
        // An endpoint that does not exist.
        let moved: Vec<Expectation> = exp[at..at + n]
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e[0].fate = Fate::Endpoint("10.1.0.99:8080".parse().unwrap());
                e
            })
            .collect();
        assert!(!sv::compare(probe, &moved, seen, &obs.plan.node_addrs).ok());
        at += n;
    }
}

/// `verify --mode nftables`: kube-proxy's nftables table for a cluster, loaded with `nft -f`,
/// agrees with svcpath's nftables walk (session affinity held over repeated connections, source
/// ranges allowed and denied); the same observations judged against a wrong table fail.
#[test]
fn verify_nftables_mode_agrees_and_a_wrong_table_fails() {
    use svcpath::dataplane::nftables::NftDataplane;
    use svcpath::kubeproxy::nftables;
    use svcpath::study::verify::NftModel;
    if let Err(e) = verify::check_nft_environment() {
        eprintln!("skipped: verify --mode nftables needs root, ip and nft: {e}");
        return;
    }
    let before = host_save();
    for (file, classes) in [
        ("rulesets/affinity/cluster.yaml", &["repeat"][..]),
        (
            "rulesets/loadbalancer-source-ranges/cluster.yaml",
            &["external_allowed", "external_denied"][..],
        ),
    ] {
        let out = svcpath()
            .args(["verify", "--mode", "nftables", "--json", "--timeout-ms", "250", "--cluster"])
            .arg(root().join(file))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{file}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let run: Value = serde_json::from_str(&stdout).unwrap();
        assert!(run["backend"].as_str().unwrap().starts_with("nftables"), "{run}");
        let probes = run["judgement"]["probes"].as_array().unwrap();
        for class in classes {
            let of_class: Vec<&Value> = probes.iter().filter(|p| class_of(p) == *class).collect();
            assert!(!of_class.is_empty(), "{file}: no {class} probe");
            if *class == "repeat" {
                // One client, ten connections, one endpoint: the affinity set holds it.
                for p in of_class {
                    let reached: Vec<&Value> = p["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|r| r["observed"].as_u64().unwrap() > 0)
                        .collect();
                    assert_eq!(reached.len(), 1, "{file}: {p}");
                }
            }
        }
    }

    // The default cluster's observations, judged against the right table and two wrong ones.
    let cluster = default_cluster();
    let node = cluster.node_view(None, &[]).unwrap();
    let model_of = |c: &svcpath::model::Cluster| NftModel {
        dp: NftDataplane::new(nftables::sync(c, &node, IpFamily::V4)),
        local: node.addresses.clone(),
    };
    let right = model_of(&cluster);
    let text = svcpath::formats::nft::render(right.dp.table());
    let setting = Setting::from_cluster(&cluster, &node, IpFamily::V4);
    let agent =
        AgentCommand { program: PathBuf::from(BIN), prefix: vec!["__agent".to_owned()], env: None };
    let mut opts = CheckOptions::with_agent(agent);
    opts.plan = PlanOptions { flows: 60, max_flows: 60 };
    opts.flow_timeout = Duration::from_millis(250);
    let obs = verify::observe_nft(&right, &text, &setting, &opts).unwrap();
    let judged = sv::judge(&right, &obs.plan, &obs.seen).unwrap();
    assert!(judged.ok(), "{:#?}", judged.probes);
    // masqueradeAll in the model only: a pod's flows are predicted masqueraded, the kernel keeps
    // their source.
    let mut masq_all = cluster.clone();
    masq_all.config.nft_masquerade_all = true;
    let judged = sv::judge(&model_of(&masq_all), &obs.plan, &obs.seen).unwrap();
    let pod = judged.probes.iter().find(|p| p.class == SourceClass::Pod).unwrap();
    assert!(pod.masquerade_mismatches > 0 && !pod.ok(), "{pod:#?}");
    // One endpoint missing from the model: the kernel reaches it where svcpath says never.
    let mut fewer = cluster.clone();
    for slice in &mut fewer.endpoint_slices {
        slice.endpoints.retain(|e| !e.addresses.iter().any(|a| a.to_string() == "10.1.0.3"));
    }
    let judged = sv::judge(&model_of(&fewer), &obs.plan, &obs.seen).unwrap();
    assert!(!judged.ok());
    assert!(
        judged.probes.iter().all(|p| p.problems.iter().any(|m| m.contains("10.1.0.3:8080"))),
        "{:#?}",
        judged.probes
    );
    assert_eq!(orphaned_namespaces(), Vec::<String>::new());
    assert_eq!(before, host_save(), "the host's rules changed");
}

/// `--calibrate` measures a positive cost per rule on a small synthetic ruleset (loose bounds:
/// the figure is printed, not pinned).
#[test]
fn calibrate_reports_a_cost_per_rule() {
    if !kernel_available("calibrate_reports_a_cost_per_rule", Backend::Nft) {
        return;
    }
    let out = svcpath()
        .args(["verify", "--calibrate", "--json", "--calibrate-services", "1000"])
        .args(["--flows", "150", "--calibrate-rounds", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let c: Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("calibration: {c}");
    assert_eq!(c["services"], 1000);
    assert!(c["rules_last"].as_u64().unwrap() >= c["rules_first"].as_u64().unwrap() + 999);
    let per_rule = c["per_rule_ns"].as_f64().unwrap();
    assert!(per_rule.is_finite() && per_rule > 0.0 && per_rule < 10_000.0, "{c}");
    assert!(c["per_flow_ns"].as_f64().unwrap() > 0.0, "{c}");
}

/// A SIGINT in the middle of a run removes every namespace of that run, and the host's rules are
/// byte-identical to before.
#[test]
fn sigint_mid_run_leaves_nothing_behind() {
    if !kernel_available("sigint_mid_run_leaves_nothing_behind", Backend::Nft) {
        return;
    }
    let before = host_save();
    let mut child = Command::new(BIN)
        .args(["verify", "--flows", "4000", "--max-flows", "4000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while namespaces_of(pid).len() < 3 {
        assert!(Instant::now() < deadline, "the run never created its namespaces");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it reach the sending phase.
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "the run ended before the signal");
    let killed = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("svcpath verify did not exit after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "interrupted, it must not report success: {status:?}");
    assert_eq!(namespaces_of(pid), Vec::<String>::new(), "namespaces left after SIGINT");
    assert_eq!(before, host_save(), "the host's rules changed");
}

/// Errors exit 2 with a located message: a dump without node addresses.
#[test]
fn verify_dump_without_node_ip_is_an_error() {
    let dir = temp_with(&[("d.txt", "*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")]);
    let out = svcpath()
        .args(["verify", "--iptables-save"])
        .arg(dir.path().join("d.txt"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // Not root or without the iptables tools: the environment error comes first; otherwise the
    // missing --node-ip.
    let environment = stderr.contains("needs root") || stderr.contains("install the iptables");
    assert!(stderr.contains("--node-ip") || environment, "{stderr}");
}

/// A dump input: the entries come from its `KUBE-SERVICES` rules, the listeners from its DNAT
/// targets, the pod source from its `! -s CIDR -j KUBE-MARK-MASQ` rule.
#[test]
fn verify_a_dump_takes_endpoints_from_its_dnat_targets() {
    if !kernel_available("verify_a_dump_takes_endpoints_from_its_dnat_targets", Backend::Nft) {
        return;
    }
    let rules = svcpath().arg("rules").output().unwrap();
    assert!(rules.status.success());
    let dir = temp_with(&[("dump.txt", &String::from_utf8_lossy(&rules.stdout))]);
    let out = svcpath()
        .args(["verify", "--json", "--timeout-ms", "250", "--node-ip", "192.168.1.10"])
        .arg("--iptables-save")
        .arg(dir.path().join("dump.txt"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let run: Value = serde_json::from_str(&stdout).unwrap();
    let svc = probes_to(&run, "10.96.0.10:80");
    let classes: Vec<&str> = svc.iter().map(|p| class_of(p)).collect();
    assert_eq!(classes, ["pod", "hairpin", "node", "external"]);
    assert_eq!(svc[0]["entry"]["service"], "default/my-app-service:http");
    let reached: Vec<&str> = svc[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["observed"].as_u64().unwrap_or(0) > 0)
        .filter_map(|r| r["fate"]["endpoint"].as_str())
        .collect();
    assert_eq!(reached, ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]);
}

/// kube-proxy's nftables table carries real flows in a throwaway topology as svcpath's nftables
/// walk predicts: every endpoint the walk gives a share of at least a third is reached, no flow
/// reaches anything the walk does not allow, masquerade is seen exactly where the walk applies
/// it, REJECT and DROP where it says so, and a ClientIP-affinity Service keeps a client on one
/// endpoint.
#[test]
fn nftables_tables_carry_flows_as_the_nftables_walk_predicts() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::SocketAddr;
    use svcpath::dataplane::nftables::{Fate as NftFate, NftDataplane, NftEnv, NftPacket};
    use svcpath::kubeproxy::endpoints::service_ports;
    use svcpath::kubeproxy::nftables;
    use svcpath::model::rules::Family;
    use svcpath::verify::{Flow, FlowResult, RunOptions, Topology};

    if let Err(e) = verify::check_nft_environment() {
        eprintln!("skipped: the nftables traffic test needs root, ip and nft: {e}");
        return;
    }
    let files = [
        None,
        Some(root().join("tests/data/kubeproxy-nftables/TestOverallNFTablesRules/cluster.yaml")),
        Some(root().join("rulesets/external-traffic-local/cluster.yaml")),
        Some(root().join("rulesets/no-endpoints/cluster.yaml")),
        Some(root().join("rulesets/affinity/cluster.yaml")),
    ];
    let agent =
        AgentCommand { program: PathBuf::from(BIN), prefix: vec!["__agent".to_owned()], env: None };
    let mut opts = RunOptions::with_agent(agent);
    opts.flow_timeout = Duration::from_millis(250);
    let mut checked_probes = 0;
    for file in files {
        let cluster = match &file {
            Some(f) => load::load_path(f).unwrap_or_else(|e| panic!("{e}")).cluster,
            None => default_cluster(),
        };
        let name = file.as_ref().map_or("default".to_owned(), |f| f.display().to_string());
        let node = cluster.node_view(None, &[]).unwrap();
        let family = IpFamily::V4;
        let table = nftables::sync(&cluster, &node, family);
        let text = svcpath::formats::nft::render(&table);
        let dp = NftDataplane::new(table);
        let node_addrs: Vec<IpAddr> =
            node.addresses_of(family).filter(|a| !a.is_loopback()).collect();
        let env = NftEnv { local: node.addresses.clone(), ..NftEnv::default() };
        let pod: IpAddr = "10.0.9.9".parse().unwrap();
        let pod =
            cluster.config.cluster_cidrs.iter().find(|n| n.is_ipv4()).map_or(pod, |n| {
                match n.ip() {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) | 0x0909).into()),
                    v6 => v6,
                }
            });
        let outside: IpAddr = "203.0.113.2".parse().unwrap();
        // Probes: every entry point of every TCP service port, from a pod and from outside.
        let mut probes: Vec<(IpAddr, SocketAddr, bool)> = Vec::new();
        for sp in service_ports(&cluster, &node, family) {
            if sp.proto != svcpath::model::Protocol::Tcp {
                continue;
            }
            let port = sp.port.port;
            let mut dests: Vec<SocketAddr> = vec![SocketAddr::new(sp.cluster_ip, port)];
            dests.extend(sp.external_ips.iter().map(|ip| SocketAddr::new(*ip, port)));
            dests.extend(sp.lb_vips.iter().map(|ip| SocketAddr::new(*ip, port)));
            if let (Some(np), Some(nip)) = (sp.node_port, node_addrs.first()) {
                dests.push(SocketAddr::new(*nip, np));
            }
            // An endpoint sending to its own Service: the hairpin case.
            let hairpin = sp.endpoints.first().map(|e| e.ip).filter(|ip| ip.is_ipv4());
            for (k, d) in dests.into_iter().enumerate() {
                for src in [pod, outside] {
                    probes.push((src, d, sp.affinity.is_some()));
                }
                if let (0, Some(h)) = (k, hairpin) {
                    probes.push((h, d, sp.affinity.is_some()));
                }
            }
        }
        // Enough flows to see each of up to three endpoints (a miss has probability (2/3)^40);
        // a probe with one predicted outcome needs few.
        let mut spans = Vec::new();
        let mut flows = Vec::new();
        let mut endpoints: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut predictions = Vec::new();
        for &(src, dst, _) in &probes {
            let pkt = NftPacket {
                src,
                dst: dst.ip(),
                proto: svcpath::model::Protocol::Tcp,
                dport: dst.port(),
                in_iface: "eth0".into(),
            };
            let outcomes = dp.trace(&env, &pkt).unwrap();
            endpoints.extend(outcomes.iter().filter_map(|o| o.dnat));
            let n = if outcomes.len() == 1 { 6 } else { 40 };
            spans.push((flows.len(), n));
            predictions.push(outcomes);
            for _ in 0..n {
                flows.push(Flow {
                    src,
                    dst,
                    proto: svcpath::model::Protocol::Tcp,
                    from_node: false,
                });
            }
        }
        let topology = Topology {
            node_addrs: node_addrs.clone(),
            endpoints: endpoints.iter().map(|e| (svcpath::model::Protocol::Tcp, *e)).collect(),
            pod_addrs: vec![pod],
            client_addrs: vec![outside],
        };
        let report = verify::run_flows_nft(&text, Family::V4, &topology, &flows, &opts)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, &(src, dst, sticky)) in probes.iter().enumerate() {
            let outcomes = &predictions[i];
            let (first, n) = spans[i];
            let seen = &report.observed[first..first + n];
            let mut reached: BTreeMap<SocketAddr, usize> = BTreeMap::new();
            for o in seen {
                match &o.result {
                    FlowResult::Reached { endpoint, seen_source, .. } => {
                        let allowed = outcomes.iter().find(|m| m.dnat == Some(*endpoint));
                        let m = allowed.unwrap_or_else(|| {
                            panic!("{name}: {src} -> {dst} reached {endpoint}, the walk says {outcomes:#?}")
                        });
                        assert_eq!(
                            *seen_source != src,
                            m.masquerade,
                            "{name}: {src} -> {dst} via {endpoint}: seen from {seen_source}"
                        );
                        *reached.entry(*endpoint).or_default() += 1;
                    }
                    FlowResult::Rejected { reason } => assert!(
                        outcomes.iter().all(|m| m.fate == NftFate::Reject),
                        "{name}: {src} -> {dst} refused ({reason}), the walk says {outcomes:#?}"
                    ),
                    FlowResult::Dropped => assert!(
                        outcomes.iter().all(|m| m.fate == NftFate::Drop
                            || (m.dnat.is_none() && m.fate == NftFate::Forward)),
                        "{name}: {src} -> {dst} dropped, the walk says {outcomes:#?}"
                    ),
                    FlowResult::Denied { reason } => {
                        panic!("{name}: {src} -> {dst} denied: {reason}")
                    }
                }
            }
            if sticky {
                assert!(reached.len() <= 1, "{name}: {src} -> {dst}: affinity broken: {reached:?}");
            } else {
                for m in outcomes.iter().filter(|m| m.probability >= 1.0 / 3.0 - 1e-9) {
                    if let Some(ep) = m.dnat {
                        assert!(
                            reached.contains_key(&ep),
                            "{name}: {src} -> {dst}: {ep} never reached in {n} flows: {reached:?}"
                        );
                    }
                }
            }
            checked_probes += 1;
        }
        eprintln!(
            "{name}: {} probes, {} flows, {:.0} flows/s",
            probes.len(),
            flows.len(),
            report.flows_per_second()
        );
    }
    assert!(checked_probes >= 20, "only {checked_probes} probes");
    assert_eq!(orphaned_namespaces(), Vec::<String>::new());
}
