//! The commands a Redis client of this kind uses, with Redis 7's replies and error texts: one
//! table of names and arities, one `match` that dispatches. Transactions and scripting live in
//! the modules beside this one; they reach these commands through [`call`].

use super::keyspace::{Entry, Keyspace, Value, WriteOp};
use crate::resp::Reply;

pub(crate) const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// How a command may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i32,
    /// Refused inside a script (`CMD_NOSCRIPT`).
    pub noscript: bool,
}

const fn spec(name: &'static str, arity: i32, noscript: bool) -> Spec {
    Spec { name, arity, noscript }
}

/// Every command the model knows, lower case.
pub(crate) const COMMANDS: &[Spec] = &[
    spec("get", 2, false),
    spec("set", -3, false),
    spec("del", -2, false),
    spec("exists", -2, false),
    spec("incr", 2, false),
    spec("incrby", 3, false),
    spec("decr", 2, false),
    spec("decrby", 3, false),
    spec("mget", -2, false),
    spec("expire", -3, false),
    spec("pexpire", -3, false),
    spec("ttl", 2, false),
    spec("pttl", 2, false),
    spec("persist", 2, false),
    spec("hget", 3, false),
    spec("hset", -4, false),
    spec("hmget", -3, false),
    spec("hgetall", 2, false),
    spec("hdel", -3, false),
    spec("hincrby", 4, false),
    spec("hexists", 3, false),
    spec("hlen", 2, false),
    spec("ping", -1, false),
    spec("echo", 2, false),
    spec("hello", -1, true),
    spec("client", -2, true),
    spec("select", 2, false),
    spec("flushall", -1, false),
    spec("time", 1, false),
    spec("dbsize", 1, false),
    spec("multi", 1, true),
    spec("exec", 1, true),
    spec("discard", 1, true),
    spec("watch", -2, true),
    spec("unwatch", 1, true),
    spec("eval", -3, true),
    spec("evalsha", -3, true),
    spec("script", -2, true),
];

pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

pub(crate) fn arity_ok(spec: &Spec, argc: usize) -> bool {
    let argc = argc as i32;
    if spec.arity >= 0 {
        argc == spec.arity
    } else {
        argc >= -spec.arity
    }
}

/// Container commands check their subcommand and its arity before anything runs (so inside
/// `MULTI` a bad one is refused at queue time, as in Redis 7).
pub(crate) fn check_subcommand(spec: &Spec, args: &[Vec<u8>]) -> Result<(), Reply> {
    let subs: &[(&'static str, i32)] = match spec.name {
        "script" => &[("load", 3), ("exists", -3), ("flush", -2)],
        "client" => &[("setinfo", 4), ("setname", 3)],
        _ => return Ok(()),
    };
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match subs.iter().find(|(n, _)| *n == sub) {
        None => Err(Reply::err(format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            String::from_utf8_lossy(&args[1]),
            spec.name.to_ascii_uppercase()
        ))),
        Some((n, arity)) if !arity_ok(&Spec { name: n, arity: *arity, noscript: true }, args.len()) => {
            Err(wrong_args(&format!("{}|{n}", spec.name)))
        }
        Some(_) => Ok(()),
    }
}

pub(crate) fn wrong_args(name: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{name}' command"))
}

pub(crate) fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let rest: String = args[1..].iter().map(|a| format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(128)]))).collect();
    Reply::err(format!("ERR unknown command '{}', with args beginning with: {rest}", &name[..name.len().min(128)]))
}

/// Redis's strict integer parse (`string2ll`): no spaces, no `+`, no leading zeros.
pub(crate) fn int_arg(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if s == "-0" {
        return None;
    }
    s.parse().ok()
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn get_str(ks: &mut Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, Reply> {
    match ks.get(key) {
        None => Ok(None),
        Some(Entry { val: Value::Str(v), .. }) => Ok(Some(v.clone())),
        Some(_) => Err(Reply::err(WRONGTYPE)),
    }
}

fn get_hash<'a>(ks: &'a mut Keyspace, key: &[u8]) -> Result<Option<&'a [(Vec<u8>, Vec<u8>)]>, Reply> {
    match ks.get(key) {
        None => Ok(None),
        Some(Entry { val: Value::Hash(h), .. }) => Ok(Some(h)),
        Some(_) => Err(Reply::err(WRONGTYPE)),
    }
}

fn field<'a>(h: &'a [(Vec<u8>, Vec<u8>)], f: &[u8]) -> Option<&'a Vec<u8>> {
    h.iter().find(|(k, _)| k == f).map(|(_, v)| v)
}

