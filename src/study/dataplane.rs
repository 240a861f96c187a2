//! The rules a study runs on, from either source, through one pipeline.
//!
//! A cluster's rules are rendered by [`crate::kubeproxy::iptables`], printed as `iptables-restore`
//! text, parsed back by [`crate::formats::iptables_save`] and compiled into the netfilter model —
//! exactly what happens to a real node's `iptables-save` dump. So the line numbers a trace shows are
//! the lines `svcpath rules` prints, and both inputs meet the same parser and evaluator.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use crate::dataplane::netfilter::{CompileError, Netfilter};
use crate::formats::iptables_save::{self, ParseError};
use crate::kubeproxy::iptables::{self as kp, NodeEnv};
use crate::model::rules::{Family, Ruleset};
use crate::model::{Cluster, IpFamily, NodeView};

/// A compiled rule set plus what is known about where it came from.
///
/// The parsed rule set is not kept: once compiled, its statements (some 100 bytes a rule on top
/// of the text they point into) would only duplicate the model. Everything a study prints comes
/// from the text by line ([`Dataplane::rule_text`]); [`Dataplane::ruleset`] parses it again for
/// the few studies that read the rules as written.
#[derive(Debug, Clone)]
pub struct Dataplane {
    /// Where the rules came from (a file name or a description).
    pub origin: String,
    /// The rules as text (`iptables-restore` format); line numbers refer to it.
    pub text: Arc<str>,
    /// The compiled netfilter model.
    pub netfilter: Netfilter,
    /// The number of rules (`-A`/`-I` lines) of the rule set the model was compiled from, as
    /// [`Ruleset::rule_count`] counts them.
    pub rules: usize,
    /// The number of user-defined chains it declares ([`Ruleset::user_chain_count`]).
    pub user_chains: usize,
    /// The node's own addresses.
    pub local: Vec<IpAddr>,
    /// The node name, when known.
    pub node: Option<String>,
    /// The cluster, when the rules were generated from one.
    pub cluster: Option<Cluster>,
    /// Where each line of `text` starts, made on first use by [`Dataplane::rule_text`].
    lines: OnceLock<Box<[u32]>>,
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
        let (rules, user_chains) = (ruleset.rule_count(), ruleset.user_chain_count());
        let netfilter = Netfilter::from_ruleset(ruleset).map_err(|error| {
            DataplaneError::Compile { origin: origin.to_owned(), error: Box::new(error) }
        })?;
        Ok(Dataplane {
            origin: origin.to_owned(),
            text,
            netfilter,
            rules,
            user_chains,
            local,
            node: None,
            cluster: None,
            lines: OnceLock::new(),
        })
    }

    /// The same rules as `self` (text, origin, node) compiled differently: `ruleset`, parsed from
    /// `self`'s text and then edited, and its model `netfilter`. Line numbers still refer to the
    /// text.
    pub(crate) fn edited(&self, ruleset: &Ruleset, netfilter: Netfilter) -> Dataplane {
        let (rules, user_chains) = (ruleset.rule_count(), ruleset.user_chain_count());
        Dataplane {
            origin: self.origin.clone(),
            text: Arc::clone(&self.text),
            netfilter,
            rules,
            user_chains,
            local: self.local.clone(),
            node: self.node.clone(),
            cluster: None,
            lines: self.lines.clone(),
        }
    }

    /// The rules parsed again from the text, for studies that read them as written.
    ///
    /// # Errors
    /// None in practice: the text parsed when the dataplane was made.
    pub fn ruleset(&self) -> Result<Ruleset, DataplaneError> {
        iptables_save::parse_shared(Arc::clone(&self.text), self.netfilter.family).map_err(
            |error| DataplaneError::Parse { origin: self.origin.clone(), error: Box::new(error) },
        )
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

    /// The rule on line `line` of the text as svcpath prints it (the line itself when it does not
    /// read as one rule, which a compiled rule's line always does).
    pub fn rule_text(&self, line: usize) -> String {
        let raw = self.line(line);
        iptables_save::parse_rule_line(raw, self.netfilter.family)
            .map_or_else(|_| raw.to_owned(), |rule| rule.to_string())
    }

    /// Line `line` (from 1) of the text, without its line end; empty past the end.
    fn line(&self, line: usize) -> &str {
        let Some(index) = line.checked_sub(1) else { return "" };
        let starts = self.lines.get_or_init(|| line_starts(&self.text));
        let start = match starts.get(index) {
            Some(&s) => s as usize,
            // A text beyond 4 GiB has no index: find the line by counting.
            None if starts.is_empty() => {
                return self.text.split('\n').nth(index).map_or("", |l| l.trim_end_matches('\r'));
            }
            None => return "",
        };
        let rest = self.text.get(start..).unwrap_or_default();
        let end = memchr::memchr(b'\n', rest.as_bytes()).unwrap_or(rest.len());
        rest[..end].trim_end_matches('\r')
    }
}

/// The offset of every line of `text` (empty when an offset would not fit 32 bits).
fn line_starts(text: &str) -> Box<[u32]> {
    if u32::try_from(text.len()).is_err() {
        return Box::default();
    }
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|at| at as u32 + 1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::Statement;

    const DUMP: &str = "*nat\r\n:PREROUTING ACCEPT [0:0]\r\n:SVC - [0:0]\r\n\
        [3:180] -A PREROUTING  -d 10.96.0.10/32 -j SVC\r\n\
        -A SVC -p tcp -j DNAT --to-destination 10.1.0.1:8080\r\nCOMMIT\r\n";

    #[test]
    fn rules_print_from_their_line_of_the_text() {
        let dp = Dataplane::from_text(DUMP.to_owned(), "t", Family::V4, vec![]).unwrap();
        assert_eq!((dp.rules, dp.user_chains), (2, 1));
        let t = &dp.netfilter.tables[0];
        let lines: Vec<usize> =
            (t.chains.iter()).flat_map(|c| t.rules_of(c).iter().map(|r| r.line as usize)).collect();
        assert_eq!(lines, [4, 5]);
        // As the parser reads the line: counters kept, the double space gone, no CR.
        assert_eq!(dp.rule_text(4), "[3:180] -A PREROUTING -d 10.96.0.10/32 -j SVC");
        assert_eq!(dp.rule_text(5), "-A SVC -p tcp -j DNAT --to-destination 10.1.0.1:8080");
        // Not a rule: the line as written; outside the text: nothing.
        assert_eq!(dp.rule_text(3), ":SVC - [0:0]");
        assert_eq!(dp.rule_text(0), "");
        assert_eq!(dp.rule_text(99), "");
        // Parsed again, the rules are the ones compiled.
        assert_eq!(dp.ruleset().unwrap().rule_count(), 2);
    }

    #[test]
    fn an_edited_copy_keeps_the_text_and_counts_its_own_rules() {
        let dp = Dataplane::from_text(DUMP.to_owned(), "t", Family::V4, vec![]).unwrap();
        let mut rs = dp.ruleset().unwrap();
        rs.tables[0]
            .statements
            .retain(|s| !matches!(&s.stmt, Statement::Rule(r) if r.chain == "SVC"));
        let nf = Netfilter::new(&rs).unwrap();
        let edited = dp.edited(&rs, nf);
        assert_eq!((edited.rules, edited.user_chains), (1, 1));
        assert!(Arc::ptr_eq(&edited.text, &dp.text));
        assert_eq!(edited.rule_text(5), dp.rule_text(5));
    }
}
