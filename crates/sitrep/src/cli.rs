//! Command-line interface (DESIGN §9).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// sitrep: secure exchange of situation reports between regions and national authorities.
#[derive(Debug, Parser)]
#[command(name = "sitrep", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Node {
        /// The node's config file (node.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Make CAs, node certificates, keys, a signed roster and node configs
    /// for a topology. Development only.
    DevPki {
        /// Topology file, e.g. deploy/demo/topology.toml.
        #[arg(long)]
        topology: PathBuf,
        /// Output directory; must not exist or be empty.
        #[arg(long)]
        out: PathBuf,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Roster tools.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of a node's audit log; report the first broken link.
    Verify {
        /// The node's config file (the log is `<data_dir>/audit.log`).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RosterCommand {
    /// Check a signed roster against the administrator's public key and the clock.
    Verify {
        /// Signed roster (roster.bin).
        #[arg(long)]
        roster: PathBuf,
        /// Administrator public key (admin.pub).
        #[arg(long)]
        admin_key: PathBuf,
    },
    /// Print a signed roster as TOML (the form `roster sign` reads). Does not
    /// check the signature: use `roster verify` for that.
    Show {
        /// Signed roster (roster.bin).
        #[arg(long)]
        roster: PathBuf,
    },
    /// Sign a roster written as TOML with the administrator's private key.
    Sign {
        /// Roster in TOML, as `roster show` prints it.
        #[arg(long)]
        input: PathBuf,
        /// Administrator private key (admin.key).
        #[arg(long)]
        admin_key: PathBuf,
        /// Where to write the signed roster; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node { config } => crate::node_cmd::run(&config),
        Command::DevPki { topology, out } => {
            let t = sitrep_node::devpki::read_topology(&topology)?;
            println!("{}", sitrep_node::devpki::generate(&t, &out)?);
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => {
            let config = sitrep_node::Config::load(&config)?;
            let path = config.data_dir.join("audit.log");
            let (entries, head) = sitrep_store::audit::verify(&path)?;
            println!(
                "audit log {}: {entries} entries, chain intact, head {head}",
                path.display()
            );
            Ok(())
        }
        Command::Roster { command } => match command {
            RosterCommand::Verify { roster, admin_key } => crate::roster_cmd::verify(&roster, &admin_key),
            RosterCommand::Show { roster } => crate::roster_cmd::show(&roster),
            RosterCommand::Sign {
                input,
                admin_key,
                out,
            } => crate::roster_cmd::sign(&input, &admin_key, &out),
        },
    }
}
