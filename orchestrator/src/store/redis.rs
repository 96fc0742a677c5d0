//! `RedisStore`: the store on a real Redis (or the harness's Redis model), over any stream a
//! [`Connector`] hands out.
//!
//! Every store operation is one round trip: Begin, Commit, Release, Extend and Create are Lua
//! scripts run by `EVALSHA` (re-loaded on `NOSCRIPT`, e.g. after a Redis restart), Load is one
//! `HMGET`. All keys of a script share the conversation's hash tag, so each touches one
//! Redis Cluster slot. Fencing holds for a single primary.
//!
//! The connection is one multiplexed connection with explicit connect and response timeouts
//! (the crate's defaults run on tokio time, which is virtual in the simulation). A broken
//! connection is dropped and re-dialled on the next call, no sooner than a jittered,
//! exponentially growing backoff; calls in between answer `Unavailable` at once.

use super::*;
use crate::net::{Connector, TcpConnector};
use crate::rng::SeededRng;
use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisWrite, Script, ServerErrorKind, Value,
};
use std::io::Write;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Deadline for dialling and the connection handshake.
    pub connect_timeout_ms: u64,
    /// Deadline for one command's reply.
    pub response_timeout_ms: u64,
    pub reconnect_backoff_base_ms: u64,
    pub reconnect_backoff_max_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { connect_timeout_ms: 1_000, response_timeout_ms: 1_000, reconnect_backoff_base_ms: 50, reconnect_backoff_max_ms: 2_000 }
    }
}

/// The Lua scripts, each as few `redis.call`s as the step allows (a call inside a script is
/// most of its cost on the server: four each for Begin and Commit on the fast path).
///
/// Keys: `state` is a hash {owner, record}; `fence` a counter; `lock` a string
/// `<owner token>\n<fingerprint>\n<idempotency key>` with PX ttl, so the key's in-flight
/// marker is the lease itself and expires, extends and goes away with it; `idem` a string
/// `<fingerprint>\n<response>` with PX ttl, written only by a Commit.
pub mod scripts {
    /// KEYS: state, lock, fence, idem. ARGV: user, fingerprint, owner token, lease ttl ms.
    pub const BEGIN: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'owner', 'record')
if st[1] ~= ARGV[1] then return {'notfound'} end
local done = redis.call('GET', KEYS[4])
if done then
  local nl = string.find(done, '\n', 1, true)
  if string.sub(done, 1, nl - 1) ~= ARGV[2] then return {'reused'} end
  return {'replay', string.sub(done, nl + 1), st[2]}
end
if redis.call('SET', KEYS[2], ARGV[3] .. '\n' .. ARGV[2] .. '\n' .. KEYS[4], 'NX', 'PX', ARGV[4]) then
  return {'acquired', redis.call('INCR', KEYS[3]), st[2]}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  local a = string.find(holder, '\n', 1, true)
  local b = string.find(holder, '\n', a + 1, true)
  if string.sub(holder, b + 1) == KEYS[4] then
    if string.sub(holder, a + 1, b - 1) ~= ARGV[2] then return {'reused'} end
    return {'inflight'}
  end
end
return {'busy', redis.call('PTTL', KEYS[2])}
"#;

    /// KEYS: state, lock, fence, idem. ARGV: fence, record, `<fingerprint>\n<response>`,
    /// idempotency ttl ms, retention ms (0: keep), the submission this commit makes pending ('':
    /// none; kept in the state hash, so it lives and expires with the conversation). An unchanged fence means no lease was taken
    /// since ours, so the lock is ours or gone: deleting it needs no owner check. A retention
    /// expires the conversation (its state and fence) that long after this commit.
    pub const COMMIT: &str = r#"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'pending', ARGV[6])
else
  redis.call('HSET', KEYS[1], 'record', ARGV[2])
end
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[2])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return 1
"#;

    /// KEYS: lock. ARGV: owner token.
    pub const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

    /// KEYS: lock. ARGV: owner token, ttl ms.
    pub const EXTEND: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\n' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

    /// KEYS: state, lock, fence. ARGV: user, the record as last seen ('' asks), the fence then,
    /// the cancelled record, retention ms. Takes the conversation over if it is as seen: a new
    /// fence (the holder's commit is refused), the lease and its in-flight marker deleted.
    pub const CANCEL: &str = r#"
