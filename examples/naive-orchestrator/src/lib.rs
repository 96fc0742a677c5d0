//! A small chat orchestrator written the way teams first write one, and plugged into the orchsim
//! suite as a [`Worker`] through its public API only (`scenarios::workers`, `scenarios::runner`).
//!
//! It speaks the same HTTP contract as orchsim's orchestrator, and it is wrong in the ways such
//! first versions are:
//! - **read-modify-write under a plain lock**: `SET lock NX PX <ttl>`, `GET` the conversation,
//!   ask Copilot, `SET` it back, `DEL` the lock. No fencing: a turn whose lock lapsed while
//!   Copilot was slow still writes, over whatever the next holder wrote.
//! - **a global idempotency cache**: answers kept under `idem:<key>`, the client's key alone, so
//!   one user's key can replay another user's answer; checked once, before the lock, so a
//!   duplicate delivered while the first is working runs the turn again. A replay hands back the
//!   state stored with the answer.
//! - **a cancel without the lock** (read, set `cancelled`, write), and **effects sent once**
//!   after the commit, with no outbox: a sink that is down loses the submission.
//!
//! Nothing here is built to fail on purpose: each is the simple version of a real design choice.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use scenarios::contract::{required_fields, submission_key, Conversation, CopilotReply, CopilotRequest, Step, Submission, WorkflowState};
use scenarios::history::{Entry, Ev};
use scenarios::workers::{Deploy, Deployment, Serving, Worker, WorkerHost};
use serde_json::{json, Value};
use sim::redis_model::{Model, Write, WriteOp};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The naive orchestrator as a worker of the suite.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naive;

impl Worker for Naive {
    fn name(&self) -> String {
        "naive-orchestrator".into()
    }

    fn deploy(&self, _run: &Deploy) -> Box<dyn Deployment> {
        Box::new(NaiveRun)
    }
}

struct NaiveRun;

impl Deployment for NaiveRun {
    fn serve(&self, host: WorkerHost) -> Serving {
        Box::pin(async move {
            let listener = sim::net::TurmoilListener::bind(host.port).await?;
            let app = Arc::new(App { host, next_token: AtomicU64::new(0) });
            sim::net::serve(listener, router(app)).await;
            Ok(())
        })
    }

    /// A commit is a `SET conv:<cid>`; the idempotency key written by the same `EXEC` is its key.
    fn applied_writes(&self, writes: &[Write]) -> Vec<Entry> {
        let mut out = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let key = String::from_utf8_lossy(&w.key);
            let Some(cid) = key.strip_prefix("conv:") else { continue };
            let WriteOp::Set(bytes) = &w.op else { continue };
            let record: Value = serde_json::from_slice(bytes).unwrap_or_default();
            // Version 0 is the conversation being created, not a commit.
            if record["state"]["version"].as_u64().unwrap_or(0) == 0 {
                continue;
            }
            let idem_key = writes
                .iter()
                .skip(i.saturating_sub(4))
                .take(9)
                .filter(|o| o.command == w.command && o.key.starts_with(b"idem:"))
                .map(|o| String::from_utf8_lossy(&o.key).into_owned())
                .next()
                .unwrap_or_default();
            let version = record["state"]["version"].as_u64().unwrap_or(0);
            out.push(Entry { t_ms: w.at_ms, ev: Ev::ModelCommit { cid: cid.into(), fence: 0, version, idem_key, record } });
        }
        out
    }

    fn conversation(&self, redis: Option<&mut Model>, redis_now_ms: u64, cid: &str) -> Option<Conversation> {
        let bytes = redis?.peek_string(format!("conv:{cid}").as_bytes(), redis_now_ms)?;
        serde_json::from_slice(&bytes).ok()
    }

    fn effects_pending(&self, _redis: Option<&mut Model>, _redis_now_ms: u64) -> bool {
        false
    }
}

struct App {
    host: WorkerHost,
    next_token: AtomicU64,
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/conversations", post(create))
        .route("/v1/conversations/{id}", get(read))
        .route("/v1/conversations/{id}/turns", post(turn))
        .route("/v1/conversations/{id}/cancel", post(cancel))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(app)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({"error": code, "message": message}))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    }
    r
}

fn unavailable() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try again")
}

impl App {
    fn user(&self, headers: &HeaderMap) -> Result<String, Response> {
        let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        token
            .and_then(|t| self.host.tokens.get(t).cloned())
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unauthorized", "no or unknown token"))
    }

