//! The invariants, checked over a finished run's history and final state. Checkers only read;
//! each returns the violations it found with the evidence a person needs to start debugging.
//! Every checker has a test below that feeds it a doctored history and watches it fire.

mod bounds;
mod cancel;
mod contract;
mod progress;
mod spec_oracle;
mod turns_end;
mod user_said;

pub use bounds::answer_bounds;
pub use cancel::{cancel_clean, CANCEL_CLEAN};
pub use contract::{contract_statuses, CONTRACT_STATUS};
pub use progress::{progress, PROGRESS, TERMINAL_AFTER_HEAL_MS_MAX};
pub use spec_oracle::{spec_oracle, SPEC_ORACLE};
pub use turns_end::{turns_end, TURNS_END};
pub use user_said::{user_said, USER_SAID};

use crate::contract::{Step, NO_SIGNAL_STREAK_MAX};
use crate::history::{Entry, Ev, HostChange, Manner};
use crate::world::RunOutput;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub at_ms: u64,
    pub evidence: String,
}

pub const LOST_DATA: &str = "1 no lost collectedData";
pub const CROSS_USER: &str = "2 no cross-user data";
pub const NO_SIGNAL_LOOP: &str = "3 no stuck NO_SIGNAL loop";
pub const FENCED_WRITER: &str = "4 fenced single writer";
pub const VALID_TRANSITIONS: &str = "5 valid transitions only";
pub const FRESH_REPLAY: &str = "6 fresh replay";
pub const EXACTLY_ONCE: &str = "7 exactly-once effects";
pub const NO_500_NO_HANG: &str = "8 no 500 and no hang";
pub const CONTEXT_WELL_FORMED: &str = "10 Copilot context well-formed";

/// A client request with its invoke and (if any) its answer.
pub(crate) struct Call<'a> {
    at_ms: u64,
    req: u64,
    client: &'a str,
    user: &'a str,
    worker: &'a str,
    op: &'a str,
    cid: Option<&'a str>,
    key: Option<&'a str>,
    /// The statuses the contract allows, for a hostile request.
    expect: Option<&'a [u16]>,
    manner: Option<&'a Manner>,
    answer: Option<(u64, u16, bool, &'a Value)>,
    no_answer: Option<(u64, &'a str)>,
}

pub(crate) fn calls(h: &[Entry]) -> Vec<Call<'_>> {
    let mut by_req: BTreeMap<u64, Call<'_>> = BTreeMap::new();
    for e in h {
        match &e.ev {
            Ev::Invoke { req, client, user, worker, op, cid, key, expect, manner, .. } => {
                let call = Call {
                    at_ms: e.t_ms,
                    req: *req,
                    client,
                    user,
                    worker,
                    op,
                    cid: cid.as_deref(),
                    key: key.as_deref(),
                    expect: expect.as_deref(),
                    manner: manner.as_ref(),
                    answer: None,
                    no_answer: None,
                };
                by_req.insert(*req, call);
            }
            Ev::Response { req, status, retry_after, body } => {
                if let Some(c) = by_req.get_mut(req) {
                    c.answer = Some((e.t_ms, *status, *retry_after, body));
                }
            }
            Ev::NoResponse { req, reason } => {
                if let Some(c) = by_req.get_mut(req) {
                    c.no_answer = Some((e.t_ms, reason));
                }
            }
            _ => {}
        }
    }
    by_req.into_values().collect()
}

pub(crate) fn v(invariant: &'static str, at_ms: u64, evidence: String) -> Violation {
    Violation { invariant, at_ms, evidence }
}

/// 1. Every field a client saw acknowledged (in a 200's state) is in the final state, unless a
/// later committed turn of the conversation changed it (a correction, itself checked by 5).
pub fn lost_collected_data(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    // Per conversation, each committed version's data, from the store's own log.
    let mut commits: BTreeMap<&str, Vec<(u64, &Value)>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, version, record, .. } = &e.ev {
            commits.entry(cid).or_default().push((*version, &record["state"]["collectedData"]));
        }
    }
    for c in calls(&out.history) {
        let Some((t, 200, _, body)) = c.answer else { continue };
        let Some(cid) = body["conversationId"].as_str() else { continue };
        let Some(data) = body["workflowState"]["collectedData"].as_object() else { continue };
        let seen_version = body["workflowState"]["version"].as_u64().unwrap_or(0);
        let fin = out.finals.get(cid).cloned().flatten();
        for (field, value) in data {
            let kept = fin.as_ref().and_then(|r| r.state.collected_data.get(field));
            let corrected =
                commits.get(cid).is_some_and(|cs| cs.iter().any(|(v, d)| *v > seen_version && d.get(field).is_some_and(|x| x != value)));
            if kept.map(String::as_str) != value.as_str() && !corrected {
                found.push(v(LOST_DATA, t, format!(
                    "request {} ({} via {}, key {:?}) was acknowledged with {field}={value} in conversation {cid}; the final state has {:?}",
                    c.req, c.user, c.worker, c.key, kept
                )));
            }
        }
    }
    found
}

/// 2. No response, replay or read gives a user anything of another user's, and no Copilot
/// call made for a user carries another user's data in its context.
pub fn cross_user(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    for e in &out.history {
        if let Ev::CopilotSawForeignData { cid, user, field, value } = &e.ev {
            found.push(v(
                CROSS_USER,
                e.t_ms,
                format!("Copilot was asked for {user} on conversation {cid} with {field}={value} in the context"),
            ));
        }
    }
    for c in calls(&out.history) {
        let Some((t, 200, _, body)) = c.answer else { continue };
        if let Some(cid) = body["conversationId"].as_str() {
            if let Some(owner) = out.owners.get(cid) {
                if owner != c.user {
                    found.push(v(
                        CROSS_USER,
                        t,
                        format!("request {} of {} via {} answered with conversation {cid} of {owner}", c.req, c.user, c.worker),
                    ));
                }
            }
        }
        let stored = body["workflowState"]["collectedData"].as_object().into_iter().flatten().map(|(f, v)| (f.as_str(), v));
        let extracted = body["extracted"].as_array().into_iter().flatten().filter_map(|x| Some((x["field"].as_str()?, &x["value"])));
        for (field, value) in stored.chain(extracted) {
            let tag = value.as_str().and_then(|s| s.split('.').next()).unwrap_or("");
            if tag != c.user {
                found.push(v(
                    CROSS_USER,
                    t,
                    format!("request {} of {} via {} saw {field}={value}, which belongs to {tag}", c.req, c.user, c.worker),
                ));
            }
        }
    }
    found
}

