//! 13. Contract statuses: every hostile request (another user's or a guessed conversation, a bad
//! or missing token, a malformed body or key, a key reused with another body) is answered with
//! a status the contract (README "Statuses") gives that request, and nothing else. And a
//! replayed answer is only ever the replay of a request this user already sent to this
//! conversation with this key: a replay for a key seen only in another conversation, or only
//! from another user, is someone else's answer.

use super::{calls, v, Violation};
use crate::world::RunOutput;

pub const CONTRACT_STATUS: &str = "13 contract statuses";

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
                CONTRACT_STATUS,
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
                CONTRACT_STATUS,
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
