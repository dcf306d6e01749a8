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

/// mimalloc, not the system's allocator: the node allocates and frees a
/// few buffers of 4 KiB and more per message, where glibc's malloc spent
/// 12 % of the path's CPU (consolidating its fast bins); with mimalloc the
/// path bench carries 10–20 % more reports per second (`benches/README.md`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