/// 3. No committed non-terminal state has more than the streak bound of NO_SIGNALs, and after
/// the heal every conversation reached a terminal step.
pub fn no_signal_loop(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, record, .. } = &e.ev {
            let step = record["state"]["step"].as_str().and_then(Step::parse);
            let streak = record["state"]["noSignalStreak"].as_u64().unwrap_or(0);
            if step.is_some_and(|s| !s.is_terminal()) && streak > NO_SIGNAL_STREAK_MAX as u64 {
                found.push(v(NO_SIGNAL_LOOP, e.t_ms, format!("conversation {cid} committed (fence {fence}) in {step:?} with a NO_SIGNAL streak of {streak} > {NO_SIGNAL_STREAK_MAX}")));
            }
        }
    }
    // From the turns themselves: a run of committed turns with no signal longer than the bound
    // must end in a hand-off, whatever the stored streak counter says.
    let mut signals: BTreeMap<(&str, u64), bool> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Transition { cid, fence, events, .. } = &e.ev {
            let none = events
                .iter()
                .all(|x| x.kind == "no_signal" || (x.kind == "field" && x.confidence == Some(crate::contract::Confidence::Low)));
            signals.insert((cid.as_str(), *fence), !none);
        }
    }
    let mut run: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, record, .. } = &e.ev {
            let Some(had_signal) = signals.get(&(cid.as_str(), *fence)) else { continue };
            let n = run.entry(cid).or_default();
            *n = if *had_signal { 0 } else { *n + 1 };
            let step = record["state"]["step"].as_str().and_then(Step::parse);
            if *n > NO_SIGNAL_STREAK_MAX as u64 && step.is_some_and(|s| !s.is_terminal()) {
                found.push(v(
                    NO_SIGNAL_LOOP,
                    e.t_ms,
                    format!("conversation {cid}: {n} committed turns in a row without a signal, still {step:?} (fence {fence})"),
                ));
            }
        }
    }
    for (cid, rec) in &out.finals {
        match rec {
            Some(r) if r.state.step.is_terminal() => {}
            Some(r) => found.push(v(
                NO_SIGNAL_LOOP,
                out.sim_ms,
                format!(
                    "conversation {cid} of {} ended the run in {:?} (version {}, streak {}): not terminal after the heal",
                    r.owner, r.state.step, r.state.version, r.state.no_signal_streak
                ),
            )),
            None => found.push(v(NO_SIGNAL_LOOP, out.sim_ms, format!("conversation {cid} was acknowledged as created but has no state"))),
        }
    }
    found
}

/// 4. Commits per conversation, in the order the store applied them, carry strictly
/// increasing fences and versions that grow by exactly one, and each was written by the holder
/// of the newest lease (the fence counter Redis held when the commit applied).
///
/// For a system that does not fence ([`crate::workers::Reports::fences`]) only the versions
/// are checked: two writers that both read version n both write n + 1.
pub fn fenced_single_writer(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let fenced = out.reports.fences;
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, version, record, .. } = &e.ev {
            let (pf, pv) = last.get(cid.as_str()).copied().unwrap_or((0, 0));
            if fenced && *fence <= pf {
                found.push(v(
                    FENCED_WRITER,
                    e.t_ms,
                    format!("conversation {cid}: commit under fence {fence} after a commit under fence {pf}"),
                ));
            }
            if *version != pv + 1 {
                found.push(v(FENCED_WRITER, e.t_ms, format!("conversation {cid}: version went {pv} -> {version} (fence {fence})")));
            }
            if fenced && record["writerFence"].as_u64() != Some(*fence) {
                found.push(v(
                    FENCED_WRITER,
                    e.t_ms,
                    format!(
                        "conversation {cid}: committed while the newest lease was fence {fence}, by a writer holding fence {}",
                        record["writerFence"]
                    ),
                ));
            }
            last.insert(cid, (*fence, *version));
        }
    }
    found
}

fn allowed(from: Step, to: Step) -> bool {
    use Step::*;
    match from {
        Gathering => matches!(to, Gathering | Confirming | Cancelled | NeedsHuman),
        Confirming => matches!(to, Confirming | Succeeded | Cancelled | NeedsHuman),
        Succeeded | Cancelled | NeedsHuman => to == from,
    }
}

/// 5. Only valid transitions, and none on low or medium confidence: a step change or a
/// changed field needs a high-confidence event (or a plain yes/no) in that very turn.
pub fn valid_transitions(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut turns: BTreeMap<(&str, u64), &Vec<crate::contract::Extracted>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Transition { worker, cid, fence, from, to, events, .. } = &e.ev {
            turns.insert((cid.as_str(), *fence), events);
            if !allowed(*from, *to) {
                found.push(v(VALID_TRANSITIONS, e.t_ms, format!("{worker}: conversation {cid} moved {from:?} -> {to:?} (fence {fence})")));
            }
            let high = events.iter().any(|x| x.kind == "field" && x.confidence == Some(crate::contract::Confidence::High));
            let why = match to {
                Step::Confirming if *from == Step::Gathering => high,
                Step::Succeeded if *from != Step::Succeeded => events.iter().any(|x| x.kind == "confirmed"),
                Step::Cancelled if *from != Step::Cancelled => events.iter().any(|x| x.kind == "declined"),
                _ => true,
            };
            if !why {
                found.push(v(
                    VALID_TRANSITIONS,
                    e.t_ms,
                    format!("{worker}: conversation {cid} moved {from:?} -> {to:?} on {events:?}, which does not justify it"),
                ));
            }
        }
    }
    // What Copilot really extracted with high confidence, per conversation: the ground truth a
    // worker's own account of its events is checked against.
    let mut said_high: std::collections::BTreeSet<(&str, String, String)> = std::collections::BTreeSet::new();
    for e in &out.history {
        if let Ev::CopilotReply { cid, payload, .. } = &e.ev {
            if payload["confidence"] == "high" {
                if let Some(fields) = payload["fields"].as_object() {
                    for (f, val) in fields {
                        said_high.insert((cid.as_str(), f.clone(), val.as_str().unwrap_or_default().to_string()));
                    }
                }
            }
        }
    }
    let mut prev: BTreeMap<&str, &Value> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, record, .. } = &e.ev {
            let data = &record["state"]["collectedData"];
            if let (Some(before), Some(after)) = (prev.get(cid.as_str()).and_then(|p| p.as_object()), data.as_object()) {
                for (field, value) in after {
                    if before.get(field) == Some(value) {
                        continue;
                    }
                    let high = said_high.contains(&(cid.as_str(), field.clone(), value.as_str().unwrap_or_default().to_string()));
                    if !out.reports.turn_events {
                        // No account of the turn's events: Copilot's own record is all there is.
                        if !high {
                            found.push(v(
                                VALID_TRANSITIONS,
                                e.t_ms,
                                format!(
                                    "conversation {cid}: {field}={value} was stored but Copilot never extracted it with high confidence"
                                ),
                            ));
                        }
                        continue;
                    }
                    let justified = turns.get(&(cid.as_str(), *fence)).is_some_and(|evs| {
                        evs.iter().any(|x| {
                            x.kind == "field"
                                && x.field.as_deref() == Some(field)
                                && x.value.as_deref() == value.as_str()
                                && x.confidence == Some(crate::contract::Confidence::High)
                        })
                    });
                    if !justified {
                        found.push(v(VALID_TRANSITIONS, e.t_ms, format!("conversation {cid}: {field}={value} was stored (fence {fence}) without a high-confidence extraction in that turn")));
                    } else if !high {
                        found.push(v(VALID_TRANSITIONS, e.t_ms, format!("conversation {cid}: {field}={value} was stored (fence {fence}) but Copilot never extracted it with high confidence")));
                    }
                }
            }
            prev.insert(cid, data);
        }
    }
    found
}

