//! `svcpath verify` end to end: plan probes with [`crate::study::verify`], send them through the
//! kernel with [`super::traffic`], and judge what came back against svcpath's predictions.
//!
//! Invariants: the kernel runs exactly the text svcpath traced ([`Dataplane::text`]); listeners
//! answer on every DNAT target of that text, for TCP and UDP; flows go out in the plan's order,
//! so the prediction of each flow can replay the ones before it (session affinity).

use std::net::SocketAddr;
use std::time::Duration;

use super::traffic::{
    AgentCommand, Flow, FlowResult, Report, RunOptions, Topology, run_flows_nft, run_flows_with,
};
use super::{Backend, VerifyError};
use crate::model::rules::Family;
use crate::model::{IpFamily, Protocol};
use crate::study::dataplane::{Dataplane, rules_family};
use crate::study::verify::{
    self as sv, Fate, Judgement, Model, NftModel, Plan, PlanOptions, Run, Seen, Setting,
};

/// How a check runs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The iptables implementation.
    pub backend: Backend,
    /// How agents are started.
    pub agent: AgentCommand,
    /// How long a flow waits for an answer before it counts as unanswered.
    pub flow_timeout: Duration,
    /// How many flows each probe sends.
    pub plan: PlanOptions,
}

impl CheckOptions {
    /// Defaults with the given agent: nf_tables, 400 ms per flow, [`PlanOptions::default`].
    pub fn with_agent(agent: AgentCommand) -> CheckOptions {
        CheckOptions {
            backend: Backend::Nft,
            agent,
            flow_timeout: Duration::from_millis(400),
            plan: PlanOptions::default(),
        }
    }
}

/// What the kernel did, before judging: the plan, one observation per flow and the timings.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The plan that was sent.
    pub plan: Plan,
    /// One observation per flow, in sending order.
    pub seen: Vec<Seen>,
    /// The kernel run's timings.
    pub report: Report,
}

/// The observation of one kernel result.
pub fn seen_of(result: &FlowResult) -> Seen {
    match result {
        FlowResult::Reached { endpoint, seen_source, .. } => {
            Seen { fate: Fate::Endpoint(*endpoint), source: Some(*seen_source) }
        }
        FlowResult::Rejected { .. } => Seen { fate: Fate::Refused, source: None },
        FlowResult::Dropped => Seen { fate: Fate::NoAnswer, source: None },
        FlowResult::Denied { .. } => Seen { fate: Fate::SendDenied, source: None },
    }
}

/// The kernel topology a plan needs: the node's addresses, a listener on every endpoint (TCP and
/// UDP), the sending pods.
pub fn topology(plan: &Plan) -> Topology {
    let mut endpoints: Vec<(Protocol, SocketAddr)> = Vec::new();
    for e in &plan.endpoints {
        endpoints.push((Protocol::Tcp, *e));
        endpoints.push((Protocol::Udp, *e));
    }
    Topology {
        node_addrs: plan.node_addrs.clone(),
        endpoints,
        pod_addrs: plan.pod_addrs.clone(),
        client_addrs: Vec::new(),
    }
}

/// Plans the probes of `setting` and sends them through the kernel.
///
/// # Errors
/// [`VerifyError::Invalid`] when the node has no address; [`VerifyError::Model`] when svcpath's
/// walk fails; the environment, namespace, restore and agent errors of [`run_flows_with`].
pub fn observe(
    dp: &Dataplane,
    setting: &Setting,
    opts: &CheckOptions,
) -> Result<Observation, VerifyError> {
    observe_with(dp, setting, opts, true, |family, topology, flows, run_opts| {
        run_flows_with(&dp.text, family, opts.backend, topology, flows, run_opts)
    })
}

/// [`observe`] for nftables mode: `nft_text` (the table `model` walks, as `nft -f` input) is
/// loaded instead of an iptables dump.
///
/// # Errors
/// As [`observe`]; [`VerifyError::Restore`] when `nft` refuses the table.
pub fn observe_nft(
    model: &NftModel,
    nft_text: &str,
    setting: &Setting,
    opts: &CheckOptions,
) -> Result<Observation, VerifyError> {
    observe_with(model, setting, opts, false, |family, topology, flows, run_opts| {
        run_flows_nft(nft_text, family, topology, flows, run_opts)
    })
}

/// Plans with `model`, then `send`s the plan's flows through a kernel topology (with the rules'
/// family and the run options; `add_kube_jumps` for an iptables dump's missing jumps).
fn observe_with<M: Model>(
    model: &M,
    setting: &Setting,
    opts: &CheckOptions,
    add_kube_jumps: bool,
    send: impl FnOnce(Family, &Topology, &[Flow], &RunOptions) -> Result<Report, VerifyError>,
) -> Result<Observation, VerifyError> {
    if setting.node_addrs.is_empty() {
        return Err(VerifyError::Invalid {
            what: "node".to_owned(),
            value: "no address".to_owned(),
            hint: "give the node's addresses with --node-ip".to_owned(),
        });
    }
    let plan = sv::plan(model, setting, opts.plan)?;
    if plan.probes.is_empty() {
        return Err(VerifyError::Invalid {
            what: "plan".to_owned(),
            value: format!("{} entries, no probe", setting.entries.len()),
            hint: "no source could be placed; give the node's addresses with --node-ip".to_owned(),
        });
    }
    let flows: Vec<Flow> = plan
        .flows()
        .map(|(_, src, dst, proto, from_node)| Flow { src, dst, proto, from_node })
        .collect();
    let family = rules_family(setting.family.unwrap_or(IpFamily::V4));
    let run_opts =
        RunOptions { agent: opts.agent.clone(), flow_timeout: opts.flow_timeout, add_kube_jumps };
    let report = send(family, &topology(&plan), &flows, &run_opts)?;
    let seen = report.observed.iter().map(|o| seen_of(&o.result)).collect();
    Ok(Observation { plan, seen, report })
}

/// Plans, sends and judges: the whole `svcpath verify` for one rule set.
///
/// # Errors
/// As [`observe`].
pub fn check(dp: &Dataplane, setting: &Setting, opts: &CheckOptions) -> Result<Run, VerifyError> {
    let obs = observe(dp, setting, opts)?;
    let judgement = sv::judge(dp, &obs.plan, &obs.seen)?;
    Ok(run_of(&dp.origin, format!("iptables-{}", opts.backend.as_str()), setting, obs, judgement))
}

/// [`check`] for nftables mode: `model`'s table, as `nft_text`, loaded with `nft -f`.
///
/// # Errors
/// As [`observe_nft`].
pub fn check_nft(
    model: &NftModel,
    nft_text: &str,
    origin: &str,
    setting: &Setting,
    opts: &CheckOptions,
) -> Result<Run, VerifyError> {
    let obs = observe_nft(model, nft_text, setting, opts)?;
    let judgement = sv::judge(model, &obs.plan, &obs.seen)?;
    Ok(run_of(origin, "nftables (nft -f)".to_owned(), setting, obs, judgement))
}

fn run_of(
    origin: &str,
    backend: String,
    setting: &Setting,
    obs: Observation,
    judgement: Judgement,
) -> Run {
    Run {
        rules: origin.to_owned(),
        backend,
        family: match setting.family {
            Some(IpFamily::V6) => "IPv6",
            _ => "IPv4",
        }
        .to_owned(),
        flows: obs.seen.len(),
        setup_seconds: obs.report.setup.as_secs_f64(),
        sending_seconds: obs.report.sending.as_secs_f64(),
        flows_per_second: obs.report.flows_per_second(),
        judgement,
    }
}
