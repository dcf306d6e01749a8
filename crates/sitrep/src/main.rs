//! `sitrep`: the one binary. Parses the command line and hands off; every
//! failure ends with a one-line reason on stderr and a non-zero exit.

mod cli;
mod client;
mod demo;
mod feed_cmd;
mod national;
mod node_cmd;
mod roster_cmd;
mod table;
mod util;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Everything this process creates is for its user only (`0700`/`0600`),
    // files that libraries create included (sled's), whatever umask it was
    // started with; the node's own files ask for these modes anyway.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined.
            eprintln!("sitrep: {e:#}");
            ExitCode::FAILURE
        }
    }
}
