//! The `svcpath` binary: parses the command line and runs one subcommand.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match args.command.run() {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`svcpath rules | head`) is not an error.
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(std::io::stderr(), "svcpath: {err:#}");
            ExitCode::from(2)
        }
    }
}
