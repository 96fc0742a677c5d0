//! Invariant 8: no 500 and no hang; every answer within the bound the configuration promises.
//!
//! 8, sharpened: every answer arrives within the bound the orchestrator's configuration promises
//! — the acquire deadline, the Copilot deadline, a store reply timeout for each store call a
//! turn may wait on, and the network — not within a generic client timeout. A request whose
//! worker was down, or whose link was broken, while it waited is excused (as for no answer); a
//! client that sent its request slowly is owed its answer that much later.
//!
use super::{calls, down_windows, v, Invariant, Violation};
use crate::history::{Entry, Ev, HostChange, Manner};
use crate::world::RunOutput;
use std::collections::BTreeMap;

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

/// Invariant 8: Every request is answered; never with a 5xx other than 503, and a 503 says when to retry.
/// A request may go unanswered (its client times out and retries) only if its worker crashed,
/// or the link between its client and its worker was cut, while it waited, or its client hung
/// up (a half-closed request is still owed its answer).
pub fn no_500_no_hang(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let excuses = Excuses::of(&out.history);
    let crashed_meanwhile = |client: &str, worker: &str, from: u64, to: u64| excuses.meanwhile(client, worker, from, to);
    if let Some(err) = &out.error {
        found.push(v(Invariant::NoHang, out.sim_ms, format!("the run did not finish: {err}")));
    }
    for c in calls(&out.history) {
        match (c.answer, c.no_answer) {
            (Some((t, s, _, body)), _) if s >= 500 && s != 503 => {
                found.push(v(Invariant::NoHang, t, format!("request {} ({} {} via {}) got {s}: {body}", c.req, c.op, c.user, c.worker)));
            }
            (Some((t, 503, false, _)), _) => {
                found.push(v(Invariant::NoHang, t, format!("request {} via {} got 503 without Retry-After", c.req, c.worker)))
            }
            // Its body was lost with a link cut while it was being sent (turmoil's TCP does not
            // retransmit what a partition dropped): the server rightly timed the body out.
            (Some((t, 408, _, _)), _) if crashed_meanwhile(c.client, c.worker, c.at_ms, t) => {}
            // A user's own well-formed request: a 4xx other than 409 is the server's fault. (A
            // hostile request's status is invariant 13's.)
            (Some((t, s, _, body)), _) if (400..500).contains(&s) && s != 409 && c.expect.is_none() => {
                found.push(v(
                    Invariant::NoHang,
                    t,
                    format!("request {} ({} {} via {}, key {:?}) got unexpected {s}: {body}", c.req, c.op, c.user, c.worker, c.key),
                ));
            }
            (Some(_), _) => {}
            (None, Some((t, _))) if crashed_meanwhile(c.client, c.worker, c.at_ms, t) => {}
            // Its client hung up: no answer is owed (whether the turn ended is invariant 14's).
            (None, Some(_)) if matches!(c.manner, Some(Manner::HungUp { .. })) => {}
            (None, Some((_, reason))) => found.push(v(
                Invariant::NoHang,
                c.at_ms,
                format!("request {} ({} {} via {}) got no answer: {reason}", c.req, c.op, c.user, c.worker),
            )),
            (None, None) => found.push(v(
                Invariant::NoHang,
                c.at_ms,
                format!("request {} ({} {} via {}) never finished", c.req, c.op, c.user, c.worker),
            )),
        }
    }
    found
}

/// Invariant 8, sharpened: every answer within [`crate::world::Options::answer_bound_ms`], plus a slow
/// client's sending time, unless its worker was down or its link cut meanwhile.
pub fn answer_bounds(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let excuses = Excuses::of(&out.history);
    for c in calls(&out.history) {
        let Some((t, status, _, _)) = c.answer else { continue };
        let took = t.saturating_sub(c.at_ms);
        let sending = match c.manner {
            Some(Manner::Slow { send_ms }) => *send_ms,
            _ => 0,
        };
        if took > out.answer_bound_ms + sending && !excuses.meanwhile(c.client, c.worker, c.at_ms, t) {
            found.push(v(
                Invariant::NoHang,
                t,
                format!(
                    "request {} ({} {} via {}, key {:?}) was answered {status} after {took} ms; the configuration promises {} ms",
                    c.req, c.op, c.user, c.worker, c.key, out.answer_bound_ms
                ),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;

    use crate::history::{Entry, Ev};
    use serde_json::json;

    #[test]
    fn unexpected_client_errors_count_as_server_faults() {
        let mut out = clean();
        if let Ev::Response { status, .. } = &mut out.history[3].ev {
            *status = 422;
        }
        fires(&out, Invariant::NoHang);
    }

    #[test]
    fn no_500_no_hang_fires_on_a_500_a_bare_503_or_a_request_without_answer() {
        for (status, retry_after) in [(500, false), (503, false)] {
            let mut out = clean();
            if let Ev::Response { status: s, retry_after: r, .. } = &mut out.history[3].ev {
                *s = status;
                *r = retry_after;
            }
            fires(&out, Invariant::NoHang);
        }
        let mut out = clean();
        out.history[3].ev = Ev::NoResponse { req: 0, reason: "no answer within 20000 ms".into() };
        fires(&out, Invariant::NoHang);
        let mut out = clean();
        out.error = Some("Ran for duration: 300s steps: 60000 without completing".into());
        fires(&out, Invariant::NoHang);
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

    #[test]
    fn an_answer_later_than_the_configuration_promises_fires_unless_its_worker_was_down() {
        let mut out = clean();
        out.history[3].t_ms = 5_000;
        out.history.sort_by_key(|e| e.t_ms);
        out.sim_ms = 6_000;
        let v = answer_bounds(&out);
        assert!(v.iter().any(|x| x.invariant == Invariant::NoHang && x.evidence.contains("promises 1000 ms")), "{v:?}");
        // The same wait, while its worker was powered off: excused.
        out.history.push(Entry { t_ms: 100, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Crashed } });
        out.history.push(Entry { t_ms: 4_000, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Restarted } });
        out.history.sort_by_key(|e| e.t_ms);
        assert!(answer_bounds(&out).is_empty());
    }
}
