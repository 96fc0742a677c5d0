//! Shared test support: an HTTP client, a history observer, and the workspace's one
//! `redis-server` launcher (`testkit`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use orchestrator::turn::{Observer, ServerEvent};
use std::sync::Mutex;

#[derive(Default)]
pub struct Events(pub Mutex<Vec<ServerEvent>>);

impl Observer for Events {
    fn event(&self, ev: ServerEvent) {
        self.0.lock().unwrap().push(ev);
    }
}

impl Events {
    pub fn commits(&self) -> usize {
        self.0.lock().unwrap().iter().filter(|e| matches!(e, ServerEvent::Committed { .. })).count()
    }
    pub fn commits_of(&self, cid: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|e| matches!(e, ServerEvent::Committed { cid: c, .. } if c == cid)).count()
    }
}

pub async fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: &str,
) -> (u16, hyper::HeaderMap, serde_json::Value) {
    http_bytes(base, method, path, token, key, Bytes::from(body.to_string())).await
}

pub async fn http_bytes(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Bytes,
) -> (u16, hyper::HeaderMap, serde_json::Value) {
    let io = tokio::net::TcpStream::connect(base).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder().method(method).uri(path).header("host", base).header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    let resp = tx.send_request(b.body(Full::new(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, json)
}

pub use testkit::{RedisServer, TestRedis};
