//! Differential test: random command sequences run against the Redis model and a real
//! `redis-server`, and every reply must be the same — the general commands (strings, hashes,
//! expiry, transactions with WATCH, connection commands, wrong arity and unknown commands),
//! orchsim's own scripts, and generated scripts that exercise Redis's Lua rules (reply
//! conversion, `redis.call` vs `redis.pcall`, `error_reply`/`status_reply`, runtime and compile
//! errors, global protection, number arguments, `math.random`). Replies are compared exactly,
//! error texts included; only values that depend on the exact millisecond (`TTL`/`PTTL`, `TIME`,
//! the lease's remaining time in a busy Begin) are bucketed first.
//! Under `CI=true` a missing `redis-server` fails the test.

use orchestrator::store::redis::scripts;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::redis_model::{Model, Session};
use sim::resp::Reply;
use std::collections::BTreeMap;
use std::time::Duration;

/// A real server with one database, like the model (so `SELECT 1` fails on both).
fn start() -> Option<testkit::RedisServer> {
    testkit::RedisServer::start_with(&["--databases", "1"])
}

/// Sends one command as raw RESP and reads one raw reply: no client library in between, so
/// status, error, nil and null-array replies arrive exactly as Redis sent them.
struct Raw {
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl Raw {
    fn connect(port: u16) -> Self {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self { stream: std::io::BufReader::new(s) }
    }

    fn send(&mut self, args: &[Vec<u8>]) -> Reply {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).unwrap();
        self.read()
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.stream.read_line(&mut l).unwrap();
        l.trim_end_matches("\r\n").to_string()
    }

    fn read(&mut self) -> Reply {
        use std::io::Read;
        let l = self.line();
        let (kind, rest) = l.split_at(1);
        match kind {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Nil;
                }
                let mut b = vec![0; n as usize + 2];
                self.stream.read_exact(&mut b).unwrap();
                b.truncate(n as usize);
                Reply::Bulk(b)
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::NilArray;
                }
                Reply::Array((0..n).map(|_| self.read()).collect())
            }
            other => panic!("unexpected reply type {other:?} in {l:?}"),
        }
    }
}

/// Values that depend on the exact millisecond become buckets.
fn normalise(cmd: &[Vec<u8>], r: Reply) -> Reply {
    let name = String::from_utf8_lossy(&cmd[0]).to_ascii_uppercase();
    match (name.as_str(), r) {
        ("TTL" | "PTTL", Reply::Int(t)) if t > 0 => Reply::Int(1),
        ("TIME", Reply::Array(a)) if a.len() == 2 => Reply::Array(vec![Reply::bulk("secs"), Reply::bulk("micros")]),
        (_, Reply::Array(mut a)) if a.first() == Some(&Reply::bulk("busy")) && a.len() == 2 => {
            if let Reply::Int(ms) = a[1] {
                a[1] = Reply::Int(if ms > 0 { 1 } else { ms });
            }
            Reply::Array(a)
        }
        (_, other) => other,
    }
}