    async fn redis(&self) -> Result<redis::aio::MultiplexedConnection, Response> {
        let r = self.host.redis.as_ref().ok_or_else(unavailable)?;
        let stream = sim::net::connect(&r.host, r.port).await.map_err(|_| unavailable())?;
        let cfg =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(self.host.settings.redis_timeout_ms)));
        let (conn, driver) = redis::aio::MultiplexedConnection::new_with_config(&redis::RedisConnectionInfo::default(), stream, cfg)
            .await
            .map_err(|_| unavailable())?;
        tokio::spawn(driver);
        Ok(conn)
    }

    async fn load(&self, conn: &mut redis::aio::MultiplexedConnection, cid: &str) -> Result<Option<Conversation>, Response> {
        let raw: Option<String> = redis::cmd("GET").arg(format!("conv:{cid}")).query_async(conn).await.map_err(|_| unavailable())?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    async fn post(&self, url_host: &str, port: u16, path: &str, body: Vec<u8>, key: Option<&str>, timeout_ms: u64) -> Option<(u16, Bytes)> {
        use http_body_util::BodyExt;
        let fut = async {
            let stream = sim::net::connect(url_host, port).await.ok()?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            let mut req = hyper::Request::post(path).header("host", url_host).header("content-type", "application/json");
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let resp = send.send_request(req.body(http_body_util::Full::new(Bytes::from(body))).ok()?).await.ok()?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, bytes))
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await.ok().flatten()
    }
}

async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let user = match app.user(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(workflow) = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["workflow"].as_str().map(String::from)) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "body must be {\"workflow\": ...}");
    };
    if required_fields(&workflow).is_none() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "unknown workflow");
    }
    let n = app.next_token.fetch_add(1, Ordering::SeqCst);
    let cid = format!("{:016x}{:08x}{n:08x}", app.host.seed, app.host.index);
    let conv = Conversation { owner: user, state: WorkflowState::new(&workflow), writer_fence: 0 };
    let Ok(mut conn) = app.redis().await else { return unavailable() };
    let set: Result<(), _> =
        redis::cmd("SET").arg(format!("conv:{cid}")).arg(serde_json::to_string(&conv).unwrap_or_default()).query_async(&mut conn).await;
    match set {
        Ok(()) => (StatusCode::CREATED, Json(json!({"id": cid}))).into_response(),
        Err(_) => unavailable(),
    }
}

async fn read(State(app): State<Arc<App>>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    let user = match app.user(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Ok(mut conn) = app.redis().await else { return unavailable() };
    match app.load(&mut conn, &cid).await {
        Ok(Some(c)) if c.owner == user => Json(json!({"workflowState": c.state})).into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(r) => r,
    }
}

async fn cancel(State(app): State<Arc<App>>, headers: HeaderMap, Path(cid): Path<String>) -> Response {
    let user = match app.user(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Ok(mut conn) = app.redis().await else { return unavailable() };
    let mut c = match app.load(&mut conn, &cid).await {
        Ok(Some(c)) if c.owner == user => c,
        Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(r) => return r,
    };
    if c.state.step.is_terminal() {
        return Json(json!({"result": "already_finished", "workflowState": c.state})).into_response();
    }
    c.state.step = Step::Cancelled;
    c.state.version += 1;
    let set: Result<(), _> =
        redis::cmd("SET").arg(format!("conv:{cid}")).arg(serde_json::to_string(&c).unwrap_or_default()).query_async(&mut conn).await;
    match set {
        Ok(()) => Json(json!({"result": "cancelled", "workflowState": c.state})).into_response(),
        Err(_) => unavailable(),
    }
}

async fn turn(State(app): State<Arc<App>>, headers: HeaderMap, Path(cid): Path<String>, body: Bytes) -> Response {
    let user = match app.user(&headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty()).map(String::from) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "Idempotency-Key header is required");
    };
    let Some(query) = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["query"].as_str().map(String::from)) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "body must be {\"query\": ...}");
    };
    let Ok(mut conn) = app.redis().await else { return unavailable() };
    // The cache first: a retry gets the answer it missed.
    let cached: Option<String> = match redis::cmd("GET").arg(format!("idem:{key}")).query_async(&mut conn).await {
        Ok(c) => c,
        Err(_) => return unavailable(),
    };
    if let Some(c) = cached.and_then(|c| serde_json::from_str::<Value>(&c).ok()) {
        let mut answer = c;
        answer["replayed"] = json!(true);
        return Json(answer).into_response();
    }
    // The lock: retried until the acquire deadline.
    let token = format!("{}-{}", app.host.name, app.next_token.fetch_add(1, Ordering::SeqCst));
    let lock = format!("lock:{cid}");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(app.host.settings.acquire_deadline_ms);
    loop {
        let got: Result<Option<String>, _> =
            redis::cmd("SET").arg(&lock).arg(&token).arg("NX").arg("PX").arg(app.host.settings.lease_ttl_ms).query_async(&mut conn).await;
        match got {
            Ok(Some(_)) => break,
            Ok(None) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return unavailable(),
        }
    }
    let answer = run_turn(&app, &mut conn, &cid, &user, &key, &query).await;
    let _: Result<(), _> = redis::cmd("DEL").arg(&lock).query_async(&mut conn).await;
    answer
}

