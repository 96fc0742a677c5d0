//! The hostile-client suite: the real server on loopback (embedded store, scripted Copilot),
//! spoken to over raw sockets the way attackers and broken clients do — stalled and cut-short
//! bodies, thousands of idle connections, half-closes, duplicate headers, methods and paths
//! outside the contract — and by proptest over request shapes. Every answer must be a status
//! README "Statuses" lists, every error the API's JSON shape, and no user may see another's
//! data. Named after the findings of issue 10 where a test holds one of them.

use orchestrator::http::{router, serve_with, Api, Limits};
use orchestrator::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every status the server may send (README "Statuses").
const CONTRACT: &[u16] = &[200, 201, 400, 401, 404, 405, 408, 409, 413, 414, 422, 429, 431, 503];
/// Statuses hyper answers by itself, before any of our code runs, with an empty body: a request
/// line or head it cannot parse (400), a path over its limit (414), a head over its limit (431).
const HTTP_LAYER: &[u16] = &[400, 414, 431];
/// What bob's conversation holds, which alice must never see.
const BOBS_SECRET: &str = "bob-secret@example.com";

struct Server {
    addr: SocketAddr,
    /// Alice's conversation id, and bob's.
    alice: String,
    bob: String,
}

/// One server for the whole binary (but the test that floods it), on a runtime thread of its own.
fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start(Limits::default()))
}

fn start(limits: Limits) -> Server {
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
                let o = Orchestrator::new(
                    Arc::new(MemStore::new(clock)),
                    Arc::new(ScriptedCopilot::new()),
                    Arc::new(RecordingEffects::new()),
                    SeededRng::from_seed(10),
                    TurnConfig::default(),
                );
                let tokens = BTreeMap::from(
                    [("alice-token", "alice"), ("bob-token", "bob"), ("carol-token", "carol")].map(|(t, u)| (t.to_string(), u.to_string())),
                );
                let api = Arc::new(Api { orchestrator: o, tokens });
                let alice = api.orchestrator.create("alice", "lead").await.unwrap();
                let bob = api.orchestrator.create("bob", "lead").await.unwrap();
                let turn = TurnRequest {
                    conversation_id: bob.clone(),
                    user: "bob".into(),
                    idempotency_key: "k1".into(),
                    query: format!("email is {BOBS_SECRET}"),
                };
                api.orchestrator.turn(&turn).await.unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((listener.local_addr().unwrap(), alice, bob)).unwrap();
                serve_with(listener, router(api), limits).await;
            });
        });
        let (addr, alice, bob) = rx.recv().unwrap();
        Server { addr, alice, bob }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The API's error shape: `{"error": "...", "message": "..."}`, served as JSON.
    fn is_json_error(&self) -> bool {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v["error"].is_string() && v["message"].is_string() && self.header("content-type").is_some_and(|c| c.starts_with("application/json"))
    }
}

/// Sends `bytes` on a fresh connection (optionally shutting down the sending side) and reads
/// the answer to the end; `None` if the server closed without one or did not answer in time.
fn exchange(bytes: &[u8], half_close: bool) -> Option<Answer> {
    let mut s = TcpStream::connect(server().addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).ok()?;
    if half_close {
        s.shutdown(std::net::Shutdown::Write).ok()?;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some(Answer { status, head: head.to_string(), body: body.to_string() })
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<Answer> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    exchange(r.as_bytes(), false)
}

/// Finding 2: a request whose client shuts down its sending side once the request is out
/// (`nc -N`, some HTTP/1.0 clients) is answered (it used to get 0 bytes), and a turn sent that
/// way commits: the same key then replays instead of answering 409 while a dropped turn held
/// the lease.
#[test]
fn finding_2_a_half_closed_request_is_answered() {
    let get = format!("GET /v1/conversations/{} HTTP/1.0\r\nauthorization: Bearer alice-token\r\n\r\n", server().alice);
    let a = exchange(get.as_bytes(), true).expect("no answer to a half-closed GET");
    assert_eq!(a.status, 200, "{a:?}");
    let body = r#"{"query":"hello"}"#;
    let turn = format!(
        "POST /v1/conversations/{}/turns HTTP/1.0\r\nauthorization: Bearer alice-token\r\nidempotency-key: half-1\r\ncontent-length: {}\r\n\r\n{body}",
        server().alice,
        body.len()
    );
    let first = exchange(turn.as_bytes(), true).expect("no answer to a half-closed turn");
    assert_eq!(first.status, 200, "{first:?}");
    let again = exchange(turn.as_bytes(), true).expect("no answer to the retry");
    let (first, again): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&first.body).unwrap(), serde_json::from_str(&again.body).unwrap());
    assert_eq!(again["replayed"], true, "the retry under the same key replays the answer: {again}");
    assert_eq!((&again["turn"], &again["reply"]), (&first["turn"], &first["reply"]));
}

