//! Load benchmark of the reference orchestrator: 100 concurrent conversations driven through
//! the `lead` workflow to `succeeded` (4 turns each), on the embedded store through the turn
//! function, a contended case (100 concurrent turns over 10 conversations), and the same 100
//! conversations through HTTP on loopback, beside the same requests to a bare axum JSON handler
//! (the limit for the HTTP path; the ratio is printed). Besides criterion's timings it prints turns/s, turn
//! latency p50/p99 as the client saw it, and lease-acquire p50/p99 (first Begin of a turn →
//! lease taken, retries included).
//! When `redis-server` is on PATH it also runs the 100 conversations on a `RedisStore` and
//! prints `redis-benchmark`'s SET ops/s at 100 clients and the ratio of our turns/s to
//! that limit divided by 2 round trips per turn, and the CPU the bench process and
//! redis-server used (on a 2-core machine the two compete for the same cores).
//!
//! `BENCH_ONLY=soak` runs 1,000,000 turns on the embedded store with short retention and prints
//! RSS after a tenth of them and at the end (memory bounded by policy).
//!
//! Knobs: `BENCH_ONLY=embedded,http,redis,soak` picks cases; `BENCH_THREADS` sets the Redis case's
//! client threads (default 1); `BENCH_LIFO=1` keeps tokio's LIFO slot on; `BENCH_NO_LIMIT=1`
//! skips redis-benchmark (to profile our side alone).

// The allocator the `orchestrator` binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orchestrator::http::{router, serve, Api};
use orchestrator::store::{BeginArgs, BeginOutcome, CommitArgs, CommitOutcome, ConversationRecord, StoreError};
use orchestrator::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONVERSATIONS: usize = 100;
const LEAD_TURNS: [&str; 4] = ["email is a@example.com", "phone is +1 555 0100", "company is ACME", "yes"];

/// Wraps a store and records, per turn (owner token), the time from its first Begin to the
/// Begin that took the lease.
struct Timed<S> {
    inner: S,
    first_begin: Mutex<BTreeMap<String, Instant>>,
    acquire_us: Mutex<Vec<u64>>,
}

impl<S> Timed<S> {
    fn new(inner: S) -> Self {
        Self { inner, first_begin: Mutex::new(BTreeMap::new()), acquire_us: Mutex::new(Vec::new()) }
    }
    fn take_samples(&self) -> Vec<u64> {
        std::mem::take(&mut *self.acquire_us.lock().unwrap())
    }
}

impl<S: Store> Store for Timed<S> {
    async fn create(&self, c: &str, r: &ConversationRecord) -> Result<bool, StoreError> {
        self.inner.create(c, r).await
    }
    async fn load(&self, c: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.inner.load(c).await
    }
    async fn begin(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        let now = Instant::now();
        let r = self.inner.begin(a).await;
        // Only a turn that found the lease busy is remembered (the rare path); the common path
        // costs the measurement nothing but two clock reads.
        match &r {
            Ok(BeginOutcome::Busy { .. }) => {
                self.first_begin.lock().unwrap().entry(a.owner_token.to_string()).or_insert(now);
            }
            Ok(BeginOutcome::Acquired { .. }) => {
                let first =
                    if self.first_begin.lock().unwrap().is_empty() { None } else { self.first_begin.lock().unwrap().remove(a.owner_token) };
                self.acquire_us.lock().unwrap().push(first.unwrap_or(now).elapsed().as_micros() as u64);
            }
            _ => {
                self.first_begin.lock().unwrap().remove(a.owner_token);
            }
        }
        r
    }
    async fn commit(&self, a: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        self.inner.commit(a).await
    }
    async fn release(&self, c: &str, t: &str, k: &str) -> Result<bool, StoreError> {
        self.inner.release(c, t, k).await
    }
    async fn extend(&self, c: &str, t: &str, k: &str, ms: u64) -> Result<bool, StoreError> {
        self.inner.extend(c, t, k, ms).await
    }
    async fn admit(&self, user: &str, cid: &str, max: u64) -> Result<bool, StoreError> {
        self.inner.admit(user, cid, max).await
    }
    async fn active(&self, user: &str) -> Result<orchestrator::store::ActiveList, StoreError> {
        self.inner.active(user).await
    }
    async fn dismiss(&self, user: &str, cid: &str) -> Result<(), StoreError> {
        self.inner.dismiss(user, cid).await
    }
    async fn cancel(&self, a: &orchestrator::store::CancelArgs<'_>) -> Result<orchestrator::store::CancelOutcome, StoreError> {
        self.inner.cancel(a).await
    }
    async fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> Result<(), StoreError> {
        self.inner.outbox_intend(cid, due_in_ms).await
    }
    async fn outbox_claim(&self, max: usize, claim_ms: u64) -> Result<Vec<orchestrator::store::OutboxEntry>, StoreError> {
        self.inner.outbox_claim(max, claim_ms).await
    }
    async fn outbox_done(&self, cid: &str) -> Result<(), StoreError> {
        self.inner.outbox_done(cid).await
    }
    async fn outbox_later(&self, cid: &str, after_ms: u64) -> Result<(), StoreError> {
        self.inner.outbox_later(cid, after_ms).await
    }
}

