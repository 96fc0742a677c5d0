//! The Redis model: exactly the commands `RedisStore` and the `redis` crate send, with
//! orchsim's Lua scripts executed natively (looked up by SHA1, `NOSCRIPT` until loaded).
//! Anything else gets a Redis-style error. Expiry follows the clock the caller passes in
//! (the Redis host's own clock in the simulation).
//!
//! The model is the serialisation point of the simulated system, so it also records every
//! applied Commit: that order is the truth the fenced-single-writer checker reads.

use crate::resp::{parse_request, Reply};
use orchestrator::store::redis::scripts;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    val: Val,
    expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ScriptKind {
    Begin,
    Commit,
    /// The `NoFencing` known bug's Commit (no fence check).
    CommitUnfenced,
    Release,
    Extend,
    Create,
}

/// A Commit the model applied, in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedCommit {
    pub at_ms: u64,
    pub cid: String,
    pub fence: u64,
    pub idem_key: String,
    pub record: String,
}

fn sha1_hex(s: &str) -> String {
    sha1_smol::Sha1::from(s.as_bytes()).digest().to_string()
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

#[derive(Debug)]
pub struct Model {
    data: BTreeMap<Vec<u8>, Entry>,
    known: BTreeMap<String, ScriptKind>,
    loaded: BTreeSet<String>,
    pub commits: Vec<AppliedCommit>,
    /// Simulation time of the request being executed (see [`Model::exec_stamped`]).
    stamp_ms: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn int_arg(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The conversation id inside a hash-tagged key `...{c:<cid>}...`.
pub fn cid_of(key: &str) -> String {
    key.split_once("{c:").and_then(|(_, r)| r.split_once('}')).map(|(c, _)| c.to_string()).unwrap_or_default()
}

impl Model {
    pub fn new() -> Self {
        let known = [
            (scripts::BEGIN, ScriptKind::Begin),
            (scripts::COMMIT, ScriptKind::Commit),
            (scripts::COMMIT_UNFENCED, ScriptKind::CommitUnfenced),
            (scripts::RELEASE, ScriptKind::Release),
            (scripts::EXTEND, ScriptKind::Extend),
            (scripts::CREATE, ScriptKind::Create),
        ]
        .into_iter()
        .map(|(src, k)| (sha1_hex(src), k))
        .collect();
        Self { data: BTreeMap::new(), known, loaded: BTreeSet::new(), commits: Vec::new(), stamp_ms: 0 }
    }

    /// A restart without persistence of the script cache: every script must be loaded again.
    pub fn forget_scripts(&mut self) {
        self.loaded.clear();
    }

    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        if self.data.get(key).is_some_and(|e| e.expires_at_ms.is_some_and(|t| t <= now)) {
            self.data.remove(key);
        }
        self.data.get_mut(key)
    }

    fn get(&mut self, key: &[u8], now: u64) -> Result<Option<Vec<u8>>, String> {
        match self.live(key, now) {
            None => Ok(None),
            Some(Entry { val: Val::Str(v), .. }) => Ok(Some(v.clone())),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn hget(&mut self, key: &[u8], field: &[u8], now: u64) -> Result<Option<Vec<u8>>, String> {
        match self.live(key, now) {
            None => Ok(None),
            Some(Entry { val: Val::Hash(h), .. }) => Ok(h.get(field).cloned()),
            Some(_) => Err(WRONGTYPE.into()),
        }
    }

    fn hset(&mut self, key: &[u8], pairs: &[(&[u8], &[u8])], now: u64) -> Result<i64, String> {
        if self.live(key, now).is_none() {
            self.data.insert(key.to_vec(), Entry { val: Val::Hash(BTreeMap::new()), expires_at_ms: None });
        }
        match self.data.get_mut(key) {
            Some(Entry { val: Val::Hash(h), .. }) => {
                let mut added = 0;
                for (f, v) in pairs {
                    if h.insert(f.to_vec(), v.to_vec()).is_none() {
                        added += 1;
                    }
                }
                Ok(added)
            }
            _ => Err(WRONGTYPE.into()),
        }
    }

    fn del(&mut self, key: &[u8], now: u64) -> i64 {
        let existed = self.live(key, now).is_some();
        self.data.remove(key);
        existed as i64
    }

    fn pexpire(&mut self, key: &[u8], ms: i64, now: u64) -> i64 {
        if ms <= 0 {
            return self.del(key, now);
        }
        match self.live(key, now) {
            Some(e) => {
                e.expires_at_ms = Some(now + ms as u64);
                1
            }
            None => 0,
        }
    }

    fn pttl(&mut self, key: &[u8], now: u64) -> i64 {
        match self.live(key, now) {
            None => -2,
            Some(Entry { expires_at_ms: None, .. }) => -1,
            Some(Entry { expires_at_ms: Some(t), .. }) => (*t - now) as i64,
        }
    }

    fn set_nx_px(&mut self, key: &[u8], val: &[u8], ms: i64, now: u64) -> bool {
        if self.live(key, now).is_some() {
            return false;
        }
        self.data.insert(key.to_vec(), Entry { val: Val::Str(val.to_vec()), expires_at_ms: Some(now + ms.max(1) as u64) });
        true
    }

    /// `SET key value PX ms`: replaces whatever the key held, of any type.
    fn set_px(&mut self, key: &[u8], val: &[u8], ms: i64, now: u64) -> Result<(), String> {
        if ms <= 0 {
            return Err("ERR invalid expire time in 'set' command".into());
        }
        self.data.insert(key.to_vec(), Entry { val: Val::Str(val.to_vec()), expires_at_ms: Some(now + ms as u64) });
        Ok(())
    }

    fn incr(&mut self, key: &[u8], now: u64) -> Result<i64, String> {
        let cur = match self.get(key, now)? {
            None => 0,
            Some(v) => int_arg(&v).ok_or("ERR value is not an integer or out of range")?,
        };
        let next = cur + 1;
        let exp = self.live(key, now).and_then(|e| e.expires_at_ms);
        self.data.insert(key.to_vec(), Entry { val: Val::Str(next.to_string().into_bytes()), expires_at_ms: exp });
        Ok(next)
    }

    /// Executes one client request at time `now_ms` on this Redis's clock, which is also the
    /// time applied commits are stamped with.
    pub fn exec(&mut self, args: &[Vec<u8>], now_ms: u64) -> Reply {
        self.exec_stamped(args, now_ms, now_ms)
    }

    /// As [`Model::exec`], with expiry judged on the Redis clock `now_ms` but applied commits
    /// stamped `sim_ms`, the simulation's own time (the two differ after a clock jump, and the
    /// history is ordered by simulation time).
    pub fn exec_stamped(&mut self, args: &[Vec<u8>], now_ms: u64, sim_ms: u64) -> Reply {
        self.stamp_ms = sim_ms;
        let Some(name) = args.first() else { return Reply::err("ERR empty command") };
        let name = s(name).to_ascii_uppercase();
        let argc = args.len();
        let wrong_args = || Reply::err(format!("ERR wrong number of arguments for '{}' command", name.to_lowercase()));
        match name.as_str() {
            "PING" => match argc {
                1 => Reply::Status("PONG".into()),
                2 => Reply::Bulk(args[1].clone()),
                _ => wrong_args(),
            },
            "ECHO" if argc == 2 => Reply::Bulk(args[1].clone()),
            "CLIENT" if argc >= 2 && s(&args[1]).eq_ignore_ascii_case("SETINFO") => {
                if argc == 4 {
                    Reply::ok()
                } else {
                    wrong_args()
                }
            }
            "SELECT" if argc == 2 => {
                if args[1] == b"0" {
                    Reply::ok()
                } else {
                    Reply::err("ERR DB index is out of range")
                }
            }
            "FLUSHALL" => {
                self.data.clear();
                Reply::ok()
            }
            "GET" if argc == 2 => match self.get(&args[1], now_ms) {
                Ok(Some(v)) => Reply::Bulk(v),
                Ok(None) => Reply::Nil,
                Err(e) => Reply::err(e),
            },
            "HGET" if argc == 3 => match self.hget(&args[1], &args[2], now_ms) {
                Ok(Some(v)) => Reply::Bulk(v),
                Ok(None) => Reply::Nil,
                Err(e) => Reply::err(e),
            },
            "HMGET" if argc >= 3 => {
                let mut out = Vec::new();
                for f in &args[2..] {
                    match self.hget(&args[1], f, now_ms) {
                        Ok(Some(v)) => out.push(Reply::Bulk(v)),
                        Ok(None) => out.push(Reply::Nil),
                        Err(e) => return Reply::err(e),
                    }
                }
                Reply::Array(out)
            }
            "DEL" if argc >= 2 => Reply::Int(args[1..].iter().map(|k| self.del(k, now_ms)).sum()),
            "EXISTS" if argc >= 2 => Reply::Int(args[1..].iter().map(|k| self.live(k, now_ms).is_some() as i64).sum()),
            "PTTL" if argc == 2 => Reply::Int(self.pttl(&args[1], now_ms)),
            "SCRIPT" if argc >= 2 => match s(&args[1]).to_ascii_uppercase().as_str() {
                "LOAD" if argc == 3 => {
                    let sha = sha1_hex(&s(&args[2]));
                    if self.known.contains_key(&sha) {
                        self.loaded.insert(sha.clone());
                        Reply::Bulk(sha.into_bytes())
                    } else {
                        Reply::err("ERR the orchsim Redis model runs only orchsim's own scripts")
                    }
                }
                "FLUSH" => {
                    self.loaded.clear();
                    Reply::ok()
                }
                _ => Reply::err(format!("ERR unknown subcommand '{}'", s(&args[1]))),
            },
            "EVALSHA" | "EVAL" if argc >= 3 => {
                let sha = if name == "EVAL" { sha1_hex(&s(&args[1])) } else { s(&args[1]).to_ascii_lowercase() };
                let Some(kind) = self.known.get(&sha).copied() else {
                    return if name == "EVAL" {
                        Reply::err("ERR the orchsim Redis model runs only orchsim's own scripts")
                    } else {
                        Reply::err("NOSCRIPT No matching script. Please use EVAL.")
                    };
                };
                if name == "EVAL" {
                    self.loaded.insert(sha.clone());
                } else if !self.loaded.contains(&sha) {
                    return Reply::err("NOSCRIPT No matching script. Please use EVAL.");
                }
                let Some(nkeys) = int_arg(&args[2]).filter(|n| *n >= 0 && (*n as usize) <= argc - 3) else {
                    return Reply::err("ERR Number of keys can't be greater than number of args");
                };
                let keys = &args[3..3 + nkeys as usize];
                let argv = &args[3 + nkeys as usize..];
                match self.run_script(kind, keys, argv, now_ms) {
                    Ok(r) => r,
                    Err(e) => Reply::err(format!("ERR Error running script: {e}")),
                }
            }
            _ => Reply::err(format!(
                "ERR unknown command '{}', with args beginning with: {}",
                name.to_lowercase(),
                args[1..].iter().map(|a| format!("'{}' ", s(a))).collect::<String>()
            )),
        }
    }

    fn run_script(&mut self, kind: ScriptKind, keys: &[Vec<u8>], argv: &[Vec<u8>], now: u64) -> Result<Reply, String> {
        let need = |k: usize, a: usize| {
            if keys.len() < k || argv.len() < a {
                Err("script called with too few keys or arguments".to_string())
            } else {
                Ok(())
            }
        };
        let ms = |b: &[u8]| int_arg(b).ok_or_else(|| "value is not an integer or out of range".to_string());
        match kind {
            ScriptKind::Begin => {
                need(4, 4)?;
                let (state, lock, fence, idem) = (&keys[0], &keys[1], &keys[2], &keys[3]);
                let owner = self.hget(state, b"owner", now)?;
                let record = self.hget(state, b"record", now)?;
                if owner.as_deref() != Some(&argv[0][..]) {
                    return Ok(Reply::Array(vec![Reply::bulk("notfound")]));
                }
                if let Some(done) = self.get(idem, now)? {
                    let (fp, resp) = split_line(&done)?;
                    if fp != &argv[1][..] {
                        return Ok(Reply::Array(vec![Reply::bulk("reused")]));
                    }
                    return Ok(Reply::Array(vec![Reply::bulk("replay"), Reply::Bulk(resp.to_vec()), lua_opt(record)]));
                }
                let ttl = ms(&argv[3])?;
                let lease = [&argv[2][..], b"\n", &argv[1][..], b"\n", &idem[..]].concat();
                if self.set_nx_px(lock, &lease, ttl, now) {
                    let f = self.incr(fence, now)?;
                    return Ok(Reply::Array(vec![Reply::bulk("acquired"), Reply::Int(f), lua_opt(record)]));
                }
                if let Some(holder) = self.get(lock, now)? {
                    let (_token, rest) = split_line(&holder)?;
                    let (fp, key) = split_line(rest)?;
                    if key == &idem[..] {
                        let tag = if fp != &argv[1][..] { "reused" } else { "inflight" };
                        return Ok(Reply::Array(vec![Reply::bulk(tag)]));
                    }
                }
                Ok(Reply::Array(vec![Reply::bulk("busy"), Reply::Int(self.pttl(lock, now))]))
            }
            ScriptKind::Commit | ScriptKind::CommitUnfenced => {
                need(4, 4)?;
                let (state, lock, fence, idem) = (&keys[0], &keys[1], &keys[2], &keys[3]);
                if kind == ScriptKind::Commit && self.get(fence, now)?.as_deref() != Some(&argv[0][..]) {
                    return Ok(Reply::Int(0));
                }
                self.hset(state, &[(b"record", &argv[1])], now)?;
                self.set_px(idem, &argv[2], ms(&argv[3])?, now)?;
                self.del(lock, now);
                let key = s(state);
                // An unfenced commit names no fence: the writer's own claim is all there is.
                let applied_fence = match kind {
                    ScriptKind::Commit => int_arg(&argv[0]).unwrap_or(-1) as u64,
                    _ => serde_json::from_slice::<serde_json::Value>(&argv[1]).ok().and_then(|r| r["writerFence"].as_u64()).unwrap_or(0),
                };
                self.commits.push(AppliedCommit {
                    at_ms: self.stamp_ms,
                    cid: cid_of(&key),
                    fence: applied_fence,
                    idem_key: s(idem),
                    record: s(&argv[1]),
                });
                Ok(Reply::Int(1))
            }
            ScriptKind::Release => {
                need(1, 1)?;
                if self.get(&keys[0], now)?.is_some_and(|v| held_by(&v, &argv[0])) {
                    self.del(&keys[0], now);
                    return Ok(Reply::Int(1));
                }
                Ok(Reply::Int(0))
            }
            ScriptKind::Extend => {
                need(1, 2)?;
                if self.get(&keys[0], now)?.is_some_and(|v| held_by(&v, &argv[0])) {
                    self.pexpire(&keys[0], ms(&argv[1])?, now);
                    return Ok(Reply::Int(1));
                }
                Ok(Reply::Int(0))
            }
            ScriptKind::Create => {
                need(1, 2)?;
                if self.live(&keys[0], now).is_some() {
                    return Ok(Reply::Int(0));
                }
                self.hset(&keys[0], &[(b"owner", &argv[0]), (b"record", &argv[1])], now)?;
                Ok(Reply::Int(1))
            }
        }
    }

    /// The stored record of a conversation, for the end-of-run checks.
    pub fn record_of(&mut self, cid: &str, now_ms: u64) -> Option<String> {
        let key = orchestrator::store::keys::state(cid);
        self.hget(key.as_bytes(), b"record", now_ms).ok().flatten().map(|v| s(&v))
    }
}

/// `<first line>\n<rest>` as the scripts split it with `string.find`; a value without a newline
/// makes the Lua script fail (arithmetic on nil), so it is an error here too.
fn split_line(v: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let nl = v.iter().position(|b| *b == b'\n').ok_or("attempt to perform arithmetic on a nil value")?;
    Ok((&v[..nl], &v[nl + 1..]))
}

/// Whether a lease value `<token>\n...` belongs to `token`.
fn held_by(lease: &[u8], token: &[u8]) -> bool {
    lease.len() > token.len() && lease.starts_with(token) && lease[token.len()] == b'\n'
}

/// Lua's view of a missing hash field (`false`) converted back to a reply: nil.
fn lua_opt(v: Option<Vec<u8>>) -> Reply {
    v.map(Reply::Bulk).unwrap_or(Reply::Nil)
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
                            let reply = model.lock().unwrap_or_else(|p| p.into_inner()).exec_stamped(&args, now_ms(), sim_ms);
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
