//! turmoil's TCP as a server's listener and a client's dialler.

use std::time::Duration;

/// Connect attempts before giving up (refused while the peer host is starting or down).
pub const CONNECT_ATTEMPTS_MAX: u32 = 5;
pub const CONNECT_RETRY_MS: u64 = 20;

/// Dials `host:port` over simulated TCP, retrying a refused connect (a client may run before
/// its server has bound, or while the server's host is down) [`CONNECT_ATTEMPTS_MAX`] times.
pub async fn connect(host: &str, port: u16) -> std::io::Result<turmoil::net::TcpStream> {
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

/// The longest [`connect`] can take to fail, with `rtt_ms` the round trip's worst latency.
pub fn connect_bound_ms(rtt_ms: u64) -> u64 {
    CONNECT_ATTEMPTS_MAX as u64 * (CONNECT_RETRY_MS + rtt_ms)
}

/// A turmoil listener as an `axum::serve::Listener`: any axum or hyper server runs on it.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl TurmoilListener {
    /// Binds `0.0.0.0:port` on the current host.
    pub async fn bind(port: u16) -> std::io::Result<Self> {
        Ok(Self(turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?))
    }
}

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

/// Serves `router` on `listener` over HTTP/1.1 the way a simulated infrastructure host should:
/// no `Date` header (it would read the wall clock), half-closed requests answered, a header
/// read deadline of [`HEADER_READ_TIMEOUT_MS`] on the simulated timer.
pub async fn serve(mut listener: TurmoilListener, router: axum::Router) {
    use axum::serve::Listener as _;
    loop {
        let (io, _) = listener.accept().await;
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.auto_date_header(false)
                .half_close(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
            let _ = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc).await;
        });
    }
}

/// How long [`serve`] waits for a request's head.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
