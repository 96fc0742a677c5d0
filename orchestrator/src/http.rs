//! The HTTP API (axum): conversations, turns, health. `serve` accepts connections from any
//! [`axum::serve::Listener`], so the simulation can hand in turmoil's listener.
//!
//! Invariants: the user comes from the bearer token, never from the body; another user's
//! conversation is a 404 (its existence is not revealed); every unavailability is a 503
//! with `Retry-After`; a 500 is only ever a bug. Responses carry no `Date` header, so
//! bytes on the wire depend on nothing but the request and the state.

use crate::copilot::Copilot;
use crate::effects::Effects;
use crate::store::Store;
use crate::turn::{Orchestrator, TurnError, TurnRequest};
use crate::workflow::WorkflowState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body accepted; larger is a 413.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;
/// Connections served at once; further ones get [`Limits`]' overflow treatment.
pub const CONNECTIONS_MAX: usize = 4096;
/// Connections being refused for their peer's limit at once (answered 503 and closed); past
/// it, closed on accept.
pub const REFUSALS_MAX: usize = 1024;
/// A refused connection's input is drained until it stays quiet this long.
pub const REFUSAL_DRAIN_MS: u64 = 5;
/// Connections accepted past [`CONNECTIONS_MAX`] only to answer `/healthz` (or a 503).
pub const OVERFLOW_CONNECTIONS_MAX: usize = 256;
/// An overflow connection must send its request head within this time.
pub const OVERFLOW_HEADER_READ_TIMEOUT_MS: u64 = 1_000;
/// A client must send its request head within this time.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// A client must send its whole request body within this time (a body that stops arriving
/// would otherwise hold its connection forever): past it, 408.
pub const BODY_READ_TIMEOUT_MS: u64 = 10_000;
/// Connections one peer address may hold at once; past it, a new connection from it is
/// answered 503 and closed, so a few clients cannot take every slot. Behind a load balancer
/// (every connection from its address) raise it to the balancer's pool size, or 0 for no limit.
pub const CONNECTIONS_PER_PEER_MAX: usize = 256;

pub struct Api<S, C, E> {
    pub orchestrator: Orchestrator<S, C, E>,
    /// Bearer token → user.
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
    /// The conversation as it is, where the error is about it (a turn refused by a cancel).
    state: Option<Box<WorkflowState>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        Self { status, code, message: msg.into(), retry_after_s: None, state: None }
    }
}

impl From<TurnError> for ApiError {
    fn from(e: TurnError) -> Self {
        let msg = e.to_string();
        match e {
            TurnError::BadRequest(_) => Self::new(StatusCode::BAD_REQUEST, "bad_request", msg),
            TurnError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", msg),
            TurnError::InFlight => Self::new(StatusCode::CONFLICT, "in_flight", msg),
            TurnError::KeyReused => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "key_reused", msg),
            TurnError::Cancelled { state } => Self { state: Some(state), ..Self::new(StatusCode::CONFLICT, "cancelled", msg) },
            TurnError::TooManyConversations { .. } => Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_conversations", msg),
            TurnError::Unavailable { retry_after_s, .. } => {
                Self { retry_after_s: Some(retry_after_s), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg) }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(state) = self.state {
            body["workflowState"] = json!(state);
        }
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

fn user_of(headers: &HeaderMap, tokens: &BTreeMap<String, String>) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = single(headers, header::AUTHORIZATION.as_str())?.ok_or_else(|| unauthorized("missing bearer token"))?;
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
    tokens.get(token).cloned().ok_or_else(|| unauthorized("unknown token"))
}

/// A header that may appear at most once: two of them (say, two tokens, or two keys) are a
/// 400, since a proxy that reads the other one would disagree with us about the request.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut all = headers.get_all(name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("more than one {name} header")));
    }
    Ok(first)
}

/// The user a request authenticated as (`authenticate` puts it in the request's extensions).
#[derive(Clone)]
struct User(String);

