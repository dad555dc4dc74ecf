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
    /// Checkpoints dir holding run_NNN folders, or a bucket (`s3://bucket/prefix`, `gs://…`,
    /// `az://…`), whose runs are followed into a local copy (--cache) and served from it.
    #[arg(long, default_value = DEFAULT_BASE_DIR, value_name = "DIR|URL")]
    checkpoints: String,
    /// Where a bucket's runs are copied to be served [default: under
    /// ~/.cache/diffit-lora/served/].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Seconds between looks at a bucket for changed runs.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    bucket_poll: f64,
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
    let location = remote::Location::parse(&args.checkpoints).context("--checkpoints")?;
    let (checkpoints, follows_bucket) = match &location {
        remote::Location::Local(dir) => {
            if !dir.is_dir() {
                tracing::warn!(checkpoints = %dir.display(), "checkpoints dir does not exist yet; listing no runs until it does");
            }
            (dir.clone(), false)
        }
        remote::Location::Objects(url) => {
            let cache = args
                .cache
                .clone()
                .unwrap_or_else(|| remote::location::cache_dir("served", url));
            follow_bucket(url, &cache, args.bucket_poll)?;
            (cache, true)
        }
    };
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("reading the address bound for {addr}"))?;
    let given = args.token.is_some();
    let token = access::token_for(args.host, args.token)?;
    let mut config = ServerConfig::new(&checkpoints, app_dir);
    config.token = token.clone();
    config.follows_bucket = follows_bucket;
    let state = AppState::start(config).await;
    println!("diffit-server listening on http://{local}/ (checkpoints: {location})");
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

/// Brings the bucket's runs into `cache` once (so the first listing has them), then follows
/// it every `poll` seconds, on a thread of its own: the bucket client blocks on its own runtime,
/// which must not run inside the server's.
fn follow_bucket(url: &url::Url, cache: &std::path::Path, poll: f64) -> anyhow::Result<()> {
    if !(poll.is_finite() && poll > 0.0) {
        anyhow::bail!("--bucket-poll {poll}: give a positive number of seconds");
    }
    let interval = std::time::Duration::from_secs_f64(poll);
    let (url, cache) = (url.clone(), cache.to_path_buf());
    let (first_tx, first_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("bucket-follower".into())
        .spawn(move || {
            let first = remote::Bucket::open(&url)
                .map(|bucket| remote::Follower::new(bucket, &cache))
                .and_then(|mut follower| follower.round().map(|round| (follower, round)));
            let mut follower = match first {
                Ok((follower, round)) => {
                    tracing::info!(
                        runs = round.updated.len(),
                        files = round.files,
                        cache = %cache.display(),
                        "brought the bucket's runs down"
                    );
                    let _ = first_tx.send(Ok(()));
                    follower
                }
                Err(e) => {
                    let _ = first_tx.send(
                        Err(anyhow::Error::new(e)).context(format!("cannot list the runs in {url}")),
                    );
                    return;
                }
            };
            loop {
                std::thread::sleep(interval);
                match follower.round() {
                    Ok(round) if !round.updated.is_empty() => {
                        tracing::info!(runs = ?round.updated, files = round.files, "runs changed in the bucket");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot look at {url}: {e}"),
                }
            }
        })
        .context("starting the bucket follower")?;
    first_rx
        .recv()
        .context("the bucket follower stopped before its first look")?
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
