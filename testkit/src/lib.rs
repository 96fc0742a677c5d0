//! Dev-only support shared by the workspace's tests and benches: one `redis-server` launcher
//! (a throwaway server on a free loopback port, persistent or not, restartable, killed and
//! cleaned up on drop), and the rule that CI never passes by skipping it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child on a free loopback port, killed and cleaned up on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    extra: Vec<String>,
}

/// Whether a `redis-server` can be started. Under `CI=true` its absence fails the test: CI
/// must never pass by skipping the Redis half of the suite.
pub fn redis_available() -> bool {
    let ok = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("redis-server is not on PATH under CI=true; .ci/run installs it");
        }
        eprintln!("SKIPPED: redis-server is not on PATH (install it or set REDIS_URL); CI=true makes this a failure");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a throwaway server (no persistence), or `None` (with a message) outside CI when
    /// `redis-server` is missing.
    pub fn start() -> Option<Self> {
        if !redis_available() {
            return None;
        }
        Some(Self::spawn(free_port(), false))
    }

    /// A server with `appendonly yes` and `appendfsync always`: acknowledged writes survive a kill.
    pub fn start_persistent() -> Option<Self> {
        if !redis_available() {
            return None;
        }
        Some(Self::spawn(free_port(), true))
    }

    /// A throwaway server with these extra `redis-server` arguments (e.g. `["--databases", "1"]`).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !redis_available() {
            return None;
        }
        let mut s = Self::new(free_port(), false);
        s.extra = extra.iter().map(|a| a.to_string()).collect();
        s.restart();
        Some(s)
    }

    fn spawn(port: u16, persistent: bool) -> Self {
        let mut s = Self::new(port, persistent);
        s.restart();
        s
    }

    fn new(port: u16, persistent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("orchsim-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { child: None, port, dir, persistent, extra: Vec::new() }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--loglevel")
            .arg("warning");
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra);
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        self.child = Some(child);
        // Ready when it answers PING (bounded wait).
        for _ in 0..500 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// SIGKILL: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis to test against: `REDIS_URL` if set, else a fresh server of our own.
pub enum TestRedis {
    External(String),
    Own(RedisServer),
}

impl TestRedis {
    pub fn get() -> Option<Self> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Some(TestRedis::External(url));
        }
        RedisServer::start().map(TestRedis::Own)
    }
    pub fn url(&self) -> String {
        match self {
            TestRedis::External(u) => u.clone(),
            TestRedis::Own(s) => s.url(),
        }
    }
}
