//! Simulated users: each creates conversations and drives them to a terminal step through
//! random workers, several turns in flight at once, retrying 503/409/timeouts with the same
//! idempotency key and jittered backoff, and (during a duplicates episode) delivering the same
//! request and key again to another worker, concurrently or late.
//!
//! Field values are tagged `<user>.<conversation>.<field>` so any cross-user leak shows.

use crate::contract::{self, Step};
use crate::history::{sim_now_ms, Ev, History, Manner, Meant};
use crate::world::faults::FaultPlan;
use crate::world::Options;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client waits this long for any answer; past it the request counts as hung.
pub const REQUEST_DEADLINE_MS: u64 = 20_000;
/// Attempts per turn (same key) before the client gives up on it.
pub const TURN_ATTEMPTS_MAX: u32 = 40;
/// Attempts to create a conversation.
pub const CREATE_ATTEMPTS_MAX: u32 = 20;
/// Extra turns after the script to bring a conversation to a terminal step.
pub const LIVENESS_TURNS_MAX: u32 = 12;

pub struct Shared {
    pub opts: Options,
    pub plan: Arc<FaultPlan>,
    pub history: History,
    pub next_req: AtomicU64,
    /// Conversation id → owner, as clients learned them.
    pub owners: Mutex<BTreeMap<String, String>>,
    pub seed: u64,
}

pub fn token_of(user: &str) -> String {
    format!("tok-{user}")
}

struct Answer {
    status: u16,
    body: Value,
}

/// How a request authenticates.
#[derive(Debug, Clone)]
enum Auth {
    /// The user's own token.
    Own,
    Missing,
    Token(String),
}

/// One request as a client sends it.
struct Req<'a> {
    worker: usize,
    user: &'a str,
    op: &'static str,
    method: &'static str,
    path: String,
    cid: Option<&'a str>,
    key: Option<&'a str>,
    body: Vec<u8>,
    query: Option<String>,
    meant: Option<Meant>,
    duplicate: bool,
    auth: Auth,
    /// The statuses the contract allows for this (hostile) request; `None` for a well-formed
    /// request of the user's own, whose only acceptable 4xx is a 409.
    expect: Option<Vec<u16>>,
    /// How a person's client sends it; `None`: all at once, then wait for the answer.
    manner: Option<Manner>,
}

impl<'a> Req<'a> {
    fn turn(worker: usize, user: &'a str, cid: &'a str, key: &'a str, said: &Said, duplicate: bool) -> Self {
        let query = said.text.as_str();
        Req {
            worker,
            user,
            op: "turn",
            method: "POST",
            path: format!("/v1/conversations/{cid}/turns"),
            cid: Some(cid),
            key: Some(key),
            body: json!({ "query": query }).to_string().into_bytes(),
            query: Some(query.to_string()),
            meant: Some(said.meant.clone()),
            duplicate,
            auth: Auth::Own,
            expect: None,
            manner: None,
        }
    }

    fn create(worker: usize, user: &'a str, body: Vec<u8>, auth: Auth, expect: Option<Vec<u16>>) -> Self {
        Req {
            worker,
            user,
            op: "create",
            method: "POST",
            path: "/v1/conversations".into(),
            cid: None,
            key: None,
            body,
            query: None,
            meant: None,
            duplicate: false,
            auth,
            expect,
            manner: None,
        }
    }

    fn read(worker: usize, user: &'a str, cid: &'a str, auth: Auth, expect: Vec<u16>) -> Self {
        Req {
            worker,
            user,
            op: "read",
            method: "GET",
            path: format!("/v1/conversations/{cid}"),
            cid: Some(cid),
            key: None,
            body: Vec::new(),
            query: None,
            meant: None,
            duplicate: false,
            auth,
            expect: Some(expect),
            manner: None,
        }
    }

    /// The user presses cancel (no body, no key: a cancel is idempotent).
    fn cancel(worker: usize, user: &'a str, cid: &'a str) -> Self {
        Req {
            worker,
            user,
            op: "cancel",
            method: "POST",
            path: format!("/v1/conversations/{cid}/cancel"),
            cid: Some(cid),
            key: None,
            body: Vec::new(),
            query: None,
            meant: Some(Meant::Decline),
            duplicate: false,
            auth: Auth::Own,
            expect: None,
            manner: None,
        }
    }