type Orch<S = MemStore> = Orchestrator<Arc<Timed<S>>, Arc<ScriptedCopilot>, Arc<RecordingEffects>>;

fn embedded(seed: u64) -> (Arc<Orch>, Arc<Timed<MemStore>>) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(Timed::new(MemStore::new(clock.clone())));
    let o = Orchestrator::new(
        store.clone(),
        Arc::new(ScriptedCopilot::new()),
        Arc::new(RecordingEffects::new()),
        SeededRng::from_seed(seed),
        // One bench user stands for many (and `contended` leaves its conversations open).
        TurnConfig { active_conversations_per_user_max: 0, ..TurnConfig::default() },
    );
    (Arc::new(o), store)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every turn's latency as its client saw it (first attempt → answer, retries included), in µs.
static TURN_US: Mutex<Vec<u64>> = Mutex::new(Vec::new());

fn take_turn_samples() -> Vec<u64> {
    std::mem::take(&mut *TURN_US.lock().unwrap())
}

async fn turn_retrying<S: Store>(o: &Orch<S>, r: &TurnRequest) -> TurnResponse {
    let start = Instant::now();
    for _ in 0..1000 {
        match o.turn(r).await {
            Ok(resp) => {
                TURN_US.lock().unwrap().push(start.elapsed().as_micros() as u64);
                return resp;
            }
            Err(TurnError::Unavailable { .. }) | Err(TurnError::InFlight) => tokio::task::yield_now().await,
            Err(e) => panic!("turn failed: {e}"),
        }
    }
    panic!("turn never succeeded")
}

