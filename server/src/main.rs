//! `diffit-server`: serves the runs under a checkpoints dir and the dashboard, read-only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use format::layout::DEFAULT_BASE_DIR;
use server::{static_app, AppState, ServerConfig};

/// Serve training runs (JSON API, checkpoint files, live events) and the dashboard.
#[derive(Debug, Parser)]
#[command(name = "diffit-server", version)]
struct Args {
    /// Checkpoints dir holding run_NNN folders.
    #[arg(long, default_value = DEFAULT_BASE_DIR)]
    checkpoints: PathBuf,
    /// Address to listen on; loopback unless asked otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The built dashboard [default: target/site, from the current dir or beside the binary].
    #[arg(long)]
    app_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let app_dir = args.app_dir.unwrap_or_else(static_app::default_app_dir);
    if !app_dir.join("index.html").is_file() {
        tracing::warn!(app_dir = %app_dir.display(), "no dashboard built here; run `make app` (the API works without it)");
    }
    if !args.checkpoints.is_dir() {
        tracing::warn!(checkpoints = %args.checkpoints.display(), "checkpoints dir does not exist yet; listing no runs until it does");
    }
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("reading the address bound for {addr}"))?;
    let state = AppState::start(ServerConfig::new(&args.checkpoints, app_dir)).await;
    println!(
        "diffit-server listening on http://{local}/ (checkpoints: {})",
        args.checkpoints.display()
    );
    server::serve(listener, state, async {
        // If the signal handler cannot be installed, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await
    .context("serving")
}