    fn hostile(mut self, auth: Auth, expect: Vec<u16>) -> Self {
        self.auth = auth;
        self.expect = Some(expect);
        self
    }
}

struct Client {
    name: String,
    shared: Arc<Shared>,
    rng: Mutex<ChaCha8Rng>,
    /// When people press cancel: a stream of its own, so that adding cancels changed no other
    /// choice of any seed.
    cancels: Mutex<ChaCha8Rng>,
    /// Late duplicates still on their way; the client waits for them before it finishes.
    late: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A user who cancels presses the button up to this long after sending a turn.
pub const CANCEL_AFTER_MS_MAX: u64 = 300;

/// A slow client takes up to this long to send one request.
pub const SLOW_SEND_MS_MAX: u64 = 1_000;

/// Status, whether `Retry-After` was sent, and the body, of an HTTP/1.1 answer read to its end.
fn parse_response(raw: &[u8]) -> Result<(u16, bool, Value), String> {
    let text = String::from_utf8_lossy(raw);
    if raw.is_empty() {
        return Err("connection closed without an answer".into());
    }
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("answer cut short: {text:?}"))?;
    let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| format!("bad status line: {head:?}"))?;
    let retry_after = head.lines().any(|l| l.to_ascii_lowercase().starts_with("retry-after:"));
    let v: Value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
    Ok((status, retry_after, v))
}

/// A late duplicate is held back up to this long before it is delivered.
pub const LATE_DUPLICATE_DELAY_MS_MAX: u64 = 3_000;

