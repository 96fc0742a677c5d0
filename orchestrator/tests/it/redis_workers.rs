//! The orchestrator on a real `redis-server`: round trips per turn, several workers sharing
//! one Redis, and Redis killed and restarted under a running worker.

use crate::support::{http, Events, RedisServer, TestRedis};
use orchestrator::http::{router, serve, Api};
use orchestrator::store::{RedisConfig, RedisStore};
use orchestrator::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type RedisOrch = Orchestrator<RedisStore, ScriptedCopilot, RecordingEffects>;

fn redis_orch(url: &str, seed: u64, events: Arc<Events>, redis_cfg: RedisConfig) -> RedisOrch {
    let store = RedisStore::open(url, redis_cfg, seed).unwrap();
    Orchestrator::new(store, ScriptedCopilot::new(), RecordingEffects::new(), SeededRng::from_seed(seed), TurnConfig::default())
        .with_observer(events)
}

async fn spawn_worker(url: &str, seed: u64, events: Arc<Events>, redis_cfg: RedisConfig) -> String {
    let tokens = BTreeMap::from([("demo".to_string(), "alice".to_string())]);
    let api = Arc::new(Api { orchestrator: redis_orch(url, seed, events, redis_cfg), tokens });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(serve(listener, router(api)));
    base
}

/// Watches a Redis server's MONITOR stream and counts the commands clients sent (not those
/// run inside scripts) between two markers.
struct Monitor {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
    marker: tokio::net::TcpStream,
    n: u32,
}

impl Monitor {
    async fn start(port: u16) -> Self {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = BufReader::new(s).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
        let marker = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut m = Self { lines, marker, n: 0 };
        m.commands_since_last_mark().await;
        m
    }

    /// Client commands seen since the previous call, by name.
    async fn commands_since_last_mark(&mut self) -> Vec<String> {
        self.n += 1;
        let mark = format!("orchsim-mark-{}", self.n);
        let cmd = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{}\r\n", mark.len(), mark);
        self.marker.write_all(cmd.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
                .await
                .expect("monitor stalled")
                .unwrap()
                .expect("monitor closed");
            if line.contains(&mark) {
                return seen;
            }
            if line.contains(" lua]") || line.contains("orchsim-mark-") {
                continue;
            }
            // +<time> [<db> <addr>] "<command>" ...
            if let Some(name) = line.split('"').nth(1) {
                seen.push(name.to_lowercase());
            }
        }
    }
}

