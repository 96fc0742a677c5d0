//! Invariant 13: Contract statuses: every hostile request (another user's or a guessed conversation, a bad
//! or missing token, a malformed body or key, a key reused with another body) is answered with
//! a status the contract (README "Statuses") gives that request, and nothing else. And a
//! replayed answer is only ever the replay of a request this user already sent to this
//! conversation with this key: a replay for a key seen only in another conversation, or only
//! from another user, is someone else's answer.

use super::{calls, v, Invariant, Violation};
use crate::world::RunOutput;

pub fn contract_statuses(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let all = calls(&out.history);
    // (user, conversation, key) → the requests that sent it, and when.
    let mut sent: std::collections::BTreeMap<(&str, &str, &str), Vec<(u64, u64)>> = std::collections::BTreeMap::new();
    for c in &all {
        if let (Some(cid), Some(key)) = (c.cid, c.key) {
            sent.entry((c.user, cid, key)).or_default().push((c.req, c.at_ms));
        }
    }
    for c in &all {
        let Some((t, 200, _, body)) = c.answer else { continue };
        if body["replayed"] != true {
            continue;
        }
        // Another request of the same (user, conversation, key) sent before this answer came
        // (before it, or alongside it as a duplicate delivery) is what may be replayed.
        let (cid, key) = (c.cid.unwrap_or_default(), c.key.unwrap_or_default());
        let other = sent.get(&(c.user, cid, key)).is_some_and(|xs| xs.iter().any(|(req, at)| *req != c.req && *at <= t));
        if !other {
            found.push(v(
                Invariant::ContractStatuses,
                t,
                format!(
                    "request {} ({} by {} via {}, key {key:?}) was answered with a replay, but {} had not sent that key to conversation {cid} before: {body}",
                    c.req, c.op, c.user, c.worker, c.user
                ),
            ));
        }
    }
    for c in all {
        let (Some(expect), Some((t, status, _, body))) = (c.expect, c.answer) else { continue };
        if !expect.contains(&status) {
            found.push(v(
                Invariant::ContractStatuses,
                t,
                format!(
                    "request {} ({} by {} via {}, key {:?}) was answered {status}, the contract gives {expect:?}: {body}",
                    c.req, c.op, c.user, c.worker, c.key
                ),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {

    use crate::checks::fixtures::*;
    use crate::checks::*;

    use crate::history::{Entry, Ev};
    use serde_json::json;

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
        assert!(v.iter().any(|x| x.invariant == Invariant::ContractStatuses), "{v:?}");
        // The same request answered 404 passes invariant 13.
        let mut out2 = out.clone();
        if let Ev::Response { status, .. } = &mut out2.history[3].ev {
            *status = 404;
        }
        assert!(check(&out2).iter().all(|x| x.invariant != Invariant::ContractStatuses));
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
        fires(&out, Invariant::ContractStatuses);
        // Sent to c1 again, the same replay is hers to get.
        if let Ev::Invoke { cid, .. } = &mut out.history[6].ev {
            *cid = Some("c1".into());
        }
        assert_eq!(check(&out), vec![]);
    }
}