/// 6. A replay shows a state at least as new as everything committed before it was asked.
pub fn fresh_replay(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut commits: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, version, .. } = &e.ev {
            commits.entry(cid).or_default().push((e.t_ms, *version));
        }
    }
    for c in calls(&out.history) {
        let Some((t, 200, _, body)) = c.answer else { continue };
        if body["replayed"] != Value::Bool(true) {
            continue;
        }
        let cid = body["conversationId"].as_str().unwrap_or("");
        let shown = body["workflowState"]["version"].as_u64().unwrap_or(0);
        let newest_before = commits.get(cid).and_then(|cs| cs.iter().filter(|(ct, _)| *ct < c.at_ms).map(|(_, v)| *v).max()).unwrap_or(0);
        if shown < newest_before {
            found.push(v(FRESH_REPLAY, t, format!(
                "request {} of {} via {} (key {:?}) was replayed with version {shown} of {cid}, but version {newest_before} was committed before it was sent",
                c.req, c.user, c.worker, c.key
            )));
        }
    }
    found
}

/// 7. Each conversation submits at most once, and one that ended `succeeded` submitted at
/// least once; each idempotency key changes state at most once. Against the store's write log:
/// only a conversation a commit made `succeeded` is ever submitted, never before that commit
/// applied, and with the data it succeeded with, which is its final data.
pub fn exactly_once(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut accepted: BTreeMap<&str, u32> = BTreeMap::new();
    let mut per_key: BTreeMap<&str, u32> = BTreeMap::new();
    for e in &out.history {
        match &e.ev {
            Ev::SinkReceived { cid, key, accepted: true, .. } => {
                let n = accepted.entry(cid).or_default();
                *n += 1;
                if *n > 1 {
                    found.push(v(EXACTLY_ONCE, e.t_ms, format!("conversation {cid} was submitted {n} times (key {key})")));
                }
            }
            // A cancel's commit has no key.
            Ev::ModelCommit { cid, fence, idem_key, .. } if !idem_key.is_empty() => {
                let n = per_key.entry(idem_key).or_default();
                *n += 1;
                if *n > 1 {
                    found.push(v(
                        EXACTLY_ONCE,
                        e.t_ms,
                        format!("conversation {cid}: idempotency key {idem_key} changed state {n} times (latest under fence {fence})"),
                    ));
                }
            }
            _ => {}
        }
    }
    for (cid, rec) in &out.finals {
        if rec.as_ref().is_some_and(|r| r.state.step == Step::Succeeded) && !accepted.contains_key(cid.as_str()) {
            found.push(v(EXACTLY_ONCE, out.sim_ms, format!("conversation {cid} ended succeeded but was never submitted")));
        }
    }
    // Checked against the store's own write log: when each conversation's commit to
    // `succeeded` applied, and with what data.
    let mut succeeded: BTreeMap<&str, (u64, &Value)> = BTreeMap::new();
    let mut accepted_at: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &out.history {
        if let Ev::SinkReceived { cid, accepted: true, .. } = &e.ev {
            accepted_at.entry(cid).or_insert(e.t_ms);
        }
    }
    for e in &out.history {
        if let Ev::ModelCommit { cid, record, .. } = &e.ev {
            if record["state"]["step"] == "succeeded" {
                succeeded.entry(cid).or_insert((e.t_ms, &record["state"]["collectedData"]));
            }
        }
    }
    // Delivered within the bound: by the time the relays had their chance after the later of
    // the success and the heal.
    for (cid, (at, _)) in &succeeded {
        let due = (*at).max(out.heal_at_ms) + crate::world::SINK_SETTLE_MS;
        let first = accepted_at.get(cid).copied();
        if first.is_some_and(|t| t > due) || (first.is_none() && out.sim_ms > due && out.finals.get(*cid).is_some_and(Option::is_some)) {
            found.push(v(
                EXACTLY_ONCE,
                due,
                format!(
                    "conversation {cid} succeeded at {at} ms but the sink accepted it {} (bound: {due} ms)",
                    first.map_or("never".into(), |t| format!("at {t} ms"))
                ),
            ));
        }
    }
    for e in &out.history {
        let Ev::SinkReceived { cid, key, accepted: true, data, .. } = &e.ev else { continue };
        match succeeded.get(cid.as_str()) {
            None => found.push(v(
                EXACTLY_ONCE,
                e.t_ms,
                format!("conversation {cid} was submitted (key {key}) but no commit ever made it succeeded: {data}"),
            )),
            Some((at, _)) if *at > e.t_ms => found.push(v(
                EXACTLY_ONCE,
                e.t_ms,
                format!(
                    "conversation {cid} was submitted (key {key}) at {} ms, before the commit that made it succeeded applied at {at} ms",
                    e.t_ms
                ),
            )),
            Some((_, committed)) if *committed != data => found.push(v(
                EXACTLY_ONCE,
                e.t_ms,
                format!("conversation {cid} was submitted with {data}, but it succeeded with {committed}"),
            )),
            Some(_) => {}
        }
        if let Some(Some(fin)) = out.finals.get(cid) {
            let fin_data = serde_json::to_value(&fin.state.collected_data).unwrap_or_default();
            if fin_data != *data {
                found.push(v(
                    EXACTLY_ONCE,
                    e.t_ms,
                    format!("conversation {cid} was submitted with {data}, but its final data is {fin_data}"),
                ));
            }
        }
    }
    found
}

/// When each host was down (crashed, not yet restarted), from the world's fault log.
pub(crate) fn down_windows(h: &[Entry]) -> BTreeMap<&str, Vec<(u64, u64)>> {
    let mut w: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for e in h {
        match &e.ev {
            Ev::HostFault { host, change: HostChange::Crashed } => w.entry(host.as_str()).or_default().push((e.t_ms, u64::MAX)),
            Ev::HostFault { host, change: HostChange::Restarted } => {
                if let Some(last) = w.entry(host.as_str()).or_default().last_mut() {
                    last.1 = e.t_ms;
                }
            }
            _ => {}
        }
    }
    w
}

/// When each link was broken (cut, or losing what one side sends), keyed `(host, peer)`.
fn cut_windows(h: &[Entry]) -> BTreeMap<(&str, &str), Vec<(u64, u64)>> {
    let mut w: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    for e in h {
        let Ev::HostFault { host, change } = &e.ev else { continue };
        if let Some(peer) = change.broken_link() {
            let ws = w.entry((host.as_str(), peer)).or_default();
            // A change of kind (both ways <-> one way) continues the same break.
            if ws.last().is_none_or(|last| last.1 != u64::MAX) {
                ws.push((e.t_ms, u64::MAX));
            }
        } else if let HostChange::Reconnected { peer } = change {
            if let Some(last) = w.entry((host.as_str(), peer.as_str())).or_default().last_mut() {
                last.1 = e.t_ms;
            }
        }
    }
    w
}

/// When a request's worker was down or its client-worker link broken: such a request may go
/// unanswered, or be answered late (it waited on a host that was off).
pub(crate) struct Excuses<'a> {
    down: BTreeMap<&'a str, Vec<(u64, u64)>>,
    cut: BTreeMap<(&'a str, &'a str), Vec<(u64, u64)>>,
}

impl<'a> Excuses<'a> {
    pub(crate) fn of(h: &'a [Entry]) -> Self {
        Self { down: down_windows(h), cut: cut_windows(h) }
    }

    /// Whether, between `from` and `to`, `worker` was down or the link `client`–`worker` broken.
    pub(crate) fn meanwhile(&self, client: &str, worker: &str, from: u64, to: u64) -> bool {
        let overlaps = |ws: Option<&Vec<(u64, u64)>>| ws.is_some_and(|ws| ws.iter().any(|(a, b)| *a <= to && *b >= from));
        overlaps(self.down.get(worker)) || overlaps(self.cut.get(&(client, worker)))
    }
}