/// The turn under the lock: read, ask Copilot, apply the rules, write.
async fn run_turn(app: &App, conn: &mut redis::aio::MultiplexedConnection, cid: &str, user: &str, key: &str, query: &str) -> Response {
    let mut c = match app.load(conn, cid).await {
        Ok(Some(c)) if c.owner == user => c,
        Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such conversation"),
        Err(r) => return r,
    };
    let required = required_fields(&c.state.workflow).unwrap_or(&[]);
    let missing: Vec<&str> = required.iter().copied().filter(|f| !c.state.collected_data.contains_key(*f)).collect();
    let text = format!(
        "[WORKFLOW_CONTEXT] step={} constraints=[{}] collectedData={} {query}",
        c.state.step.as_str(),
        missing.join(","),
        serde_json::to_string(&c.state.collected_data).unwrap_or_default()
    );
    let req = CopilotRequest { conversation_id: cid.into(), user_id: user.into(), text };
    let copilot = &app.host.copilot;
    let body = serde_json::to_vec(&req).unwrap_or_default();
    let Some((200, bytes)) = app.post(&copilot.host, copilot.port, copilot.path, body, None, app.host.settings.copilot_timeout_ms).await
    else {
        return unavailable();
    };
    let reply: CopilotReply = serde_json::from_slice(&bytes).unwrap_or(CopilotReply { activities: vec![], extracted_payload: None });
    let was = c.state.step;
    apply(&mut c.state, required, reply.extracted_payload.as_ref());
    c.state.version += 1;
    let text = reply.activities.iter().map(|a| a.text.as_str()).collect::<Vec<_>>().join(" ");
    let answer = json!({
        "conversationId": cid, "turn": c.state.turns, "reply": text, "extracted": [], "workflowState": c.state, "replayed": false,
    });
    let committed: Result<(), _> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(format!("conv:{cid}"))
        .arg(serde_json::to_string(&c).unwrap_or_default())
        .ignore()
        .cmd("SET")
        .arg(format!("idem:{key}"))
        .arg(answer.to_string())
        .arg("PX")
        .arg(3_600_000)
        .ignore()
        .query_async(conn)
        .await;
    if committed.is_err() {
        return unavailable();
    }
    if c.state.step == Step::Succeeded && was != Step::Succeeded {
        let s = Submission {
            idempotency_key: submission_key(cid),
            conversation_id: cid.into(),
            user: user.into(),
            workflow: c.state.workflow.clone(),
            data: c.state.collected_data.clone(),
        };
        let sink = &app.host.sink;
        let body = serde_json::to_vec(&s).unwrap_or_default();
        let _ = app.post(&sink.host, sink.port, sink.path, body, Some(&s.idempotency_key), app.host.settings.sink_timeout_ms).await;
    }
    Json(answer).into_response()
}

/// The workflow rules (README "Try it", DESIGN "The orchestrator"), as a team would write them.
fn apply(state: &mut WorkflowState, required: &[&str], payload: Option<&Value>) {
    state.turns += 1;
    if state.step.is_terminal() {
        return;
    }
    let mut no_signal = true;
    if let Some(p) = payload {
        let confidence = p["confidence"].as_str().unwrap_or("");
        match (p["intent"].as_str().unwrap_or(""), confidence) {
            ("provide", "high") => {
                for (field, value) in p["fields"].as_object().into_iter().flatten() {
                    if let (true, Some(v)) = (required.contains(&field.as_str()), value.as_str()) {
                        state.collected_data.insert(field.clone(), v.trim().to_string());
                        no_signal = false;
                    }
                }
                if required.iter().all(|f| state.collected_data.contains_key(*f)) {
                    state.step = Step::Confirming;
                }
            }
            ("provide", "medium") => no_signal = false,
            ("confirm", "high") => {
                no_signal = false;
                if state.step == Step::Confirming {
                    state.step = Step::Succeeded;
                }
            }
            ("decline", "high") => {
                no_signal = false;
                state.step = Step::Cancelled;
            }
            _ => {}
        }
    }
    if no_signal {
        state.no_signal_streak += 1;
        if state.no_signal_streak > 3 {
            state.step = Step::NeedsHuman;
        }
    } else {
        state.no_signal_streak = 0;
    }
    if !state.step.is_terminal() && state.turns >= 40 {
        state.step = Step::NeedsHuman;
    }
}