/// Every `/v1` request is authenticated before anything else looks at it: an unauthenticated
/// request learns nothing about routes, ids or bodies.
async fn authenticate<S: Store, C: Copilot, E: Effects>(State(api): State<Arc<Api<S, C, E>>>, mut req: Request, next: Next) -> Response {
    match user_of(req.headers(), &api.tokens) {
        Ok(user) => {
            req.extensions_mut().insert(User(user));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The whole body, within [`BODY_READ_TIMEOUT_MS`] and [`REQUEST_BODY_BYTES_MAX`].
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX);
    match tokio::time::timeout(Duration::from_millis(BODY_READ_TIMEOUT_MS), read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {BODY_READ_TIMEOUT_MS} ms"),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("body over {REQUEST_BODY_BYTES_MAX} bytes"))
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}"))
            })
        }
    }
}

/// A request body: a JSON object of exactly the expected fields. (A derived `Deserialize`
/// also accepts a JSON array in field order, so `["yes"]` would pass as `{"query":"yes"}`.)
fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
    if !v.is_object() {
        return Err(bad("body must be a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(format!("body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    workflow: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnBody {
    query: String,
}

async fn create<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Extension(User(user)): Extension<User>,
    body: Body,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_body(&read_body(body).await?)?;
    let id = detached(async move { api.orchestrator.create(&user, &b.workflow).await }).await??;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

/// A conversation id from the path; one that is not even text is no conversation of anyone's.
fn conversation_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(cid)| cid).map_err(|_| TurnError::NotFound.into())
}

async fn turn<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Extension(User(user)): Extension<User>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let cid = conversation_id(path)?;
    let key = single(&headers, "idempotency-key")?
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "Idempotency-Key header is required"))?
        .to_str()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "Idempotency-Key must be ASCII"))?
        .to_string();
    let b: TurnBody = parse_body(&read_body(body).await?)?;
    let req = TurnRequest { conversation_id: cid, user, idempotency_key: key, query: b.query };
    let resp = detached(async move { api.orchestrator.turn(&req).await }).await??;
    Ok(Json(resp).into_response())
}

async fn read<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Extension(User(user)): Extension<User>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let cid = conversation_id(path)?;
    let state = api.orchestrator.get(&user, &cid).await?;
    Ok(Json(json!({"workflowState": state})).into_response())
}

/// `POST /v1/conversations/{id}/cancel`: no body, no key (a cancel is idempotent).
async fn cancel<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Extension(User(user)): Extension<User>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let cid = conversation_id(path)?;
    let resp = detached(async move { api.orchestrator.cancel(&user, &cid).await }).await??;
    Ok(Json(resp).into_response())
}

/// Runs a state-changing operation in a task of its own, so that it finishes even if this
/// request's handler is dropped (the client hung up, or the connection failed): a turn that
/// took the lease always commits or hands the lease back, and its answer is kept for the
/// client's retry under the same key; a created conversation is never half-made. (Releasing
/// the lease from a drop guard instead would throw away a Copilot call already paid for, and
/// an answer the client's retry could have been given.)
async fn detached<T: Send + 'static>(op: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, ApiError> {
    tokio::spawn(op).await.map_err(|e| {
        tracing::error!(error = %e, "request task failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The API's error code for a status.
fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "in_flight",
        413 => "too_large",
        422 => "key_reused",
        429 => "too_many_conversations",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// Every error answer has the API's JSON shape (`{"error","message"}`), whoever produced it: our
/// handlers, or axum (405 with `Allow`, rejected paths and bodies). Headers are kept.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(json!({"error": error_code(status), "message": message}).to_string()))
}

pub fn router<S: Store, C: Copilot, E: Effects>(api: Arc<Api<S, C, E>>) -> Router {
    let v1 = Router::new()
        .route("/conversations", post(create::<S, C, E>))
        .route("/conversations/{id}/turns", post(turn::<S, C, E>))
        .route("/conversations/{id}", get(read::<S, C, E>))
        .route("/conversations/{id}/cancel", post(cancel::<S, C, E>))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), authenticate::<S, C, E>))
        .with_state(api);
    Router::new().route("/healthz", get(|| async { "ok" })).nest("/v1", v1).fallback(not_found).layer(middleware::from_fn(json_errors))
}