local st = redis.call('HMGET', KEYS[1], 'owner', 'record')
if st[1] ~= ARGV[1] then return {'notfound'} end
local f = redis.call('GET', KEYS[3]) or '0'
if ARGV[2] == '' or st[2] ~= ARGV[2] or f ~= ARGV[3] then return {'changed', st[2], f} end
local nf = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'record', ARGV[4])
redis.call('DEL', KEYS[2])
if ARGV[5] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return {'cancelled', nf}
"#;

    /// KEYS: outbox. ARGV: cid, due in ms. Records the entry unless it is there.
    pub const OUTBOX_INTEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])) .. ':' .. string.format('%d', now))
end
return 1
"#;

    /// KEYS: outbox. ARGV: max, claim ms. Claims up to max due entries (their due time moves
    /// claim ms ahead); returns cid, age ms pairs.
    pub const OUTBOX_CLAIM: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if #out >= 2 * tonumber(ARGV[1]) then break end
  local v = all[i + 1]
  local c = string.find(v, ':', 1, true)
  local due, at = tonumber(string.sub(v, 1, c - 1)), tonumber(string.sub(v, c + 1))
  if due <= now then
    redis.call('HSET', KEYS[1], all[i], string.format('%d', now + tonumber(ARGV[2])) .. ':' .. string.format('%d', at))
    table.insert(out, all[i])
    table.insert(out, string.format('%d', now - at))
  end
end
return out
"#;

    /// KEYS: outbox. ARGV: cid, after ms.
    pub const OUTBOX_LATER: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local c = string.find(v, ':', 1, true)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[2])) .. string.sub(v, c))
return 1
"#;

    /// KEYS: active. ARGV: cid, max. Counts the conversation with the server's time, unless
    /// `max` are counted already.
    pub const ADMIT: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return 1
"#;

    /// KEYS: active. The server's time in ms, then the hash's fields and values.
    pub const ACTIVE: &str = r#"
local t = redis.call('TIME')
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
return all
"#;

    /// KEYS: state. ARGV: owner, record.
    pub const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'record', ARGV[2])
return 1
"#;
}

struct Scripts {
    outbox_intend: Script,
    outbox_claim: Script,
    outbox_later: Script,
    cancel: Script,
    admit: Script,
    active: Script,
    begin: Script,
    commit: Script,
    release: Script,
    extend: Script,
    create: Script,
}

/// Re-dial bookkeeping; only the (rare) slow path takes this lock.
struct Dial {
    failures: u32,
    next_attempt: Option<Instant>,
}

