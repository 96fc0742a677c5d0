//! The Redis model: a small, faithful Redis for the simulation. It speaks RESP2, implements the
//! string, hash, expiry, transaction and connection commands a client of this kind uses, and
//! runs whatever Lua scripts it is sent in embedded Lua 5.1 (as Redis 7 does). It knows nothing
//! of any system's keys or records: it keeps a write log ([`Write`]) that a system's checkers
//! interpret. Expiry and `TIME` follow the clock the caller passes in (the Redis host's own
//! clock in the simulation).
//!
//! Codemap: [`keyspace`](self::keyspace) (values, expiry, write log, undo journal),
//! `commands` (the command table and each command), `scripting` (EVAL/EVALSHA/SCRIPT in Lua),
//! this file (sessions and transactions, durability on a crash, the network server).
//! Differential tests against a real `redis-server` live in `sim/tests/redis_differential.rs`.

mod commands;
mod keyspace;
mod scripting;

pub use keyspace::{Value, Write, WriteOp};
pub use scripting::SCRIPT_INSTRUCTIONS_MAX;

use crate::resp::{parse_request, Reply};
use commands::{arity_ok, lookup, unknown_command, wrong_args};
use keyspace::Keyspace;
use scripting::{sha1_hex, Scripting};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// What a crash of the Redis host loses: the persistence (or replication) setting it ran with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Durability {
    /// `appendonly yes`, `appendfsync always`: every acknowledged write survives a crash.
    #[default]
    FsyncAlways,
    /// `appendfsync everysec`: writes since the last whole second before the crash are lost.
    FsyncEverySec,
    /// The primary dies and a replica that lags by `lag_ms` takes over: writes of the last
    /// `lag_ms` before the crash are lost.
    ReplicaFailover { lag_ms: u64 },
}

impl Durability {
    /// How far back a crash can reach: the undo journal is kept this long (0: none needed).
    fn exposure_ms(&self) -> u64 {
        match self {
            Durability::FsyncAlways => 0,
            Durability::FsyncEverySec => 1_000,
            Durability::ReplicaFailover { lag_ms } => *lag_ms,
        }
    }
}

/// One client connection's state: an open `MULTI` and its queue, and watched keys.
#[derive(Debug, Default)]
pub struct Session {
    queued: Option<Vec<Vec<Vec<u8>>>>,
    /// A command was refused while queueing: `EXEC` answers `EXECABORT`.
    dirty: bool,
    /// `(key, modification stamp, expired at WATCH time)`.
    watched: Vec<(Vec<u8>, u64, bool)>,
}

pub struct Model {
    ks: Keyspace,
    scripting: Scripting,
    durability: Durability,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("durability", &self.durability).field("writes", &self.ks.writes.len()).finish()
    }
}

impl Model {
    pub fn new() -> Self {
        Self::with_durability(Durability::FsyncAlways)
    }

    pub fn with_durability(durability: Durability) -> Self {
        let mut ks = Keyspace::default();
        // A little longer than the exposure: the cut-off falls inside the kept window.
        ks.journal_keep_ms = match durability.exposure_ms() {
            0 => 0,
            ms => ms + 1_000,
        };
        Self { ks, scripting: Scripting::new(), durability }
    }

    /// Every change applied so far, in order (lost ones included, followed by their `Lost`).
    pub fn writes(&self) -> &[Write] {
        &self.ks.writes
    }