/// How many connections the server holds. Past `connections_max` it still accepts up to
/// `overflow_max` more, each given one request with a short head deadline: `/healthz` is
/// answered 200 (the process is alive, so a balancer does not kill it for being busy), anything
/// else a JSON 503 with `Retry-After`, then the connection is closed. Past both, a connection is
/// closed on accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections_max: usize,
    /// Connections one peer address may hold ([`CONNECTIONS_PER_PEER_MAX`]); 0: no limit.
    pub per_peer_max: usize,
    pub overflow_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { connections_max: CONNECTIONS_MAX, per_peer_max: CONNECTIONS_PER_PEER_MAX, overflow_max: OVERFLOW_CONNECTIONS_MAX }
    }
}

/// Serves `router` on every connection `listener` accepts, until the task is dropped.
/// HTTP/1.1 only, no `Date` header, connections bounded by [`Limits::default`].
pub async fn serve<L: axum::serve::Listener<Addr = SocketAddr>>(listener: L, router: Router) {
    serve_with(listener, router, Limits::default()).await
}

/// [`serve`] within other [`Limits`].
pub async fn serve_with<L: axum::serve::Listener<Addr = SocketAddr>>(mut listener: L, router: Router, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    let overflow = Arc::new(tokio::sync::Semaphore::new(limits.overflow_max));
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_MAX));
    let peers: Arc<Mutex<BTreeMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (mut io, addr) = listener.accept().await;
        let Some(peer) = PeerSlot::take(&peers, addr.ip(), limits.per_peer_max) else {
            // Over its share: told so, briefly, and closed, without taking a connection slot.
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let refuse = async {
                        io.write_all(&peer_limit_answer()).await?;
                        io.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(1_000), refuse).await;
                    // What the client already sent is read and dropped: closing a socket with
                    // unread input resets the connection, and a reset makes the client's
                    // kernel discard the answer before it is read.
                    let mut drain = [0u8; 4096];
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(REFUSAL_DRAIN_MS), io.read(&mut drain)).await {
                        if n == 0 {
                            break;
                        }
                    }
                    drop(permit);
                });
            }
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(peer);
            // Every slot is taken: one request answered from a router that touches nothing.
            if let Ok(permit) = overflow.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let svc = hyper_util::service::TowerToHyperService::new(overloaded());
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.auto_date_header(false)
                        .half_close(true)
                        .keep_alive(false)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_millis(OVERFLOW_HEADER_READ_TIMEOUT_MS));
                    let served = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                    let _ = tokio::time::timeout(Duration::from_millis(2 * OVERFLOW_HEADER_READ_TIMEOUT_MS), served).await;
                    drop(permit);
                });
            }
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            // Half-closed requests are answered: a client may shut down its sending side once
            // the request is out (`nc -N`, some HTTP/1.0 clients) and still read the answer.
            b.auto_date_header(false)
                .half_close(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
            if let Err(e) = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop((permit, peer));
        });
    }
}

/// What a connection past [`Limits::connections_max`] is served: health, or a 503.
fn overloaded() -> Router {
    let busy = || async {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the server is at its connection limit")
        }
    };
    Router::new().route("/healthz", get(|| async { "ok" }).fallback(busy)).fallback(busy).layer(middleware::from_fn(json_errors))
}

/// What a connection over its peer's limit is told before it is closed.
fn peer_limit_answer() -> Vec<u8> {
    let body = json!({"error": "unavailable", "message": "too many connections from your address"}).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One connection counted against its peer address; given back on drop.
struct PeerSlot {
    peers: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Arc<Mutex<BTreeMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut map = peers.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Self { peers: peers.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