#[tokio::test]
async fn new_turn_costs_exactly_two_redis_round_trips_and_a_replay_one() {
    let Some(server) = RedisServer::start() else { return };
    let o = redis_orch(&server.url(), 1, Arc::new(Events::default()), RedisConfig::default());
    let cid = o.create("alice", "lead").await.unwrap();
    // Warm up: the first use of each script costs a NOSCRIPT and a SCRIPT LOAD.
    o.turn(&TurnRequest {
        conversation_id: cid.clone(),
        user: "alice".into(),
        idempotency_key: "warm".into(),
        query: "email is a@x.io".into(),
    })
    .await
    .unwrap();
    let mut mon = Monitor::start(server.port).await;

    let r = TurnRequest { conversation_id: cid.clone(), user: "alice".into(), idempotency_key: "k1".into(), query: "phone is 555".into() };
    let first = o.turn(&r).await.unwrap();
    assert!(!first.replayed);
    assert_eq!(mon.commands_since_last_mark().await, vec!["evalsha", "evalsha"], "a new turn is Begin + Commit");

    let again = o.turn(&r).await.unwrap();
    assert!(again.replayed);
    assert_eq!(mon.commands_since_last_mark().await, vec!["evalsha"], "a replay is Begin alone");

    let reused = o.turn(&TurnRequest { query: "phone is 666".into(), ..r.clone() }).await;
    assert_eq!(reused, Err(TurnError::KeyReused));
    assert_eq!(mon.commands_since_last_mark().await, vec!["evalsha"], "a 422 is Begin alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_redis_lose_no_acknowledged_field_under_100_concurrent_turns() {
    let Some(redis) = TestRedis::get() else { return };
    let events = Arc::new(Events::default());
    let workers = [
        spawn_worker(&redis.url(), 1, events.clone(), RedisConfig::default()).await,
        spawn_worker(&redis.url(), 2, events.clone(), RedisConfig::default()).await,
    ];
    let fields = workflow::workflow("profile").unwrap().required;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (s, _, body) = http(&workers[0], "POST", "/v1/conversations", Some("demo"), None, r#"{"workflow":"profile"}"#).await;
        assert_eq!(s, 201);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let mut tasks = Vec::new();
    for (c, id) in ids.iter().enumerate() {
        for (i, f) in fields.iter().enumerate() {
            let base = workers[(c + i) % 2].clone();
            let path = format!("/v1/conversations/{id}/turns");
            let body = format!(r#"{{"query":"{f} is v{c}-{i}"}}"#);
            let key = format!("c{c}-f{i}");
            tasks.push(tokio::spawn(async move {
                // A client retrying 503 and 409 with the same key, bounded.
                for attempt in 0..400u64 {
                    let (s, _, resp) = http(&base, "POST", &path, Some("demo"), Some(&key), &body).await;
                    match s {
                        200 => return resp,
                        503 | 409 => tokio::time::sleep(Duration::from_millis(5 + attempt % 7)).await,
                        other => panic!("unexpected {other}: {resp}"),
                    }
                }
                panic!("turn {key} never succeeded");
            }));
        }
    }
    let mut acknowledged: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for t in tasks {
        let resp = t.await.unwrap();
        let cid = resp["conversationId"].as_str().unwrap().to_string();
        for x in resp["extracted"].as_array().unwrap() {
            acknowledged.entry(cid.clone()).or_default().insert(x["field"].as_str().unwrap().into(), x["value"].as_str().unwrap().into());
        }
    }
    for id in &ids {
        let (s, _, body) = http(&workers[1], "GET", &format!("/v1/conversations/{id}"), Some("demo"), None, "").await;
        assert_eq!(s, 200);
        let st = &body["workflowState"];
        for (f, v) in &acknowledged[id] {
            assert_eq!(st["collectedData"][f].as_str(), Some(v.as_str()), "acknowledged {f} lost in {id}");
        }
        assert_eq!(st["version"].as_u64().unwrap() as usize, events.commits_of(id), "version must count successful commits");
        assert_eq!(st["version"], 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_gives_503_then_the_same_worker_recovers_and_nothing_acknowledged_is_lost() {
    let Some(mut redis) = RedisServer::start_persistent() else { return };
    let cfg =
        RedisConfig { connect_timeout_ms: 300, response_timeout_ms: 500, reconnect_backoff_base_ms: 20, reconnect_backoff_max_ms: 300 };
    let base = spawn_worker(&redis.url(), 1, Arc::new(Events::default()), cfg).await;
    let (_, _, body) = http(&base, "POST", "/v1/conversations", Some("demo"), None, r#"{"workflow":"lead"}"#).await;
    let id = body["id"].as_str().unwrap().to_string();
    let turns = format!("/v1/conversations/{id}/turns");
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k1"), r#"{"query":"email is a@x.io"}"#).await.0, 200);
    assert_eq!(http(&base, "POST", &turns, Some("demo"), Some("k2"), r#"{"query":"phone is 555"}"#).await.0, 200);

    redis.kill();
    // Every request answers 503 + Retry-After within the request deadline: never a 500, never a hang.
    const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
    for i in 0..5 {
        let (s, h, body) =
            tokio::time::timeout(REQUEST_DEADLINE, http(&base, "POST", &turns, Some("demo"), Some("k3"), r#"{"query":"company is ACME"}"#))
                .await
                .expect("request hung with Redis down");
        assert_eq!(s, 503, "attempt {i}: {body}");
        assert!(h.contains_key("retry-after"));
        let (s, _, _) =
            tokio::time::timeout(REQUEST_DEADLINE, http(&base, "GET", &format!("/v1/conversations/{id}"), Some("demo"), None, ""))
                .await
                .unwrap();
        assert_eq!(s, 503);
    }

    redis.restart();
    // The same worker process reconnects by itself (bounded retries while it backs off).
    let mut done = None;
    for _ in 0..200 {
        let (s, _, body) = http(&base, "POST", &turns, Some("demo"), Some("k3"), r#"{"query":"company is ACME"}"#).await;
        if s == 200 {
            done = Some(body);
            break;
        }
        assert_eq!(s, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = done.expect("worker never recovered after Redis restarted");
    let data = &body["workflowState"]["collectedData"];
    assert_eq!(data["email"], "a@x.io", "acknowledged before the kill, lost");
    assert_eq!(data["phone"], "555", "acknowledged before the kill, lost");
    assert_eq!(data["company"], "ACME");
    assert_eq!(body["workflowState"]["version"], 3);
}

/// On a real Redis: with a 3 s Copilot call in flight and the lease held, a cancel takes the
/// conversation over (one script) and the turn in flight never commits; it answers that the
/// conversation was cancelled. (How long the cancel took is printed, not asserted: real time.)
#[tokio::test]
async fn a_cancel_wins_against_a_slow_copilot_on_redis() {
    let Some(server) = TestRedis::get() else { return };
    let events = Arc::new(Events::default());
    let store = RedisStore::open(&server.url(), RedisConfig::default(), 9).unwrap();
    let copilot = Arc::new(ScriptedCopilot::new());
    let o = Arc::new(
        Orchestrator::new(store, copilot.clone(), RecordingEffects::new(), SeededRng::from_seed(9), TurnConfig::default())
            .with_observer(events.clone()),
    );
    let cid = o.create("alice", "lead").await.unwrap();
    copilot.set_delay_ms(3_000);
    let slow = tokio::spawn({
        let (o, cid) = (o.clone(), cid.clone());
        async move {
            let r =
                TurnRequest { conversation_id: cid, user: "alice".into(), idempotency_key: "k1".into(), query: "email is a@x.io".into() };
            o.turn(&r).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let c = o.cancel("alice", &cid).await.unwrap();
    eprintln!("cancel on Redis with a turn in flight answered in {:?}", t.elapsed());
    assert_eq!((c.result, c.workflow_state.step), (CancelResult::Cancelled, workflow::Step::Cancelled));
    match slow.await.unwrap() {
        Err(TurnError::Cancelled { .. }) => {}
        other => panic!("the turn in flight should learn of the cancel: {other:?}"),
    }
    assert_eq!(events.commits_of(&cid), 0, "the turn in flight committed");
    assert_eq!(o.get("alice", &cid).await.unwrap(), c.workflow_state);
}

/// A webhook sink on loopback speaking `WebhookEffects`' contract: 200 for a new key, 208 for
/// one it has (de-duplicating), every attempt counted.
#[derive(Default)]
struct Sink {
    accepted: std::sync::Mutex<BTreeMap<String, serde_json::Value>>,
    /// Attempts by key (the Redis server is shared: B's relay may deliver other tests' too).
    attempts: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn start_sink() -> (Arc<Sink>, String) {
    use axum::http::{HeaderMap, StatusCode};
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    let app = axum::Router::new().route(
        "/submit",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                *s.attempts.lock().unwrap().entry(key.clone()).or_default() += 1;
                let mut accepted = s.accepted.lock().unwrap();
                if accepted.contains_key(&key) {
                    return StatusCode::ALREADY_REPORTED;
                }
                accepted.insert(key, serde_json::from_slice(&body).unwrap_or_default());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/submit", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (sink, url)
}

/// The outbox, end to end on a real Redis and a real HTTP sink: worker A commits the turn that
/// makes a conversation succeed and is killed while its submission is on the way (its sink
/// accepts the connection and never answers); worker B's relay finds the pending submission in
/// Redis and delivers it, once, with the conversation's final data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_commit_and_delivery_is_covered_by_another_workers_relay() {
    let Some(server) = TestRedis::get() else { return };
    // A's sink: accepts and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://127.0.0.1:{}/submit", black_hole.local_addr().unwrap().port());
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            open.push(s);
        }
    });
    let (sink, url) = start_sink().await;
    // Entries come due for other relays 500 ms after the commit's intent.
    let config = TurnConfig { relay_every_ms: 100, relay_claim_ms: 500, ..TurnConfig::default() };
    let worker = |seed: u64, url: &str| {
        let store = RedisStore::open(&server.url(), RedisConfig::default(), seed).unwrap();
        let effects = WebhookEffects::new(net::TcpConnector, url, 60_000).unwrap();
        Arc::new(Orchestrator::new(store, ScriptedCopilot::new(), effects, SeededRng::from_seed(seed), config.clone()))
    };
    let a = worker(21, &hole_url);
    let cid = a.create("alice", "lead").await.unwrap();
    let turn = |key: &str, q: &str| TurnRequest {
        conversation_id: cid.clone(),
        user: "alice".into(),
        idempotency_key: key.into(),
        query: q.into(),
    };
    for (i, q) in ["email is a@x.io", "phone is 555 0100", "company is ACME"].iter().enumerate() {
        a.turn(&turn(&format!("k{i}"), q)).await.unwrap();
    }
    let last = tokio::spawn({
        let (a, t) = (a.clone(), turn("k3", "yes"));
        async move { a.turn(&t).await }
    });
    // Committed (the store says succeeded), its submission hanging on A's sink: kill A.
    let reader = worker(22, &url);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reader.get("alice", &cid).await.unwrap().step != workflow::Step::Succeeded {
        assert!(std::time::Instant::now() < deadline, "the last turn never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    last.abort();
    drop(a);
    assert!(!sink.accepted.lock().unwrap().contains_key(&effects::submission_key(&cid)), "nothing was delivered yet");
    // B's relay.
    let b = worker(23, &url);
    let relay = tokio::spawn({
        let b = b.clone();
        async move { b.run_relay().await }
    });
    let started = std::time::Instant::now();
    while !sink.accepted.lock().unwrap().contains_key(&effects::submission_key(&cid)) {
        assert!(started.elapsed() < Duration::from_secs(10), "B's relay did not deliver within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("B's relay delivered A's submission {:?} after B started", started.elapsed());
    // It keeps running: no second delivery of a submission it cleared.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.abort();
    let accepted = sink.accepted.lock().unwrap().clone();
    let s = &accepted[&effects::submission_key(&cid)];
    assert_eq!(s["data"], serde_json::json!({"company": "ACME", "email": "a@x.io", "phone": "555 0100"}));
    assert_eq!(sink.attempts.lock().unwrap().get(&effects::submission_key(&cid)), Some(&1), "delivered once");
}
