//! Invariant 6: a replay is fresh.

use super::{calls, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

/// Invariant 6: A replay shows a state at least as new as everything committed before it was asked.
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
            found.push(v(Invariant::FreshReplay, t, format!(
                "request {} of {} via {} (key {:?}) was replayed with version {shown} of {cid}, but version {newest_before} was committed before it was sent",
                c.req, c.user, c.worker, c.key
            )));
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
        fires(&out, Invariant::FreshReplay);
    }
}
