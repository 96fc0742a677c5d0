//! Invariant 15: Only what the user said is stored. Every applied commit that changes a field, or moves a
//! conversation to `succeeded` or `cancelled`, came from a request of the conversation's owner
//! (its idempotency key) whose writer *meant* exactly that: the value for that field, stated
//! without a hedge; a confirmation; a cancellation. The meaning comes from the simulated person
//! (`Meant` in the history), never from Copilot or the orchestrator, so this catches a turn
//! that stored a value the user hedged, a value from another message of the same user (a
//! query mixed up between concurrent turns, a stale cache), a field mapped to the wrong name,
//! and a confirmation nobody gave. A Copilot that misreads with high confidence would fire it
//! too: the Copilot host makes its mistakes with medium or low confidence only, so in these
//! worlds any such store is the orchestrator's.

use super::{v, Invariant, Violation};
use crate::history::{Ev, Meant};
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

pub fn user_said(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    // (conversation, key) → what its owner meant by the requests sent with it.
    let mut meant: BTreeMap<(&str, &str), Vec<&Meant>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Invoke { user, cid: Some(cid), key: Some(key), meant: Some(m), .. } = &e.ev {
            if out.owners.get(cid) == Some(user) {
                meant.entry((cid, key)).or_default().push(m);
            }
        }
    }
    // Conversation → when its owner first pressed cancel on it.
    let mut cancel_pressed: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Invoke { user, op, cid: Some(cid), .. } = &e.ev {
            if op == "cancel" && out.owners.get(cid) == Some(user) {
                cancel_pressed.entry(cid).or_insert(e.t_ms);
            }
        }
    }
    let empty = Value::Object(Default::default());
    let mut before: BTreeMap<&str, (&Value, &str)> = BTreeMap::new();
    for e in &out.history {
        let Ev::ModelCommit { cid, fence, idem_key, record, .. } = &e.ev else { continue };
        let (data, step) = (&record["state"]["collectedData"], record["state"]["step"].as_str().unwrap_or(""));
        let (was, was_step) = before.get(cid.as_str()).copied().unwrap_or((&empty, "gathering"));
        before.insert(cid, (data, step));
        let key = idem_key.rsplit(':').next().unwrap_or(idem_key);
        // A commit with no key is a cancel: its owner must have pressed cancel before it.
        let pressed = [&Meant::Decline];
        let said = match idem_key.is_empty() {
            true if cancel_pressed.get(cid.as_str()).is_some_and(|t| *t <= e.t_ms) => &pressed[..],
            true => &[],
            false => meant.get(&(cid.as_str(), key)).map(Vec::as_slice).unwrap_or_default(),
        };
        let mut wrong: Vec<String> = Vec::new();
        for (field, value) in data.as_object().into_iter().flatten() {
            if was.get(field) == Some(value) {
                continue;
            }
            let v = value.as_str().unwrap_or_default();
            let ok = said.iter().any(|m| matches!(m, Meant::Field { field: Some(f), value, sure: true } if f == field && value == v));
            if !ok {
                wrong.push(format!("{field}={value}"));
            }
        }
        if step != was_step {
            let ok = match step {
                "succeeded" => said.iter().any(|m| **m == Meant::Confirm),
                "cancelled" => said.iter().any(|m| **m == Meant::Decline),
                _ => true,
            };
            if !ok {
                wrong.push(format!("step {was_step} -> {step}"));
            }
        }
        if !wrong.is_empty() {
            let who = if said.is_empty() && idem_key.is_empty() {
                format!("it is a cancel and its owner {} had not pressed cancel", out.owners.get(cid).map(String::as_str).unwrap_or("?"))
            } else if said.is_empty() {
                format!("no request of its owner {} carries key {key:?}", out.owners.get(cid).map(String::as_str).unwrap_or("?"))
            } else {
                format!("the user meant {said:?}")
            };
            found.push(v(
                Invariant::UserSaid,
                e.t_ms,
                format!("conversation {cid}: the commit under key {key:?} (fence {fence}) stored {}, but {who}", wrong.join(", ")),
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

    use crate::history::Ev;
    use serde_json::json;

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
        fires(&out, Invariant::UserSaid);
        // Another of the user's values (a message mixed up with another turn's).
        let mut out = clean();
        meant(&mut out, Meant::Field { field: Some("email".into()), value: "alice.c0.other@example.com".into(), sure: true });
        fires(&out, Invariant::UserSaid);
        // The right value under another field's name.
        let mut out = clean();
        meant(&mut out, Meant::Field { field: Some("phone".into()), value: "alice.c0.email".into(), sure: true });
        fires(&out, Invariant::UserSaid);
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
}