/// Finding 3: a request body must be a JSON object; a one-element array in field order (which
/// serde's derived `Deserialize` takes for the struct) is a 400 and changes nothing.
#[test]
fn finding_3_a_json_array_is_not_the_object() {
    let alice = [("authorization", "Bearer alice-token")];
    let a = request("POST", "/v1/conversations", &alice, r#"["lead"]"#).unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");
    let conv = format!("/v1/conversations/{}", server().alice);
    let before = request("GET", &conv, &alice, "").unwrap();
    let a = request("POST", &format!("{conv}/turns"), &[alice[0], ("idempotency-key", "array-1")], r#"["yes"]"#).unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");
    let after = request("GET", &conv, &alice, "").unwrap();
    assert_eq!(before.body, after.body, "a refused body changed the conversation");
}

/// Finding 4: the API's JSON error shape for what axum produced as text (413, a broken chunked
/// body, a body cut short) and a path that is not text, which is now a 401 before the token is
/// checked and a 404 after.
#[test]
fn finding_4_every_error_has_the_json_shape_and_the_token_comes_first() {
    let alice = [("authorization", "Bearer alice-token")];
    let big = "a".repeat(orchestrator::http::REQUEST_BODY_BYTES_MAX + 1);
    let a = request("POST", "/v1/conversations", &alice, &big).unwrap();
    assert!(a.status == 413 && a.is_json_error(), "{a:?}");

    let chunked = "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer alice-token\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n\r\n";
    let a = exchange(chunked.as_bytes(), false).unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");

    let cut = "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer alice-token\r\ncontent-length: 40\r\n\r\n{\"workf";
    let a = exchange(cut.as_bytes(), true).unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");

    let a = request("GET", "/v1/conversations/%FF%FE", &[], "").unwrap();
    assert!(a.status == 401 && a.is_json_error(), "the token is checked before the path: {a:?}");
    let a = request("GET", "/v1/conversations/%FF%FE", &alice, "").unwrap();
    assert!(a.status == 404 && a.is_json_error(), "{a:?}");
    let a = request("GET", "/v1/nothing-here", &[], "").unwrap();
    assert!(a.status == 401 && a.is_json_error(), "no route is revealed without a token: {a:?}");
}

/// Finding 5: methods outside the contract are 405 with `Allow` and the JSON shape.
#[test]
fn finding_5_methods_outside_the_contract_are_405_with_allow() {
    let alice = [("authorization", "Bearer alice-token")];
    let conv = format!("/v1/conversations/{}", server().alice);
    for (method, path, allow) in [("PUT", "/v1/conversations", "POST"), ("DELETE", conv.as_str(), "GET"), ("POST", "/healthz", "GET")] {
        let a = request(method, path, &alice, "").unwrap();
        assert!(a.status == 405 && a.is_json_error(), "{method} {path}: {a:?}");
        assert!(a.header("allow").is_some_and(|v| v.contains(allow)), "{method} {path}: Allow should name {allow}: {a:?}");
    }
}

/// Finding 6: two `Authorization` or two `Idempotency-Key` headers are a 400 (a proxy reading
/// the other one would disagree about who asks and what), and the scheme is case-insensitive.
#[test]
fn finding_6_duplicate_headers_are_400_and_the_scheme_is_case_insensitive() {
    let turns = format!("/v1/conversations/{}/turns", server().alice);
    let a = request(
        "GET",
        &format!("/v1/conversations/{}", server().alice),
        &[("authorization", "Bearer alice-token"), ("authorization", "Bearer bob-token")],
        "",
    )
    .unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");
    let body = r#"{"query":"email is a@x.io"}"#;
    let a = request("POST", &turns, &[("authorization", "Bearer alice-token"), ("idempotency-key", "k1"), ("idempotency-key", "k2")], body)
        .unwrap();
    assert!(a.status == 400 && a.is_json_error(), "{a:?}");
    let a = request("GET", &format!("/v1/conversations/{}", server().alice), &[("authorization", "bearer alice-token")], "").unwrap();
    assert_eq!(a.status, 200, "{a:?}");
}

/// Finding 1, one connection: a body that stops arriving is answered 408 once the body
/// deadline passes, and the connection is closed (it used to stay open indefinitely).
#[test]
fn finding_1_a_stalled_body_is_answered_408_and_closed() {
    let stalled = "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer alice-token\r\ncontent-length: 100\r\n\r\n{";
    let a = exchange(stalled.as_bytes(), false).expect("no answer to a stalled body");
    assert!(a.status == 408 && a.is_json_error(), "{a:?}");
}

/// How many files this process may open (`/proc/self/limits`), if it says.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Finding 1, at scale: 5,000 connections from one address, each holding a body that never
/// arrives, lock nobody else out. The flood gets the per-peer share of connections (the rest are
/// answered 503 and closed); a client at another address still gets `/healthz` and a turn. Before,
/// the flood took every connection slot and `/healthz` stopped answering. (`.ci/run` raises the
/// open-files limit so that all 5,000 are opened; the figures are printed.)
#[test]
fn finding_1_five_thousand_stalled_bodies_from_one_peer_lock_nobody_else_out() {
    let flood_max = 5_000;
    let n = open_files_limit().map_or(flood_max, |l| flood_max.min(l.saturating_sub(600)));
    let s = start(Limits::default());
    let stalled = "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer alice-token\r\ncontent-length: 100\r\n\r\n{";
    let mut flood = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        c.write_all(stalled.as_bytes()).unwrap();
        flood.push(c);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let other = |req: String| {
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let t = std::time::Instant::now();
            let exchange = async {
                let mut io = sock.connect(s.addr).await.unwrap();
                io.write_all(req.as_bytes()).await.unwrap();
                let mut raw = Vec::new();
                io.read_to_end(&mut raw).await.unwrap();
                String::from_utf8_lossy(&raw).into_owned()
            };
            // Not a speed check: a liveness bound, past which the server is taken to be locked.
            let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("locked out: no answer in 10 s");
            (answer, t.elapsed())
        })
    };
    let (health, health_took) = other("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into());
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = r#"{"query":"email is carol@x.io"}"#;
    let turn = format!(
        "POST /v1/conversations/{}/turns HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer alice-token\r\nidempotency-key: flood-1\r\ncontent-length: {}\r\n\r\n{body}",
        s.alice,
        body.len()
    );
    let (turned, turn_took) = other(turn);
    assert!(turned.starts_with("HTTP/1.1 200"), "{turned}");
    // The flood's connections past its share were told why: newest first, until one is found
    // answered 503. (While `REFUSALS_MAX` refusals are in flight, a further one is closed
    // without an answer, so on a loaded machine the very newest may all be bare closes; a
    // connection holding one of the share's slots is still open after 5 s.)
    let (mut looked, mut refused, mut held) = (0, 0, 0);
    for c in flood.iter_mut().rev().take(n.saturating_sub(2 * orchestrator::http::CONNECTIONS_PER_PEER_MAX)) {
        looked += 1;
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut raw = Vec::new();
        match c.read_to_end(&mut raw) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => held += 1,
            _ => refused += usize::from(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 503")),
        }
        if (refused > 0 && looked >= 20) || held >= 5 {
            break;
        }
    }
    eprintln!("{n} stalled connections held from 127.0.0.1: /healthz from 127.0.0.2 answered in {health_took:?}, a turn in {turn_took:?}; {refused} of the newest {looked} flood connections were refused with 503, {held} still open after 5 s");
    assert!(refused > 0, "no flood connection was refused: the per-peer limit did not bite");
}

/// Finding 7, the per-user part: one user cannot fill the store with conversations. Past the cap
/// on unfinished conversations (100 by default) a create is a JSON 429 that says why; another
/// user is not affected; finishing one frees a place.
#[test]
fn finding_7_a_user_past_the_cap_on_unfinished_conversations_gets_429() {
    let carol = [("authorization", "Bearer carol-token")];
    let max = TurnConfig::default().active_conversations_per_user_max;
    let mut first = None;
    for _ in 0..max {
        let a = request("POST", "/v1/conversations", &carol, r#"{"workflow":"lead"}"#).unwrap();
        assert_eq!(a.status, 201, "{a:?}");
        first.get_or_insert(serde_json::from_str::<serde_json::Value>(&a.body).unwrap()["id"].as_str().unwrap().to_string());
    }
    let a = request("POST", "/v1/conversations", &carol, r#"{"workflow":"lead"}"#).unwrap();
    assert!(a.status == 429 && a.is_json_error() && a.body.contains("too_many_conversations"), "{a:?}");
    let a = request("POST", "/v1/conversations", &[("authorization", "Bearer bob-token")], r#"{"workflow":"lead"}"#).unwrap();
    assert_eq!(a.status, 201, "another user is not affected: {a:?}");
    let turn = format!("/v1/conversations/{}/turns", first.unwrap());
    let a = request("POST", &turn, &[carol[0], ("idempotency-key", "end-1")], r#"{"query":"cancel"}"#).unwrap();
    assert!(a.status == 200 && a.body.contains("\"step\":\"cancelled\""), "{a:?}");
    let a = request("POST", "/v1/conversations", &carol, r#"{"workflow":"lead"}"#).unwrap();
    assert_eq!(a.status, 201, "a finished conversation frees its place: {a:?}");
}

/// Connects from `ip` (any 127.x.y.z is this machine) and sends `req`.
fn connect_from(ip: &str, to: SocketAddr, req: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let mut c: TcpStream = sock.into();
    c.write_all(req.as_bytes()).unwrap();
    c
}

fn read_answer(mut c: TcpStream) -> Answer {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer { status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0), head: head.to_string(), body: body.to_string() }
}

/// Finding 1, many peers: stalled bodies from more addresses than the per-peer limit can stop
/// take every connection slot (the limits are scaled down here: 32 slots, 8 per peer, 5 peers).
/// `/healthz` from yet another address is still answered 200, and a turn gets the JSON 503 with
/// `Retry-After` instead of waiting for a slot.
#[test]
fn finding_1_at_the_connection_limit_health_is_answered_and_the_rest_told_to_retry() {
    let s = start(Limits { connections_max: 32, per_peer_max: 8, overflow_max: 16 });
    let stalled = "POST /v1/conversations HTTP/1.1\r\nhost: x\r\nauthorization: Bearer alice-token\r\ncontent-length: 100\r\n\r\n{";
    let flood: Vec<TcpStream> =
        (1..=5).flat_map(|p| (0..8).map(move |_| p)).map(|p| connect_from(&format!("127.0.0.{p}"), s.addr, stalled)).collect();
    // The flood is served (its heads were read) before the probes: wait until a probe is turned away.
    let health = "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let health = read_answer(connect_from("127.0.0.9", s.addr, health));
    assert!(health.status == 200 && health.body == "ok", "{health:?}");
    let body = r#"{"query":"hello"}"#;
    let turn = format!(
        "POST /v1/conversations/{}/turns HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer alice-token\r\nidempotency-key: over-1\r\ncontent-length: {}\r\n\r\n{body}",
        s.alice,
        body.len()
    );
    let turned = read_answer(connect_from("127.0.0.9", s.addr, &turn));
    assert!(turned.status == 503 && turned.is_json_error() && turned.header("retry-after").is_some(), "{turned:?}");
    drop(flood);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Requests of every shape: every answer is in the contract, every error is JSON (but
    /// hyper's own, which have no body), and alice never sees bob's data.
    #[test]
    fn any_request_gets_a_contract_status_a_json_error_and_no_one_elses_data(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        path in prop_oneof![
            Just("/healthz".to_string()),
            Just("/v1/conversations".to_string()),
            Just("/v1/conversations/ALICE".to_string()),
            Just("/v1/conversations/ALICE/turns".to_string()),
            Just("/v1/conversations/BOB".to_string()),
            Just("/v1/conversations/BOB/turns".to_string()),
            Just("/v1/conversations/BOB/cancel".to_string()),
            Just("/v1/conversations/ALICE/cancel".to_string()),
            "/v1/conversations/[a-zA-Z0-9%._~-]{0,80}(/turns|/cancel)?",
            "/[ -~&&[^ ]]{0,40}",
        ],
        auth in prop_oneof![
            Just(vec![]),
            Just(vec!["Bearer alice-token"]),
            Just(vec!["bearer alice-token"]),
            Just(vec!["Bearer alice-token", "Bearer bob-token"]),
            Just(vec!["Basic YWxpY2U6eA=="]),
            "[ -~]{0,30}".prop_map(|t| vec![Box::leak(format!("Bearer {t}").into_boxed_str()) as &str]),
        ],
        keys in prop_oneof![Just(vec![]), Just(vec!["k-1"]), Just(vec!["k-1", "k-2"]), "[ -~]{0,40}".prop_map(|k| vec![Box::leak(k.into_boxed_str()) as &str])],
        body in prop_oneof![
            Just(String::new()),
            Just(r#"{"workflow":"lead"}"#.to_string()),
            Just(r#"{"query":"email is mallory@x.io"}"#.to_string()),
            Just(r#"["lead"]"#.to_string()),
            Just(r#"{"query":"x","extra":1}"#.to_string()),
            "\\PC{0,200}",
        ],
    ) {
        let s = server();
        let path = path.replace("ALICE", &s.alice).replace("BOB", &s.bob);
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        headers.extend(keys.iter().map(|k| ("idempotency-key", *k)));
        headers.push(("content-type", "application/json"));
        let a = request(method, &path, &headers, &body);
        let Some(a) = a else { return Err(TestCaseError::fail(format!("no answer to {method} {path}"))) };
        prop_assert!(CONTRACT.contains(&a.status), "{method} {path}: {} is not in the contract: {a:?}", a.status);
        if a.status >= 400 && !(HTTP_LAYER.contains(&a.status) && a.body.is_empty()) && method != "HEAD" {
            prop_assert!(a.is_json_error(), "{method} {path}: error without the JSON shape: {a:?}");
        }
        let bobs = auth.iter().any(|x| x.contains("bob-token"));
        prop_assert!(bobs || !a.body.contains(BOBS_SECRET), "{method} {path} as {auth:?} saw bob's data: {a:?}");
    }
}