/// 8. Every request is answered; never with a 5xx other than 503, and a 503 says when to retry.
/// A request may go unanswered (its client times out and retries) only if its worker crashed,
/// or the link between its client and its worker was cut, while it waited, or its client hung
/// up (a half-closed request is still owed its answer).
pub fn no_500_no_hang(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let excuses = Excuses::of(&out.history);
    let crashed_meanwhile = |client: &str, worker: &str, from: u64, to: u64| excuses.meanwhile(client, worker, from, to);
    if let Some(err) = &out.error {
        found.push(v(NO_500_NO_HANG, out.sim_ms, format!("the run did not finish: {err}")));
    }
    for c in calls(&out.history) {
        match (c.answer, c.no_answer) {
            (Some((t, s, _, body)), _) if s >= 500 && s != 503 => {
                found.push(v(NO_500_NO_HANG, t, format!("request {} ({} {} via {}) got {s}: {body}", c.req, c.op, c.user, c.worker)));
            }
            (Some((t, 503, false, _)), _) => {
                found.push(v(NO_500_NO_HANG, t, format!("request {} via {} got 503 without Retry-After", c.req, c.worker)))
            }
            // Its body was lost with a link cut while it was being sent (turmoil's TCP does not
            // retransmit what a partition dropped): the server rightly timed the body out.
            (Some((t, 408, _, _)), _) if crashed_meanwhile(c.client, c.worker, c.at_ms, t) => {}
            // A user's own well-formed request: a 4xx other than 409 is the server's fault. (A
            // hostile request's status is invariant 13's.)
            (Some((t, s, _, body)), _) if (400..500).contains(&s) && s != 409 && c.expect.is_none() => {
                found.push(v(
                    NO_500_NO_HANG,
                    t,
                    format!("request {} ({} {} via {}, key {:?}) got unexpected {s}: {body}", c.req, c.op, c.user, c.worker, c.key),
                ));
            }
            (Some(_), _) => {}
            (None, Some((t, _))) if crashed_meanwhile(c.client, c.worker, c.at_ms, t) => {}
            // Its client hung up: no answer is owed (whether the turn ended is invariant 14's).
            (None, Some(_)) if matches!(c.manner, Some(Manner::HungUp { .. })) => {}
            (None, Some((_, reason))) => found.push(v(
                NO_500_NO_HANG,
                c.at_ms,
                format!("request {} ({} {} via {}) got no answer: {reason}", c.req, c.op, c.user, c.worker),
            )),
            (None, None) => {
                found.push(v(NO_500_NO_HANG, c.at_ms, format!("request {} ({} {} via {}) never finished", c.req, c.op, c.user, c.worker)))
            }
        }
    }
    found
}

/// Every Copilot call carried a context prefix that parses.
pub fn context_well_formed(out: &RunOutput) -> Vec<Violation> {
    out.history
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::CopilotBadContext { cid, error, text } => {
                Some(v(CONTEXT_WELL_FORMED, e.t_ms, format!("conversation {cid}: Copilot got {text:?}: {error}")))
            }
            _ => None,
        })
        .collect()
}

