//! Invariant 1: no acknowledged collectedData is lost.

use super::{calls, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

/// Invariant 1: Every field a client saw acknowledged (in a 200's state) is in the final state, unless a
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
                found.push(v(Invariant::LostData, t, format!(
                    "request {} ({} via {}, key {:?}) was acknowledged with {field}={value} in conversation {cid}; the final state has {:?}",
                    c.req, c.user, c.worker, c.key, kept
                )));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;
    use crate::contract::Step;
    use crate::history::{Entry, Ev};
    use serde_json::json;

    #[test]
    fn lost_collected_data_fires_when_an_acknowledged_field_is_missing_at_the_end() {
        let mut out = clean();
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.collected_data.clear();
        fires(&out, Invariant::LostData);
    }

    #[test]
    fn a_corrected_field_is_not_lost_but_a_silently_replaced_one_is() {
        // The final state has another email than the one acknowledged...
        let mut out = clean();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.collected_data.insert("email".into(), "alice.c0.other".into());
        }
        fires(&out, Invariant::LostData);
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
}
