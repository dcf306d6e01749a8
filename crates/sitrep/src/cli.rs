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
    /// Start the demo network (six nodes on loopback), push sample reports,
    /// print deliveries and receipts; runs until Ctrl-C.
    Demo {
        /// Run the scenario to the end and exit: 0 only if every report reached every recipient
        /// (with --national: only if both authorities hold all 21 regions and the classified input).
        #[arg(long)]
        once: bool,
        /// The national network instead (deploy/demo/national.toml): all 21 regions report to the
        /// NSPL hub, Socialstyrelsen and MSB follow the national roll-ups.
        #[arg(long)]
        national: bool,
    },
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
    /// Submit a report or follow its delivery (talks to the node's API).
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Reports received at the node (reader token).
    Inbox {
        /// Continue after this cursor (printed at the end of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// Peers, queues, delivery counters, certificates, roster (operator token).
    Status {
        /// Print the same document as GET /v1/status.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// National feeds: list, show, watch, subscribe, unsubscribe, verify (reader token).
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
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
enum ReportCommand {
    /// Submit a report (JSON, see docs/api.md); prints its id.
    Submit {
        /// The submission: report, label, precedence, mode, recipients, expires.
        file: PathBuf,
        /// Follow delivery until every recipient has a final state; exit 0 only if all DELIVERED.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The submission's Idempotency-Key (default: a new random one, shown
        /// if the submission has to be retried). Rerunning with the key of a
        /// submission that was cut off stores nothing twice.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// How long to keep retrying (same key) while the node cannot be
        /// reached, cuts the connection before answering, or is busy.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        retry_for: std::time::Duration,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// Delivery state per recipient.
    Status {
        /// The message id printed by submit.
        id: String,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum FeedCommand {
    /// The feeds this node builds or asked for, with their state.
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// The latest roll-up: one line per region (overdue and stale marked), then the totals.
    Show {
        /// Feed name, e.g. national-open.
        name: String,
        /// Print the roll-up as JSON (the proto's field names).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// One line per update as it arrives (Server-Sent Events; resumes after a cut).
    Watch {
        /// Feed name.
        name: String,
        /// Print each roll-up as one JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// Ask the aggregator for a feed (a signed SUBSCRIBE through the network).
    Subscribe {
        /// Feed name.
        name: String,
        /// The aggregator's node id; default: the roster's only aggregator.
        #[arg(long)]
        aggregator: Option<String>,
        /// The feed's channel: open or secure.
        #[arg(long, default_value = "open")]
        channel: String,
        /// Only these SCB county codes, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Wait this long for the first roll-up or the refusal; exit 1 if refused.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// Leave a feed (a signed UNSUBSCRIBE).
    Unsubscribe {
        /// Feed name.
        name: String,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
    /// Check a roll-up's sources against the reports this node received:
    /// digest, signature and every figure; exit 1 if any fails.
    Verify {
        /// Feed name.
        name: String,
        /// A roll-up (JSON, as `feed show --json` prints it) instead of the one held at the node.
        #[arg(long)]
        rollup: Option<PathBuf>,
        #[command(flatten)]
        api: crate::client::ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of a node's audit logs; report the first broken link.
    Verify {
        /// The node's config file (the logs are `<data_dir>/audit.log` for the
        /// open channel and `audit.log` in the secure channel's store directory).
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
    /// Print a signed roster file as TOML (the form `roster sign` reads; the
    /// signature is not checked: use `roster verify`), or, without --roster,
    /// the node's roster in use (serial, validity) from its API.
    Show {
        /// Signed roster (roster.bin).
        #[arg(long)]
        roster: Option<PathBuf>,
        #[command(flatten)]
        api: crate::client::ApiArgs,
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
        Command::Demo { once, national } => {
            if national {
                crate::national::run(once)
            } else {
                crate::demo::run(once)
            }
        }
        Command::Node { config } => crate::node_cmd::run(&config),
        Command::DevPki { topology, out } => {
            let t = sitrep_devpki::read_topology(&topology)?;
            println!("{}", sitrep_devpki::generate(&t, &out)?);
            Ok(())
        }
        Command::Report {
            command:
                ReportCommand::Submit {
                    file,
                    wait,
                    timeout,
                    idempotency_key,
                    retry_for,
                    api,
                },
        } => crate::client::submit(
            &api,
            &file,
            &crate::client::SubmitOptions {
                wait,
                timeout,
                key: idempotency_key,
                retry_for,
            },
        ),
        Command::Report {
            command: ReportCommand::Status { id, api },
        } => crate::client::report_status(&api, &id),
        Command::Inbox { after, json, api } => crate::client::inbox(&api, after.as_deref(), json),
        Command::Status { json, api } => crate::client::status(&api, json),
        Command::Feed { command } => match command {
            FeedCommand::List { json, api } => crate::feed_cmd::list(&api, json),
            FeedCommand::Show { name, json, api } => crate::feed_cmd::show(&api, &name, json),
            FeedCommand::Watch { name, json, api } => crate::feed_cmd::watch(&api, &name, json),
            FeedCommand::Subscribe {
                name,
                aggregator,
                channel,
                regions,
                wait,
                api,
            } => crate::feed_cmd::subscribe(&api, &name, aggregator.as_deref(), &channel, &regions, wait),
            FeedCommand::Unsubscribe { name, api } => crate::feed_cmd::unsubscribe(&api, &name),
            FeedCommand::Verify { name, rollup, api } => {
                crate::feed_cmd::verify(&api, &name, rollup.as_deref())
            }
        },
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => {
            let config = sitrep_node::Config::load(&config)?;
            // One log per channel (the secure channel's beside its store).
            for channel in config.channels.keys() {
                let path = config.audit_log(*channel);
                let (entries, head) = sitrep_store::audit::verify(&path)?;
                println!(
                    "audit log {} ({channel}): {entries} entries, chain intact, head {head}",
                    path.display()
                );
            }
            Ok(())
        }
        Command::Roster { command } => match command {
            RosterCommand::Verify { roster, admin_key } => crate::roster_cmd::verify(&roster, &admin_key),
            RosterCommand::Show {
                roster: Some(roster), ..
            } => crate::roster_cmd::show(&roster),
            RosterCommand::Show { roster: None, api } => crate::client::roster_summary(&api),
            RosterCommand::Sign {
                input,
                admin_key,
                out,
            } => crate::roster_cmd::sign(&input, &admin_key, &out),
        },
    }
}
