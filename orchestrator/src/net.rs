//! Outbound HTTP over a pluggable connector, for the Copilot client and the effects webhook.
//!
//! The connector is the seam: production dials TCP, the simulation hands in turmoil streams.
//! Every request carries a deadline, so a stalled stream (turmoil has no retransmission) is
//! an error, not a hang.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest response body read from a peer.
pub const RESPONSE_BODY_BYTES_MAX: usize = 256 * 1024;

pub trait Connector: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(&self, host: &str, port: u16) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Plain TCP: production.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Io = tokio::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Io> {
        let s = tokio::net::TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("bad url {0:?}")]
    BadUrl(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("deadline of {0} ms passed")]
    Timeout(u64),
    #[error("response body over {RESPONSE_BODY_BYTES_MAX} bytes")]
    TooLarge,
}

/// Host, port and path of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, NetError> {
        let uri: Uri = url.parse().map_err(|_| NetError::BadUrl(url.into()))?;
        if uri.scheme_str() != Some("http") {
            return Err(NetError::BadUrl(url.into()));
        }
        let host = uri.host().ok_or_else(|| NetError::BadUrl(url.into()))?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        Ok(Self { host, port, path })
    }
}

/// POSTs a JSON body and returns status and body, all within `deadline_ms`.
pub async fn post_json<C: Connector>(
    connector: &C,
    ep: &Endpoint,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    deadline_ms: u64,
) -> Result<(StatusCode, Bytes), NetError> {
    let fut = async {
        let io = connector.connect(&ep.host, ep.port).await.map_err(NetError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        // The connection task ends when the request is done or the deadline drops `sender`.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::post(ep.path.as_str())
            .header(hyper::header::HOST, ep.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|_| NetError::BadUrl(ep.path.clone()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), RESPONSE_BODY_BYTES_MAX);
        let body = limited.collect().await.map_err(|_| NetError::TooLarge)?.to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(Duration::from_millis(deadline_ms), fut).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Timeout(deadline_ms)),
    }
}