/// Runs one command (already checked for existence and arity) against the keyspace.
/// `FLUSHALL` and the connection commands are here too; transactions and scripts are not.
pub(crate) fn call(ks: &mut Keyspace, spec: &Spec, args: &[Vec<u8>]) -> Reply {
    let r = match spec.name {
        "get" => get_str(ks, &args[1]).map(|v| v.map(Reply::Bulk).unwrap_or(Reply::Nil)),
        "set" => set(ks, args),
        "del" => Ok(Reply::Int(
            args[1..]
                .iter()
                .map(|k| {
                    let had = ks.exists(k);
                    if had {
                        ks.put(k, None, WriteOp::Del);
                    }
                    had as i64
                })
                .sum(),
        )),
        "exists" => Ok(Reply::Int(args[1..].iter().map(|k| ks.exists(k) as i64).sum())),
        "incr" => incr_by(ks, &args[1], Some(1)),
        "decr" => incr_by(ks, &args[1], Some(-1)),
        "incrby" => incr_by(ks, &args[1], int_arg(&args[2])),
        "decrby" => incr_by(ks, &args[1], int_arg(&args[2]).and_then(|n| n.checked_neg())),
        "mget" => Ok(Reply::Array(
            args[1..]
                .iter()
                .map(|k| match ks.get(k) {
                    Some(Entry { val: Value::Str(v), .. }) => Reply::Bulk(v.clone()),
                    _ => Reply::Nil,
                })
                .collect(),
        )),
        "expire" => expire(ks, args, 1000),
        "pexpire" => expire(ks, args, 1),
        "ttl" | "pttl" => Ok(Reply::Int(match ks.get(&args[1]) {
            None => -2,
            Some(Entry { expires_at_ms: None, .. }) => -1,
            Some(Entry { expires_at_ms: Some(t), .. }) => {
                let ms = (*t - ks.now_ms) as i64;
                if spec.name == "ttl" {
                    (ms + 500) / 1000
                } else {
                    ms
                }
            }
        })),
        "persist" => Ok(Reply::Int(match ks.get(&args[1]) {
            Some(Entry { expires_at_ms: Some(_), .. }) => {
                ks.modify(&args[1], WriteOp::Expire(None), |e| e.expires_at_ms = None);
                1
            }
            _ => 0,
        })),
        "hget" => get_hash(ks, &args[1]).map(|h| h.and_then(|h| field(h, &args[2])).cloned().map(Reply::Bulk).unwrap_or(Reply::Nil)),
        "hmget" => get_hash(ks, &args[1]).map(|h| {
            Reply::Array(args[2..].iter().map(|f| h.and_then(|h| field(h, f)).cloned().map(Reply::Bulk).unwrap_or(Reply::Nil)).collect())
        }),
        "hgetall" => get_hash(ks, &args[1])
            .map(|h| Reply::Array(h.unwrap_or(&[]).iter().flat_map(|(k, v)| [Reply::Bulk(k.clone()), Reply::Bulk(v.clone())]).collect())),
        "hexists" => get_hash(ks, &args[1]).map(|h| Reply::Int(h.and_then(|h| field(h, &args[2])).is_some() as i64)),
        "hlen" => get_hash(ks, &args[1]).map(|h| Reply::Int(h.map_or(0, |h| h.len() as i64))),
        "hset" => hset(ks, args),
        "hdel" => hdel(ks, args),
        "hincrby" => hincrby(ks, args),
        "ping" => match args.len() {
            1 => Ok(Reply::Status("PONG".into())),
            2 => Ok(Reply::Bulk(args[1].clone())),
            _ => Err(wrong_args("ping")),
        },
        "echo" => Ok(Reply::Bulk(args[1].clone())),
        "hello" => hello(args),
        "client" => client(args),
        "select" => match int_arg(&args[1]) {
            Some(0) => Ok(Reply::ok()),
            Some(_) => Err(Reply::err("ERR DB index is out of range")),
            None => Err(Reply::err(NOT_INTEGER)),
        },
        "flushall" => match args.get(1).map(|a| upper(a)) {
            None => flushall(ks),
            Some(m) if args.len() == 2 && (m == "ASYNC" || m == "SYNC") => flushall(ks),
            _ => Err(Reply::err(SYNTAX)),
        },
        "time" => {
            let us = ks.now_ms * 1000;
            Ok(Reply::Array(vec![Reply::bulk((us / 1_000_000).to_string()), Reply::bulk((us % 1_000_000).to_string())]))
        }
        "dbsize" => Ok(Reply::Int(ks.live_keys().len() as i64)),
        other => Err(Reply::err(format!("ERR the model cannot run '{other}' here"))),
    };
    r.unwrap_or_else(|e| e)
}

