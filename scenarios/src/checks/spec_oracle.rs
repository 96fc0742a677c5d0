//! Invariant 11: Specification oracle: a small model of the workflow rules, written from the design
//! (DESIGN.md "The orchestrator", README "Try it") and not by calling `workflow::step` or
//! `apply_turn`, replays the events of each committed turn on the state committed before it and
//! must arrive at exactly the state the store committed: step, collected fields, NO_SIGNAL
//! streak and turn count.

use super::{v, Invariant, Violation};
use crate::contract::{Confidence, Extracted};
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

/// "Three in a row are tolerated, the fourth hands the conversation to a human."
const NO_SIGNAL_TOLERATED: u64 = 3;
/// "A turn limit bounds every conversation": the 40th turn hands it to a human.
const TURN_LIMIT: u64 = 40;

/// The workflows the orchestrator ships, as the design lists them.
fn required(workflow: &str) -> Option<&'static [&'static str]> {
    match workflow {
        "lead" => Some(&["email", "phone", "company"]),
        "payment" => Some(&["payment_method", "amount"]),
        "profile" => Some(&["name", "email", "phone", "company", "title", "country", "city", "street", "zip", "language"]),
        _ => None,
    }
}

/// What the oracle tracks of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub step: String,
    pub fields: BTreeMap<String, String>,
    pub streak: u64,
    pub turns: u64,
}

impl Spec {
    fn start() -> Self {
        Spec { step: "gathering".into(), fields: BTreeMap::new(), streak: 0, turns: 0 }
    }

    fn of(state: &Value) -> Option<Self> {
        Some(Spec {
            step: state["step"].as_str()?.to_string(),
            fields: state["collectedData"]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            streak: state["noSignalStreak"].as_u64()?,
            turns: state["turns"].as_u64().unwrap_or(0),
        })
    }

    fn finished(&self) -> bool {
        matches!(self.step.as_str(), "succeeded" | "cancelled" | "needs_human")
    }

    fn no_signal(&mut self) {
        self.streak += 1;
        if self.streak > NO_SIGNAL_TOLERATED {
            self.step = "needs_human".into();
        }
    }

    /// One event, by the rules: a finished conversation ignores everything; a high-confidence
    /// value of a field the workflow asks for is stored (and once all are there, the user is asked
    /// to confirm); medium asks the user to say it plainly and changes nothing; low is no signal;
    /// yes confirms only what is being confirmed; no cancels; nothing recognisable is no signal.
    fn apply(&mut self, required: &[&str], e: &Extracted) {
        if self.finished() {
            return;
        }
        match (e.kind.as_str(), e.confidence) {
            ("field", Some(Confidence::Low)) => self.no_signal(),
            ("field", _) if !e.field.as_deref().is_some_and(|f| required.contains(&f)) => {}
            ("field", Some(Confidence::High)) => {
                self.fields.insert(e.field.clone().unwrap_or_default(), e.value.clone().unwrap_or_default());
                self.streak = 0;
                if required.iter().all(|f| self.fields.contains_key(*f)) {
                    self.step = "confirming".into();
                }
            }
            ("field", _) => {}
            ("confirmed", _) if self.step == "confirming" => {
                self.step = "succeeded".into();
                self.streak = 0;
            }
            ("confirmed", _) => {}
            ("declined", _) => {
                self.step = "cancelled".into();
                self.streak = 0;
            }
            _ => self.no_signal(),
        }
    }

    /// A cancel: only a conversation not yet finished can be cancelled (`None` otherwise), and
    /// it changes its step and nothing else.
    pub fn cancelled(&self) -> Option<Self> {
        (!self.finished()).then(|| Self { step: "cancelled".into(), ..self.clone() })
    }

    /// One turn: it counts, its events apply in order (none at all is one no-signal), and the
    /// turn limit ends an unfinished conversation.
    pub fn turn(&self, required: &[&str], events: &[Extracted]) -> Self {
        let mut next = self.clone();
        next.turns += 1;
        if events.is_empty() {
            if !next.finished() {
                next.no_signal();
            }
        } else {
            for e in events {
                next.apply(required, e);
            }
        }
        if !next.finished() && next.turns >= TURN_LIMIT {
            next.step = "needs_human".into();
        }
        next
    }
}