impl Client {
    fn below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..n)
    }

    fn chance(&self, pct: u32) -> bool {
        self.below(100) < pct as u64
    }

    fn worker(&self, not: Option<usize>) -> usize {
        let n = self.shared.opts.topology.workers;
        let w = self.below(n as u64) as usize;
        match not {
            Some(x) if n > 1 && w == x => (w + 1) % n,
            _ => w,
        }
    }

    /// One HTTP request to one worker, logged as invoke + response.
    async fn request(&self, r: Req<'_>) -> Option<Answer> {
        let req = self.shared.next_req.fetch_add(1, Ordering::SeqCst);
        let host = crate::world::hosts::Host::Worker(r.worker).name();
        self.shared.history.push(Ev::Invoke {
            req,
            client: self.name.clone(),
            user: r.user.into(),
            worker: host.clone(),
            op: r.op.into(),
            cid: r.cid.map(String::from),
            key: r.key.map(String::from),
            query: r.query.clone(),
            duplicate: r.duplicate,
            expect: r.expect.clone(),
            manner: r.manner.clone(),
            meant: r.meant.clone(),
        });
        if let Some(manner) = &r.manner {
            return self.request_by_hand(req, &host, &r, manner).await;
        }
        let fut = async {
            let io = sim::net::connect(&host, 80).await.map_err(|e| format!("connect: {e}"))?;
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut b = hyper::Request::builder().method(r.method).uri(r.path.as_str()).header("host", host.as_str());
            match &r.auth {
                Auth::Own => b = b.header("authorization", format!("Bearer {}", token_of(r.user))),
                Auth::Token(t) => b = b.header("authorization", format!("Bearer {t}")),
                Auth::Missing => {}
            }
            if let Some(k) = r.key {
                b = b.header("idempotency-key", k);
            }
            let req = b.body(Full::new(Bytes::from(r.body.clone()))).map_err(|e| e.to_string())?;
            let resp = tx.send_request(req).await.map_err(|e| format!("send: {e}"))?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let bytes = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
            Ok::<_, String>((status, retry_after, v))
        };
        match tokio::time::timeout(Duration::from_millis(REQUEST_DEADLINE_MS), fut).await {
            Ok(Ok((status, retry_after, body))) => {
                self.shared.history.push(Ev::Response { req, status, retry_after, body: body.clone() });
                Some(Answer { status, body })
            }
            Ok(Err(reason)) => {
                self.shared.history.push(Ev::NoResponse { req, reason });
                None
            }
            Err(_) => {
                self.shared.history.push(Ev::NoResponse { req, reason: format!("no answer within {REQUEST_DEADLINE_MS} ms") });
                None
            }
        }
    }

    /// A request written on the socket by hand, the way some clients really send them: in slow
    /// pieces, followed by a half-close, or abandoned before the answer came.
    async fn request_by_hand(&self, req: u64, host: &str, r: &Req<'_>, manner: &Manner) -> Option<Answer> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = format!("{} {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n", r.method, r.path);
        match &r.auth {
            Auth::Own => head.push_str(&format!("authorization: Bearer {}\r\n", token_of(r.user))),
            Auth::Token(t) => head.push_str(&format!("authorization: Bearer {t}\r\n")),
            Auth::Missing => {}
        }
        if let Some(k) = r.key {
            head.push_str(&format!("idempotency-key: {k}\r\n"));
        }
        head.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n\r\n", r.body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&r.body);
        // Where a slow client's pieces end, and the pauses between them.
        let pieces: Vec<(usize, u64)> = match manner {
            Manner::Slow { send_ms } => {
                let n = 2 + self.below(3) as usize;
                let mut cuts: Vec<usize> = (1..n).map(|_| 1 + self.below(bytes.len() as u64 - 1) as usize).collect();
                cuts.sort_unstable();
                cuts.push(bytes.len());
                let gap = send_ms / (n as u64 - 1).max(1);
                cuts.into_iter().enumerate().map(|(i, c)| (c, if i + 1 < n { gap } else { 0 })).collect()
            }
            _ => vec![(bytes.len(), 0)],
        };
        let fut = async {
            let mut io = sim::net::connect(host, 80).await.map_err(|e| format!("connect: {e}"))?;
            let mut from = 0;
            for (to, pause) in pieces {
                io.write_all(&bytes[from..to]).await.map_err(|e| format!("send: {e}"))?;
                from = to;
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            if *manner == Manner::HalfClosed {
                io.shutdown().await.map_err(|e| format!("half-close: {e}"))?;
            }
            let mut raw = Vec::new();
            let read = io.read_to_end(&mut raw);
            match manner {
                Manner::HungUp { after_ms } => {
                    // Closing the connection here (the stream is dropped) is the hang-up.
                    match tokio::time::timeout(Duration::from_millis(*after_ms), read).await {
                        Ok(r) => r.map_err(|e| format!("receive: {e}"))?,
                        Err(_) => return Err(format!("hung up after {after_ms} ms")),
                    };
                }
                _ => {
                    read.await.map_err(|e| format!("receive: {e}"))?;
                }
            }
            parse_response(&raw)
        };
        let outcome = match tokio::time::timeout(Duration::from_millis(REQUEST_DEADLINE_MS), fut).await {
            Ok(o) => o,
            Err(_) => Err(format!("no answer within {REQUEST_DEADLINE_MS} ms")),
        };
        match outcome {
            Ok((status, retry_after, body)) => {
                self.shared.history.push(Ev::Response { req, status, retry_after, body: body.clone() });
                Some(Answer { status, body })
            }
            Err(reason) => {
                self.shared.history.push(Ev::NoResponse { req, reason });
                None
            }
        }
    }

    /// How this person's client sends its next turn.
    fn manner(&self) -> Option<Manner> {
        let o = &self.shared.opts;
        if self.chance(o.workload.hangup_pct) {
            if self.chance(30) {
                Some(Manner::HalfClosed)
            } else {
                Some(Manner::HungUp { after_ms: self.below(o.network.copilot_latency_ms.1 + 200) })
            }
        } else if self.chance(o.workload.slow_pct) {
            Some(Manner::Slow { send_ms: 100 + self.below(SLOW_SEND_MS_MAX - 99) })
        } else {
            None
        }
    }

    async fn backoff(&self, attempt: u32) {
        let cap = (50u64 << attempt.min(4)).min(800);
        tokio::time::sleep(Duration::from_millis(cap / 2 + self.below(cap / 2 + 1))).await;
    }

    fn duplicates_now(&self) -> Option<(u32, u32)> {
        let now = sim_now_ms();
        if now >= self.shared.opts.faults.heal_at_ms {
            return None;
        }
        self.shared.plan.duplicates(now)
    }

    /// Sends one turn until it is answered 200 (or other final status), with retries under the
    /// same key; returns the final 200 body, if any.
    async fn turn(self: &Arc<Self>, user: &str, cid: &str, key: &str, said: &Said) -> Option<Value> {
        for attempt in 0..TURN_ATTEMPTS_MAX {
            let w = self.worker(None);
            let dup = self.duplicates_now();
            let mut first = Req::turn(w, user, cid, key, said, false);
            first.manner = self.manner();
            let primary = self.request(first);
            let answer = match dup {
                Some((concurrent, _)) if self.chance(concurrent) => {
                    let other = self.worker(Some(w));
                    let second = self.request(Req::turn(other, user, cid, key, said, true));
                    let (a, b) = tokio::join!(primary, second);
                    match (a, b) {
                        (Some(a), _) if a.status == 200 => Some(a),
                        (_, Some(b)) if b.status == 200 => Some(b),
                        (a, _) => a,
                    }
                }
                _ => primary.await,
            };
            match answer {
                Some(a) if a.status == 200 => {
                    if let Some((_, late)) = self.duplicates_now() {
                        if self.chance(late) {
                            // Held, then released: it may arrive after later turns committed.
                            let other = self.worker(Some(w));
                            let delay = self.below(LATE_DUPLICATE_DELAY_MS_MAX + 1);
                            let (me, user, cid, key, said) =
                                (self.clone(), user.to_string(), cid.to_string(), key.to_string(), said.clone());
                            let h = tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                me.request(Req::turn(other, &user, &cid, &key, &said, true)).await;
                            });
                            self.late.lock().unwrap_or_else(|p| p.into_inner()).push(h);
                        }
                    }
                    return Some(a.body);
                }
                // The conversation was cancelled under this turn: nothing to retry.
                Some(a) if a.status == 409 && a.body["error"] == "cancelled" => return None,
                Some(a) if matches!(a.status, 503 | 409) => self.backoff(attempt).await,
                Some(_) => return None,
                None => self.backoff(attempt).await,
            }
        }
        None
    }

    /// Presses cancel until it is answered; the answer's body (its `workflowState`), if any.
    async fn cancel(&self, user: &str, cid: &str) -> Option<Value> {
        for attempt in 0..TURN_ATTEMPTS_MAX {
            match self.request(Req::cancel(self.worker(None), user, cid)).await {
                Some(a) if a.status == 200 => return Some(a.body),
                Some(a) if a.status == 503 => self.backoff(attempt).await,
                Some(_) => return None,
                None => self.backoff(attempt).await,
            }
        }
        None
    }

    async fn create(&self, user: &str, wf: &str) -> Option<String> {
        for attempt in 0..CREATE_ATTEMPTS_MAX {
            let w = self.worker(None);
            match self.request(Req::create(w, user, json!({ "workflow": wf }).to_string().into_bytes(), Auth::Own, None)).await {
                Some(a) if a.status == 201 => return a.body["id"].as_str().map(String::from),
                _ => self.backoff(attempt).await,
            }
        }
        None
    }

    async fn conversation(self: &Arc<Self>, user: String, conv: usize) {
        let start = self.below(self.shared.opts.faults.heal_at_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(start)).await;
        let wf = if self.chance(70) { "lead" } else { "payment" };
        let Some(cid) = self.create(&user, wf).await else { return };
        self.shared.owners.lock().unwrap_or_else(|p| p.into_inner()).insert(cid.clone(), user.clone());
        // Some people reuse their keys across their own conversations (keys are scoped by
        // conversation, so nothing may be replayed across them); others keep them apart.
        let kp = if self.chance(50) { format!("c{conv}") } else { "k".to_string() };
        let last = self.drive(&user, conv, &cid, wf, &kp).await;
        if terminal(&last) && self.chance(AFTER_END_PCT) {
            // People keep talking after the end: more data, or a change of mind after submitting.
            // A finished conversation stays as it is (the oracle and invariant 1 check it).
            let said = if self.chance(50) {
                Said::decline("no, cancel that")
            } else {
                let v = value_for(&user, conv, "email").replace('@', ".late@");
                Said::field(format!("actually my email is {v}"), "email", &v)
            };
            self.turn(&user, &cid, &format!("{kp}-after"), &said).await;
        }
    }

    /// The user's script, then turns until the conversation is terminal; the newest answer.
    async fn drive(self: &Arc<Self>, user: &str, conv: usize, cid: &str, wf: &str, kp: &str) -> Option<Value> {
        let (user, cid) = (user.to_string(), cid.to_string());
        let fields = contract::required_fields(wf).unwrap_or(&[]);
        // The script: every field (random order), noise, then yes (or rarely no).
        let mut order: Vec<&str> = fields.to_vec();
        for i in (1..order.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut script: Vec<Say> = Vec::new();
        for f in order {
            if self.chance(self.shared.opts.workload.noise_pct) {
                let spoken = f.replace('_', " ");
                script.push(Say::Said(match self.below(4) {
                    0 => Said::nothing("hmm, not sure"),
                    1 => {
                        let guess = format!("{user}.guess");
                        Said {
                            text: format!("maybe {spoken} is {guess}"),
                            meant: Meant::Field { field: Some(f.into()), value: guess, sure: false },
                        }
                    }
                    2 => {
                        let hedge = format!("{user}.c{conv}.hedge");
                        Said { text: format!("I think it's {hedge}"), meant: Meant::Field { field: None, value: hedge, sure: false } }
                    }
                    // An agreement: it answers nothing while nothing is being confirmed, and
                    // confirms if a concurrent turn has just completed the data.
                    _ => Said::confirm("sure"),
                }));
            }
            if self.chance(CORRECTION_PCT) {
                // A slip, stated plainly, then put right.
                let (spoken, slip) = (f.replace('_', " "), format!("{user}.c{conv}.{f}.typo"));
                script.push(Say::Said(Said::field(format!("{spoken} is {slip}"), f, &slip)));
                let v = value_for(&user, conv, f);
                script.push(Say::Said(Said::field(format!("actually my {spoken} is {v}"), f, &v)));
            } else {
                script.push(Say::Value(f));
            }
        }
        let chatty = self.chance(self.shared.opts.workload.chatty_pct);
        if !chatty {
            let confirm = ["yes", "yes please", "sounds good", "go ahead", "sure"];
            script.push(Say::Said(if self.chance(5) {
                Said::decline("no, cancel that")
            } else {
                Said::confirm(confirm[self.below(5) as usize])
            }));
        }

        // Some people give up part way and press cancel, mostly while a turn is on its way.
        let (cancel_at, press_after) = {
            let mut r = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
            let at = (r.random_range(0..100) < self.shared.opts.workload.cancel_pct).then(|| r.random_range(0..script.len().max(1)));
            (at, r.random_range(0..=CANCEL_AFTER_MS_MAX))
        };

        let mut last: Option<Value> = None;
        // Whether the newest turn was answered: only then does the user know what is asked.
        let mut answered = true;
        // A mumbler opens with more no-signal turns than the streak bound allows: the machine
        // must hand the conversation to a human.
        if self.chance(self.shared.opts.workload.mumble_pct) {
            for m in 0..=contract::NO_SIGNAL_STREAK_MAX {
                let r = self.turn(&user, &cid, &format!("{kp}-m{m}"), &Said::nothing("hmm")).await;
                answered = r.is_some();
                last = newest(last, r);
                if terminal(&last) {
                    return last;
                }
            }
        }
        let mut i = 0;
        while i < script.len() {
            let concurrent = i + 2 < script.len() && self.chance(self.shared.opts.workload.concurrent_pct);
            if concurrent {
                let (ka, kb) = (format!("{kp}-{i}"), format!("{kp}-{}", i + 1));
                let (qa, qb) = (self.say(&script[i], &user, conv, None), self.say(&script[i + 1], &user, conv, None));
                let (a, b) = tokio::join!(self.turn(&user, &cid, &ka, &qa), self.turn(&user, &cid, &kb, &qb));
                answered = a.is_some() && b.is_some();
                last = newest(newest(last, a), b);
                i += 2;
            } else if cancel_at == Some(i) {
                // The turn goes out, and a moment later (often before its answer) the cancel.
                let q = self.say(&script[i], &user, conv, None);
                let cancel = async {
                    tokio::time::sleep(Duration::from_millis(press_after)).await;
                    self.cancel(&user, &cid).await
                };
                let key = format!("{kp}-{i}");
                let (r, c) = tokio::join!(self.turn(&user, &cid, &key, &q), cancel);
                // The cancel's answer is the newest word on the conversation.
                return newest(newest(last, r), c);
            } else {
                let asked = if answered { asked_field(&last, fields) } else { None };
                let q = self.say(&script[i], &user, conv, asked);
                let r = self.turn(&user, &cid, &format!("{kp}-{i}"), &q).await;
                answered = r.is_some();
                last = newest(last, r);
                i += 1;
            }
            if terminal(&last) {
                return last;
            }
        }
        if chatty {
            // Never quite ready to confirm: corrections, second thoughts, questions, until the
            // turn limit hands the conversation to a person.
            for t in 0..CHATTY_TURNS_MAX {
                if terminal(&last) {
                    return last;
                }
                let f = fields[self.below(fields.len() as u64) as usize];
                let (spoken, v) = (f.replace('_', " "), value_for(&user, conv, f));
                let said = match t % 3 {
                    0 => Said::field(format!("actually my {spoken} is {v}"), f, &v),
                    1 => Said::nothing("hm, let me think"),
                    _ => Said::field(format!("{spoken} is {v}"), f, &v),
                };
                let r = self.turn(&user, &cid, &format!("{kp}-t{t}"), &said).await;
                last = newest(last, r);
            }
        }
        // Liveness: drive what is left to a terminal step.
        for extra in 0..LIVENESS_TURNS_MAX {
            if terminal(&last) {
                return last;
            }
            let state = last.as_ref().map(|v| v["workflowState"].clone()).unwrap_or(Value::Null);
            let said = match state["step"].as_str() {
                Some("confirming") => Said::confirm("yes"),
                _ => match fields.iter().find(|f| state["collectedData"][**f].is_null()) {
                    Some(f) => {
                        let v = value_for(&user, conv, f);
                        Said::field(format!("{} is {v}", f.replace('_', " ")), f, &v)
                    }
                    None => Said::confirm("yes"),
                },
            };
            let r = self.turn(&user, &cid, &format!("{kp}-x{extra}"), &said).await;
            last = newest(last, r);
        }
        last
    }
}