/// The reply's shape: types, and the first word of errors and statuses.
fn shape(r: &Reply) -> String {
    match r {
        Reply::Status(s) => format!("+{}", s.split(' ').next().unwrap_or("")),
        Reply::Error(e) => format!("-{}", e.split(' ').next().unwrap_or("")),
        Reply::Int(_) => ":".into(),
        Reply::Bulk(_) => "$".into(),
        Reply::Nil => "$nil".into(),
        Reply::NilArray => "*nil".into(),
        Reply::Array(a) => format!("[{}]", a.iter().map(shape).collect::<Vec<_>>().join(",")),
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// A TTL in ms that has always run out by the next command: after any command that carries it
/// the test waits `SHORT_TTL_WAIT`, so no command lands near an expiry (the two sides read
/// their own clocks; a command at the boundary would race).
const SHORT_TTL: &str = "20";
const SHORT_TTL_WAIT: Duration = Duration::from_millis(40);
const KEYS: &[&str] = &["s1", "s2", "h1", "h2", "n1"];
const VALUES: &[&str] = &["1", "10", "abc", "-5", "007", " 3", "9223372036854775807", "", "x y"];
const FIELDS: &[&str] = &["f1", "f2", "f3"];

/// A command of the general set, valid or not.
fn general_command(rng: &mut ChaCha8Rng) -> Vec<String> {
    let k = pick(rng, KEYS).to_string();
    let v = pick(rng, VALUES).to_string();
    let f = pick(rng, FIELDS).to_string();
    let s = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match rng.random_range(0..40) {
        0 => s(&["GET", &k]),
        1 => {
            let mut c = s(&["SET", &k, &v]);
            for _ in 0..rng.random_range(0..3) {
                let opt = pick(rng, &["NX", "XX", "GET", "KEEPTTL", "PX", "EX", "PXAT", "BOGUS"]);
                c.push(opt.into());
                if matches!(opt, "PX" | "EX" | "PXAT") {
                    c.push(pick(rng, &[SHORT_TTL, "5000", "0", "-1", "x"]).into());
                }
            }
            c
        }
        2 => s(&["DEL", &k, pick(rng, KEYS)]),
        3 => s(&["EXISTS", &k, &k, pick(rng, KEYS)]),
        4 => s(&["INCR", &k]),
        5 => s(&["INCRBY", &k, pick(rng, &["5", "-3", "x", "9223372036854775807"])]),
        6 => s(&["DECR", &k]),
        7 => s(&["DECRBY", &k, pick(rng, &["2", "y"])]),
        8 => s(&["MGET", &k, pick(rng, KEYS), "missing"]),
        9 => {
            let mut c = s(&[pick(rng, &["EXPIRE", "PEXPIRE"]), &k, pick(rng, &[SHORT_TTL, "5000", "0", "-1", "z"])]);
            if rng.random_bool(0.4) {
                c.push(pick(rng, &["NX", "XX", "GT", "LT", "QQ"]).into());
            }
            if rng.random_bool(0.1) {
                c.push(pick(rng, &["NX", "GT", "LT"]).into());
            }
            c
        }
        10 => s(&["TTL", &k]),
        11 => s(&["PTTL", &k]),
        12 => s(&["PERSIST", &k]),
        13 => s(&["HGET", &k, &f]),
        14 => {
            let mut c = s(&["HSET", &k, &f, &v]);
            if rng.random_bool(0.5) {
                c.extend(s(&[pick(rng, FIELDS), pick(rng, VALUES)]));
            }
            if rng.random_bool(0.1) {
                c.push("odd".into());
            }
            c
        }
        15 => s(&["HMGET", &k, &f, pick(rng, FIELDS)]),
        16 => s(&["HGETALL", &k]),
        17 => s(&["HDEL", &k, &f, pick(rng, FIELDS)]),
        18 => s(&["HINCRBY", &k, &f, pick(rng, &["2", "-7", "q"])]),
        19 => s(&["HEXISTS", &k, &f]),
        20 => s(&["HLEN", &k]),
        21 => s(&["MULTI"]),
        22 => s(&["EXEC"]),
        23 => s(&["DISCARD"]),
        24 => s(&["WATCH", &k]),
        25 => s(&["UNWATCH"]),
        26 => s(&["PING"]),
        27 => s(&["PING", "hello"]),
        28 => s(&["ECHO", &v]),
        29 => s(&["SELECT", pick(rng, &["0", "1", "x"])]),
        30 => s(&["TIME"]),
        31 => s(&[pick(rng, &["GET", "SET", "HSET", "INCR", "EXPIRE", "HGET", "TTL"])]),
        32 => s(&["GET", &k, "extra"]),
        33 => s(&["NOSUCHCOMMAND", &k]),
        34 => s(&["SCRIPT", pick(rng, &["EXISTS", "BOGUS"]), &sha1(&script(rng))]),
        // Transactions often enough that bad commands get queued (EXECABORT) and WATCHed keys
        // change before EXEC.
        35 | 36 => s(&["MULTI"]),
        37 | 38 => s(&["EXEC"]),
        _ => s(&["INCR", "n1"]),
    }
}

fn sha1(s: &str) -> String {
    sha1_smol::Sha1::from(s.as_bytes()).digest().to_string()
}

/// A generated script body that exercises one of Redis's Lua rules.
fn script(rng: &mut ChaCha8Rng) -> String {
    let ret = [
        "1",
        "1.9",
        "-2.7",
        "true",
        "false",
        "nil",
        "'str'",
        "{1, 2, {3, 'x'}}",
        "{1, nil, 3}",
        "{1, false, 3}",
        "{ok = 'FINE'}",
        "{err = 'MY error'}",
        "{err = 'noerrcode'}",
        "{ok = 1}",
        "redis.status_reply('OK2')",
        "redis.error_reply('BAD thing')",
        "redis.error_reply('oops')",
        "redis.error_reply('-X y')",
        "redis.error_reply(5)",
        "redis.status_reply()",
        "#KEYS + #ARGV",
        "ARGV",
        "KEYS[1] .. ':' .. (ARGV[1] or '-')",
        "redis.sha1hex(ARGV[1] or '')",
        "math.random(1000000)",
        "{math.random(), math.random(10), math.random(5, 9)}",
        "tostring(1e15) .. tostring(0.1)",
        "string.format('%d', 7)",
    ];
    let call = [
        "'GET', KEYS[1]",
        "'INCR', KEYS[1]",
        "'HGET', KEYS[1], 'f1'",
        "'HSET', KEYS[1], 'f1', ARGV[1] or 'v'",
        "'SET', KEYS[1], 3.5",
        "'SET', KEYS[1], 0.1",
        "'SET', KEYS[1], 42",
        "'SET', KEYS[1], ARGV[1] or 'v', 'PX', 5000",
        "'NOSUCH'",
        "'GET'",
        "'GET', KEYS[1], 'x'",
        "'EVAL', 'return 1', '0'",
        "'MULTI'",
        "'SET', KEYS[1], {}",
        "'MGET', KEYS[1], 'missing'",
        "'HGETALL', KEYS[1]",
        "'PING'",
        "'DEL', KEYS[1]",
        "'EXPIRE', KEYS[1], 'x'",
    ];
    let c = pick(rng, &call);
    match rng.random_range(0..11) {
        0..=2 => format!("return {}", pick(rng, &ret)),
        3 | 4 => format!("return redis.call({c})"),
        5 => format!("local r = redis.pcall({c})\nreturn r"),
        6 => format!("local r = redis.pcall({c})\nif type(r) == 'table' then return r['err'] or r['ok'] or #r end\nreturn type(r)"),
        7 => pick(
            rng,
            &[
                "return nil + 1",
                "local t = nil\nreturn t.x",
                "error('custom')",
                "error({err = 'TBL err'})",
                "return x",
                "y = 1",
                "return redis.call()",
            ],
        )
        .into(),
        8 => pick(rng, &["return (", "retrun 1", "if then end"]).into(),
        9 => format!("redis.call('SET', KEYS[1], 'before')\nlocal v = redis.call({c})\nreturn {{v, redis.call('GET', KEYS[1])}}"),
        _ => format!("local a = redis.call({c})\nlocal b = redis.pcall({c})\nreturn {{type(a), type(b)}}"),
    }
}

fn random_command(rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    use orchestrator::store::keys;
    let cid = pick(rng, &["c1", "c2"]);
    let user = pick(rng, &["u1", "u2"]);
    let token = pick(rng, &["t1", "t2", "t3"]);
    let fp = pick(rng, &["fp1", "fp2"]);
    let ttl = pick(rng, &[SHORT_TTL, "5000"]);
    let idem = keys::idem(cid, user, pick(rng, &["k1", "k2"]));
    let record = format!("{{\"owner\":\"{user}\",\"v\":{}}}", rng.random_range(0..5));
    let strs: Vec<String> = match rng.random_range(0..100) {
        0..=14 => vec![
            "EVALSHA".into(),
            sha1(scripts::BEGIN),
            "4".into(),
            keys::state(cid),
            keys::lock(cid),
            keys::fence(cid),
            idem,
            user.into(),
            fp.into(),
            token.into(),
            ttl.into(),
        ],
        15..=24 => {
            let fence = if rng.random_bool(0.5) { 1 } else { rng.random_range(0..4) };
            // Retention and a pending submission from the same draw (no extra draws, so the
            // sequences of every other command stay as they were).
            let (retain, pending) = match fence {
                2 => ("90000", "{\"submission\":1}"),
                3 => ("0", "{\"submission\":1}"),
                _ => ("0", ""),
            };
            vec![
                "EVALSHA".into(),
                sha1(scripts::COMMIT),
                "4".into(),
                keys::state(cid),
                keys::lock(cid),
                keys::fence(cid),
                idem,
                fence.to_string(),
                record,
                format!("{fp}\n{{\"resp\":1}}"),
                "60000".into(),
                retain.into(),
                pending.into(),
            ]
        }
        25..=27 => vec!["EVALSHA".into(), sha1(scripts::RELEASE), "1".into(), keys::lock(cid), token.into()],
        28..=30 => vec!["EVALSHA".into(), sha1(scripts::EXTEND), "1".into(), keys::lock(cid), token.into(), ttl.into()],
        31..=36 => vec!["EVALSHA".into(), sha1(scripts::CREATE), "1".into(), keys::state(cid), user.into(), record],
        37 => vec!["HMGET".into(), keys::state(cid), "owner".into(), "record".into()],
        38 => vec!["SCRIPT".into(), "FLUSH".into()],
        39 => vec!["FLUSHALL".into()],
        40 | 41 => {
            vec!["SCRIPT".into(), "LOAD".into(), pick(rng, &[scripts::BEGIN, scripts::COMMIT, scripts::RELEASE, scripts::EXTEND]).into()]
        }
        42..=59 => {
            let body = script(rng);
            let nkeys = rng.random_range(0..=2);
            let mut c = if rng.random_bool(0.8) { vec!["EVAL".into(), body] } else { vec!["EVALSHA".into(), sha1(&body)] };
            c.push(pick(rng, &[&nkeys.to_string(), &nkeys.to_string(), "-1", "9", "x"]).to_string());
            c.extend((0..nkeys).map(|_| pick(rng, KEYS).to_string()));
            c.extend((0..rng.random_range(0..=2)).map(|_| pick(rng, VALUES).to_string()));
            c
        }
        _ => general_command(rng),
    };
    strs.into_iter().map(String::into_bytes).collect()
}

#[test]
fn redis_model_matches_real_redis_on_random_command_sequences() {
    let Some(server) = start() else { return };
    let mut conn = Raw::connect(server.port);
    let sequences: u64 = std::env::var("DIFF_SEQUENCES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    const COMMANDS_PER_SEQUENCE: u64 = 80;
    let mut compared = 0;
    // Outcomes and reply shapes seen, so a run that never reaches the interesting branches fails.
    let mut seen = BTreeMap::<String, u32>::new();
    let mut shapes = BTreeMap::<String, u32>::new();
    // One model for all sequences, like the one server: state that outlives FLUSHALL and
    // SCRIPT FLUSH (math.random's generator) must agree too.
    let mut model = Model::new();
    // DIFF_FIRST replays from one sequence (math.random's state aside, sequences are independent).
    let first: u64 = std::env::var("DIFF_FIRST").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    for seed in first..first + sequences {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut session = Session::default();
        // The commands an open MULTI has queued (as Redis accepted them).
        let mut queued: Option<Vec<Vec<Vec<u8>>>> = None;
        // The model's clock is the wall clock (as Redis's is: absolute expiries like PXAT mean
        // the same on both sides), read just before each command goes to Redis.
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        for c in [&["DISCARD"][..], &["UNWATCH"], &["FLUSHALL"], &["SCRIPT", "FLUSH"]] {
            let args: Vec<Vec<u8>> = c.iter().map(|a| a.as_bytes().to_vec()).collect();
            conn.send(&args);
            model.exec_in(&mut session, &args, 0, 0);
        }
        for src in [scripts::BEGIN, scripts::COMMIT, scripts::RELEASE, scripts::EXTEND, scripts::CREATE] {
            let load = vec![b"SCRIPT".to_vec(), b"LOAD".to_vec(), src.as_bytes().to_vec()];
            let real = conn.send(&load);
            assert_eq!(model.exec_in(&mut session, &load, 0, 0), real);
        }
        // What this sequence sent and got, printed if it diverges.
        let mut log: Vec<String> = Vec::new();
        for step in 0..COMMANDS_PER_SEQUENCE {
            let cmd = random_command(&mut rng);
            let at = now();
            let (real, ours) = (conn.send(&cmd), model.exec_in(&mut session, &cmd, at, at));
            if cmd.iter().any(|a| a == SHORT_TTL.as_bytes()) {
                std::thread::sleep(SHORT_TTL_WAIT);
            }
            // An EXEC's replies are normalised as the commands it ran.
            let name = String::from_utf8_lossy(&cmd[0]).to_ascii_uppercase();
            let (real, ours) = match (name.as_str(), queued.take(), real, ours) {
                ("EXEC", Some(q), Reply::Array(r), Reply::Array(o)) if r.len() == q.len() && o.len() == q.len() => (
                    Reply::Array(r.into_iter().zip(&q).map(|(x, c)| normalise(c, x)).collect()),
                    Reply::Array(o.into_iter().zip(&q).map(|(x, c)| normalise(c, x)).collect()),
                ),
                ("EXEC" | "DISCARD", _, r, o) => (r, o),
                ("MULTI", q, r, o) => {
                    queued = Some(q.unwrap_or_default());
                    (r, o)
                }
                (_, Some(mut q), r, o) => {
                    if r == Reply::Status("QUEUED".into()) {
                        q.push(cmd.clone());
                    }
                    queued = Some(q);
                    (r, o)
                }
                (_, None, r, o) => (normalise(&cmd, r), normalise(&cmd, o)),
            };
            let shown: Vec<String> = cmd.iter().map(|a| String::from_utf8_lossy(a).chars().take(60).collect()).collect();
            log.push(format!("{step:>3} @{at}ms {shown:?} -> {real:?}"));
            assert_eq!(ours, real, "sequence {seed} step {step}: {shown:?}\nthe sequence so far (Redis's replies):\n{}", log.join("\n"));
            *shapes.entry(shape(&ours)).or_default() += 1;
            let tag = match &ours {
                Reply::Array(a) if matches!(a.first(), Some(Reply::Bulk(b)) if b.iter().all(u8::is_ascii_lowercase)) => match &a[0] {
                    Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => unreachable!(),
                },
                Reply::Error(e) => e.split(' ').next().unwrap_or("").to_string(),
                _ => "other".into(),
            };
            *seen.entry(tag).or_default() += 1;
            compared += 1;
        }
    }
    assert_eq!(compared, sequences * COMMANDS_PER_SEQUENCE);
    eprintln!("{sequences} sequences, {compared} commands, {} distinct reply shapes", shapes.len());
    eprintln!("outcomes: {seen:?}");
    eprintln!("shapes: {shapes:?}");
    for must in ["acquired", "busy", "replay", "inflight", "reused", "notfound", "NOSCRIPT", "WRONGTYPE", "EXECABORT"] {
        assert!(seen.contains_key(must), "no {must} reply in {sequences} sequences: {seen:?}");
    }
    for must in ["*nil", "+QUEUED", "$nil", "-ERR", "+FINE"] {
        assert!(shapes.contains_key(must), "no reply of shape {must} in {sequences} sequences: {shapes:?}");
    }
}
