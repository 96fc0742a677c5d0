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
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted; larger is a 413.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024;
/// Connections served at once; further accepts wait.
pub const CONNECTIONS_MAX: usize = 4096;
/// A client must send its request head within this time.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

pub struct Api<S, C, E> {
    pub orchestrator: Orchestrator<S, C, E>,
    /// Bearer token → user.
    pub tokens: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct ApiError(StatusCode, &'static str, String, Option<u64>);

impl ApiError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        Self(status, code, msg.into(), None)
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
            TurnError::Unavailable { retry_after_s, .. } => Self(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg, Some(retry_after_s)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"error": self.1, "message": self.2}))).into_response();
        if let Some(s) = self.3 {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

fn user_of(headers: &HeaderMap, tokens: &BTreeMap<String, String>) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthorized("missing bearer token"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <token>`"))?;
    tokens.get(token.trim()).cloned().ok_or_else(|| unauthorized("unknown token"))
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = user_of(&headers, &api.tokens)?;
    let b: CreateBody = parse_body(&body)?;
    let id = detached(async move { api.orchestrator.create(&user, &b.workflow).await }).await??;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

async fn turn<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Path(cid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = user_of(&headers, &api.tokens)?;
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "Idempotency-Key header is required"))?
        .to_str()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "Idempotency-Key must be ASCII"))?
        .to_string();
    let b: TurnBody = parse_body(&body)?;
    let req = TurnRequest { conversation_id: cid, user, idempotency_key: key, query: b.query };
    let resp = detached(async move { api.orchestrator.turn(&req).await }).await??;
    Ok(Json(resp).into_response())
}

async fn read<S: Store, C: Copilot, E: Effects>(
    State(api): State<Arc<Api<S, C, E>>>,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = user_of(&headers, &api.tokens)?;
    let state = api.orchestrator.get(&user, &cid).await?;
    Ok(Json(json!({"workflowState": state})).into_response())
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

pub fn router<S: Store, C: Copilot, E: Effects>(api: Arc<Api<S, C, E>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/conversations", post(create::<S, C, E>))
        .route("/v1/conversations/{id}/turns", post(turn::<S, C, E>))
        .route("/v1/conversations/{id}", get(read::<S, C, E>))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(api)
}

/// Serves `router` on every connection `listener` accepts, until the task is dropped.
/// HTTP/1.1 only, no `Date` header, a bounded number of connections.
pub async fn serve<L: axum::serve::Listener>(mut listener: L, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (io, _addr) = listener.accept().await;
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
            drop(permit);
        });
    }
}