fn flushall(ks: &mut Keyspace) -> Result<Reply, Reply> {
    for k in ks.live_keys() {
        ks.put(&k, None, WriteOp::Del);
    }
    Ok(Reply::ok())
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn set(ks: &mut Keyspace, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire: Option<(String, Vec<u8>)> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = upper(&args[i]);
        match opt.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if expire.is_none() => keepttl = true,
            // The same unit again overrides; a different one is a syntax error.
            "EX" | "PX" | "EXAT" | "PXAT" if expire.as_ref().is_none_or(|(u, _)| *u == opt) && !keepttl && i + 1 < args.len() => {
                expire = Some((opt, args[i + 1].clone()));
                i += 1;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    let expires_at_ms = match &expire {
        None => None,
        Some((unit, v)) => {
            let n = int_arg(v).ok_or_else(|| Reply::err(NOT_INTEGER))?;
            if n <= 0 {
                return Err(Reply::err("ERR invalid expire time in 'set' command"));
            }
            let n = n as u64;
            Some(match unit.as_str() {
                "EX" => ks.now_ms.saturating_add(n.saturating_mul(1000)),
                "PX" => ks.now_ms.saturating_add(n),
                "EXAT" => n.saturating_mul(1000),
                _ => n,
            })
        }
    };
    let key = &args[1];
    let old = match ks.get(key) {
        None => None,
        Some(Entry { val: Value::Str(v), expires_at_ms }) => Some((v.clone(), *expires_at_ms)),
        Some(_) if get => return Err(Reply::err(WRONGTYPE)),
        Some(Entry { expires_at_ms, .. }) => Some((Vec::new(), *expires_at_ms)),
    };
    let apply = !(nx && old.is_some() || xx && old.is_none());
    if apply {
        let kept = if keepttl { old.as_ref().and_then(|(_, t)| *t) } else { expires_at_ms };
        ks.put(key, Some(Entry { val: Value::Str(args[2].clone()), expires_at_ms: kept }), WriteOp::Set(args[2].clone()));
        if kept.is_some_and(|t| t <= ks.now_ms) {
            // An absolute expiry already past: set, then gone (as Redis 7 does).
            ks.put(key, None, WriteOp::Del);
        }
    }
    Ok(match (get, apply) {
        (true, _) => old.map(|(v, _)| Reply::Bulk(v)).unwrap_or(Reply::Nil),
        (false, true) => Reply::ok(),
        (false, false) => Reply::Nil,
    })
}

fn incr_by(ks: &mut Keyspace, key: &[u8], by: Option<i64>) -> Result<Reply, Reply> {
    let by = by.ok_or_else(|| Reply::err(NOT_INTEGER))?;
    let (cur, ttl) = match ks.get(key) {
        None => (0, None),
        Some(Entry { val: Value::Str(v), expires_at_ms }) => (int_arg(v).ok_or_else(|| Reply::err(NOT_INTEGER))?, *expires_at_ms),
        Some(_) => return Err(Reply::err(WRONGTYPE)),
    };
    let next = cur.checked_add(by).ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
    let bytes = next.to_string().into_bytes();
    ks.put(key, Some(Entry { val: Value::Str(bytes.clone()), expires_at_ms: ttl }), WriteOp::Set(bytes));
    Ok(Reply::Int(next))
}

/// `EXPIRE`/`PEXPIRE key n [NX|XX|GT|LT]`; `unit_ms` is 1000 or 1.
fn expire(ks: &mut Keyspace, args: &[Vec<u8>], unit_ms: i64) -> Result<Reply, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for a in &args[3..] {
        match upper(a).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => return Err(Reply::err(format!("ERR Unsupported option {}", String::from_utf8_lossy(a)))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err("ERR NX and XX, GT or LT options at the same time are not compatible"));
    }
    if gt && lt {
        return Err(Reply::err("ERR GT and LT options at the same time are not compatible"));
    }
    let n = int_arg(&args[2]).ok_or_else(|| Reply::err(NOT_INTEGER))?;
    let name = if unit_ms == 1000 { "expire" } else { "pexpire" };
    let delta = n.checked_mul(unit_ms).ok_or_else(|| Reply::err(format!("ERR invalid expire time in '{name}' command")))?;
    let at = (ks.now_ms as i64).checked_add(delta).ok_or_else(|| Reply::err(format!("ERR invalid expire time in '{name}' command")))?;
    let key = &args[1];
    let Some(cur) = ks.get(key).map(|e| e.expires_at_ms) else { return Ok(Reply::Int(0)) };
    let ok = match cur {
        None => !(xx || gt),
        Some(c) => !nx && !(gt && at <= c as i64) && !(lt && at >= c as i64),
    };
    if !ok {
        return Ok(Reply::Int(0));
    }
    if at <= ks.now_ms as i64 {
        ks.put(key, None, WriteOp::Del);
    } else {
        let at = at as u64;
        ks.modify(key, WriteOp::Expire(Some(at)), |e| e.expires_at_ms = Some(at));
    }
    Ok(Reply::Int(1))
}

fn hset(ks: &mut Keyspace, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    if args.len() % 2 != 0 {
        return Err(wrong_args("hset"));
    }
    let key = &args[1];
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = args[2..].chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    let mut h = get_hash(ks, key)?.map(|h| h.to_vec());
    let existed = h.is_some();
    let fields = h.get_or_insert_with(Vec::new);
    let mut added = 0;
    for (f, v) in &pairs {
        match fields.iter_mut().find(|(k, _)| k == f) {
            Some(slot) => slot.1 = v.clone(),
            None => {
                fields.push((f.clone(), v.clone()));
                added += 1;
            }
        }
    }
    let fields = h.unwrap_or_default();
    if existed {
        ks.modify(key, WriteOp::HSet(pairs), |e| e.val = Value::Hash(fields));
    } else {
        ks.put(key, Some(Entry { val: Value::Hash(fields), expires_at_ms: None }), WriteOp::HSet(pairs));
    }
    Ok(Reply::Int(added))
}

fn hdel(ks: &mut Keyspace, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let key = &args[1];
    let Some(h) = get_hash(ks, key)? else { return Ok(Reply::Int(0)) };
    let mut fields = h.to_vec();
    let mut removed = Vec::new();
    for f in &args[2..] {
        if let Some(i) = fields.iter().position(|(k, _)| k == f) {
            fields.remove(i);
            removed.push(String::from_utf8_lossy(f).into_owned());
        }
    }
    let n = removed.len() as i64;
    if n > 0 {
        if fields.is_empty() {
            ks.put(key, None, WriteOp::HDel(removed));
        } else {
            ks.modify(key, WriteOp::HDel(removed), |e| e.val = Value::Hash(fields));
        }
    }
    Ok(Reply::Int(n))
}

fn hincrby(ks: &mut Keyspace, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let by = int_arg(&args[3]).ok_or_else(|| Reply::err(NOT_INTEGER))?;
    let key = &args[1];
    let cur = match get_hash(ks, key)?.and_then(|h| field(h, &args[2])) {
        None => 0,
        Some(v) => int_arg(v).ok_or_else(|| Reply::err("ERR hash value is not an integer"))?,
    };
    let next = cur.checked_add(by).ok_or_else(|| Reply::err("ERR increment or decrement would overflow"))?;
    let mut set = args[..3].to_vec();
    set.push(next.to_string().into_bytes());
    hset(ks, &set)?;
    Ok(Reply::Int(next))
}

/// `HELLO [2]`: RESP2 only (a client asking for RESP3 is told so, as Redis without it would).
fn hello(args: &[Vec<u8>]) -> Result<Reply, Reply> {
    if let Some(v) = args.get(1) {
        match int_arg(v) {
            Some(2) => {}
            Some(_) => return Err(Reply::err("NOPROTO unsupported protocol version")),
            None => return Err(Reply::err("ERR Protocol version is not an integer or out of range")),
        }
        if args.len() > 2 {
            return Err(Reply::err(format!("ERR Syntax error in HELLO option '{}'", String::from_utf8_lossy(&args[2]))));
        }
    }
    let kv = |k: &str, v: Reply| [Reply::bulk(k), v];
    Ok(Reply::Array(
        [
            kv("server", Reply::bulk("redis")),
            kv("version", Reply::bulk("7.0.15")),
            kv("proto", Reply::Int(2)),
            kv("id", Reply::Int(1)),
            kv("mode", Reply::bulk("standalone")),
            kv("role", Reply::bulk("master")),
            kv("modules", Reply::Array(vec![])),
        ]
        .into_iter()
        .flatten()
        .collect(),
    ))
}

/// `CLIENT SETINFO` (what the `redis` crate sends on connect) and `CLIENT SETNAME`; the
/// subcommand was checked by [`check_subcommand`].
fn client(_args: &[Vec<u8>]) -> Result<Reply, Reply> {
    Ok(Reply::ok())
}