/// 100 conversations at once, each created and driven through the lead workflow by its own
/// task; returns turns done (creations are timed but not counted as turns).
async fn hundred_conversations<S: Store>(o: &Arc<Orch<S>>, round: u64) -> usize {
    let tasks: Vec<_> = (0..CONVERSATIONS)
        .map(|_| {
            let o = o.clone();
            tokio::spawn(async move {
                let cid = o.create("bench", "lead").await.unwrap();
                for (i, q) in LEAD_TURNS.iter().enumerate() {
                    let r = TurnRequest {
                        conversation_id: cid.clone(),
                        user: "bench".into(),
                        idempotency_key: format!("r{round}-t{i}"),
                        query: q.to_string(),
                    };
                    let resp = turn_retrying(&o, &r).await;
                    debug_assert!(i < 3 || resp.workflow_state.step == workflow::Step::Succeeded);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    CONVERSATIONS * LEAD_TURNS.len()
}

/// 100 concurrent turns over 10 conversations (10 fields of `profile` each).
async fn contended<S: Store>(o: &Arc<Orch<S>>, round: u64) -> usize {
    let fields = workflow::workflow("profile").unwrap().required;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let cid = o.create("bench", "profile").await.unwrap();
        for (i, f) in fields.iter().enumerate() {
            let (o, cid) = (o.clone(), cid.clone());
            let r = TurnRequest {
                conversation_id: cid,
                user: "bench".into(),
                idempotency_key: format!("r{round}-f{i}"),
                query: format!("{f} is v{i}"),
            };
            tasks.push(tokio::spawn(async move { turn_retrying(&o, &r).await }));
        }
    }
    let n = tasks.len();
    for t in tasks {
        t.await.unwrap();
    }
    n
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, turns: usize, wall: Duration, mut acquire_us: Vec<u64>) {
    acquire_us.sort_unstable();
    let mut turn_us = take_turn_samples();
    turn_us.sort_unstable();
    println!(
        "{name}: {turns} turns in {:.1} ms = {:.0} turns/s; turn p50 {} us, p99 {} us; lease acquire p50 {} us, p99 {} us ({} samples)",
        wall.as_secs_f64() * 1e3,
        turns as f64 / wall.as_secs_f64(),
        percentile(&turn_us, 0.50),
        percentile(&turn_us, 0.99),
        percentile(&acquire_us, 0.50),
        percentile(&acquire_us, 0.99),
        acquire_us.len()
    );
}

fn summary<S: Store, F, Fut>(rt: &tokio::runtime::Runtime, name: &str, o: &Arc<Orch<S>>, store: &Timed<S>, rounds: u64, f: F) -> f64
where
    F: Fn(Arc<Orch<S>>, u64) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    store.take_samples();
    take_turn_samples();
    let start = Instant::now();
    let mut turns = 0;
    for round in 0..rounds {
        turns += rt.block_on(f(o.clone(), 1_000_000 + round));
    }
    let wall = start.elapsed();
    report(name, turns, wall, store.take_samples());
    turns as f64 / wall.as_secs_f64()
}

/// `BENCH_ONLY=redis` (or `embedded`, `http`, comma-separated) runs only those cases; criterion's
/// own filter would still run every case's turns/s summary.
fn selected(case: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |v| v.split(',').any(|c| c.trim() == case))
}

fn bench_embedded(c: &mut Criterion) {
    if !selected("embedded") {
        return;
    }
    let rt = runtime();
    let (o, store) = embedded(1);
    summary(&rt, "embedded/100-conversations", &o, &store, 50, |o, r| async move { hundred_conversations(&o, r).await });
    summary(&rt, "embedded/contended-100-turns-10-conversations", &o, &store, 50, |o, r| async move { contended(&o, r).await });

    let mut g = c.benchmark_group("embedded");
    g.throughput(Throughput::Elements((CONVERSATIONS * LEAD_TURNS.len()) as u64));
    let mut round = 0;
    g.bench_function("100-conversations-lead-to-succeeded", |b| {
        b.iter(|| {
            round += 1;
            rt.block_on(hundred_conversations(&o, round))
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("contended-100-turns-10-conversations", |b| {
        b.iter(|| {
            round += 1;
            rt.block_on(contended(&o, round))
        })
    });
    g.finish();
}

// ---- HTTP on loopback ----------------------------------------------------------------

async fn http_conversation(addr: std::net::SocketAddr, round: u64) -> usize {
    use http_body_util::{BodyExt, Full};
    let io = tokio::net::TcpStream::connect(addr).await.unwrap();
    io.set_nodelay(true).unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let send = |path: String, key: Option<String>, body: String| {
        let mut b = hyper::Request::post(path).header("host", "bench").header("authorization", "Bearer bench");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Full::new(bytes_of(body))).unwrap()
    };
    let resp = tx.send_request(send("/v1/conversations".into(), None, r#"{"workflow":"lead"}"#.into())).await.unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    for (i, q) in LEAD_TURNS.iter().enumerate() {
        let body = serde_json::json!({ "query": q }).to_string();
        let start = Instant::now();
        let resp = tx.send_request(send(format!("/v1/conversations/{id}/turns"), Some(format!("r{round}-{i}")), body)).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        TURN_US.lock().unwrap().push(start.elapsed().as_micros() as u64);
    }
    LEAD_TURNS.len()
}

fn bytes_of(s: String) -> hyper::body::Bytes {
    hyper::body::Bytes::from(s)
}

async fn http_hundred(addr: std::net::SocketAddr, round: u64) -> usize {
    let tasks: Vec<_> = (0..CONVERSATIONS).map(|_| tokio::spawn(http_conversation(addr, round))).collect();
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n
}

/// The limit for the HTTP path: a bare axum JSON handler answering the same requests with an
/// answer of the same shape and about the same size, and no orchestrator behind it.
fn bare_router() -> axum::Router {
    use axum::routing::post;
    use axum::Json;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let create = || async {
        (axum::http::StatusCode::CREATED, Json(serde_json::json!({"id": format!("c{}", NEXT.fetch_add(1, Ordering::Relaxed))})))
    };
    // The body is parsed as the orchestrator parses it: raw bytes, no content-type required.
    let turn = |axum::extract::Path(id): axum::extract::Path<String>, headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let authorised = headers.get("authorization").is_some() && headers.get("idempotency-key").is_some();
        let query = body["query"].as_str().unwrap_or_default().to_string();
        let state = serde_json::json!({"workflow": "lead", "step": "gathering", "collectedData": {"email": query}, "version": 1, "noSignalStreak": 0, "turns": 1});
        Json(
            serde_json::json!({"conversationId": id, "turn": 1, "reply": "Thanks.", "extracted": [], "workflowState": state, "replayed": !authorised}),
        )
    };
    axum::Router::new().route("/v1/conversations", post(create)).route("/v1/conversations/{id}/turns", post(turn))
}

/// `rounds` rounds of 100 conversations against `addr`: turns and wall time.
fn http_rounds(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, rounds: std::ops::Range<u64>) -> (usize, Duration) {
    let start = Instant::now();
    let mut turns = 0;
    for round in rounds {
        turns += rt.block_on(http_hundred(addr, round));
    }
    (turns, start.elapsed())
}

fn bench_http(c: &mut Criterion) {
    if !selected("http") {
        return;
    }
    let rt = runtime();
    let (o, store) = embedded(2);
    let orch = Arc::try_unwrap(o).ok().expect("sole owner");
    let tokens = BTreeMap::from([("bench".to_string(), "bench".to_string())]);
    let api = Arc::new(Api { orchestrator: orch, tokens });
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(serve(listener, router(api)));
    let bare = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let bare_addr = bare.local_addr().unwrap();
    rt.spawn(async move { axum::serve(bare, bare_router()).await });
    store.take_samples();
    take_turn_samples();
    let (turns, wall) = http_rounds(&rt, addr, 0..20);
    report("http/100-conversations", turns, wall, store.take_samples());

    // The same client, concurrency and requests against the bare handler, alternated with the
    // orchestrator in one run (the machine is shared): medians of three each.
    let mut ours = Vec::new();
    let mut limit = Vec::new();
    for i in 0..3u64 {
        let (t, w) = http_rounds(&rt, addr, 100 + i * 20..120 + i * 20);
        ours.push(t as f64 / w.as_secs_f64());
        let (t, w) = http_rounds(&rt, bare_addr, 200 + i * 20..220 + i * 20);
        limit.push(t as f64 / w.as_secs_f64());
    }
    take_turn_samples();
    ours.sort_by(f64::total_cmp);
    limit.sort_by(f64::total_cmp);
    println!(
        "http limit: bare axum JSON handler {:.0} turns/s, orchsim {:.0} turns/s (medians of 3 alternated runs of 2,000 turns) = ratio {:.2}",
        limit[1],
        ours[1],
        ours[1] / limit[1]
    );

    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements((CONVERSATIONS * LEAD_TURNS.len()) as u64));
    let mut round = 1000;
    g.bench_function("100-conversations-lead-to-succeeded", |b| {
        b.iter(|| {
            round += 1;
            rt.block_on(http_hundred(addr, round))
        })
    });
    g.finish();
}

// ---- Redis ----------------------------------------------------------------------------

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat` (Linux; `None`
/// elsewhere). Clock ticks are 10 ms, so only windows of several hundred ms say much.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// `redis-benchmark`'s requests/s for SET at 100 clients on the same server.
fn redis_benchmark_set(port: u16) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", "100", "-n", "100000", "-t", "set", "--csv"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // CSV: "test","rps",...; the data row starts with "SET".
    let row = text.lines().find(|l| l.starts_with("\"SET\""))?;
    row.split(',').nth(1)?.trim_matches('"').parse().ok()
}

fn bench_redis(c: &mut Criterion) {
    if !selected("redis") {
        return;
    }
    // One client thread by default: on a 2-core machine redis-server needs the other core, just
    // as redis-benchmark (single-threaded) leaves it one. BENCH_THREADS overrides.
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let Some(server) = testkit::RedisServer::start() else {
        println!("redis: SKIPPED (redis-server not on PATH)");
        return;
    };
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(threads).enable_all();
    if std::env::var("BENCH_LIFO").is_err() {
        b.disable_lifo_slot();
    }
    let rt = b.build().unwrap();
    let redis = orchestrator::store::RedisStore::open(&server.url(), Default::default(), 3).unwrap();
    let store = Arc::new(Timed::new(redis));
    let o = Arc::new(Orchestrator::new(
        store.clone(),
        Arc::new(ScriptedCopilot::new()),
        Arc::new(RecordingEffects::new()),
        SeededRng::from_seed(3),
        // One bench user stands for many (and `contended` leaves its conversations open).
        TurnConfig { active_conversations_per_user_max: 0, ..TurnConfig::default() },
    ));
    rt.block_on(hundred_conversations(&o, 0));
    // The machine is shared and noisy: interleave our measurement with redis-benchmark's, three
    // times each, and compare medians rather than one run of each.
    const PAIRS: u64 = 3;
    let mut ours = Vec::new();
    let mut limit = Vec::new();
    let redis_pid = server.pid().unwrap_or(0);
    for i in 0..PAIRS {
        let cpu_before = (cpu_seconds(std::process::id()), cpu_seconds(redis_pid), Instant::now());
        ours.push(summary(&rt, "redis/100-conversations", &o, &store, 40, move |o, r| async move {
            hundred_conversations(&o, r + i * 1_000).await
        }));
        if let (Some(c0), Some(r0), Some(c1), Some(r1)) =
            (cpu_before.0, cpu_before.1, cpu_seconds(std::process::id()), cpu_seconds(redis_pid))
        {
            let wall = cpu_before.2.elapsed().as_secs_f64();
            println!("  cpu: bench process {:.2} cores, redis-server {:.2} cores", (c1 - c0) / wall, (r1 - r0) / wall);
        }
        if let Some(ops) = std::env::var("BENCH_NO_LIMIT").is_err().then(|| redis_benchmark_set(server.port)).flatten() {
            limit.push(ops);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let turns_per_s = median(&mut ours);
    match limit.is_empty() {
        false => {
            let ops = median(&mut limit);
            println!(
                "redis-benchmark SET, 100 clients: median {ops:.0} ops/s of {limit:?}; limit at 2 round trips per turn {:.0} turns/s; \
                 median turns/s {turns_per_s:.0}; ratio turns/s / (ops/s / 2) = {:.2}",
                ops / 2.0,
                turns_per_s / (ops / 2.0)
            )
        }
        true => println!("redis-benchmark not available: no ratio"),
    }
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements((CONVERSATIONS * LEAD_TURNS.len()) as u64));
    let mut round = 100;
    g.bench_function("100-conversations-lead-to-succeeded", |b| {
        b.iter(|| {
            round += 1;
            rt.block_on(hundred_conversations(&o, round))
        })
    });
    g.finish();
}

/// This process's resident set, from `/proc/self/status`, in KiB.
fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

/// The process's peak RSS so far (it never goes down, so it shows growth a purge hides).
fn peak_rss_kib() -> Option<u64> {
    proc_status_kib("VmHWM:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// Memory by policy, not by luck: 1,000,000 turns on the embedded store, 100 conversations at a
/// time driven to `cancelled` (no submissions, so the in-process effects log does not grow),
/// with the answer TTL and the retention of finished conversations at 200 ms (production: an hour
/// and a day); prints RSS after 100,000 and after 1,000,000 turns and their ratio. Not timed:
/// only with `BENCH_ONLY=soak`; `SOAK_TURNS` changes the total, `SOAK_TTL_MS` both times (a
/// day shows the growth a store without retention had).
fn bench_soak(_c: &mut Criterion) {
    // Opt-in: a million turns is not part of the default run.
    if !std::env::var("BENCH_ONLY").is_ok_and(|v| v.split(',').any(|c| c.trim() == "soak")) {
        return;
    }
    let total: usize = std::env::var("SOAK_TURNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rt = runtime();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(MemStore::new(clock));
    let ttl: u64 = std::env::var("SOAK_TTL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let cfg = TurnConfig { idempotency_ttl_ms: ttl, terminal_retention_ms: ttl, ..TurnConfig::default() };
    let o = Arc::new(Orchestrator::new(
        store.clone(),
        Arc::new(ScriptedCopilot::new()),
        Arc::new(RecordingEffects::new()),
        SeededRng::from_seed(5),
        cfg,
    ));
    const TURNS: [&str; 4] = ["email is a@example.com", "phone is +1 555 0100", "company is ACME", "no"];
    let (mut done, mut round, mut at_tenth) = (0usize, 0u64, None);
    let started = Instant::now();
    while done < total {
        let _entered = rt.enter();
        let tasks: Vec<_> = (0..CONVERSATIONS)
            .map(|_| {
                let o = o.clone();
                tokio::spawn(async move {
                    let cid = o.create("soak", "lead").await.unwrap();
                    for (i, q) in TURNS.iter().enumerate() {
                        let r = TurnRequest {
                            conversation_id: cid.clone(),
                            user: "soak".into(),
                            idempotency_key: format!("t{i}"),
                            query: q.to_string(),
                        };
                        o.turn(&r).await.unwrap();
                    }
                })
            })
            .collect();
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
        done += CONVERSATIONS * TURNS.len();
        round += 1;
        if at_tenth.is_none() && done >= total / 10 {
            at_tenth = Some((done, rss_kib().unwrap_or(0), peak_rss_kib().unwrap_or(0), store.conversations(), store.idem_entries()));
        }
    }
    let (tenth_turns, tenth_rss, tenth_peak, tenth_convs, tenth_idem) = at_tenth.unwrap_or_default();
    let (end_rss, end_peak) = (rss_kib().unwrap_or(0), peak_rss_kib().unwrap_or(0));
    println!(
        "soak: {done} turns in {round} rounds, {:.1} s; RSS after {tenth_turns} turns {tenth_rss} KiB ({tenth_convs} conversations, {tenth_idem} answers held), after {done} turns {end_rss} KiB ({} conversations, {} answers held): ratio {:.3}; peak RSS {tenth_peak} KiB then {end_peak} KiB: ratio {:.3}",
        started.elapsed().as_secs_f64(),
        store.conversations(),
        store.idem_entries(),
        end_rss as f64 / tenth_rss.max(1) as f64,
        end_peak as f64 / tenth_peak.max(1) as f64
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench_embedded, bench_http, bench_redis, bench_soak
}
criterion_main!(benches);