pub struct RedisStore<C: Connector = TcpConnector> {
    connector: C,
    host: String,
    port: u16,
    info: RedisConnectionInfo,
    config: RedisConfig,
    rng: SeededRng,
    scripts: Scripts,
    /// The live connection: a short std lock on the hot path (cloning a handle), so turns
    /// never queue behind each other here.
    conn: std::sync::Mutex<Option<MultiplexedConnection>>,
    dial: tokio::sync::Mutex<Dial>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn protocol(what: &str, v: &Value) -> StoreError {
    StoreError::Protocol(format!("{what}: unexpected reply {v:?}"))
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

fn record_of(v: &Value) -> Result<ConversationRecord, StoreError> {
    let b = as_bytes(v).ok_or_else(|| protocol("record", v))?;
    serde_json::from_slice(b).map_err(|e| StoreError::Protocol(format!("record is not JSON: {e}")))
}

impl RedisStore<TcpConnector> {
    /// A store on `redis://host:port[/db]` over TCP.
    pub fn open(url: &str, config: RedisConfig, seed: u64) -> Result<Self, StoreError> {
        Self::with_connector(TcpConnector, url, config, seed)
    }
}

impl<C: Connector> RedisStore<C> {
    /// A store whose connections come from `connector` (the harness passes turmoil's).
    pub fn with_connector(connector: C, url: &str, config: RedisConfig, seed: u64) -> Result<Self, StoreError> {
        let info = url.into_connection_info().map_err(|e| StoreError::Protocol(format!("bad redis url {url:?}: {e}")))?;
        let (host, port) = match info.addr() {
            ::redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            other => return Err(StoreError::Protocol(format!("unsupported redis address {other:?}: use redis://host:port"))),
        };
        Ok(Self {
            connector,
            host,
            port,
            info: info.redis_settings().clone(),
            config,
            rng: SeededRng::from_seed(seed),
            scripts: Scripts {
                outbox_intend: Script::new(scripts::OUTBOX_INTEND),
                outbox_claim: Script::new(scripts::OUTBOX_CLAIM),
                outbox_later: Script::new(scripts::OUTBOX_LATER),
                cancel: Script::new(scripts::CANCEL),
                admit: Script::new(scripts::ADMIT),
                active: Script::new(scripts::ACTIVE),
                begin: Script::new(scripts::BEGIN),
                commit: Script::new(scripts::COMMIT),
                release: Script::new(scripts::RELEASE),
                extend: Script::new(scripts::EXTEND),
                create: Script::new(scripts::CREATE),
            },
            conn: std::sync::Mutex::new(None),
            dial: tokio::sync::Mutex::new(Dial { failures: 0, next_attempt: None }),
        })
    }

    async fn dial(&self) -> Result<MultiplexedConnection, StoreError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(self.config.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(self.config.response_timeout_ms)));
        let fut = async {
            let stream = self.connector.connect(&self.host, self.port).await.map_err(unavailable)?;
            let (conn, driver) = MultiplexedConnection::new_with_config(&self.info, stream, cfg).await.map_err(unavailable)?;
            tokio::spawn(driver);
            Ok::<_, StoreError>(conn)
        };
        match tokio::time::timeout(Duration::from_millis(self.config.connect_timeout_ms), fut).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!("connect to {}:{} timed out", self.host, self.port))),
        }
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // Slow path: one caller dials, the others wait for its result.
        let mut g = self.dial.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let now = Instant::now();
        if let Some(at) = g.next_attempt {
            if now < at {
                return Err(unavailable("redis reconnect backing off"));
            }
        }
        match self.dial().await {
            Ok(c) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                g.failures = 0;
                g.next_attempt = None;
                tracing::info!(host = %self.host, port = self.port, "redis connected");
                Ok(c)
            }
            Err(e) => {
                g.failures = g.failures.saturating_add(1);
                let exp = self.config.reconnect_backoff_base_ms.saturating_mul(1u64 << g.failures.min(16));
                let cap = exp.min(self.config.reconnect_backoff_max_ms).max(1);
                let wait = cap / 2 + self.rng.below(cap / 2 + 1);
                g.next_attempt = Some(now + Duration::from_millis(wait));
                tracing::warn!(error = %e, retry_in_ms = wait, "redis connect failed");
                Err(e)
            }
        }
    }

    /// Forgets a connection that failed, so the next call re-dials.
    fn broken(&self, e: &RedisError) {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
            if self.conn.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
                tracing::warn!(error = %e, "redis connection dropped");
            }
        }
    }

    /// A failed call: forget the connection if it broke, and answer `Unavailable`.
    fn failed(&self, e: RedisError) -> StoreError {
        self.broken(&e);
        unavailable(e)
    }

    /// Runs one of our scripts by EVALSHA; on `NOSCRIPT` (a restarted or flushed Redis) loads
    /// it and sends the same command once more.
    async fn eval(&self, script: &Script, cmd: &Cmd) -> Result<Value, StoreError> {
        let mut c = self.connection().await?;
        match cmd.query_async::<Value>(&mut c).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut c).await.map_err(|e| self.failed(e))?;
                cmd.query_async::<Value>(&mut c).await.map_err(|e| self.failed(e))
            }
            r => r.map_err(|e| self.failed(e)),
        }
    }
}

/// `EVALSHA <sha> <nkeys>`: keys and arguments are then written straight into the command's
/// one buffer (no per-argument allocations on the hot path).
fn evalsha(script: &Script, nkeys: usize) -> Cmd {
    let mut c = ::redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(nkeys);
    c
}

/// Appends one conversation key (`<kind>:{c:<cid>}`, see [`keys`]) as an argument.
fn key_arg(c: &mut Cmd, kind: &str, cid: &str) {
    let mut w = c.writer_for_next_arg();
    // Writes into the command's own buffer: they cannot fail.
    let _ = keys::write_tagged(&mut w, kind, cid);
}

/// Begin's and Commit's four keys, in the scripts' order.
fn turn_keys(script: &Script, cid: &str, idem_key: &str) -> Cmd {
    let mut c = evalsha(script, 4);
    key_arg(&mut c, keys::STATE, cid);
    key_arg(&mut c, keys::LOCK, cid);
    key_arg(&mut c, keys::FENCE, cid);
    c.arg(idem_key);
    c
}

impl<C: Connector> Store for RedisStore<C> {
    async fn create(&self, cid: &str, record: &ConversationRecord) -> Result<bool, StoreError> {
        let mut c = evalsha(&self.scripts.create, 1);
        key_arg(&mut c, keys::STATE, cid);
        c.arg(&record.owner);
        serde_json::to_writer(c.writer_for_next_arg(), record).map_err(|e| StoreError::Protocol(e.to_string()))?;
        let v = self.eval(&self.scripts.create, &c).await?;
        Ok(as_int(&v).ok_or_else(|| protocol("create", &v))? == 1)
    }