/// Replays every committed turn against the oracle.
///
/// It needs the worker's account of each turn's events ([`crate::workers::Reports::turn_events`]);
/// for a system that gives none it checks nothing.
pub fn spec_oracle(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    if !out.reports.turn_events {
        return found;
    }
    // The events each worker applied, by (conversation, fence), latest first when looked up.
    let mut turns: BTreeMap<(&str, u64), Vec<(u64, &Vec<Extracted>)>> = BTreeMap::new();
    for e in &out.history {
        if let Ev::Transition { cid, fence, events, .. } = &e.ev {
            turns.entry((cid.as_str(), *fence)).or_default().push((e.t_ms, events));
        }
    }
    let mut committed: BTreeMap<&str, Spec> = BTreeMap::new();
    for e in &out.history {
        let Ev::ModelCommit { cid, fence, idem_key, record, .. } = &e.ev else { continue };
        let state = &record["state"];
        let Some(got) = Spec::of(state) else {
            found.push(v(Invariant::SpecOracle, e.t_ms, format!("conversation {cid}: committed a state the oracle cannot read: {state}")));
            continue;
        };
        let Some(req) = state["workflow"].as_str().and_then(required) else {
            found.push(v(
                Invariant::SpecOracle,
                e.t_ms,
                format!("conversation {cid}: committed an unknown workflow {}", state["workflow"]),
            ));
            continue;
        };
        let before = committed.get(cid.as_str()).cloned().unwrap_or_else(Spec::start);
        if idem_key.is_empty() {
            // A commit no turn made is a cancel: a conversation not yet finished becomes
            // `cancelled`, and nothing else about it changes.
            let want = before.cancelled();
            if want.as_ref() != Some(&got) {
                found.push(v(
                    Invariant::SpecOracle,
                    e.t_ms,
                    format!(
                        "conversation {cid} (fence {fence}): a cancel from {before:?} must give {want:?}, but the store committed {got:?}"
                    ),
                ));
            }
            committed.insert(cid, got);
            continue;
        }
        let events = turns.get(&(cid.as_str(), *fence)).and_then(|ts| ts.iter().rev().find(|(t, _)| *t <= e.t_ms)).map(|(_, evs)| *evs);
        match events {
            None => found.push(v(
                Invariant::SpecOracle,
                e.t_ms,
                format!("conversation {cid}: a commit under fence {fence} that no turn computed"),
            )),
            Some(evs) => {
                let want = before.turn(req, evs);
                if want != got {
                    found.push(v(
                        Invariant::SpecOracle,
                        e.t_ms,
                        format!(
                            "conversation {cid} (fence {fence}): from {before:?} the events {:?} give {want:?}, but the store committed {got:?}",
                            evs.iter().map(|x| format!("{}{}", x.kind, x.field.as_deref().map(|f| format!(" {f}")).unwrap_or_default())).collect::<Vec<_>>()
                        ),
                    ));
                }
            }
        }
        committed.insert(cid, got);
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

    fn field(f: &str, c: Confidence) -> Extracted {
        Extracted { kind: "field".into(), field: Some(f.into()), value: Some(format!("v-{f}")), confidence: Some(c) }
    }

    fn plain(kind: &str) -> Extracted {
        Extracted { kind: kind.into(), field: None, value: None, confidence: None }
    }

    const LEAD: &[&str] = &["email", "phone", "company"];

    /// The rules read as the design states them, one `check(turns, expected)` per behaviour.
    fn check(turns: &[Vec<Extracted>], step: &str, fields: usize, streak: u64) {
        let mut s = Spec::start();
        for t in turns {
            s = s.turn(LEAD, t);
        }
        assert_eq!((s.step.as_str(), s.fields.len(), s.streak, s.turns), (step, fields, streak, turns.len() as u64), "{turns:?}");
    }

    #[test]
    fn the_oracle_follows_the_written_rules() {
        use Confidence::*;
        check(&[vec![field("email", High)]], "gathering", 1, 0);
        check(&[vec![field("email", Medium)]], "gathering", 0, 0);
        check(&[vec![field("email", Low)]], "gathering", 0, 1);
        check(&[vec![field("favourite_colour", High)]], "gathering", 0, 0);
        check(&[vec![field("email", High), field("phone", High), field("company", High)]], "confirming", 3, 0);
        check(&[vec![field("email", High), field("phone", High), field("company", High)], vec![plain("confirmed")]], "succeeded", 3, 0);
        check(&[vec![plain("confirmed")]], "gathering", 0, 0);
        check(&[vec![plain("declined")], vec![field("email", High)]], "cancelled", 0, 0);
        check(&[vec![], vec![], vec![]], "gathering", 0, 3);
        check(&[vec![], vec![], vec![], vec![plain("no_signal")]], "needs_human", 0, 4);
        // Medium confidence is not progress: it does not reset the streak.
        check(&[vec![], vec![field("email", Medium)], vec![], vec![], vec![]], "needs_human", 0, 4);
        // A conversation that keeps making a little progress still ends at the turn limit.
        let forty: Vec<Vec<Extracted>> =
            (0..40).map(|i| vec![if i % 2 == 0 { plain("no_signal") } else { field("email", High) }]).collect();
        check(&forty[..39], "gathering", 1, 1);
        check(&forty, "needs_human", 1, 0);
    }

    #[test]
    fn the_spec_oracle_fires_when_a_committed_state_is_not_what_the_rules_give() {
        // The events set the email; the store says the conversation moved on to confirming.
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["step"] = json!("confirming");
        }
        fires(&out, Invariant::SpecOracle);
        // The streak grew on a turn that made progress.
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["noSignalStreak"] = json!(1);
        }
        fires(&out, Invariant::SpecOracle);
        // A commit no turn computed.
        let mut out = clean();
        if let Ev::Transition { fence, .. } = &mut out.history[1].ev {
            *fence = 7;
        }
        fires(&out, Invariant::SpecOracle);
    }
}
