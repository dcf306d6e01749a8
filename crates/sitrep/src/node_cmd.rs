//! `sitrep node --config FILE`: run a node until SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use sitrep_node::{Config, Node};
use tracing_subscriber::EnvFilter;

pub(crate) fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(&config.log.level, config.log.json)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sitrep")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let node = Node::start(config).await?;
        // One line per channel on stdout, for scripts and the test kit.
        let mut out = std::io::stdout().lock();
        for channel in sitrep_core::Channel::ALL {
            if let Some(addr) = node.local_addr(channel) {
                writeln!(out, "ready node={} channel={channel} addr={addr}", node.id())?;
            }
        }
        if let Some(addr) = node.api_addr() {
            writeln!(out, "ready node={} api=http://{addr}", node.id())?;
        }
        out.flush()?;
        drop(out);
        let reloader = node.reloader();
        let sighup = tokio::spawn(reload_on_sighup(reloader, path.to_path_buf()));
        let result = node.run_until(shutdown_signal()).await;
        sighup.abort();
        result?;
        Ok(())
    })
}

fn init_logging(level: &str, json: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("SITREP_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .with_context(|| format!("config key log.level: {level:?} is not a tracing filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// SIGHUP: reload the roster file (a bad one is refused and the old one
/// stays), then the config file's peer addresses (a peer that moved is
/// reached at its new address at once; a config that does not load changes
/// nothing). Nothing else of the config is applied: that needs a restart.
async fn reload_on_sighup(reloader: sitrep_node::Reloader, config: std::path::PathBuf) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; reload by signal is off");
            return;
        };
        while hup.recv().await.is_some() {
            match reloader.reload_roster() {
                Ok(serial) => tracing::info!(serial, "SIGHUP: roster reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: roster refused; keeping the one in use"),
            }
            move_peers(&reloader, &config);
        }
    }
    #[cfg(not(unix))]
    drop((reloader, config));
}

/// The peer addresses part of a SIGHUP.
fn move_peers(reloader: &sitrep_node::Reloader, path: &Path) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: config not reloaded; peer addresses unchanged");
            return;
        }
    };
    let changes = reloader.move_peers(&config);
    for (channel, peer, address) in &changes.moved {
        tracing::info!(%channel, %peer, %address, "SIGHUP: peer moved; reconnecting there");
    }
    for (channel, peer) in &changes.not_running {
        tracing::warn!(%channel, %peer, "SIGHUP: a peer added to the config starts at the next restart");
    }
    for (channel, peer) in &changes.not_configured {
        tracing::warn!(%channel, %peer, "SIGHUP: a peer removed from the config is sent to until the next restart");
    }
    if changes.moved.is_empty() {
        tracing::info!("SIGHUP: no peer address changed");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
