//! `svcpath rules`: the rules kube-proxy would program.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};

use svcpath::dataplane::ipvs::SchedulerKind;
use svcpath::formats::{ipset, iptables_save, ipvsadm, nft};
use svcpath::kubeproxy::iptables::{self, NodeEnv};
use svcpath::kubeproxy::ipvs::{self as kp_ipvs, IpvsOptions};
use svcpath::kubeproxy::nftables;

use svcpath::model::ProxyMode;

use super::input::InputArgs;

/// A proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// kube-proxy's iptables proxier.
    Iptables,
    /// kube-proxy's IPVS proxier (`ipvsadm -Sn` by default).
    Ipvs,
    /// kube-proxy's nftables proxier (`nft -f` input for the `kube-proxy` table).
    Nftables,
}

/// How to print IPVS mode's virtual servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpvsFormat {
    /// `ipvsadm -Sn` (restore format).
    Save,
    /// An `ipvsadm -Ln`-style listing.
    List,
}

/// Print the rules kube-proxy would program on a node.
#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The proxy mode (default: the KubeProxyConfiguration's `mode`, else iptables).
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Print only the iptables-restore payload kube-proxy writes (no built-in chains, no jumps
    /// from them; those kube-proxy installs with `iptables -I`).
    #[arg(long)]
    payload: bool,
    /// IPVS mode: the virtual-server format.
    #[arg(long, value_enum, default_value = "save")]
    format: IpvsFormat,
    /// IPVS mode: print the ipsets (`ipset save`) instead of the virtual servers.
    #[arg(long, conflicts_with = "iptables")]
    ipset: bool,
    /// IPVS mode: print the companion iptables rules (iptables-restore text) instead.
    #[arg(long)]
    iptables: bool,
    /// IPVS mode: the scheduler (default: the configuration's `ipvs.scheduler`, else rr).
    #[arg(long, value_name = "SCHED")]
    scheduler: Option<String>,
}

impl RulesArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Some(lc) = self.input.cluster()? else {
            bail!(
                "`svcpath rules` renders rules from a cluster; --iptables-save is an input for `trace`"
            );
        };
        let family = self.input.family.into();
        let mode = self.mode.unwrap_or(match lc.cluster.config.mode {
            ProxyMode::Iptables => ModeArg::Iptables,
            ProxyMode::Ipvs => ModeArg::Ipvs,
            ProxyMode::Nftables => ModeArg::Nftables,
        });
        if self.mode.is_none() && mode != ModeArg::Iptables {
            let name = if mode == ModeArg::Ipvs { "ipvs" } else { "nftables" };
            eprintln!("svcpath: note: --mode {name}, from the KubeProxyConfiguration");
        }
        if mode == ModeArg::Ipvs {
            if let Some(s) = &self.scheduler {
                SchedulerKind::parse(s).map_err(|e| anyhow!("--scheduler: {e}"))?;
            }
            let opts = IpvsOptions { scheduler: self.scheduler.clone(), ..IpvsOptions::default() };
            let sync = kp_ipvs::sync(&lc.cluster, &lc.node, family, &opts);
            let text = if self.ipset {
                ipset::render(&sync.ipsets)
            } else if self.iptables {
                iptables_save::render(&if self.payload {
                    sync.payload.clone()
                } else {
                    sync.node_dump()
                })
            } else if self.format == IpvsFormat::List {
                ipvsadm::render_list(&sync.virtual_servers)
            } else {
                ipvsadm::render_save(&sync.virtual_servers)
            };
            super::print(&text)?;
            return Ok(ExitCode::SUCCESS);
        }
        if mode == ModeArg::Nftables {
            if self.payload || self.ipset || self.iptables || self.scheduler.is_some() {
                bail!(
                    "--payload, --ipset, --iptables and --scheduler do not go with --mode nftables"
                );
            }
            let table = nftables::sync(&lc.cluster, &lc.node, family);
            super::print(&nft::render(&table))?;
            return Ok(ExitCode::SUCCESS);
        }
        if self.ipset
            || self.iptables
            || self.scheduler.is_some()
            || self.format != IpvsFormat::Save
        {
            bail!("--format, --ipset, --iptables and --scheduler go with --mode ipvs");
        }
        let ruleset = if self.payload {
            iptables::sync(&lc.cluster, &lc.node, family, NodeEnv::default()).payload
        } else {
            iptables::sync_node_dump(&lc.cluster, &lc.node, family, NodeEnv::default())
        };
        super::print(&iptables_save::render(&ruleset))?;
        Ok(ExitCode::SUCCESS)
    }
}
