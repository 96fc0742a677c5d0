//! Progress is required, not assumed: after the heal every user's workload completes. Each user
//! created every conversation it set out to create, and each that reached a terminal step did
//! so within [`TERMINAL_AFTER_HEAL_MS_MAX`] of the heal (one that never did is invariant 3's). A run in which nothing works — every request a
//! 503, no conversation created, nothing committed — fails here, naming the user and its last
//! answers, instead of passing every invariant about conversations that do not exist.

use super::{calls, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use std::collections::BTreeMap;

/// How long after the heal a conversation may take to reach a terminal step.
pub const TERMINAL_AFTER_HEAL_MS_MAX: u64 = 60_000;
/// Answers quoted as evidence for a user that made no progress.
const LAST_ANSWERS_SHOWN: usize = 3;

pub fn progress(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let all_calls = calls(&out.history);
    let last_answers = |user: &str| -> String {
        let mut answers: Vec<String> = all_calls
            .iter()
            .filter(|c| c.user == user)
            .filter_map(|c| c.answer.map(|(t, s, _, body)| format!("#{} {} at {t} ms: {s} {body}", c.req, c.op)))
            .collect();
        let keep = answers.len().saturating_sub(LAST_ANSWERS_SHOWN);
        answers.drain(..keep);
        if answers.is_empty() {
            "no answers at all".into()
        } else {
            answers.join("; ")
        }
    };
    let mut owned: BTreeMap<&str, u64> = BTreeMap::new();
    for owner in out.owners.values() {
        *owned.entry(owner.as_str()).or_default() += 1;
    }
    for (user, wanted) in &out.workload {
        let have = owned.get(user.as_str()).copied().unwrap_or(0);
        if have < *wanted {
            found.push(v(
                Invariant::Progress,
                out.sim_ms,
                format!("{user} set out to create {wanted} conversations and has {have}; its last answers: {}", last_answers(user)),
            ));
        }
    }
    // When each conversation's state became terminal, from the commits the store applied.
    let mut terminal_at: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, record, .. } = &e.ev {
            let terminal = matches!(record["state"]["step"].as_str(), Some("succeeded" | "cancelled" | "needs_human"));
            if terminal {
                terminal_at.entry(cid.as_str()).or_insert(e.t_ms);
            } else {
                terminal_at.remove(cid.as_str());
            }
        }
    }
    let bound = out.heal_at_ms + TERMINAL_AFTER_HEAL_MS_MAX;
    for (cid, owner) in &out.owners {
        match terminal_at.get(cid.as_str()) {
            Some(t) if *t <= bound => {}
            Some(t) => found.push(v(
                Invariant::Progress,
                *t,
                format!("conversation {cid} of {owner} became terminal at {t} ms, past the bound of {bound} ms (heal + {TERMINAL_AFTER_HEAL_MS_MAX} ms)"),
            )),
            // Not terminal at the end of the run: invariant 3 reports it with the final state.
            None => {}
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
    fn progress_fires_when_a_user_could_not_create_or_finish_its_conversations() {
        // Alice set out to create two conversations and has one.
        let mut out = clean();
        out.workload.insert("alice".into(), 2);
        fires(&out, Invariant::Progress);
        // A run in which nothing was created at all: vacuous, so it fails.
        let mut out = clean();
        out.history.clear();
        out.owners.clear();
        out.finals.clear();
        fires(&out, Invariant::Progress);
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
        fires(&out, Invariant::Progress);
    }
}