    /// A hash field as it is at `now_ms`, for end-of-run reads that must not count as commands.
    pub fn peek_hash_field(&mut self, key: &[u8], field: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        self.ks.now_ms = now_ms;
        match self.ks.get(key) {
            Some(keyspace::Entry { val: Value::Hash(h), .. }) => h.iter().find(|(f, _)| f == field).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// A string value as it is at `now_ms`, for end-of-run reads that must not count as commands.
    pub fn peek_string(&mut self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        self.ks.now_ms = now_ms;
        match self.ks.get(key) {
            Some(keyspace::Entry { val: Value::Str(v), .. }) => Some(v.clone()),
            _ => None,
        }
    }

    /// How many fields the hash at `key` has (0 if none), at `now_ms` (for the world's own
    /// bookkeeping, outside any client's view).
    pub fn peek_hash_len(&mut self, key: &[u8], now_ms: u64) -> usize {
        self.ks.now_ms = now_ms;
        match self.ks.get(key) {
            Some(keyspace::Entry { val: Value::Hash(h), .. }) => h.len(),
            _ => 0,
        }
    }

    /// The host lost power at simulation time `sim_ms`: what the durability setting does not
    /// keep is gone, and so is the script cache. Returns how many changes were lost.
    pub fn crash(&mut self, sim_ms: u64) -> usize {
        self.scripting.restart();
        self.ks.stamp_ms = sim_ms;
        self.ks.command += 1;
        match self.durability {
            Durability::FsyncAlways => 0,
            Durability::FsyncEverySec => self.ks.lose_writes_after(sim_ms / 1_000 * 1_000),
            Durability::ReplicaFailover { lag_ms } => self.ks.lose_writes_after(sim_ms.saturating_sub(lag_ms)),
        }
    }

    /// A restart (a new server process) that keeps the data but not the script cache.
    pub fn forget_scripts(&mut self) {
        self.scripting.restart();
    }

    /// Executes one request of a connection without transaction state (tests, probes).
    pub fn exec(&mut self, args: &[Vec<u8>], now_ms: u64) -> Reply {
        self.exec_in(&mut Session::default(), args, now_ms, now_ms)
    }

    /// Executes one request of `session` with the Redis clock at `now_ms`; writes are stamped
    /// `sim_ms`, the simulation's own time (the two differ after a clock jump).
    pub fn exec_in(&mut self, session: &mut Session, args: &[Vec<u8>], now_ms: u64, sim_ms: u64) -> Reply {
        self.ks.now_ms = now_ms;
        self.ks.stamp_ms = sim_ms;
        self.ks.command += 1;
        let Some(name) = args.first() else { return Reply::err("ERR empty command") };
        let Some(spec) = lookup(name) else {
            if session.queued.is_some() {
                session.dirty = true;
            }
            return unknown_command(args);
        };
        let checked = if arity_ok(spec, args.len()) { commands::check_subcommand(spec, args) } else { Err(wrong_args(spec.name)) };
        if let Err(e) = checked {
            if session.queued.is_some() {
                session.dirty = true;
            }
            return e;
        }
        if let Some(queue) = &mut session.queued {
            match spec.name {
                "exec" | "discard" | "multi" | "watch" => {}
                _ => {
                    queue.push(args.to_vec());
                    return Reply::Status("QUEUED".into());
                }
            }
        }
        match spec.name {
            "multi" => {
                if session.queued.is_some() {
                    return Reply::err("ERR MULTI calls can not be nested");
                }
                session.queued = Some(Vec::new());
                session.dirty = false;
                Reply::ok()
            }
            "discard" => match session.queued.take() {
                None => Reply::err("ERR DISCARD without MULTI"),
                Some(_) => {
                    session.watched.clear();
                    Reply::ok()
                }
            },
            "watch" => {
                if session.queued.is_some() {
                    return Reply::err("ERR WATCH inside MULTI is not allowed");
                }
                for k in &args[1..] {
                    if !session.watched.iter().any(|(w, _, _)| w == k) {
                        session.watched.push((k.clone(), self.ks.stamp_of(k), self.ks.is_expired(k)));
                    }
                }
                Reply::ok()
            }
            "unwatch" => {
                session.watched.clear();
                Reply::ok()
            }
            "exec" => self.exec_transaction(session),
            "eval" | "evalsha" => self.eval(spec.name == "eval", args),
            "script" => self.script(args),
            _ => commands::call(&mut self.ks, spec, args),
        }
    }

    fn exec_transaction(&mut self, session: &mut Session) -> Reply {
        let Some(queue) = session.queued.take() else { return Reply::err("ERR EXEC without MULTI") };
        let watched = std::mem::take(&mut session.watched);
        if std::mem::take(&mut session.dirty) {
            return Reply::err("EXECABORT Transaction discarded because of previous errors.");
        }
        // A watched key changed, or expired since it was watched: abort (Redis 7).
        let changed =
            watched.iter().any(|(k, stamp, was_expired)| self.ks.stamp_of(k) != *stamp || (!was_expired && self.ks.is_expired(k)));
        if changed {
            return Reply::NilArray;
        }
        let mut out = Vec::with_capacity(queue.len());
        for args in queue {
            let spec = lookup(&args[0]).expect("queued commands were looked up");
            out.push(match spec.name {
                "eval" | "evalsha" => self.eval(spec.name == "eval", &args),
                "script" => self.script(&args),
                "unwatch" => Reply::ok(),
                _ => commands::call(&mut self.ks, spec, &args),
            });
        }
        Reply::Array(out)
    }

    fn eval(&mut self, by_body: bool, args: &[Vec<u8>]) -> Reply {
        let Some(nkeys) = commands::int_arg(&args[2]) else { return Reply::err("ERR value is not an integer or out of range") };
        if nkeys < 0 {
            return Reply::err("ERR Number of keys can't be negative");
        }
        if nkeys as usize > args.len() - 3 {
            return Reply::err("ERR Number of keys can't be greater than number of args");
        }
        let sha = if by_body {
            match self.scripting.load(&args[1]) {
                Ok(sha) => sha,
                Err(e) => return e,
            }
        } else {
            String::from_utf8_lossy(&args[1]).to_ascii_lowercase()
        };
        if !self.scripting.exists(&sha) {
            return Reply::err("NOSCRIPT No matching script. Please use EVAL.");
        }
        let (keys, argv) = args[3..].split_at(nkeys as usize);
        self.scripting.run(&mut self.ks, &sha, keys, argv)
    }

    /// `SCRIPT LOAD|EXISTS|FLUSH` (the subcommand and its arity were checked on arrival).
    fn script(&mut self, args: &[Vec<u8>]) -> Reply {
        match String::from_utf8_lossy(&args[1]).to_ascii_uppercase().as_str() {
            "LOAD" => match self.scripting.load(&args[2]) {
                Ok(sha) => Reply::Bulk(sha.into_bytes()),
                Err(e) => e,
            },
            "EXISTS" => {
                Reply::Array(args[2..].iter().map(|s| Reply::Int(self.scripting.exists(&String::from_utf8_lossy(s)) as i64)).collect())
            }
            _ if args.len() == 2
                || (args.len() == 3 && matches!(&*String::from_utf8_lossy(&args[2]).to_ascii_uppercase(), "ASYNC" | "SYNC")) =>
            {
                self.scripting.flush();
                Reply::ok()
            }
            _ => Reply::err("ERR SCRIPT FLUSH only support SYNC|ASYNC option"),
        }
    }
}

/// The SHA1 a script is cached under, as `SCRIPT LOAD` reports it.
pub fn script_sha(body: &str) -> String {
    sha1_hex(body.as_bytes())
}

/// Bound on connections the model serves at once.
pub const MODEL_CONNECTIONS_MAX: usize = 256;

/// Serves the model on a turmoil listener until the host stops. `now_ms` reads the Redis
/// host's own clock.
pub async fn serve(model: Arc<Mutex<Model>>, port: u16, now_ms: Arc<dyn Fn() -> u64 + Send + Sync>) -> turmoil::Result {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MODEL_CONNECTIONS_MAX));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (mut stream, _) = listener.accept().await?;
        let (model, now_ms) = (model.clone(), now_ms.clone());
        tokio::spawn(async move {
            let mut session = Session::default();
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                let n = match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut out = Vec::new();
                let mut consumed = 0;
                loop {
                    match parse_request(&buf[consumed..]) {
                        Ok(Some((args, used))) => {
                            consumed += used;
                            let sim_ms = turmoil::elapsed().as_millis() as u64;
                            let reply = model.lock().unwrap_or_else(|p| p.into_inner()).exec_in(&mut session, &args, now_ms(), sim_ms);
                            reply.encode(&mut out);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            Reply::err(e).encode(&mut out);
                            let _ = stream.write_all(&out).await;
                            return;
                        }
                    }
                }
                buf.drain(..consumed);
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    break;
                }
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_script_runs_the_text_it_is_sent_and_writes_through_the_same_commands() {
        let mut m = Model::new();
        let body = "redis.call('SET', KEYS[1], ARGV[1]); return {redis.call('GET', KEYS[1]), 7.9, false, 'x', nil, 'y'}";
        let r = m.exec(&cmd(&["EVAL", body, "1", "k", "v"]), 0);
        // Numbers truncate, false is a nil reply, and the array stops at the first Lua nil.
        let want = |v: &str| Reply::Array(vec![Reply::bulk(v), Reply::Int(7), Reply::Nil, Reply::bulk("x")]);
        assert_eq!(r, want("v"));
        assert_eq!(m.exec(&cmd(&["GET", "k"]), 0), Reply::bulk("v"));
        let sha = script_sha(body);
        assert_eq!(m.exec(&cmd(&["EVALSHA", &sha, "1", "k", "w"]), 0), want("w"));
        m.forget_scripts();
        assert!(matches!(m.exec(&cmd(&["EVALSHA", &sha, "1", "k", "w"]), 0), Reply::Error(e) if e.starts_with("NOSCRIPT")));
        assert_eq!(m.writes().len(), 2);
    }

    #[test]
    fn script_errors_and_replies_follow_redis_rules() {
        let mut m = Model::new();
        m.exec(&cmd(&["SET", "s", "abc"]), 0);
        let r = m.exec(&cmd(&["EVAL", "return redis.call('INCR', KEYS[1])", "1", "s"]), 0);
        assert!(matches!(&r, Reply::Error(e) if e.starts_with("ERR value is not an integer or out of range script: ")), "{r:?}");
        let r = m.exec(&cmd(&["EVAL", "local r = redis.pcall('INCR', KEYS[1]); return r['err']", "1", "s"]), 0);
        assert_eq!(r, Reply::bulk("ERR value is not an integer or out of range"));
        assert_eq!(m.exec(&cmd(&["EVAL", "return redis.status_reply('FINE')", "0"]), 0), Reply::Status("FINE".into()));
        assert_eq!(m.exec(&cmd(&["EVAL", "return redis.error_reply('MY bad')", "0"]), 0), Reply::err("MY bad"));
        assert!(matches!(m.exec(&cmd(&["EVAL", "return x", "0"]), 0), Reply::Error(e) if e.contains("nonexistent global variable 'x'")));
        assert!(matches!(m.exec(&cmd(&["EVAL", "x = 1", "0"]), 0), Reply::Error(e) if e.contains("Attempt to modify a readonly table")));
        assert!(
            matches!(m.exec(&cmd(&["EVAL", "return os.time()", "0"]), 0), Reply::Error(e) if e.contains("nonexistent global variable 'os'"))
        );
        assert!(matches!(m.exec(&cmd(&["EVAL", "while true do end", "0"]), 0), Reply::Error(e) if e.contains("budget")));
        assert!(matches!(m.exec(&cmd(&["EVAL", "return (", "0"]), 0), Reply::Error(e) if e.starts_with("ERR Error compiling script")));
        // A fresh redis-server 7.0 answers 40 to this, and its generator runs on across scripts.
        assert_eq!(Model::new().exec(&cmd(&["EVAL", "return math.random(100)", "0"]), 0), Reply::Int(40));
        assert_eq!(m.exec(&cmd(&["EVAL", "return math.random(100)", "0"]), 0), Reply::Int(40));
        assert_ne!(m.exec(&cmd(&["EVAL", "return math.random(100)", "0"]), 0), Reply::Int(40));
    }

    #[test]
    fn a_transaction_aborts_when_a_watched_key_changes() {
        let mut m = Model::new();
        let (mut a, mut b) = (Session::default(), Session::default());
        assert_eq!(m.exec_in(&mut a, &cmd(&["WATCH", "k"]), 0, 0), Reply::ok());
        m.exec_in(&mut b, &cmd(&["SET", "k", "1"]), 0, 0);
        m.exec_in(&mut a, &cmd(&["MULTI"]), 0, 0);
        assert_eq!(m.exec_in(&mut a, &cmd(&["SET", "k", "2"]), 0, 0), Reply::Status("QUEUED".into()));
        assert_eq!(m.exec_in(&mut a, &cmd(&["EXEC"]), 0, 0), Reply::NilArray);
        m.exec_in(&mut a, &cmd(&["MULTI"]), 0, 0);
        m.exec_in(&mut a, &cmd(&["INCR", "k"]), 0, 0);
        m.exec_in(&mut a, &cmd(&["HGET", "k", "f"]), 0, 0);
        let r = m.exec_in(&mut a, &cmd(&["EXEC"]), 0, 0);
        assert_eq!(r, Reply::Array(vec![Reply::Int(2), Reply::err(commands::WRONGTYPE)]));
    }

    #[test]
    fn a_crash_loses_what_the_durability_setting_does_not_keep() {
        for (d, kept) in
            [(Durability::FsyncAlways, "3"), (Durability::FsyncEverySec, "1"), (Durability::ReplicaFailover { lag_ms: 700 }, "2")]
        {
            let mut m = Model::with_durability(d);
            m.exec_in(&mut Session::default(), &cmd(&["SET", "k", "1"]), 900, 900);
            m.exec_in(&mut Session::default(), &cmd(&["SET", "k", "2"]), 1_100, 1_100);
            m.exec_in(&mut Session::default(), &cmd(&["SET", "k", "3"]), 1_900, 1_900);
            m.crash(1_950);
            assert_eq!(m.exec(&cmd(&["GET", "k"]), 2_000), Reply::bulk(kept), "{d:?}");
        }
    }
}
