//! turmoil plugged into the orchestrator's seams: a `Connector` that dials simulated TCP
//! (retrying a refused connect, since a client may run before its server has bound), and a
//! listener that `orchestrator::http::serve` accepts from.

use orchestrator::net::Connector;
use std::time::Duration;

/// Connect attempts before giving up (refused while the peer host is starting or down).
pub const CONNECT_ATTEMPTS_MAX: u32 = 5;
pub const CONNECT_RETRY_MS: u64 = 20;

#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Io = turmoil::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<Self::Io> {
        let mut last = None;
        for _ in 0..CONNECT_ATTEMPTS_MAX {
            match turmoil::net::TcpStream::connect((host, port)).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("connect failed")))
    }
}

/// A turmoil listener as an `axum::serve::Listener`.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(x) => return x,
                // Accept errors are transient in the simulation; back off a tick.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
