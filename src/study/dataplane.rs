//! The rules a study runs on, from either source, through one pipeline.
//!
//! A cluster's rules are rendered by [`crate::kubeproxy::iptables`], printed as `iptables-restore`
//! text, parsed back by [`crate::formats::iptables_save`] and compiled into the netfilter model —
//! exactly what happens to a real node's `iptables-save` dump. So the line numbers a trace shows are
//! the lines `svcpath rules` prints, and both inputs meet the same parser and evaluator.

use std::net::IpAddr;
use std::sync::Arc;

use crate::dataplane::netfilter::{CompileError, Netfilter};
use crate::formats::iptables_save::{self, ParseError};
use crate::kubeproxy::iptables::{self as kp, NodeEnv};
use crate::model::rules::{Family, Ruleset};
use crate::model::{Cluster, IpFamily, NodeView};

/// A compiled rule set plus what is known about where it came from.
#[derive(Debug, Clone)]
pub struct Dataplane {
    /// Where the rules came from (a file name or a description).
    pub origin: String,
    /// The rules as text (`iptables-restore` format); line numbers refer to it. The parsed rules
    /// keep their text in it.
    pub text: Arc<str>,
    /// The parsed rules.
    pub ruleset: Ruleset,
    /// The compiled netfilter model.
    pub netfilter: Netfilter,
    /// The node's own addresses.
    pub local: Vec<IpAddr>,
    /// The node name, when known.
    pub node: Option<String>,
    /// The cluster, when the rules were generated from one.
    pub cluster: Option<Cluster>,
}

/// Why the rules could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// The dump does not parse.
    #[error("{origin}: {error}")]
    Parse {
        /// The file.
        origin: String,
        /// The parse error (with its line).
        error: Box<ParseError>,
    },
    /// The dump parses but the kernel would refuse it.
    #[error("{origin}: {error}")]
    Compile {
        /// The file.
        origin: String,
        /// The error (with its line).
        error: Box<CompileError>,
    },
}

/// The IP family of a rule-set family.
pub fn rules_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::V4,
        IpFamily::V6 => Family::V6,
    }
}

impl Dataplane {
    /// Compiles a dump's text.
    ///
    /// # Errors
    /// Parse errors and what the kernel would refuse, naming `origin` and the line.
    pub fn from_text(
        text: String,
        origin: &str,
        family: Family,
        local: Vec<IpAddr>,
    ) -> Result<Dataplane, DataplaneError> {
        let text = Arc::<str>::from(text);
        let ruleset = iptables_save::parse_shared(Arc::clone(&text), family).map_err(|error| {
            DataplaneError::Parse { origin: origin.to_owned(), error: Box::new(error) }
        })?;
        let netfilter = Netfilter::new(&ruleset).map_err(|error| DataplaneError::Compile {
            origin: origin.to_owned(),
            error: Box::new(error),
        })?;
        Ok(Dataplane {
            origin: origin.to_owned(),
            text,
            ruleset,
            netfilter,
            local,
            node: None,
            cluster: None,
        })
    }

    /// Renders kube-proxy's iptables rules for `node` and compiles them from their text.
    ///
    /// # Errors
    /// Only if svcpath's own output did not parse or compile, which tests rule out.
    pub fn from_cluster(
        cluster: &Cluster,
        origin: &str,
        node: &NodeView,
        family: IpFamily,
        env: NodeEnv,
    ) -> Result<Dataplane, DataplaneError> {
        let text = iptables_save::render(&kp::sync_node_dump(cluster, node, family, env));
        let local = node.addresses.clone();
        let mut dp = Dataplane::from_text(
            text,
            &format!("{origin} (rendered)"),
            rules_family(family),
            local,
        )?;
        dp.origin = origin.to_owned();
        dp.node = Some(node.name.clone());
        dp.cluster = Some(cluster.clone());
        Ok(dp)
    }

    /// The text of a rule statement, for printing (`table` indexes [`Dataplane::ruleset`]'s tables).
    pub fn statement_text(&self, table: usize, stmt: usize) -> String {
        self.ruleset
            .tables
            .get(table)
            .and_then(|t| t.statements.get(stmt))
            .map(|s| s.stmt.to_string())
            .unwrap_or_default()
    }
}
