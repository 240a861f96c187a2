//! `svcpath verify`: hold svcpath's answers against the real kernel in throwaway namespaces.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use svcpath::model::IpFamily;
use svcpath::render::verify as render;
use svcpath::study::verify::{EntryKind, MAX_FLOWS, NftModel, PlanOptions, Setting};
use svcpath::verify::traffic::AgentCommand;
use svcpath::verify::{
    Backend, CalibrateOptions, CheckOptions, calibrate, check, check_environment, check_nft,
    check_nft_environment,
};

use super::input::InputArgs;

/// The iptables implementation on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// iptables-nft (nf_tables).
    Nft,
    /// iptables-legacy (ip_tables).
    Legacy,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Nft => Backend::Nft,
            BackendArg::Legacy => Backend::Legacy,
        }
    }
}

/// Check svcpath's traces against the real Linux kernel (root; throwaway network namespaces).
///
/// Every Service entry point (cluster IP, node port, external and load-balancer IPs) is probed
/// from a pod, from the node itself and from external clients (in and out of source ranges);
/// the endpoints reached, REJECT/DROP, masquerade and the shares must agree with svcpath.
/// Exit status: 0 when they agree, 1 on any disagreement, 2 on errors.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The least flows (new connections) per probe with several outcomes; more are sent when an
    /// outcome is so rare that it could be missed (probability of a miss below 1e-6).
    #[arg(long, value_name = "N", default_value_t = 60)]
    flows: usize,
    /// The most flows per probe.
    #[arg(long = "max-flows", value_name = "N", default_value_t = MAX_FLOWS)]
    max_flows: usize,
    /// The iptables implementation to load the rules with.
    #[arg(long, value_enum, default_value = "nft")]
    iptables: BackendArg,
    /// The proxy mode whose rules are checked: iptables, or nftables (kube-proxy's nftables table,
    /// loaded with `nft -f`; needs a cluster input). Default: the KubeProxyConfiguration's mode
    /// when it is nftables, else iptables.
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// How long a flow waits for an answer before it counts as unanswered (DROP).
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 400)]
    timeout_ms: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure the kernel's cost per rule and per flow on a large synthetic ruleset instead.
    #[arg(long)]
    calibrate: bool,
    /// Services in the calibration ruleset.
    #[arg(long = "calibrate-services", value_name = "N", default_value_t = 2000)]
    calibrate_services: usize,
    /// Rounds of calibration (each times the first and the last Service).
    #[arg(long = "calibrate-rounds", value_name = "N", default_value_t = 3)]
    calibrate_rounds: usize,
    /// Only remove namespaces left behind by a killed svcpath run, then exit.
    #[arg(long)]
    cleanup: bool,
}

