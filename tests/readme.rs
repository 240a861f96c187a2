//! The "Service features" section of README.md, held to the binary.
//!
//! Between `<!-- service-features:begin -->` and `<!-- service-features:end -->`, every line of a
//! ``` block that starts with `svcpath ` (or `$ svcpath `) is a command; the lines after it, up to
//! the next command or the end of the block, are an excerpt of its output. The tests check that:
//! - every command runs from the repository root and succeeds;
//! - every excerpt line is a line of the real output (spaces at both ends ignored; `…` stands for
//!   any text within the line; a line that is only `…` is skipped);
//! - every sample cluster under `rulesets/` is traced by some command, and every `--cluster` file a
//!   command names exists;
//! - each example, run again with `--json`, shows the behaviour its paragraph describes.
//!
//! Commands are split into words as a POSIX shell would for the simple cases used in the README
//! (spaces, `'…'` and `"…"` quoting); anything needing a real shell (pipes, redirections, `$`) is
//! refused, so every command can be pasted into a terminal and means the same there.

use std::path::Path;

use serde_json::Value;

use crate::harness::{dirs_with, root, svcpath};

const BEGIN: &str = "<!-- service-features:begin -->";
const END: &str = "<!-- service-features:end -->";
const FENCE: &str = "```";
const PROMPT: &str = "$ ";
const PROGRAM: &str = "svcpath";
const ELLIPSIS: &str = "…";

/// One command of the README section and the output lines shown under it.
#[derive(Debug, Clone)]
struct Example {
    /// 1-based line of the command in README.md.
    line: usize,
    /// The command as written (without the prompt).
    text: String,
    /// Its words, `svcpath` first.
    argv: Vec<String>,
    /// The excerpt lines under it, with their README line numbers.
    excerpt: Vec<(usize, String)>,
}

/// The section between the markers, with the README line number of its first line.
fn section() -> (usize, String) {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    let start = text.find(BEGIN).expect("README.md has the service-features:begin marker");
    let end = text.find(END).expect("README.md has the service-features:end marker");
    assert!(start < end, "the service-features markers are in the wrong order");
    let body_start = start + BEGIN.len();
    let first_line = text[..body_start].lines().count();
    (first_line, text[body_start..end].to_owned())
}

/// Splits a command line into words: spaces separate, single and double quotes group.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                '|' | '&' | ';' | '<' | '>' | '$' | '`' | '\\' | '*' | '?' => {
                    return Err(format!("'{c}' needs a shell; quote it or drop it"));
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Every command of the section with its excerpt.
fn examples() -> Vec<Example> {
    let (first_line, text) = section();
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut current: Option<Example> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = first_line + i;
        if raw.trim_start().starts_with(FENCE) {
            in_block = !in_block;
            out.extend(current.take());
            continue;
        }
        if !in_block {
            continue;
        }
        let bare = raw.strip_prefix(PROMPT).unwrap_or(raw);
        if bare.starts_with(&format!("{PROGRAM} ")) {
            out.extend(current.take());
            let argv = split_words(bare)
                .unwrap_or_else(|e| panic!("README.md:{line_no}: {e} in `{bare}`"));
            current =
                Some(Example { line: line_no, text: bare.to_owned(), argv, excerpt: Vec::new() });
        } else if let Some(ex) = current.as_mut() {
            let t = raw.trim();
            if !t.is_empty() && t != ELLIPSIS {
                ex.excerpt.push((line_no, t.to_owned()));
            }
        }
    }
    assert!(!in_block, "README.md: a ``` block of the Service features section is not closed");
    out.extend(current);
    out
}

