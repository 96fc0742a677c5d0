//! Invariant 5: only valid transitions, and none on low or medium confidence.

use super::{v, Invariant, Violation};
use crate::contract::Step;
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

fn allowed(from: Step, to: Step) -> bool {
    use Step::*;
    match from {
        Gathering => matches!(to, Gathering | Confirming | Cancelled | NeedsHuman),
        Confirming => matches!(to, Confirming | Succeeded | Cancelled | NeedsHuman),
        Succeeded | Cancelled | NeedsHuman => to == from,
    }
}

/// Invariant 5: Only valid transitions, and none on low or medium confidence: a step change or a
/// changed field needs a high-confidence event (or a plain yes/no) in that very turn.
pub fn valid_transitions(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut turns: BTreeMap<(&str, u64), &Vec<crate::contract::Extracted>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Transition { worker, cid, fence, from, to, events, .. } = &e.ev {
            turns.insert((cid.as_str(), *fence), events);
            if !allowed(*from, *to) {
                found.push(v(
                    Invariant::ValidTransitions,
                    e.t_ms,
                    format!("{worker}: conversation {cid} moved {from:?} -> {to:?} (fence {fence})"),
                ));
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
                    Invariant::ValidTransitions,
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
                                Invariant::ValidTransitions,
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
                        found.push(v(Invariant::ValidTransitions, e.t_ms, format!("conversation {cid}: {field}={value} was stored (fence {fence}) without a high-confidence extraction in that turn")));
                    } else if !high {
                        found.push(v(Invariant::ValidTransitions, e.t_ms, format!("conversation {cid}: {field}={value} was stored (fence {fence}) but Copilot never extracted it with high confidence")));
                    }
                }
            }
            prev.insert(cid, data);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;
    use crate::contract::{Confidence, Step};
    use crate::history::{Entry, Ev};
    use serde_json::json;

    #[test]
    fn valid_transitions_fires_on_an_illegal_step_change_or_an_unjustified_field() {
        let mut out = clean();
        if let Ev::Transition { to, .. } = &mut out.history[1].ev {
            *to = Step::Succeeded;
        }
        fires(&out, Invariant::ValidTransitions);
        // A second commit that stores a field on a medium-confidence extraction.
        let mut out = clean();
        second_turn_sets_phone(&mut out, "alice.c0.phone", Confidence::Medium, "idem:{c:c1}:alice:1:k2");
        fires(&out, Invariant::ValidTransitions);
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
        fires(&out, Invariant::ValidTransitions);
        let v = check(&out);
        assert!(v[0].evidence.contains("Copilot never extracted"), "{v:?}");
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
}