    async fn load(&self, cid: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let mut c = self.connection().await?;
        let v: Value =
            ::redis::cmd("HMGET").arg(keys::state(cid)).arg("owner").arg("record").query_async(&mut c).await.map_err(|e| self.failed(e))?;
        match &v {
            Value::Array(items) if items.len() == 2 => match &items[1] {
                Value::Nil => Ok(None),
                rec => record_of(rec).map(Some),
            },
            other => Err(protocol("load", other)),
        }
    }

    async fn begin(&self, a: &BeginArgs<'_>) -> Result<BeginOutcome, StoreError> {
        let mut c = turn_keys(&self.scripts.begin, a.cid, a.idem_key);
        c.arg(a.user).arg(a.fingerprint).arg(a.owner_token).arg(a.lease_ttl_ms);
        let v = self.eval(&self.scripts.begin, &c).await?;
        let Value::Array(items) = &v else { return Err(protocol("begin", &v)) };
        let tag = items.first().and_then(as_bytes).ok_or_else(|| protocol("begin", &v))?;
        match tag {
            b"notfound" => Ok(BeginOutcome::NotFound),
            b"reused" => Ok(BeginOutcome::KeyReused),
            b"inflight" => Ok(BeginOutcome::InFlight),
            b"replay" if items.len() == 3 => {
                let response = std::str::from_utf8(as_bytes(&items[1]).ok_or_else(|| protocol("begin", &v))?)
                    .map_err(|_| protocol("begin", &v))?
                    .to_string();
                Ok(BeginOutcome::Replay { response, record: record_of(&items[2])? })
            }
            b"acquired" if items.len() == 3 => {
                let fence = as_int(&items[1]).ok_or_else(|| protocol("begin", &v))?;
                Ok(BeginOutcome::Acquired { fence: fence as u64, record: record_of(&items[2])? })
            }
            b"busy" if items.len() == 2 => {
                // PTTL is -1/-2 if the lock vanished or has no expiry: retry soon.
                let ttl = as_int(&items[1]).unwrap_or(1).max(1);
                Ok(BeginOutcome::Busy { retry_in_ms: ttl as u64 })
            }
            _ => Err(protocol("begin", &v)),
        }
    }

    async fn commit(&self, a: &CommitArgs<'_>) -> Result<CommitOutcome, StoreError> {
        let script = &self.scripts.commit;
        let mut c = turn_keys(script, a.cid, a.idem_key);
        c.arg(a.fence);
        serde_json::to_writer(c.writer_for_next_arg(), a.record).map_err(|e| StoreError::Protocol(e.to_string()))?;
        {
            let mut w = c.writer_for_next_arg();
            let _ = w.write_all(a.fingerprint.as_bytes()).and_then(|_| w.write_all(b"\n")).and_then(|_| w.write_all(a.response.as_bytes()));
        }
        c.arg(a.idempotency_ttl_ms).arg(a.retain_ms).arg(a.pending.unwrap_or(""));
        let v = self.eval(script, &c).await?;
        match as_int(&v) {
            Some(1) => Ok(CommitOutcome::Committed),
            Some(0) => Ok(CommitOutcome::Superseded),
            _ => Err(protocol("commit", &v)),
        }
    }

    async fn release(&self, cid: &str, owner_token: &str, _idem_key: &str) -> Result<bool, StoreError> {
        let mut c = evalsha(&self.scripts.release, 1);
        key_arg(&mut c, keys::LOCK, cid);
        c.arg(owner_token);
        let v = self.eval(&self.scripts.release, &c).await?;
        Ok(as_int(&v).ok_or_else(|| protocol("release", &v))? == 1)
    }

    async fn extend(&self, cid: &str, owner_token: &str, _idem_key: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut c = evalsha(&self.scripts.extend, 1);
        key_arg(&mut c, keys::LOCK, cid);
        c.arg(owner_token).arg(ttl_ms);
        let v = self.eval(&self.scripts.extend, &c).await?;
        Ok(as_int(&v).ok_or_else(|| protocol("extend", &v))? == 1)
    }

    async fn outbox_intend(&self, cid: &str, due_in_ms: u64) -> Result<(), StoreError> {
        let mut c = evalsha(&self.scripts.outbox_intend, 1);
        c.arg(keys::OUTBOX).arg(cid).arg(due_in_ms);
        self.eval(&self.scripts.outbox_intend, &c).await.map(|_| ())
    }