/// A message and what its writer meant by it.
#[derive(Debug, Clone)]
struct Said {
    text: String,
    meant: Meant,
}

impl Said {
    fn field(text: String, field: &str, value: &str) -> Self {
        Said { text, meant: Meant::Field { field: Some(field.into()), value: value.into(), sure: true } }
    }
    fn confirm(text: &str) -> Self {
        Said { text: text.into(), meant: Meant::Confirm }
    }
    fn decline(text: &str) -> Self {
        Said { text: text.into(), meant: Meant::Decline }
    }
    fn nothing(text: &str) -> Self {
        Said { text: text.into(), meant: Meant::Nothing }
    }
}

/// What a user says in one turn of its script.
enum Say {
    Said(Said),
    /// Its value for this field, phrased when it is said (a bare value only in answer to the
    /// question the orchestrator asked last).
    Value(&'static str),
}

/// Share of conversations whose user says one more thing after it has ended.
const AFTER_END_PCT: u32 = 30;
/// Share of fields a user first states wrongly, then corrects.
const CORRECTION_PCT: u32 = 10;
/// A chatty user gives up talking after this many turns (the turn limit comes first).
const CHATTY_TURNS_MAX: u32 = 60;

/// A user's value for a field: shaped as people type them, unique to the user and the
/// conversation, and starting with the user's name (`<user>.`), so any leak shows whose it is.
pub fn value_for(user: &str, conv: usize, field: &str) -> String {
    match field {
        "email" => format!("{user}.c{conv}@example.com"),
        "phone" => format!("{user}.c{conv} +1 555 01{:02}", conv % 100),
        "company" => format!("{user}.c{conv} Widgets Ltd"),
        "payment_method" => format!("{user}.c{conv} Visa"),
        "amount" => format!("{user}.c{conv} 125.00 USD"),
        other => format!("{user}.c{conv}.{other}"),
    }
}

/// The field the orchestrator asks for next, as the last answer shows it.
fn asked_field(last: &Option<Value>, fields: &[&'static str]) -> Option<&'static str> {
    let state = &last.as_ref()?["workflowState"];
    (state["step"] == "gathering").then(|| fields.iter().copied().find(|f| state["collectedData"][*f].is_null()))?
}

impl Client {
    fn say(&self, s: &Say, user: &str, conv: usize, asked: Option<&str>) -> Said {
        let f = match s {
            Say::Said(said) => return said.clone(),
            Say::Value(f) => f,
        };
        let (v, spoken) = (value_for(user, conv, f), f.replace('_', " "));
        if asked == Some(*f) && self.chance(40) {
            return Said::field(v.clone(), f, &v);
        }
        let text = match self.below(3) {
            0 => format!("{spoken} is {v}"),
            1 => format!("my {spoken} is {v}"),
            _ => format!("{}{}: {v}", spoken[..1].to_uppercase(), &spoken[1..]),
        };
        Said::field(text, f, &v)
    }
}

fn version(v: &Option<Value>) -> u64 {
    v.as_ref().and_then(|v| v["workflowState"]["version"].as_u64()).unwrap_or(0)
}

fn newest(a: Option<Value>, b: Option<Value>) -> Option<Value> {
    if version(&b) >= version(&a) && b.is_some() {
        b
    } else {
        a
    }
}

fn terminal(v: &Option<Value>) -> bool {
    v.as_ref().and_then(|v| v["workflowState"]["step"].as_str()).and_then(Step::parse).is_some_and(Step::is_terminal)
}

/// Hostile requests one attacker sends over a run (besides its own conversation).
pub const HOSTILE_REQUESTS_MAX: u64 = 12;
/// Spacing of an attacker's requests.
const HOSTILE_GAP_MS_MAX: u64 = 1_500;

/// The attacker of client host `idx`.
pub fn attacker_of(idx: usize) -> String {
    format!("m{idx}")
}

impl Client {
    /// A hostile user: it has a conversation of its own (to send malformed requests to and to
    /// reuse keys in), and between them reads and drives conversations that are not its own
    /// (learned ids and guessed ones), uses bad or no tokens, and sends malformed bodies. Every
    /// such request carries the statuses the contract allows for it; at the end it cancels its
    /// own conversation, so it too ends terminal.
    async fn attacker(self: &Arc<Self>, me: String) {
        let start = self.below(self.shared.opts.faults.heal_at_ms / 2 + 1);
        tokio::time::sleep(Duration::from_millis(start)).await;
        let Some(own) = self.create(&me, "lead").await else { return };
        self.shared.owners.lock().unwrap_or_else(|p| p.into_inner()).insert(own.clone(), me.clone());
        // The contract's answers; a request that reaches the store may also be a 503.
        const NOT_FOUND: &[u16] = &[404, 503];
        const BAD_REQUEST: &[u16] = &[400];
        const UNAUTHORIZED: &[u16] = &[401];
        let n = HOSTILE_REQUESTS_MAX / 2 + self.below(HOSTILE_REQUESTS_MAX / 2 + 1);
        for i in 0..n {
            tokio::time::sleep(Duration::from_millis(self.below(HOSTILE_GAP_MS_MAX + 1))).await;
            let w = self.worker(None);
            let key = format!("m-{i}");
            let victim = {
                let owners = self.shared.owners.lock().unwrap_or_else(|p| p.into_inner());
                let others: Vec<String> = owners.iter().filter(|(_, o)| **o != me).map(|(c, _)| c.clone()).collect();
                if others.is_empty() {
                    None
                } else {
                    Some(others[self.below(others.len() as u64) as usize].clone())
                }
            };
            let guessed = format!("{:016x}{:016x}", self.below(u64::MAX), self.below(u64::MAX));
            let target = victim.clone().unwrap_or_else(|| guessed.clone());
            let company = format!("{me}.c0.company");
            let query = Said::field(format!("company is {company}"), "company", &company);
            // A key someone else has used: people's keys are easy to guess.
            let their_key = format!("{}-{}", if self.chance(50) { "k".to_string() } else { format!("c{}", self.below(2)) }, self.below(4));
            let r = match self.below(11) {
                // Another user's conversation (or, before any is known, a guessed id).
                0 => Req::read(w, &me, &target, Auth::Own, NOT_FOUND.to_vec()),
                1 => Req::turn(w, &me, &target, &key, &query, false).hostile(Auth::Own, NOT_FOUND.to_vec()),
                2 => Req::read(w, &me, &guessed, Auth::Own, NOT_FOUND.to_vec()),
                // Someone else's token that the server does not know, or none at all.
                3 => Req::read(w, &me, &target, Auth::Token("tok-nobody".into()), UNAUTHORIZED.to_vec()),
                4 => Req::turn(w, &me, &own, &key, &query, false).hostile(Auth::Missing, UNAUTHORIZED.to_vec()),
                5 => Req::create(w, &me, br#"{"workflow":"lead"}"#.to_vec(), Auth::Token(String::new()), Some(UNAUTHORIZED.to_vec())),
                // Malformed requests on its own conversation.
                6 => {
                    let mut r = Req::turn(w, &me, &own, &key, &query, false).hostile(Auth::Own, BAD_REQUEST.to_vec());
                    r.key = if self.chance(50) { None } else { Some("bad key!") };
                    r
                }
                7 => {
                    let bodies: [&[u8]; 5] = [b"{", br#"["yes"]"#, b"{}", br#"{"query":5}"#, br#"{"query":"x","extra":1}"#];
                    let mut r = Req::turn(w, &me, &own, &key, &query, false).hostile(Auth::Own, BAD_REQUEST.to_vec());
                    r.body = bodies[self.below(bodies.len() as u64) as usize].to_vec();
                    r.query = None;
                    r
                }
                8 => {
                    let bodies: [&[u8]; 3] = [br#"{"workflow":"nope"}"#, br#"["lead"]"#, b"not json"];
                    Req::create(w, &me, bodies[self.below(bodies.len() as u64) as usize].to_vec(), Auth::Own, Some(BAD_REQUEST.to_vec()))
                }
                // Another user's key on its own conversation: a turn of its own, never their answer.
                9 => Req::turn(w, &me, &own, &their_key, &query, false).hostile(Auth::Own, vec![200, 503]),
                // A key of its own, completed, sent again with another body.
                _ => {
                    let first = format!("{me}.c0.email");
                    if self.turn(&me, &own, &key, &Said::field(format!("email is {first}"), "email", &first)).await.is_none() {
                        continue;
                    }
                    Req::turn(w, &me, &own, &key, &Said::field("phone is 5550100".into(), "phone", "5550100"), false)
                        .hostile(Auth::Own, vec![422, 503])
                }
            };
            self.request(r).await;
        }
        // Cancel, as a user would, until it takes (Copilot may garble the first "no").
        for i in 0..LIVENESS_TURNS_MAX {
            if terminal(&self.turn(&me, &own, &format!("m-end{i}"), &Said::decline("no")).await) {
                break;
            }
        }
    }
}

/// The software of client host `idx`: its users' conversations, concurrently.
pub async fn run_client(shared: Arc<Shared>, idx: usize) -> turmoil::Result {
    let seed = shared.seed ^ (0xC11E_0000 + idx as u64);
    let client = Arc::new(Client {
        name: crate::world::hosts::Host::Client(idx).name(),
        shared: shared.clone(),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        cancels: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0xCA9C_E100_0000)),
        late: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for u in 0..shared.opts.topology.users_per_client {
        let user = format!("u{idx}x{u}");
        for conv in 0..shared.opts.topology.conversations_per_user {
            let (c, user) = (client.clone(), user.clone());
            tasks.push(tokio::spawn(async move { c.conversation(user, conv).await }));
        }
    }
    if shared.opts.workload.attackers {
        let c = client.clone();
        tasks.push(tokio::spawn(async move { c.attacker(attacker_of(idx)).await }));
    }
    for t in tasks {
        t.await?;
    }
    let late: Vec<_> = std::mem::take(&mut *client.late.lock().unwrap_or_else(|p| p.into_inner()));
    for t in late {
        t.await?;
    }
    Ok(())
}