/// Every checker, in invariant order.
pub fn check(out: &RunOutput) -> Vec<Violation> {
    let mut all = Vec::new();
    all.extend(lost_collected_data(out));
    all.extend(cross_user(out));
    all.extend(no_signal_loop(out));
    all.extend(fenced_single_writer(out));
    all.extend(valid_transitions(out));
    all.extend(fresh_replay(out));
    all.extend(exactly_once(out));
    all.extend(no_500_no_hang(out));
    all.extend(answer_bounds(out));
    all.extend(context_well_formed(out));
    all.extend(spec_oracle(out));
    all.extend(progress(out));
    all.extend(contract_statuses(out));
    all.extend(turns_end(out));
    all.extend(user_said(out));
    all.extend(cancel_clean(out));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Conversation as ConversationRecord;
    use crate::contract::Extracted;
    use crate::contract::{Confidence, WorkflowState};
    use crate::history::Meant;
    use serde_json::json;

    /// A small clean history: alice creates c1 and sets her email in one turn.
    fn clean() -> RunOutput {
        let mut state = WorkflowState::new("lead");
        state.collected_data.insert("email".into(), "alice.c0.email".into());
        state.version = 1;
        state.turns = 1;
        let record = json!({"owner":"alice","state":state,"writerFence":1});
        let body = json!({"conversationId":"c1","turn":1,"reply":"","extracted":[],"workflowState":state,"replayed":false});
        let h = vec![
            Entry {
                t_ms: 0,
                ev: Ev::Invoke {
                    req: 0,
                    client: "client-0".into(),
                    user: "alice".into(),
                    worker: "worker-0".into(),
                    op: "turn".into(),
                    cid: Some("c1".into()),
                    key: Some("k".into()),
                    query: Some("email is alice.c0.email".into()),
                    duplicate: false,
                    expect: None,
                    manner: None,
                    meant: Some(Meant::Field { field: Some("email".into()), value: "alice.c0.email".into(), sure: true }),
                },
            },
            Entry {
                t_ms: 5,
                ev: Ev::Transition {
                    worker: "worker-0".into(),
                    cid: "c1".into(),
                    user: "alice".into(),
                    fence: 1,
                    from: Step::Gathering,
                    to: Step::Gathering,
                    events: vec![Extracted {
                        kind: "field".into(),
                        field: Some("email".into()),
                        value: Some("alice.c0.email".into()),
                        confidence: Some(Confidence::High),
                    }],
                },
            },
            Entry {
                t_ms: 6,
                ev: Ev::ModelCommit {
                    cid: "c1".into(),
                    fence: 1,
                    version: 1,
                    idem_key: "idem:{c:c1}:alice:1:k".into(),
                    record: record.clone(),
                },
            },
            Entry { t_ms: 7, ev: Ev::Response { req: 0, status: 200, retry_after: false, body } },
            // The worker's own account of the same turn (kept at the end: tests index the above).
            Entry {
                t_ms: 2,
                ev: Ev::LeaseTaken {
                    worker: "worker-0".into(),
                    cid: "c1".into(),
                    user: "alice".into(),
                    idem_key: "idem:{c:c1}:alice:1:k".into(),
                    fence: 1,
                    version: 0,
                },
            },
            Entry {
                t_ms: 6,
                ev: Ev::Committed {
                    worker: "worker-0".into(),
                    cid: "c1".into(),
                    user: "alice".into(),
                    idem_key: "idem:{c:c1}:alice:1:k".into(),
                    fence: 1,
                    version: 1,
                },
            },
        ];
        let mut fin = state.clone();
        fin.step = Step::Cancelled;
        RunOutput {
            reports: crate::workers::Reports { fences: true, turn_events: true },
            history: h,
            finals: BTreeMap::from([("c1".to_string(), Some(ConversationRecord { owner: "alice".into(), state: fin, writer_fence: 1 }))]),
            owners: BTreeMap::from([("c1".to_string(), "alice".to_string())]),
            workload: BTreeMap::from([("alice".to_string(), 1)]),
            heal_at_ms: 0,
            answer_bound_ms: 1_000,
            sim_ms: 10,
            error: None,
        }
    }

    fn fires(out: &RunOutput, invariant: &str) {
        let v = check(out);
        assert!(v.iter().any(|x| x.invariant == invariant), "{invariant} did not fire: {v:?}");
        // Some doctored histories break a second rule by their nature: a state no turn's events
        // give (the oracle sees it too), or a conversation handed to another user (its creator
        // is then short of one).
        let witnesses: &[&str] = match invariant {
            EXACTLY_ONCE | NO_SIGNAL_LOOP => &[SPEC_ORACLE],
            // A value or step no request of the user meant, stored.
            VALID_TRANSITIONS => &[SPEC_ORACLE, USER_SAID],
            PROGRESS => &[USER_SAID],
            CROSS_USER => &[PROGRESS, USER_SAID],
            _ => &[],
        };
        assert!(v.iter().all(|x| x.invariant == invariant || witnesses.contains(&x.invariant)), "only {invariant} should fire: {v:?}");
    }

    fn response_body(out: &mut RunOutput) -> &mut Value {
        out.history
            .iter_mut()
            .find_map(|e| match &mut e.ev {
                Ev::Response { body, .. } => Some(body),
                _ => None,
            })
            .unwrap()
    }

    /// A second turn (fence 2) of alice's conversation whose events set `phone` to `value` with
    /// `confidence`, and the commit that stored it under `idem_key`.
    fn second_turn_sets_phone(out: &mut RunOutput, value: &str, confidence: Confidence, idem_key: &str) {
        out.history.push(Entry {
            t_ms: 8,
            ev: Ev::Transition {
                worker: "worker-1".into(),
                cid: "c1".into(),
                user: "alice".into(),
                fence: 2,
                from: Step::Gathering,
                to: Step::Gathering,
                events: vec![Extracted {
                    kind: "field".into(),
                    field: Some("phone".into()),
                    value: Some(value.into()),
                    confidence: Some(confidence),
                }],
            },
        });
        let mut rec = match &out.history[2].ev {
            Ev::ModelCommit { record, .. } => record.clone(),
            _ => unreachable!(),
        };
        rec["state"]["collectedData"]["phone"] = json!(value);
        rec["state"]["version"] = json!(2);
        rec["writerFence"] = json!(2);
        out.history.push(Entry {
            t_ms: 9,
            ev: Ev::ModelCommit { cid: "c1".into(), fence: 2, version: 2, idem_key: idem_key.into(), record: rec },
        });
    }

    #[test]
    fn a_clean_history_passes_every_checker() {
        assert_eq!(check(&clean()), vec![]);
    }

    #[test]
    fn lost_collected_data_fires_when_an_acknowledged_field_is_missing_at_the_end() {
        let mut out = clean();
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.collected_data.clear();
        fires(&out, LOST_DATA);
    }

    #[test]
    fn cross_user_fires_on_another_users_value_or_conversation() {
        let mut out = clean();
        response_body(&mut out)["workflowState"]["collectedData"]["email"] = json!("bob.c0.email");
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.collected_data.insert("email".into(), "bob.c0.email".into());
        fires(&out, CROSS_USER);
        let mut out = clean();
        out.owners.insert("c1".into(), "bob".into());
        fires(&out, CROSS_USER);
        let mut out = clean();
        response_body(&mut out)["extracted"] = json!([{"kind":"field","field":"email","value":"bob.c0.email","confidence":"high"}]);
        fires(&out, CROSS_USER);
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 3,
            ev: Ev::CopilotSawForeignData { cid: "c1".into(), user: "alice".into(), field: "email".into(), value: "bob.c0.email".into() },
        });
        fires(&out, CROSS_USER);
    }

    #[test]
    fn no_signal_loop_fires_on_a_long_streak_or_a_conversation_left_open() {
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["noSignalStreak"] = json!(NO_SIGNAL_STREAK_MAX + 1);
        }
        fires(&out, NO_SIGNAL_LOOP);
        let mut out = clean();
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.step = Step::Gathering;
        fires(&out, NO_SIGNAL_LOOP);
    }

    #[test]
    fn fenced_single_writer_fires_on_a_stale_fence_or_a_version_gap() {
        let mut out = clean();
        let mut second = out.history[2].clone();
        second.t_ms = 8;
        if let Ev::ModelCommit { version, idem_key, record, .. } = &mut second.ev {
            *version = 2;
            *idem_key = "idem:{c:c1}:alice:1:k2".into();
            record["state"]["version"] = json!(2);
            // The same turn's events applied once more, so only the fence is wrong.
            record["state"]["turns"] = json!(2);
        }
        out.history.push(second);
        fires(&out, FENCED_WRITER);
    }

    /// `clean()` as a system that reports neither fences nor turn events would leave it.
    fn unreported() -> RunOutput {
        let mut out = clean();
        out.reports = crate::workers::Reports::default();
        out.history.retain(|e| !matches!(e.ev, Ev::Transition { .. } | Ev::LeaseTaken { .. } | Ev::Committed { .. }));
        for e in &mut out.history {
            if let Ev::ModelCommit { fence, record, .. } = &mut e.ev {
                *fence = 0;
                record["writerFence"] = json!(0);
            }
        }
        // What Copilot really extracted for the turn.
        out.history.push(Entry {
            t_ms: 4,
            ev: Ev::CopilotReply {
                cid: "c1".into(),
                latency_ms: 1,
                spike: false,
                misbehaviour: None,
                payload: json!({"intent":"provide","confidence":"high","fields":{"email":"alice.c0.email"}}),
            },
        });
        out
    }

    #[test]
    fn without_fences_two_writers_of_one_version_are_still_caught() {
        let out = unreported();
        assert!(check(&out).is_empty(), "{:?}", check(&out));
        // A second commit of the same version: a lost update (both writers read version 0).
        let mut out = unreported();
        let again = out.history.iter().find(|e| matches!(e.ev, Ev::ModelCommit { .. })).cloned().unwrap();
        out.history.push(Entry { t_ms: 9, ..again });
        let v = fenced_single_writer(&out);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].evidence.contains("version went 1 -> 1"), "{v:?}");
    }

    #[test]
    fn without_turn_events_a_stored_field_is_held_to_what_copilot_extracted() {
        let mut out = unreported();
        out.history.retain(|e| !matches!(e.ev, Ev::CopilotReply { .. }));
        // The first commit has nothing before it to differ from: give it one.
        let mut first = out.history.iter().find(|e| matches!(e.ev, Ev::ModelCommit { .. })).cloned().unwrap();
        if let Ev::ModelCommit { version, record, .. } = &mut first.ev {
            *version = 0;
            record["state"]["collectedData"] = json!({});
        }
        first.t_ms = 1;
        out.history.insert(0, first);
        let v = valid_transitions(&out);
        assert!(v.iter().any(|x| x.evidence.contains("Copilot never extracted it")), "{v:?}");
        // And the spec oracle, which needs the turn's events, stays silent rather than guess.
        assert!(spec_oracle(&out).is_empty());
    }

    #[test]
    fn a_corrected_field_is_not_lost_but_a_silently_replaced_one_is() {
        // The final state has another email than the one acknowledged...
        let mut out = clean();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.collected_data.insert("email".into(), "alice.c0.other".into());
        }
        fires(&out, LOST_DATA);
        // ...which is fine when a later committed turn changed it (a correction).
        let mut state = out.finals["c1"].clone().unwrap().state;
        state.step = Step::Gathering;
        state.version = 2;
        state.turns = 2;
        out.history.push(Entry {
            t_ms: 8,
            ev: Ev::ModelCommit {
                cid: "c1".into(),
                fence: 2,
                version: 2,
                idem_key: "idem:{c:c1}:alice:1:k2".into(),
                record: json!({"owner":"alice","state":state,"writerFence":2}),
            },
        });
        assert!(lost_collected_data(&out).is_empty(), "{:?}", lost_collected_data(&out));
    }

    #[test]
    fn the_spec_oracle_fires_when_a_committed_state_is_not_what_the_rules_give() {
        // The events set the email; the store says the conversation moved on to confirming.
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["step"] = json!("confirming");
        }
        fires(&out, SPEC_ORACLE);
        // The streak grew on a turn that made progress.
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["noSignalStreak"] = json!(1);
        }
        fires(&out, SPEC_ORACLE);
        // A commit no turn computed.
        let mut out = clean();
        if let Ev::Transition { fence, .. } = &mut out.history[1].ev {
            *fence = 7;
        }
        fires(&out, SPEC_ORACLE);
    }

    #[test]
    fn an_answer_later_than_the_configuration_promises_fires_unless_its_worker_was_down() {
        let mut out = clean();
        out.history[3].t_ms = 5_000;
        out.history.sort_by_key(|e| e.t_ms);
        out.sim_ms = 6_000;
        let v = answer_bounds(&out);
        assert!(v.iter().any(|x| x.invariant == NO_500_NO_HANG && x.evidence.contains("promises 1000 ms")), "{v:?}");
        // The same wait, while its worker was powered off: excused.
        out.history.push(Entry { t_ms: 100, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Crashed } });
        out.history.push(Entry { t_ms: 4_000, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Restarted } });
        out.history.sort_by_key(|e| e.t_ms);
        assert!(answer_bounds(&out).is_empty());
    }

    #[test]
    fn contract_statuses_fire_when_a_hostile_request_gets_an_answer_the_contract_does_not_give() {
        // Another user's conversation read: the contract says 404; the server answered 200.
        let mut out = clean();
        if let Ev::Invoke { user, op, expect, .. } = &mut out.history[0].ev {
            *user = "mallory".into();
            *op = "read".into();
            *expect = Some(vec![404, 503]);
        }
        out.workload.insert("mallory".into(), 0);
        let v = check(&out);
        assert!(v.iter().any(|x| x.invariant == CONTRACT_STATUS), "{v:?}");
        // The same request answered 404 passes invariant 13.
        let mut out2 = out.clone();
        if let Ev::Response { status, .. } = &mut out2.history[3].ev {
            *status = 404;
        }
        assert!(check(&out2).iter().all(|x| x.invariant != CONTRACT_STATUS));
    }

    #[test]
    fn contract_statuses_fire_on_a_replay_of_a_key_the_user_never_sent_to_that_conversation() {
        // Alice's first request with key `k` to her conversation c2 is answered with a replay:
        // an answer kept for another conversation (she used `k` on c1).
        let mut out = clean();
        let mut invoke = out.history[0].clone();
        if let Ev::Invoke { req, cid, .. } = &mut invoke.ev {
            *req = 1;
            *cid = Some("c2".into());
        }
        invoke.t_ms = 20;
        let mut body = response_body(&mut out).clone();
        body["replayed"] = json!(true);
        out.history.push(invoke);
        out.history.push(Entry { t_ms: 25, ev: Ev::Response { req: 1, status: 200, retry_after: false, body } });
        fires(&out, CONTRACT_STATUS);
        // Sent to c1 again, the same replay is hers to get.
        if let Ev::Invoke { cid, .. } = &mut out.history[6].ev {
            *cid = Some("c1".into());
        }
        assert_eq!(check(&out), vec![]);
    }

    #[test]
    fn turns_end_fires_on_a_lease_taken_and_never_committed_or_released() {
        let mut out = clean();
        out.history.retain(|e| !matches!(e.ev, Ev::Committed { .. }));
        out.sim_ms = 5_000;
        fires(&out, TURNS_END);
        // Given back (a release, even one the store could not confirm): the turn ended.
        let mut given_back = out.clone();
        given_back
            .history
            .push(Entry { t_ms: 6, ev: Ev::Released { worker: "worker-0".into(), cid: "c1".into(), fence: 1, released: false } });
        assert_eq!(check(&given_back), vec![]);
        // Its worker powered off after taking it: nothing was abandoned.
        let mut crashed = out.clone();
        crashed.history.push(Entry { t_ms: 3, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Crashed } });
        assert_eq!(turns_end(&crashed), vec![]);
        // The run ended while the turn could still be working: not judged.
        let mut short = out.clone();
        short.sim_ms = 500;
        assert_eq!(turns_end(&short), vec![]);
    }

    #[test]
    fn user_said_fires_when_a_commit_stores_what_its_user_did_not_mean() {
        let meant = |out: &mut RunOutput, m: Meant| {
            if let Ev::Invoke { meant, .. } = &mut out.history[0].ev {
                *meant = Some(m);
            }
        };
        // A hedge ("I think it's …") stored as if said plainly.
        let mut out = clean();
        meant(&mut out, Meant::Field { field: None, value: "alice.c0.email".into(), sure: false });
        fires(&out, USER_SAID);
        // Another of the user's values (a message mixed up with another turn's).
        let mut out = clean();
        meant(&mut out, Meant::Field { field: Some("email".into()), value: "alice.c0.other@example.com".into(), sure: true });
        fires(&out, USER_SAID);
        // The right value under another field's name.
        let mut out = clean();
        meant(&mut out, Meant::Field { field: Some("phone".into()), value: "alice.c0.email".into(), sure: true });
        fires(&out, USER_SAID);
        // A commit under a key no request of the owner carries.
        let mut out = clean();
        if let Ev::Invoke { user, .. } = &mut out.history[0].ev {
            *user = "mallory".into();
        }
        out.workload.insert("mallory".into(), 0);
        assert!(user_said(&out)[0].evidence.contains("no request of its owner"));
        // A step to `succeeded` on a message that confirmed nothing.
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["step"] = json!("succeeded");
        }
        assert!(user_said(&out).iter().any(|x| x.evidence.contains("gathering -> succeeded")), "{:?}", user_said(&out));
    }

    /// `clean()`, then alice presses cancel (#1, at 15 ms): the cancel's own commit (no key,
    /// fence 2, version 2) at 20 ms, its answer at 25 ms.
    fn cancelled() -> RunOutput {
        let mut out = clean();
        let Ev::ModelCommit { record, .. } = &out.history[2].ev else { unreachable!() };
        let mut record = record.clone();
        record["state"]["step"] = json!("cancelled");
        record["state"]["version"] = json!(2);
        record["writerFence"] = json!(2);
        let body = json!({"result": "cancelled", "workflowState": record["state"].clone()});
        out.history.push(Entry {
            t_ms: 15,
            ev: Ev::Invoke {
                req: 1,
                client: "client-0".into(),
                user: "alice".into(),
                worker: "worker-1".into(),
                op: "cancel".into(),
                cid: Some("c1".into()),
                key: None,
                query: None,
                duplicate: false,
                expect: None,
                manner: None,
                meant: Some(Meant::Decline),
            },
        });
        out.history
            .push(Entry { t_ms: 20, ev: Ev::ModelCommit { cid: "c1".into(), fence: 2, version: 2, idem_key: String::new(), record } });
        out.history.push(Entry { t_ms: 25, ev: Ev::Response { req: 1, status: 200, retry_after: false, body } });
        out.history.sort_by_key(|e| e.t_ms);
        out
    }

    fn cancel_commit(out: &mut RunOutput) -> &mut Entry {
        out.history.iter_mut().find(|e| matches!(&e.ev, Ev::ModelCommit { idem_key, .. } if idem_key.is_empty())).unwrap()
    }

    #[test]
    fn cancel_clean_fires_when_a_cancel_is_acknowledged_but_does_not_hold() {
        assert_eq!(check(&cancelled()), vec![], "a clean cancel");
        // Acknowledged before the store applied it (the write came after the answer).
        let mut out = cancelled();
        cancel_commit(&mut out).t_ms = 30;
        out.history.sort_by_key(|e| e.t_ms);
        fires(&out, CANCEL_CLEAN);
        // The answer says cancelled, but shows another step.
        let mut out = cancelled();
        response_body(&mut out)["result"] = json!("cancelled");
        if let Some(Ev::Response { body, .. }) =
            out.history.iter_mut().map(|e| &mut e.ev).find(|e| matches!(e, Ev::Response { req: 1, .. }))
        {
            body["workflowState"]["step"] = json!("gathering");
        }
        assert!(cancel_clean(&out).iter().any(|x| x.evidence.contains("does not say what happened")), "{:?}", cancel_clean(&out));
        // After the answer, a turn still in flight commits a field: a state mixing both.
        let mut out = cancelled();
        let Ev::ModelCommit { record, .. } = &cancel_commit(&mut out).ev else { unreachable!() };
        let mut later = record.clone();
        later["state"]["collectedData"]["phone"] = json!("alice.c0.phone");
        later["state"]["version"] = json!(3);
        later["writerFence"] = json!(3);
        out.history.push(Entry {
            t_ms: 40,
            ev: Ev::ModelCommit { cid: "c1".into(), fence: 3, version: 3, idem_key: "idem:{c:c1}:alice:1:k2".into(), record: later },
        });
        assert!(
            cancel_clean(&out).iter().any(|x| x.evidence.contains("afterwards the store applied version 3")),
            "{:?}",
            cancel_clean(&out)
        );
        // It ended the run in another step than the answer showed.
        let mut out = cancelled();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.step = Step::NeedsHuman;
        }
        fires(&out, CANCEL_CLEAN);
        // A cancel written over a success (`succeeded`, then `cancelled`).
        let mut out = cancelled();
        for e in &mut out.history {
            if let Ev::ModelCommit { record, idem_key, .. } = &mut e.ev {
                if !idem_key.is_empty() {
                    record["state"]["step"] = json!("succeeded");
                }
            }
        }
        assert!(cancel_clean(&out).iter().any(|x| x.evidence.contains("had already succeeded")), "{:?}", cancel_clean(&out));
    }

    #[test]
    fn progress_fires_when_a_user_could_not_create_or_finish_its_conversations() {
        // Alice set out to create two conversations and has one.
        let mut out = clean();
        out.workload.insert("alice".into(), 2);
        fires(&out, PROGRESS);
        // A run in which nothing was created at all: vacuous, so it fails.
        let mut out = clean();
        out.history.clear();
        out.owners.clear();
        out.finals.clear();
        fires(&out, PROGRESS);
        // The conversation ended, but long after the heal.
        let mut out = clean();
        let t = out.heal_at_ms + TERMINAL_AFTER_HEAL_MS_MAX + 1;
        let mut state = out.finals["c1"].clone().unwrap().state;
        state.version = 2;
        state.turns = 2;
        out.history.push(Entry {
            t_ms: t,
            ev: Ev::Transition {
                worker: "worker-0".into(),
                cid: "c1".into(),
                user: "alice".into(),
                fence: 2,
                from: Step::Gathering,
                to: Step::Cancelled,
                events: vec![Extracted { kind: "declined".into(), field: None, value: None, confidence: None }],
            },
        });
        out.history.push(Entry {
            t_ms: t,
            ev: Ev::ModelCommit {
                cid: "c1".into(),
                fence: 2,
                version: 2,
                idem_key: "idem:{c:c1}:alice:1:k9".into(),
                record: json!({"owner":"alice","state":state,"writerFence":2}),
            },
        });
        out.sim_ms = t + 1;
        fires(&out, PROGRESS);
    }

    #[test]
    fn valid_transitions_fires_on_an_illegal_step_change_or_an_unjustified_field() {
        let mut out = clean();
        if let Ev::Transition { to, .. } = &mut out.history[1].ev {
            *to = Step::Succeeded;
        }
        fires(&out, VALID_TRANSITIONS);
        // A second commit that stores a field on a medium-confidence extraction.
        let mut out = clean();
        second_turn_sets_phone(&mut out, "alice.c0.phone", Confidence::Medium, "idem:{c:c1}:alice:1:k2");
        fires(&out, VALID_TRANSITIONS);
    }

    #[test]
    fn valid_transitions_fires_when_a_worker_claims_high_confidence_copilot_never_gave() {
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 7,
            ev: Ev::CopilotReply {
                cid: "c1".into(),
                latency_ms: 1,
                spike: false,
                misbehaviour: None,
                payload: json!({"intent":"provide","fields":{"phone":"alice.guess"},"confidence":"low"}),
            },
        });
        // The worker says high; Copilot said low.
        second_turn_sets_phone(&mut out, "alice.guess", Confidence::High, "k2");
        fires(&out, VALID_TRANSITIONS);
        let v = check(&out);
        assert!(v[0].evidence.contains("Copilot never extracted"), "{v:?}");
    }

    #[test]
    fn fresh_replay_fires_when_a_replay_shows_state_older_than_a_prior_commit() {
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 20,
            ev: Ev::Invoke {
                req: 1,
                client: "client-0".into(),
                user: "alice".into(),
                worker: "worker-1".into(),
                op: "turn".into(),
                cid: Some("c1".into()),
                key: Some("k".into()),
                query: None,
                duplicate: true,
                expect: None,
                manner: None,
                meant: None,
            },
        });
        let mut body = response_body(&mut out).clone();
        body["replayed"] = json!(true);
        body["workflowState"]["version"] = json!(0);
        out.history.push(Entry { t_ms: 21, ev: Ev::Response { req: 1, status: 200, retry_after: false, body } });
        fires(&out, FRESH_REPLAY);
    }

    /// Invariant 7 against the write log, on a history whose one commit made c1 succeed with
    /// alice's email, submitted at `sent_ms` with `data`.
    fn submitted(sent_ms: u64, data: Value) -> RunOutput {
        let mut out = clean();
        for e in &mut out.history {
            if let Ev::ModelCommit { record, .. } = &mut e.ev {
                record["state"]["step"] = json!("succeeded");
            }
        }
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.step = Step::Succeeded;
        }
        out.history.push(Entry {
            t_ms: sent_ms,
            ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data, fault: None },
        });
        out.history.sort_by_key(|e| e.t_ms);
        out
    }

    #[test]
    fn no_500_no_hang_fires_on_a_408_unless_the_link_was_cut_meanwhile() {
        let mut out = clean();
        for e in &mut out.history {
            if let Ev::Response { status, body, .. } = &mut e.ev {
                *status = 408;
                *body = json!({"error": "request_timeout", "message": "the body did not arrive"});
            }
        }
        assert!(no_500_no_hang(&out).iter().any(|x| x.evidence.contains("unexpected 408")), "{:?}", no_500_no_hang(&out));
        out.history.push(Entry { t_ms: 1, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Crashed } });
        out.history.push(Entry { t_ms: 3, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Restarted } });
        out.history.sort_by_key(|e| e.t_ms);
        assert_eq!(no_500_no_hang(&out), vec![], "its worker was down meanwhile");
    }

    #[test]
    fn exactly_once_fires_on_a_submission_the_store_does_not_bear_out() {
        let email = json!({"email": "alice.c0.email"});
        // Delivered, but long after the heal and the relays' bound.
        let late = crate::world::SINK_SETTLE_MS + 1_000;
        let mut out = submitted(late, email.clone());
        out.sim_ms = late + 1;
        assert!(exactly_once(&out).iter().any(|x| x.evidence.contains("bound")), "{:?}", exactly_once(&out));
        assert_eq!(exactly_once(&submitted(8, email.clone())), vec![], "after the commit, with its data");
        let early = exactly_once(&submitted(4, email.clone()));
        assert!(early.iter().any(|x| x.evidence.contains("before the commit that made it succeeded")), "{early:?}");
        let other = exactly_once(&submitted(8, json!({"email": "alice.c0.other"})));
        assert!(other.iter().any(|x| x.evidence.contains("but it succeeded with")), "{other:?}");
        // A conversation that never succeeded, submitted.
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 8,
            ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data: email, fault: None },
        });
        let never = exactly_once(&out);
        assert!(never.iter().any(|x| x.evidence.contains("no commit ever made it succeeded")), "{never:?}");
    }

    #[test]
    fn exactly_once_fires_on_a_second_submission_a_key_applied_twice_or_a_success_never_submitted() {
        let mut out = clean();
        for t in [30, 31] {
            out.history.push(Entry {
                t_ms: t,
                ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data: json!({}), fault: None },
            });
        }
        fires(&out, EXACTLY_ONCE);
        let mut out = clean();
        let mut again = out.history[2].clone();
        if let Ev::ModelCommit { fence, version, record, .. } = &mut again.ev {
            *fence = 2;
            *version = 2;
            record["writerFence"] = json!(2);
            record["state"]["version"] = json!(2);
        }
        again.t_ms = 9;
        out.history.push(again);
        fires(&out, EXACTLY_ONCE);
        // Ended succeeded, never submitted.
        let mut out = clean();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.step = Step::Succeeded;
        }
        fires(&out, EXACTLY_ONCE);
    }

    #[test]
    fn no_signal_loop_fires_on_a_long_run_of_signal_free_turns_that_never_hands_off() {
        let mut out = clean();
        let rec = match &out.history[2].ev {
            Ev::ModelCommit { record, .. } => record.clone(),
            _ => unreachable!(),
        };
        for i in 0..=NO_SIGNAL_STREAK_MAX as u64 {
            let fence = 2 + i;
            let mut r = rec.clone();
            r["state"]["version"] = json!(fence);
            r["writerFence"] = json!(fence);
            out.history.push(Entry {
                t_ms: 10 + 2 * fence,
                ev: Ev::Transition {
                    worker: "worker-0".into(),
                    cid: "c1".into(),
                    user: "alice".into(),
                    fence,
                    from: Step::Gathering,
                    to: Step::Gathering,
                    events: vec![Extracted { kind: "no_signal".into(), field: None, value: None, confidence: None }],
                },
            });
            out.history.push(Entry {
                t_ms: 11 + 2 * fence,
                ev: Ev::ModelCommit { cid: "c1".into(), fence, version: fence, idem_key: format!("k{fence}"), record: r },
            });
        }
        fires(&out, NO_SIGNAL_LOOP);
    }

    #[test]
    fn context_well_formed_fires_on_a_prefix_copilot_cannot_parse() {
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 3,
            ev: Ev::CopilotBadContext { cid: "c1".into(), error: "missing step=".into(), text: "[WORKFLOW_CONTEXT]step=gathering".into() },
        });
        fires(&out, CONTEXT_WELL_FORMED);
    }

    #[test]
    fn unexpected_client_errors_count_as_server_faults() {
        let mut out = clean();
        if let Ev::Response { status, .. } = &mut out.history[3].ev {
            *status = 422;
        }
        fires(&out, NO_500_NO_HANG);
    }

    #[test]
    fn no_500_no_hang_fires_on_a_500_a_bare_503_or_a_request_without_answer() {
        for (status, retry_after) in [(500, false), (503, false)] {
            let mut out = clean();
            if let Ev::Response { status: s, retry_after: r, .. } = &mut out.history[3].ev {
                *s = status;
                *r = retry_after;
            }
            fires(&out, NO_500_NO_HANG);
        }
        let mut out = clean();
        out.history[3].ev = Ev::NoResponse { req: 0, reason: "no answer within 20000 ms".into() };
        fires(&out, NO_500_NO_HANG);
        let mut out = clean();
        out.error = Some("Ran for duration: 300s steps: 60000 without completing".into());
        fires(&out, NO_500_NO_HANG);
    }

    #[test]
    fn an_unanswered_request_is_excused_only_by_a_crash_of_its_own_worker_meanwhile() {
        let unanswered = |crashed: &str, at: u64, restarted: Option<u64>| {
            let mut out = clean();
            out.history[3].ev = Ev::NoResponse { req: 0, reason: "connect: connection refused".into() };
            out.history.insert(1, Entry { t_ms: at, ev: Ev::HostFault { host: crashed.into(), change: HostChange::Crashed } });
            if let Some(t) = restarted {
                out.history.push(Entry { t_ms: t, ev: Ev::HostFault { host: crashed.into(), change: HostChange::Restarted } });
            }
            out.history.sort_by_key(|e| e.t_ms);
            no_500_no_hang(&out)
        };
        assert!(unanswered("worker-0", 3, Some(9)).is_empty(), "its worker crashed while it waited");
        assert!(unanswered("worker-0", 0, None).is_empty(), "its worker crashed and never came back");
        assert!(!unanswered("worker-1", 3, Some(9)).is_empty(), "another worker's crash excuses nothing");
        assert!(!unanswered("worker-0", 20, Some(30)).is_empty(), "a crash after the answer was due excuses nothing");
    }

    #[test]
    fn an_unanswered_request_is_excused_by_a_cut_of_its_own_client_worker_link_meanwhile() {
        let unanswered = |client: &str, change: HostChange, at: u64| {
            let mut out = clean();
            out.history[3].ev = Ev::NoResponse { req: 0, reason: "no answer within 20000 ms".into() };
            out.history.push(Entry { t_ms: at, ev: Ev::HostFault { host: client.into(), change } });
            let back = HostChange::Reconnected { peer: "worker-0".into() };
            out.history.push(Entry { t_ms: at + 2, ev: Ev::HostFault { host: client.into(), change: back } });
            out.history.sort_by_key(|e| e.t_ms);
            no_500_no_hang(&out)
        };
        let cut = |w: &str| HostChange::CutOff { peer: w.into() };
        assert!(unanswered("client-0", HostChange::RepliesLost { peer: "worker-0".into() }, 3).is_empty());
        assert!(unanswered("client-0", cut("worker-0"), 3).is_empty());
        assert!(!unanswered("client-1", cut("worker-0"), 3).is_empty(), "another client's link");
        assert!(!unanswered("client-0", cut("worker-1"), 3).is_empty(), "another worker's link");
        assert!(!unanswered("client-0", cut("worker-0"), 20).is_empty(), "cut after the answer was due");
    }
}
