//! Invariant 3: no conversation is stuck in a NO_SIGNAL loop or left open after the heal.

use super::{v, Invariant, Violation};
use crate::contract::{Step, NO_SIGNAL_STREAK_MAX};
use crate::history::Ev;
use crate::world::RunOutput;
use std::collections::BTreeMap;

/// Invariant 3: No committed non-terminal state has more than the streak bound of NO_SIGNALs, and after
/// the heal every conversation reached a terminal step.
pub fn no_signal_loop(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, record, .. } = &e.ev {
            let step = record["state"]["step"].as_str().and_then(Step::parse);
            let streak = record["state"]["noSignalStreak"].as_u64().unwrap_or(0);
            if step.is_some_and(|s| !s.is_terminal()) && streak > NO_SIGNAL_STREAK_MAX as u64 {
                found.push(v(Invariant::NoSignalLoop, e.t_ms, format!("conversation {cid} committed (fence {fence}) in {step:?} with a NO_SIGNAL streak of {streak} > {NO_SIGNAL_STREAK_MAX}")));
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
                    Invariant::NoSignalLoop,
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
                Invariant::NoSignalLoop,
                out.sim_ms,
                format!(
                    "conversation {cid} of {} ended the run in {:?} (version {}, streak {}): not terminal after the heal",
                    r.owner, r.state.step, r.state.version, r.state.no_signal_streak
                ),
            )),
            None => found.push(v(
                Invariant::NoSignalLoop,
                out.sim_ms,
                format!("conversation {cid} was acknowledged as created but has no state"),
            )),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;
    use crate::contract::{Extracted, Step};
    use crate::history::{Entry, Ev};
    use serde_json::json;

    #[test]
    fn no_signal_loop_fires_on_a_long_streak_or_a_conversation_left_open() {
        let mut out = clean();
        if let Ev::ModelCommit { record, .. } = &mut out.history[2].ev {
            record["state"]["noSignalStreak"] = json!(NO_SIGNAL_STREAK_MAX + 1);
        }
        fires(&out, Invariant::NoSignalLoop);
        let mut out = clean();
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.step = Step::Gathering;
        fires(&out, Invariant::NoSignalLoop);
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
        fires(&out, Invariant::NoSignalLoop);
    }
}
