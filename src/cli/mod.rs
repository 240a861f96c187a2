//! The command line: one file per subcommand, each a clap `Args` struct with a `run`.

pub mod completions;
pub mod dist;
pub mod input;
pub mod ipvs_replay;
pub mod rules;
pub mod sim;
pub mod trace;
pub mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Follow a packet sent to a Kubernetes Service through kube-proxy's dataplane.
#[derive(Debug, Parser)]
#[command(name = "svcpath", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow one packet: every rule, every endpoint with its exact probability, the cost.
    Trace(trace::TraceArgs),
    /// Print the rules kube-proxy would program on a node (iptables-restore; ipvsadm, ipset for IPVS).
    Rules(rules::RulesArgs),
    /// Send N new connections through each proxy mode and compare the endpoint shares.
    Dist(dist::DistArgs),
    /// Simulate load on a Service over time (nodes, arrivals, lifetimes, scaling, rollouts).
    Sim(sim::SimArgs),
    /// Check svcpath's traces against the real kernel in throwaway network namespaces (root).
    Verify(verify::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff).
    Man(completions::ManArgs),
    /// Internal: the helper process `verify` runs inside namespaces.
    #[command(name = "__agent", hide = true)]
    Agent(verify::AgentArgs),
    /// Replay IPVS scheduler events through the kernel-exact model (one JSON line per connection).
    IpvsReplay(ipvs_replay::IpvsReplayArgs),
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Command::Trace(a) => a.run(),
            Command::Rules(a) => a.run(),
            Command::IpvsReplay(a) => a.run(),
            Command::Dist(a) => a.run(),
            Command::Sim(a) => a.run(),
            Command::Verify(a) => a.run(),
            Command::Agent(a) => a.run(),
            Command::Completions(a) => a.run(),
            Command::Man(a) => a.run(),
        }
    }
}

/// Writes `text` to stdout, reporting a closed pipe as an error the caller maps to success.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
