//! `orchestrator serve`: the reference orchestrator as an HTTP server.

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use orchestrator::http::{router, serve_with, Api, Limits};
use orchestrator::net::TcpConnector;
use orchestrator::store::{RedisConfig, RedisStore};
use orchestrator::{
    Copilot, Effects, HttpCopilot, MemStore, Orchestrator, RecordingEffects, ScriptedCopilot, SeededRng, Store, SystemClock, TurnConfig,
    WebhookEffects,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// mimalloc rather than the system allocator: a turn allocates a few dozen small objects, and
/// glibc's malloc/free was ~40% of the client's CPU in the Redis load bench (see
/// `benches/load.rs`, which uses the same allocator so it measures what this binary runs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "orchestrator", about = "Reference workflow orchestrator for agentic chat apps")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A bearer token and the user it stands for, as TOKEN=USER; repeatable.
    #[arg(long = "token", value_name = "TOKEN=USER", required = true)]
    tokens: Vec<String>,
    /// Lease time-to-live in milliseconds.
    #[arg(long, default_value_t = TurnConfig::default().lease_ttl_ms)]
    lease_ttl_ms: u64,
    /// `scripted` or the URL of a Copilot speaking the JSON contract (http://host:port/path).
    #[arg(long, default_value = "scripted")]
    copilot: String,
    /// Copilot request deadline in milliseconds.
    #[arg(long, default_value_t = TurnConfig::default().copilot_timeout_ms)]
    copilot_timeout_ms: u64,
    /// Connections served at once (past it, only `/healthz` is answered, on a few more).
    #[arg(long, default_value_t = Limits::default().connections_max)]
    connections_max: usize,
    /// Connections one client address may hold; 0 for no limit (behind a load balancer,
    /// raise it to the balancer's pool size).
    #[arg(long, default_value_t = Limits::default().per_peer_max)]
    connections_per_peer_max: usize,
    /// Unfinished conversations one user may have (past it, creating one is a 429); 0: no cap.
    #[arg(long, default_value_t = TurnConfig::default().active_conversations_per_user_max)]
    active_conversations_per_user_max: u64,
    /// How long a completed turn's answer is kept for retries, in milliseconds.
    #[arg(long, default_value_t = TurnConfig::default().idempotency_ttl_ms)]
    idempotency_ttl_ms: u64,
    /// How long a finished conversation is kept after its last turn, in milliseconds.
    #[arg(long, default_value_t = TurnConfig::default().terminal_retention_ms)]
    terminal_retention_ms: u64,
    /// Where submissions go: `memory` (kept in the process) or the URL of a webhook speaking the
    /// submission contract (http://host:port/path: 200 new, 208 already had). Delivered by the
    /// turn, then by the outbox relay until acknowledged.
    #[arg(long, default_value = "memory")]
    effects: String,
    /// Webhook deadline in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    effects_timeout_ms: u64,
    /// `memory` (embedded) or a Redis URL (redis://host:port).
    #[arg(long, default_value = "memory")]
    store: String,
}

fn parse_tokens(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut tokens = BTreeMap::new();
    for t in raw {
        let Some((token, user)) = t.split_once('=') else {
            bail!("--token {t:?}: expected TOKEN=USER, e.g. --token demo=alice");
        };
        if token.is_empty() || user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bail!("--token {t:?}: token must be non-empty and the user 1+ characters of [A-Za-z0-9_-]");
        }
        if tokens.insert(token.to_string(), user.to_string()).is_some() {
            bail!("--token {token:?} given twice");
        }
    }
    Ok(tokens)
}

async fn run<S: Store, C: Copilot>(args: &ServeArgs, store: S, copilot: C, config: TurnConfig) -> anyhow::Result<()> {
    if args.effects == "memory" {
        serve_api(args, store, copilot, RecordingEffects::new(), config).await
    } else {
        let webhook = WebhookEffects::new(TcpConnector, &args.effects, args.effects_timeout_ms)
            .map_err(|e| anyhow::anyhow!("--effects {:?}: {e} (expected `memory` or http://host:port/path)", args.effects))?;
        serve_api(args, store, copilot, webhook, config).await
    }
}

async fn serve_api<S: Store, C: Copilot, E: Effects>(
    args: &ServeArgs,
    store: S,
    copilot: C,
    effects: E,
    config: TurnConfig,
) -> anyhow::Result<()> {
    let tokens = parse_tokens(&args.tokens)?;
    // The production seed comes from the OS once; everything after is a ChaCha stream.
    let seed: u64 = rand::random();
    let orch = Orchestrator::new(store, copilot, effects, SeededRng::from_seed(seed), config);
    let api = Arc::new(Api { orchestrator: orch, tokens });
    let listener = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, store = %args.store, copilot = %args.copilot, effects = %args.effects, "serving");
    eprintln!("orchestrator listening on http://{}", listener.local_addr()?);
    if args.connections_max == 0 {
        bail!("--connections-max must be at least 1");
    }
    let limits = Limits { connections_max: args.connections_max, per_peer_max: args.connections_per_peer_max, ..Limits::default() };
    // The outbox relay: delivers submissions whose first attempt failed, or whose worker died.
    let relay = api.clone();
    tokio::spawn(async move { relay.orchestrator.run_relay().await });
    serve_with(listener, router(api), limits).await;
    Ok(())
}

async fn serve_cmd(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = TurnConfig {
        lease_ttl_ms: args.lease_ttl_ms,
        copilot_timeout_ms: args.copilot_timeout_ms,
        active_conversations_per_user_max: args.active_conversations_per_user_max,
        idempotency_ttl_ms: args.idempotency_ttl_ms,
        terminal_retention_ms: args.terminal_retention_ms,
        ..TurnConfig::default()
    };
    config.lease_extend_every_ms = (args.lease_ttl_ms / 3).max(1).min(args.lease_ttl_ms.saturating_sub(1));
    if let Err(e) = config.validate() {
        bail!("invalid settings: {e}");
    }
    if args.store == "memory" {
        let store = MemStore::new(Arc::new(SystemClock));
        with_copilot(&args, store, config).await
    } else if args.store.starts_with("redis://") {
        let store = RedisStore::open(&args.store, RedisConfig::default(), rand::random())
            .map_err(|e| anyhow::anyhow!("--store {:?}: {e}", args.store))?;
        // Fail fast on a wrong address; later outages are 503s, not exits.
        if let Err(e) = store.load("startup-probe").await {
            bail!("--store {:?}: cannot reach Redis: {e}", args.store);
        }
        with_copilot(&args, store, config).await
    } else {
        bail!("--store {:?}: expected `memory` or redis://host:port", args.store);
    }
}

async fn with_copilot<S: Store>(args: &ServeArgs, store: S, config: TurnConfig) -> anyhow::Result<()> {
    if args.copilot == "scripted" {
        run(args, store, ScriptedCopilot::new(), config).await
    } else {
        let c = HttpCopilot::new(TcpConnector, &args.copilot, args.copilot_timeout_ms)
            .map_err(|e| anyhow::anyhow!("--copilot {:?}: {e} (expected `scripted` or http://host:port/path)", args.copilot))?;
        run(args, store, c, config).await
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| match cli.cmd {
            Cmd::Serve(args) => rt.block_on(serve_cmd(args)),
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