impl VerifyArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        if self.cleanup {
            let removed = svcpath::verify::cleanup_leftovers()?;
            for ns in &removed {
                eprintln!("removed {ns}");
            }
            super::print(&format!("{} leftover namespace(s) removed\n", removed.len()))?;
            return Ok(ExitCode::SUCCESS);
        }
        if self.flows == 0 || self.max_flows == 0 {
            bail!("--flows and --max-flows must be at least 1");
        }
        if self.timeout_ms == 0 {
            bail!("--timeout-ms must be at least 1");
        }
        let backend: Backend = self.iptables.into();
        if self.mode.as_deref() == Some("nftables")
            || (self.mode.is_none() && !self.calibrate && self.nftables_by_config()?)
        {
            return self.run_nftables();
        }
        if let Some(m) = self.mode.as_deref().filter(|m| *m != "iptables") {
            bail!(
                "--mode: '{m}' cannot be verified here (iptables or nftables; this kernel has no IPVS)"
            );
        }
        check_environment(backend)?;
        let agent = AgentCommand::current_exe()?;
        if self.calibrate {
            let c = calibrate(&CalibrateOptions {
                backend,
                agent,
                services: self.calibrate_services,
                flows: self.flows.max(100),
                rounds: self.calibrate_rounds,
            })?;
            let text = if self.json {
                serde_json::to_string_pretty(&c)? + "\n"
            } else {
                format!(
                    "{}: {} services ({} rules); a flow to the first Service walks {} rules, to the last {}\n\
                     median TCP connect: {:.0} ns (first), {:.0} ns (last); {} flows to each x {} rounds\n\
                     per rule: {:.1} ns (rounds: {})\nper flow without rules: {:.0} ns\n",
                    c.backend,
                    c.services,
                    c.rules_total,
                    c.rules_first,
                    c.rules_last,
                    c.flow_ns_first,
                    c.flow_ns_last,
                    c.flows,
                    c.rounds,
                    c.per_rule_ns,
                    c.per_rule_ns_rounds
                        .iter()
                        .map(|r| format!("{r:.1}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    c.per_flow_ns
                )
            };
            super::print(&text)?;
            return Ok(ExitCode::SUCCESS);
        }
        let family: IpFamily = self.input.family.into();
        let (dp, lc) = self.input.dataplane()?;
        let setting = match &lc {
            Some(lc) => Setting::from_cluster(&lc.cluster, &lc.node, family),
            None => {
                if self.input.node_ip.is_empty() {
                    bail!(
                        "a dump needs the node's addresses: add --node-ip IP (the address node ports answer on)"
                    );
                }
                Setting::from_rules(&dp, family, &self.input.node_ip)?
            }
        };
        if setting.entries.is_empty() {
            bail!("no Service entry point found in {}: nothing to verify", dp.origin);
        }
        let opts = CheckOptions {
            backend,
            agent,
            flow_timeout: Duration::from_millis(self.timeout_ms),
            plan: PlanOptions { flows: self.flows, max_flows: self.max_flows },
        };
        let run = check(&dp, &setting, &opts)?;
        let text = if self.json { render::json(&run) + "\n" } else { render::text(&run) };
        super::print(&text)?;
        Ok(if run.judgement.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }
}

impl VerifyArgs {
    /// Whether a cluster input's KubeProxyConfiguration says `mode: nftables`.
    fn nftables_by_config(&self) -> anyhow::Result<bool> {
        if self.input.iptables_save.is_some() {
            return Ok(false);
        }
        let by_config = self
            .input
            .cluster()?
            .is_some_and(|lc| lc.cluster.config.mode == svcpath::model::ProxyMode::Nftables);
        if by_config {
            eprintln!("svcpath: note: --mode nftables, from the KubeProxyConfiguration");
        }
        Ok(by_config)
    }

    /// `--mode nftables`: the table kube-proxy's nftables proxier writes for the cluster, loaded
    /// with `nft -f`, against svcpath's nftables walk.
    fn run_nftables(&self) -> anyhow::Result<ExitCode> {
        if self.calibrate {
            bail!("--calibrate measures iptables rules; it does not take --mode nftables");
        }
        let Some(lc) = self.input.cluster()? else {
            bail!(
                "--mode nftables verifies the table rendered from a cluster (--cluster FILE), not a dump"
            );
        };
        check_nft_environment()?;
        let family: IpFamily = self.input.family.into();
        let table = svcpath::kubeproxy::nftables::sync(&lc.cluster, &lc.node, family);
        let text = svcpath::formats::nft::render(&table);
        let model = NftModel {
            dp: svcpath::dataplane::nftables::NftDataplane::new(table),
            local: lc.node.addresses.clone(),
        };
        let mut setting = Setting::from_cluster(&lc.cluster, &lc.node, family);
        // nftables mode has no localhost node ports.
        setting.entries.retain(|e| e.kind != EntryKind::LocalhostNodePort);
        if setting.entries.is_empty() {
            bail!("no Service entry point found in {}: nothing to verify", lc.origin);
        }
        let opts = CheckOptions {
            backend: self.iptables.into(),
            agent: AgentCommand::current_exe()?,
            flow_timeout: Duration::from_millis(self.timeout_ms),
            plan: PlanOptions { flows: self.flows, max_flows: self.max_flows },
        };
        let run = check_nft(&model, &text, &lc.origin, &setting, &opts)?;
        let text = if self.json { render::json(&run) + "\n" } else { render::text(&run) };
        super::print(&text)?;
        Ok(if run.judgement.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }
}

/// The hidden helper process `svcpath verify` starts inside namespaces (listener, sender, sysctl).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl AgentArgs {
    /// Runs the agent.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        svcpath::verify::run_agent(&self.args)?;
        Ok(ExitCode::SUCCESS)
    }
}