/// Whether `line` of the output shows `pattern` (`…` matches any text).
fn line_matches(pattern: &str, line: &str) -> bool {
    let line = line.trim();
    if !pattern.contains(ELLIPSIS) {
        return pattern == line;
    }
    let pieces: Vec<&str> = pattern.split(ELLIPSIS).collect();
    let mut rest = line;
    for (i, piece) in pieces.iter().enumerate() {
        let piece = if i == 0 { piece.trim_start() } else { piece };
        let piece = if i + 1 == pieces.len() { piece.trim_end() } else { piece };
        if i == 0 {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i + 1 == pieces.len() {
            return rest.ends_with(piece);
        } else {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Runs `argv` (its first word, `svcpath`, replaced by the binary) from the repository root.
fn run(argv: &[String]) -> std::process::Output {
    svcpath().current_dir(root()).args(&argv[1..]).output().expect("the binary runs")
}

/// The one README command whose text holds every string of `needles`, run with `--json`.
fn readme_json(needles: &[&str]) -> Value {
    readme_json_where(&format!("containing {needles:?}"), |t| needles.iter().all(|n| t.contains(n)))
}

/// The one README command whose text satisfies `pred` (described by `what`), run with `--json`.
fn readme_json_where(what: &str, pred: impl Fn(&str) -> bool) -> Value {
    let all = examples();
    let hits: Vec<&Example> = all.iter().filter(|e| pred(&e.text)).collect();
    assert_eq!(
        hits.len(),
        1,
        "expected exactly one README command {what}, found: {:#?}",
        hits.iter().map(|e| &e.text).collect::<Vec<_>>()
    );
    let mut argv = hits[0].argv.clone();
    argv.push("--json".to_owned());
    json(&argv, hits[0].line)
}

/// Runs a command with `--json` already in `argv` and parses its output.
fn json(argv: &[String], line: usize) -> Value {
    let out = run(argv);
    assert!(
        out.status.success(),
        "README.md:{line}: `{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("README.md:{line}: `{}`: not JSON: {e}", argv.join(" ")))
}

/// The same command as a README one, but on another cluster file (for contrasts).
fn json_with_cluster(needles: &[&str], cluster: &str) -> Value {
    let all = examples();
    let ex = all
        .iter()
        .find(|e| needles.iter().all(|n| e.text.contains(n)))
        .unwrap_or_else(|| panic!("no README command containing {needles:?}"));
    let mut argv = ex.argv.clone();
    let at = argv.iter().position(|w| w == "--cluster").expect("the command names a cluster");
    argv[at + 1] = cluster.to_owned();
    argv.push("--json".to_owned());
    json(&argv, ex.line)
}

fn outcomes(v: &Value) -> &Vec<Value> {
    v["outcomes"].as_array().expect("outcomes is an array")
}

/// The endpoints of the outcomes, sorted.
fn endpoints(v: &Value) -> Vec<String> {
    let mut eps: Vec<String> =
        outcomes(v).iter().filter_map(|o| o["endpoint"].as_str().map(str::to_owned)).collect();
    eps.sort();
    eps
}

/// The single outcome of a trace.
fn only_outcome(v: &Value) -> &Value {
    let os = outcomes(v);
    assert_eq!(os.len(), 1, "expected one outcome: {os:#?}");
    &os[0]
}

/// Whether the outcome's path has a matched rule in `table`/`chain` (a prefix for `KUBE-SVC-`…)
/// whose text contains `text`.
fn hit(o: &Value, table: &str, chain: &str, text: &str) -> bool {
    o["hops"].as_array().expect("hops is an array").iter().any(|h| {
        h["event"] == "match"
            && h["table"] == table
            && h["chain"].as_str().is_some_and(|c| c.starts_with(chain))
            && h["text"].as_str().is_some_and(|t| t.contains(text))
    })
}

/// The last matched rule of the outcome's path: (table, chain, text).
fn last_match(o: &Value) -> (String, String, String) {
    let h = o["hops"]
        .as_array()
        .expect("hops is an array")
        .iter()
        .rev()
        .find(|h| h["event"] == "match")
        .expect("the path matched a rule");
    (
        h["table"].as_str().unwrap_or_default().to_owned(),
        h["chain"].as_str().unwrap_or_default().to_owned(),
        h["text"].as_str().unwrap_or_default().to_owned(),
    )
}

fn prob(o: &Value) -> f64 {
    o["probability"].as_f64().expect("probability is a number")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ---------------------------------------------------------------------------------------------
// The section as a whole.

#[test]
fn split_words_handles_quotes_and_refuses_shell_syntax() {
    assert_eq!(
        split_words("svcpath trace '[fd00::1]:80' --from \"10.0.0.1\"").unwrap(),
        ["svcpath", "trace", "[fd00::1]:80", "--from", "10.0.0.1"]
    );
    assert!(split_words("svcpath rules | grep KUBE").is_err());
    assert!(split_words("svcpath trace 'x").is_err());
}

#[test]
fn line_matches_is_exact_unless_elided() {
    assert!(line_matches("1   a  b", "  1   a  b  "));
    assert!(!line_matches("1   a", "1   a  b"));
    assert!(line_matches(
        "#2 (line …) -A KUBE-X … -j DROP",
        "#2 (line 9) -A KUBE-X -p tcp -j DROP"
    ));
    assert!(!line_matches("#2 … -j ACCEPT", "#2 (line 9) -A KUBE-X -j DROP"));
}

#[test]
fn section_has_commands_with_excerpts() {
    let all = examples();
    assert!(all.len() >= 15, "only {} commands in the README section", all.len());
    for ex in &all {
        assert_eq!(ex.argv[0], PROGRAM, "README.md:{}", ex.line);
        assert!(!ex.excerpt.is_empty(), "README.md:{}: `{}` shows no output", ex.line, ex.text);
    }
}

/// Every command succeeds, and every excerpt line is in its output.
#[test]
fn section_commands_succeed_and_show_the_excerpts() {
    let mut problems = Vec::new();
    for ex in examples() {
        let out = run(&ex.argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            problems.push(format!(
                "README.md:{}: `{}` failed ({}): {}",
                ex.line,
                ex.text,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        for (line, pattern) in &ex.excerpt {
            if !stdout.lines().any(|l| line_matches(pattern, l)) {
                problems.push(format!(
                    "README.md:{line}: not in the output of `{}`:\n    {pattern}\n  output:\n{stdout}",
                    ex.text
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each sample cluster is documented, and each documented cluster file exists.
#[test]
fn every_ruleset_is_traced_by_the_readme() {
    let all = examples();
    let clusters: Vec<String> = all
        .iter()
        .flat_map(|e| e.argv.windows(2).filter(|w| w[0] == "--cluster" || w[0] == "--changed"))
        .map(|w| w[1].clone())
        .collect();
    for c in &clusters {
        assert!(root().join(c).is_file(), "the README names {c}, which does not exist");
    }
    for dir in dirs_with(&root().join("rulesets"), "cluster.yaml") {
        let rel = dir.strip_prefix(root()).unwrap_or(Path::new("")).join("cluster.yaml");
        let rel = rel.to_string_lossy().replace('\\', "/");
        assert!(clusters.contains(&rel), "{rel} is not traced by any README command");
    }
}

// ---------------------------------------------------------------------------------------------
// One test per feature: the JSON shows what the paragraph says.

#[test]
fn realistic_dns_spreads_over_both_coredns_pods() {
    let v = readme_json(&["kube-dns:dns", "rulesets/realistic/"]);
    assert_eq!(v["packet"]["proto"], "udp");
    assert_eq!(v["packet"]["dst"], "10.96.0.10:53");
    assert_eq!(endpoints(&v), ["10.244.0.2:53", "10.244.0.3:53"]);
    for o in outcomes(&v) {
        assert!(close(prob(o), 0.5), "{o}");
        assert_eq!(o["masquerade"], false);
    }
}

#[test]
fn realistic_ingress_lb_is_dropped_on_a_node_without_the_controller() {
    let v = readme_json(&["192.168.1.240:443", "rulesets/realistic/", "worker-2"]);
    let o = only_outcome(&v);
    assert_eq!(o["verdict"], "DROP");
    let (table, chain, text) = last_match(o);
    assert_eq!((table.as_str(), chain.as_str()), ("filter", "KUBE-EXTERNAL-SERVICES"));
    assert!(text.contains("has no local endpoints"), "{text}");
}

#[test]
fn nodeport_from_outside_reaches_every_endpoint_masqueraded() {
    let v = readme_json(&["rulesets/nodeport/"]);
    assert_eq!(v["packet"]["path"], "prerouting");
    assert_eq!(endpoints(&v), ["10.1.0.5:8080", "10.1.1.9:8080"]);
    for o in outcomes(&v) {
        assert_eq!(o["verdict"], "ACCEPT");
        assert_eq!(o["masquerade"], true, "{o}");
        assert!(close(prob(o), 0.5));
        assert!(hit(o, "nat", "KUBE-NODEPORTS", "--dport 30080"));
        assert!(hit(o, "nat", "KUBE-EXT-", "KUBE-MARK-MASQ"));
    }
}

#[test]
fn nodeport_addresses_primary_answers_only_on_the_primary_ip() {
    let v = readme_json(&["192.168.1.10:30080", "rulesets/nodeport-addresses/"]);
    assert_eq!(endpoints(&v), ["10.1.0.5:8080", "10.1.1.9:8080"]);
    assert!(hit(&outcomes(&v)[0], "nat", "KUBE-SERVICES", "-d 192.168.1.10 -j KUBE-NODEPORTS"));
    let v = readme_json(&["172.20.0.10:30080", "rulesets/nodeport-addresses/"]);
    let o = only_outcome(&v);
    assert_eq!(o["endpoint"], Value::Null, "the second address must not be translated");
    assert_eq!(o["delivery"], "local");
    assert!(!hit(o, "nat", "KUBE-NODEPORTS", ""));
}

#[test]
fn lb_source_ranges_let_allowed_clients_through_kube_fw() {
    let v = readme_json(&["rulesets/loadbalancer-source-ranges/", "198.51.100.20"]);
    assert_eq!(endpoints(&v), ["10.1.0.21:8443", "10.1.1.22:8443"]);
    for o in outcomes(&v) {
        assert_eq!(o["verdict"], "ACCEPT");
        assert!(hit(o, "nat", "KUBE-FW-", "-s 198.51.100.0/24 -j KUBE-EXT-"));
    }
}

#[test]
fn lb_source_ranges_drop_other_clients_in_kube_proxy_firewall() {
    let v =
        readme_json(&["203.0.113.50:443", "rulesets/loadbalancer-source-ranges/", "192.0.2.99"]);
    let o = only_outcome(&v);
    assert_eq!(o["verdict"], "DROP");
    assert_eq!(o["endpoint"], Value::Null);
    let (table, chain, text) = last_match(o);
    assert_eq!((table.as_str(), chain.as_str()), ("filter", "KUBE-PROXY-FIREWALL"));
    assert!(text.ends_with("-j DROP"), "{text}");
}

#[test]
fn lb_source_ranges_do_not_filter_the_node_port() {
    let v = readme_json(&["rulesets/loadbalancer-source-ranges/", ":31443"]);
    assert_eq!(endpoints(&v), ["10.1.0.21:8443", "10.1.1.22:8443"]);
    for o in outcomes(&v) {
        assert!(!hit(o, "nat", "KUBE-FW-", ""), "a NodePort never goes through KUBE-FW");
        assert!(hit(o, "nat", "KUBE-NODEPORTS", "-j KUBE-EXT-"));
    }
}

#[test]
fn lb_ipmode_proxy_leaves_the_lb_ip_alone() {
    let v = readme_json(&["203.0.113.70:443", "rulesets/lb-ipmode-proxy/"]);
    let o = only_outcome(&v);
    assert_eq!(o["endpoint"], Value::Null, "no DNAT for an ipMode Proxy ingress");
    assert_eq!(o["verdict"], "ACCEPT");
    assert_eq!(o["delivery"], "forward");
    assert!(!hit(o, "nat", "KUBE-SERVICES", "203.0.113.70"), "the LB IP must have no rule");
    let v = readme_json(&["192.168.1.10:30443", "rulesets/lb-ipmode-proxy/"]);
    assert_eq!(endpoints(&v), ["10.1.0.70:8443", "10.1.1.71:8443"]);
}

#[test]
fn external_ip_goes_through_kube_ext_masqueraded() {
    let v = readme_json(&["rulesets/external-ips/"]);
    assert_eq!(endpoints(&v), ["10.1.0.50:8080", "10.1.1.51:8080"]);
    for o in outcomes(&v) {
        assert_eq!(o["masquerade"], true);
        assert!(hit(o, "nat", "KUBE-SERVICES", "external IP"));
        assert!(hit(o, "nat", "KUBE-EXT-", "-j KUBE-SVC-"));
    }
}

#[test]
fn external_traffic_local_serves_local_pods_keeping_the_client_address() {
    let v = readme_json(&["rulesets/external-traffic-local/", "--node node-2"]);
    let o = only_outcome(&v);
    assert_eq!(o["endpoint"], "10.1.1.30:8080");
    assert_eq!(o["masquerade"], false, "eTP Local keeps the client address");
    assert!(hit(o, "nat", "KUBE-SVL-", "10.1.1.30:8080"));
}

#[test]
fn external_traffic_local_drops_on_a_node_without_local_endpoints() {
    let v = readme_json(&["rulesets/external-traffic-local/", "192.168.1.10:30300"]);
    let o = only_outcome(&v);
    assert_eq!(o["verdict"], "DROP");
    let (table, chain, text) = last_match(o);
    assert_eq!((table.as_str(), chain.as_str()), ("filter", "KUBE-EXTERNAL-SERVICES"));
    assert!(text.contains("has no local endpoints"), "{text}");
}

#[test]
fn health_check_node_port_is_accepted() {
    let v = readme_json(&["rulesets/external-traffic-local/", ":32100"]);
    let o = only_outcome(&v);
    assert_eq!(o["verdict"], "ACCEPT");
    assert_eq!(o["delivery"], "local");
    assert!(hit(o, "filter", "KUBE-NODEPORTS", "health check node port"));
}

#[test]
fn internal_traffic_local_uses_the_local_endpoint_or_drops() {
    let v = readme_json(&["rulesets/internal-traffic-local/", "--node node-1"]);
    let o = only_outcome(&v);
    assert_eq!(o["endpoint"], "10.1.0.40:4317");
    assert!(hit(o, "nat", "KUBE-SVL-", "10.1.0.40:4317"));
    let v = readme_json(&["rulesets/internal-traffic-local/", "--node node-2"]);
    let o = only_outcome(&v);
    assert_eq!(o["verdict"], "DROP");
    let (table, chain, text) = last_match(o);
    assert_eq!((table.as_str(), chain.as_str()), ("filter", "KUBE-SERVICES"));
    assert!(text.contains("has no local endpoints"), "{text}");
}

#[test]
fn terminating_fallback_picks_the_serving_terminating_pods() {
    let v = readme_json(&["rulesets/terminating/"]);
    // 10.1.0.61 is terminating but no longer serving, 10.1.1.63 is not ready: neither is used.
    assert_eq!(endpoints(&v), ["10.1.0.60:8080", "10.1.1.62:8080"]);
    for o in outcomes(&v) {
        assert_eq!(o["verdict"], "ACCEPT");
        assert!(close(prob(o), 0.5));
    }
}

#[test]
fn topology_hints_keep_this_zones_or_nodes_endpoints() {
    // web on node-a: only the two zone-a pods (zone-b and zone-c pods are hinted elsewhere).
    let v = readme_json(&["rulesets/topology-aware/", "10.96.90.1:80", "--node node-a"]);
    assert_eq!(endpoints(&v), ["10.1.0.11:8080", "10.1.0.12:8080"]);
    assert!(outcomes(&v).iter().all(|o| close(prob(o), 0.5)));
    let t = &v["topology"];
    assert_eq!(
        (t["mode"].as_str(), t["scope"].as_str()),
        (Some("PreferSameZone"), Some("zone zone-a"))
    );
    assert_eq!((t["used"].as_u64(), t["ready"].as_u64()), (Some(2), Some(4)));
    // cache on node-b: node hints beat the zone hints (both name node-b's pods here).
    let v = readme_json(&["rulesets/topology-aware/", "10.96.90.2:6379", "--node node-b"]);
    assert_eq!(endpoints(&v), ["10.1.1.22:6379", "10.1.1.23:6379"]);
    // cache on node-c: no pod hinted for node-c or zone-c, so every ready pod is used.
    let v = readme_json(&["rulesets/topology-aware/", "10.96.90.2:6379", "--node node-c"]);
    assert_eq!(endpoints(&v), ["10.1.0.21:6379", "10.1.1.22:6379", "10.1.1.23:6379"]);
    assert!(v.get("topology").is_none(), "no hint names node-c or zone-c: {}", v["topology"]);
    // On node-a the cache's node hints pick its one local pod, which a zone would not single out
    // on node-b: the rules differ per node.
    let a = json(
        &[
            "svcpath",
            "trace",
            "10.96.90.2:6379",
            "--cluster",
            "rulesets/topology-aware/cluster.yaml",
            "--node",
            "node-a",
            "--json",
        ]
        .map(str::to_owned),
        0,
    );
    assert_eq!(endpoints(&a), ["10.1.0.21:6379"]);
    // The IPVS proxier categorises the same way, and its trace says so too.
    let ipvs = json(
        &[
            "svcpath",
            "trace",
            "10.96.90.1:80",
            "--cluster",
            "rulesets/topology-aware/cluster.yaml",
            "--node",
            "node-b",
            "--mode",
            "ipvs",
            "--json",
        ]
        .map(str::to_owned),
        0,
    );
    assert_eq!(ipvs["topology"]["used"], 1, "{}", ipvs["topology"]);
    assert_eq!(endpoints(&ipvs), ["10.1.1.13:8080"]);
}

#[test]
fn no_endpoints_is_rejected() {
    let v = readme_json(&["rulesets/no-endpoints/"]);
    let o = only_outcome(&v);
    assert!(o["verdict"].as_str().is_some_and(|s| s.starts_with("REJECT")), "{o}");
    assert_eq!(o["endpoint"], Value::Null);
    let (table, chain, text) = last_match(o);
    assert_eq!((table.as_str(), chain.as_str()), ("filter", "KUBE-SERVICES"));
    assert!(text.contains("has no endpoints"), "{text}");
}

#[test]
fn masquerade_all_masquerades_pod_to_pod_traffic() {
    let needles = ["rulesets/masquerade-all/"];
    let v = readme_json(&needles);
    assert_eq!(outcomes(&v).len(), 2);
    assert!(outcomes(&v).iter().all(|o| o["masquerade"] == true));
    // The same packet on the same Service without masqueradeAll keeps the pod's address.
    let plain = json_with_cluster(&needles, "rulesets/nodeport/cluster.yaml");
    assert_eq!(endpoints(&plain), endpoints(&v));
    assert!(outcomes(&plain).iter().all(|o| o["masquerade"] == false));
}

#[test]
fn node_cidr_detection_masquerades_sources_outside_the_node_pod_cidr() {
    let local = readme_json(&["rulesets/node-cidr-detect/", "10.1.0.77"]);
    assert!(outcomes(&local).iter().all(|o| o["masquerade"] == false));
    let other = readme_json(&["rulesets/node-cidr-detect/", "10.1.1.77"]);
    assert!(outcomes(&other).iter().all(|o| o["masquerade"] == true));
    assert!(hit(&outcomes(&other)[0], "nat", "KUBE-SVC-", "! -s 10.1.0.0/24 -j KUBE-MARK-MASQ"));
}

#[test]
fn multi_protocol_ports_are_separate_with_per_pod_target_ports() {
    let v = readme_json(&["rulesets/multi-port-protocols/", "--proto udp"]);
    assert_eq!(v["packet"]["proto"], "udp");
    assert_eq!(endpoints(&v), ["10.1.0.90:8443", "10.1.1.91:8443", "10.1.1.92:9443"]);
    assert!(hit(&outcomes(&v)[0], "nat", "KUBE-SERVICES", "-m udp -p udp"));
    let v = readme_json(&["rulesets/multi-port-protocols/", ":3868"]);
    assert_eq!(v["packet"]["proto"], "sctp");
    assert_eq!(endpoints(&v), ["10.1.0.90:3868", "10.1.1.91:3868", "10.1.1.92:3868"]);
    assert!(hit(&outcomes(&v)[0], "nat", "KUBE-SEP-", "-m sctp -p sctp -j DNAT"));
}

#[test]
fn ipv6_trace_gives_bracketed_endpoints() {
    let v = readme_json(&["rulesets/dual-stack/", "[fd00:10:96::1f4]:80"]);
    assert_eq!(v["packet"]["dst"], "[fd00:10:96::1f4]:80");
    assert_eq!(endpoints(&v), ["[fd00:10:1:1::51]:8080", "[fd00:10:1::50]:8080"]);
    let v = readme_json(&["rulesets/dual-stack/", ":30800"]);
    for o in outcomes(&v) {
        assert!(o["endpoint"].as_str().is_some_and(|e| e.starts_with("[fd00:10:1")), "{o}");
        assert_eq!(o["masquerade"], true);
        assert!(hit(o, "nat", "KUBE-SERVICES", "! -d ::1/128 -j KUBE-NODEPORTS"));
    }
    let v = readme_json(&["rulesets/dual-stack/", "10.96.100.10:80"]);
    assert_eq!(endpoints(&v), ["10.1.0.80:8080", "10.1.1.81:8080"]);
}

#[test]
fn affinity_first_flow_is_even_then_sticky_within_the_timeout() {
    let first = readme_json_where("tracing affinity without history", |t| {
        t.contains("rulesets/affinity/") && !t.contains("--after")
    });
    assert_eq!(outcomes(&first).len(), 3);
    assert!(outcomes(&first).iter().all(|o| close(prob(o), 1.0 / 3.0)));
    let sticky = readme_json_where("replaying affinity history, no --at, no --changed", |t| {
        t.contains("rulesets/affinity/")
            && t.contains("--after")
            && !t.contains("--at ")
            && !t.contains("--changed")
    });
    let history = sticky["history"].as_array().expect("history");
    let pinned = history[0]["endpoint"].as_str().expect("the first flow reached an endpoint");
    assert_eq!(history[1]["endpoint"], pinned);
    assert!(close(prob(&history[1]), 1.0), "the second flow is sticky");
    let o = only_outcome(&sticky);
    assert_eq!(o["endpoint"], pinned);
    assert!(close(prob(o), 1.0));
    assert_eq!(sticky["sticky"][0]["expires_at"], 400.0);
}

#[test]
fn affinity_expires_after_the_timeout() {
    let v = readme_json(&["rulesets/affinity/", "--at 500"]);
    assert_eq!(outcomes(&v).len(), 3, "a fresh choice after the timeout");
    assert!(outcomes(&v).iter().all(|o| close(prob(o), 1.0 / 3.0)));
    let st = &v["sticky"][0];
    assert!(st["expires_at"].as_f64().is_some_and(|t| t < 500.0), "{st}");
}

#[test]
fn affinity_client_moves_when_its_endpoint_is_not_ready() {
    let v = readme_json(&["rulesets/affinity/", "--changed"]);
    let pinned = v["history"][0]["endpoint"].as_str().expect("history endpoint").to_owned();
    assert_eq!(pinned, "10.1.0.2:8080", "the not-ready pod of endpoint-not-ready.yaml");
    let eps = endpoints(&v);
    assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.3:8080"]);
    assert!(!eps.contains(&pinned));
    assert_eq!(v["sticky"][0]["checked"], false);
}
