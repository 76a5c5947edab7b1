//! `custodyd`: the Custody server.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use custody_server::{grpc, Node, ServerConfig};
use tracing::info;

/// Custody: encrypted, retention-enforcing archive for camera footage.
#[derive(Parser)]
#[command(name = "custodyd", version)]
struct Args {
    /// TOML configuration file; every field has a default.
    #[arg(long, short, global = true, env = "CUSTODY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the config's data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Listen address (overrides the config's listen).
    #[arg(long, global = true)]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve,
    /// Catalog maintenance.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Print the effective configuration as TOML.
    Config,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Delete this node's catalog and recreate it by listing the store.
    Rebuild,
}

fn load_config(args: &Args) -> Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut c = ServerConfig::from_toml(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            if let Some(dir) = path.parent() {
                c.resolve_paths(dir);
            }
            c
        }
        None => ServerConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    Ok(config)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<()> {
    custody_cli::logging::init("info");
    let args = Args::parse();
    let config = load_config(&args)?;
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listeners = config.effective_listeners().map_err(anyhow::Error::msg)?;
            let node = Node::open(&config).await?;
            let mut bound = Vec::new();
            for l in listeners {
                let b = grpc::Serving::bind(l).await?;
                // Tests and scripts read these lines to learn the bound ports.
                println!(
                    "custodyd listening on {} name={} services={}",
                    b.local_addr,
                    b.config.name,
                    b.config
                        .services
                        .iter()
                        .map(|s| format!("{s:?}").to_lowercase())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                bound.push(b);
            }
            info!(data_dir = %config.data_dir.display(), store = node.store().url(), "node ready");
            let sweeper = node.spawn_sweeper();
            let audit = node.audit().clone();
            grpc::serve(node, bound, shutdown_signal()).await?;
            if let Some(s) = sweeper {
                s.abort();
            }
            // Group-committed read records reach the store before we exit.
            audit.close().await?;
            info!("shut down cleanly");
        }
        Command::Catalog {
            command: CatalogCommand::Rebuild,
        } => {
            let (node, report) = Node::rebuild_catalog(&config).await?;
            println!(
                "catalog rebuilt from {}: {} segments indexed, {} foreign objects, {} failed verification, {} segment id conflicts",
                node.store().url(),
                report.indexed,
                report.foreign.len(),
                report.failed.len(),
                report.conflicts.len()
            );
            for (key, why) in &report.failed {
                println!("  FAILED {key}: {why}");
            }
            for (key, why) in &report.conflicts {
                println!("  CONFLICT {key}: {why}");
            }
            node.audit().close().await?;
            if !report.conflicts.is_empty() {
                anyhow::bail!(
                    "{} objects carry a segment id another object holds; they were left in place, unindexed",
                    report.conflicts.len()
                );
            }
        }
        Command::Config => {
            print!(
                "{}",
                toml::to_string_pretty(&config).context("rendering config")?
            );
        }
    }
    Ok(())
}