    async fn outbox_claim(&self, max: usize, claim_ms: u64) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut c = evalsha(&self.scripts.outbox_claim, 1);
        c.arg(keys::OUTBOX).arg(max).arg(claim_ms);
        let v = self.eval(&self.scripts.outbox_claim, &c).await?;
        let Value::Array(items) = &v else { return Err(protocol("outbox claim", &v)) };
        let mut out = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let [cid, age] = pair else { return Err(protocol("outbox claim", &v)) };
            let cid = as_bytes(cid).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| protocol("outbox claim", &v))?.to_string();
            let mut conn = self.connection().await?;
            let pending: Option<String> =
                ::redis::cmd("HGET").arg(keys::state(&cid)).arg("pending").query_async(&mut conn).await.map_err(|e| self.failed(e))?;
            out.push(OutboxEntry { cid, pending, age_ms: as_int(age).unwrap_or(0).max(0) as u64 });
        }
        Ok(out)
    }

    async fn outbox_done(&self, cid: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        // The pending submission first: an index entry left behind is cleared by a relay later.
        ::redis::cmd("HDEL").arg(keys::state(cid)).arg("pending").query_async::<Value>(&mut conn).await.map_err(|e| self.failed(e))?;
        ::redis::cmd("HDEL").arg(keys::OUTBOX).arg(cid).query_async::<Value>(&mut conn).await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn outbox_later(&self, cid: &str, after_ms: u64) -> Result<(), StoreError> {
        let mut c = evalsha(&self.scripts.outbox_later, 1);
        c.arg(keys::OUTBOX).arg(cid).arg(after_ms);
        self.eval(&self.scripts.outbox_later, &c).await.map(|_| ())
    }

    async fn cancel(&self, a: &CancelArgs<'_>) -> Result<CancelOutcome, StoreError> {
        let script = &self.scripts.cancel;
        let mut c = evalsha(script, 3);
        key_arg(&mut c, keys::STATE, a.cid);
        key_arg(&mut c, keys::LOCK, a.cid);
        key_arg(&mut c, keys::FENCE, a.cid);
        c.arg(a.user);
        match &a.write {
            None => {
                c.arg("").arg(0).arg("").arg(0);
            }
            Some(w) => {
                c.arg(w.seen).arg(w.fence);
                serde_json::to_writer(c.writer_for_next_arg(), w.record).map_err(|e| StoreError::Protocol(e.to_string()))?;
                c.arg(w.retain_ms);
            }
        }
        let v = self.eval(script, &c).await?;
        let Value::Array(items) = &v else { return Err(protocol("cancel", &v)) };
        match items.first().and_then(as_bytes) {
            Some(b"notfound") => Ok(CancelOutcome::NotFound),
            Some(b"cancelled") if items.len() == 2 => {
                Ok(CancelOutcome::Cancelled { fence: as_int(&items[1]).ok_or_else(|| protocol("cancel", &v))? as u64 })
            }
            Some(b"changed") if items.len() == 3 => {
                let seen = as_bytes(&items[1]).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| protocol("cancel", &v))?;
                Ok(CancelOutcome::Changed {
                    record: record_of(&items[1])?,
                    seen: seen.to_string(),
                    fence: as_int(&items[2]).ok_or_else(|| protocol("cancel", &v))? as u64,
                })
            }
            _ => Err(protocol("cancel", &v)),
        }
    }

    async fn admit(&self, user: &str, cid: &str, max: u64) -> Result<bool, StoreError> {
        let mut c = evalsha(&self.scripts.admit, 1);
        c.arg(keys::active(user)).arg(cid).arg(max);
        let v = self.eval(&self.scripts.admit, &c).await?;
        Ok(as_int(&v).ok_or_else(|| protocol("admit", &v))? == 1)
    }

    async fn active(&self, user: &str) -> Result<ActiveList, StoreError> {
        let mut c = evalsha(&self.scripts.active, 1);
        c.arg(keys::active(user));
        let v = self.eval(&self.scripts.active, &c).await?;
        let Value::Array(items) = &v else { return Err(protocol("active", &v)) };
        let now_ms = items.first().and_then(as_int).ok_or_else(|| protocol("active", &v))? as u64;
        let mut entries = Vec::with_capacity(items.len() / 2);
        for pair in items[1..].chunks(2) {
            let [cid, at] = pair else { return Err(protocol("active", &v)) };
            let cid = as_bytes(cid).and_then(|b| std::str::from_utf8(b).ok()).ok_or_else(|| protocol("active", &v))?;
            entries.push((cid.to_string(), as_int(at).unwrap_or(0) as u64));
        }
        Ok(ActiveList { now_ms, entries })
    }

    async fn dismiss(&self, user: &str, cid: &str) -> Result<(), StoreError> {
        let mut c = self.connection().await?;
        ::redis::cmd("HDEL").arg(keys::active(user)).arg(cid).query_async::<Value>(&mut c).await.map_err(|e| self.failed(e))?;
        Ok(())
    }
}
