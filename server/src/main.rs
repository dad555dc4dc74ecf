//! `diffit-server`: serves the runs under a checkpoints dir and the dashboard, read-only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use format::layout::DEFAULT_BASE_DIR;
use server::access::{self, AccessToken};
use server::{static_app, AppState, ServerConfig};

/// Serve training runs (JSON API, checkpoint files, live events) and the dashboard.
#[derive(Debug, Parser)]
#[command(name = "diffit-server", version)]
struct Args {
    /// Checkpoints dir holding run_NNN folders.
    #[arg(long, default_value = DEFAULT_BASE_DIR)]
    checkpoints: PathBuf,
    /// Address to listen on; loopback unless asked otherwise. Any other address requires an
    /// access token.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The built dashboard [default: target/site, from the current dir or beside the binary].
    #[arg(long)]
    app_dir: Option<PathBuf>,
    /// Access token every request must carry (at least 16 of `A-Za-z0-9-._~`); beyond
    /// loopback one is generated and printed when none is given. Prefer the environment
    /// variable: other users can read command lines.
    #[arg(long, env = access::TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    token: Option<AccessToken>,
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
    let given = args.token.is_some();
    let token = access::token_for(args.host, args.token)?;
    let mut config = ServerConfig::new(&args.checkpoints, app_dir);
    config.token = token.clone();
    let state = AppState::start(config).await;
    println!(
        "diffit-server listening on http://{local}/ (checkpoints: {})",
        args.checkpoints.display()
    );
    match &token {
        None => {}
        Some(_) if given => println!(
            "access token required: open http://{local}/?{}=<your token> (the one in --token or {}), or send `Authorization: Bearer <your token>`",
            access::TOKEN_QUERY,
            access::TOKEN_ENV,
        ),
        Some(token) => {
            println!("access token required; open the dashboard at:");
            for host in display_hosts(local.ip()) {
                println!(
                    "    http://{host}:{}/?{}={}",
                    local.port(),
                    access::TOKEN_QUERY,
                    token.reveal()
                );
            }
        }
    }
    server::serve(listener, state, async {
        // If the signal handler cannot be installed, run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await
    .context("serving")
}

/// Names a browser can use for `ip`: for the wildcard address, this machine's name and
/// loopback; otherwise `ip` itself (bracketed when IPv6).
fn display_hosts(ip: IpAddr) -> Vec<String> {
    if !ip.is_unspecified() {
        return vec![SocketAddr::new(ip, 0)
            .to_string()
            .trim_end_matches(":0")
            .to_string()];
    }
    let mut hosts = vec![];
    // Linux's hostname; elsewhere only loopback is printed.
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            hosts.push(name.to_string());
        }
    }
    hosts.push(if ip.is_ipv4() { "127.0.0.1" } else { "[::1]" }.to_string());
    hosts
}
