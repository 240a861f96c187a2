//! Where rules come from: Kubernetes manifests, the embedded default cluster, or a node's dump.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::default::{DEFAULT_ORIGIN, default_cluster};
use svcpath::model::load;
use svcpath::model::{Cluster, IpFamily, NodeView};
use svcpath::study::dataplane::{Dataplane, rules_family};

/// An IP family on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    /// IPv4 (iptables).
    Ipv4,
    /// IPv6 (ip6tables).
    Ipv6,
}

impl From<FamilyArg> for IpFamily {
    fn from(f: FamilyArg) -> IpFamily {
        match f {
            FamilyArg::Ipv4 => IpFamily::V4,
            FamilyArg::Ipv6 => IpFamily::V6,
        }
    }
}

/// The input options shared by the subcommands.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Kubernetes manifests (`kubectl get services,endpointslices,nodes -A -o yaml`), YAML or JSON;
    /// repeat to merge files. Without this and --iptables-save, the embedded default cluster.
    #[arg(long, value_name = "FILE", conflicts_with = "iptables_save")]
    pub cluster: Vec<PathBuf>,
    /// A node's `iptables-save` (or `ip6tables-save`) output to use instead of generated rules.
    #[arg(long = "iptables-save", value_name = "FILE")]
    pub iptables_save: Option<PathBuf>,
    /// The node whose kube-proxy is simulated (default: hostnameOverride, else the first Node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The node's own addresses (repeatable); replaces the Node's status addresses.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ip: Vec<IpAddr>,
    /// IP family for dual-stack clusters and dumps.
    #[arg(long, value_enum, default_value = "ipv4")]
    pub family: FamilyArg,
}

/// The loaded cluster (when the input is a cluster).
pub struct LoadedCluster {
    /// The cluster.
    pub cluster: Cluster,
    /// File names, or the embedded default's name.
    pub origin: String,
    /// The simulated node.
    pub node: NodeView,
}

impl InputArgs {
    /// Loads the cluster input, printing loader warnings to stderr. `None` for a dump input.
    pub fn cluster(&self) -> anyhow::Result<Option<LoadedCluster>> {
        if self.iptables_save.is_some() {
            return Ok(None);
        }
        let (cluster, origin) = if self.cluster.is_empty() {
            (default_cluster(), DEFAULT_ORIGIN.to_owned())
        } else {
            let loaded = load::load_paths(&self.cluster)?;
            for w in &loaded.warnings {
                eprintln!("svcpath: warning: {w}");
            }
            let origin =
                self.cluster.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            (loaded.cluster, origin)
        };
        let node = cluster.node_view(self.node.as_deref(), &self.node_ip)?;
        Ok(Some(LoadedCluster { cluster, origin, node }))
    }

    /// The compiled rules for the chosen input.
    pub fn dataplane(&self) -> anyhow::Result<(Dataplane, Option<LoadedCluster>)> {
        let family: IpFamily = self.family.into();
        if let Some(path) = &self.iptables_save {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let text = match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(e) => {
                    let at = e.utf8_error().valid_up_to();
                    let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
                    bail!(
                        "{}: line {line}: invalid UTF-8 (iptables-save writes ASCII text)",
                        path.display()
                    );
                }
            };
            if self.node.is_some() {
                eprintln!(
                    "svcpath: warning: --node is ignored with --iptables-save; give the node's addresses with --node-ip"
                );
            }
            let dp = Dataplane::from_text(
                text,
                &path.display().to_string(),
                rules_family(family),
                self.node_ip.clone(),
            )?;
            return Ok((dp, None));
        }
        let Some(lc) = self.cluster()? else { bail!("no input") };
        let dp = self.dataplane_of(&lc)?;
        Ok((dp, Some(lc)))
    }

    /// The compiled iptables rules kube-proxy would write for an already loaded cluster.
    pub fn dataplane_of(&self, lc: &LoadedCluster) -> anyhow::Result<Dataplane> {
        let family: IpFamily = self.family.into();
        Ok(Dataplane::from_cluster(&lc.cluster, &lc.origin, &lc.node, family, NodeEnv::default())?)
    }
}
