//! Invariant 7: exactly-once effects.

use super::{v, Invariant, Violation};
use crate::contract::Step;
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

/// Invariant 7: Each conversation submits at most once, and one that ended `succeeded` submitted at
/// least once; each idempotency key changes state at most once. Against the store's write log:
/// only a conversation a commit made `succeeded` is ever submitted, never before that commit
/// applied, and with the data it succeeded with, which is its final data.
pub fn exactly_once(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut accepted: BTreeMap<&str, u32> = BTreeMap::new();
    let mut per_key: BTreeMap<&str, u32> = BTreeMap::new();
    for e in &out.history {
        match &e.ev {
            Ev::SinkReceived { cid, key, accepted: true, .. } => {
                let n = accepted.entry(cid).or_default();
                *n += 1;
                if *n > 1 {
                    found.push(v(Invariant::ExactlyOnce, e.t_ms, format!("conversation {cid} was submitted {n} times (key {key})")));
                }
            }
            // A cancel's commit has no key.
            Ev::ModelCommit { cid, fence, idem_key, .. } if !idem_key.is_empty() => {
                let n = per_key.entry(idem_key).or_default();
                *n += 1;
                if *n > 1 {
                    found.push(v(
                        Invariant::ExactlyOnce,
                        e.t_ms,
                        format!("conversation {cid}: idempotency key {idem_key} changed state {n} times (latest under fence {fence})"),
                    ));
                }
            }
            _ => {}
        }
    }
    for (cid, rec) in &out.finals {
        if rec.as_ref().is_some_and(|r| r.state.step == Step::Succeeded) && !accepted.contains_key(cid.as_str()) {
            found.push(v(Invariant::ExactlyOnce, out.sim_ms, format!("conversation {cid} ended succeeded but was never submitted")));
        }
    }
    // Checked against the store's own write log: when each conversation's commit to
    // `succeeded` applied, and with what data.
    let mut succeeded: BTreeMap<&str, (u64, &Value)> = BTreeMap::new();
    let mut accepted_at: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &out.history {
        if let Ev::SinkReceived { cid, accepted: true, .. } = &e.ev {
            accepted_at.entry(cid).or_insert(e.t_ms);
        }
    }
    for e in &out.history {
        if let Ev::ModelCommit { cid, record, .. } = &e.ev {
            if record["state"]["step"] == "succeeded" {
                succeeded.entry(cid).or_insert((e.t_ms, &record["state"]["collectedData"]));
            }
        }
    }
    // Delivered within the bound: by the time the relays had their chance after the later of
    // the success and the heal.
    for (cid, (at, _)) in &succeeded {
        let due = (*at).max(out.heal_at_ms) + crate::world::SINK_SETTLE_MS;
        let first = accepted_at.get(cid).copied();
        if first.is_some_and(|t| t > due) || (first.is_none() && out.sim_ms > due && out.finals.get(*cid).is_some_and(Option::is_some)) {
            found.push(v(
                Invariant::ExactlyOnce,
                due,
                format!(
                    "conversation {cid} succeeded at {at} ms but the sink accepted it {} (bound: {due} ms)",
                    first.map_or("never".into(), |t| format!("at {t} ms"))
                ),
            ));
        }
    }
    for e in &out.history {
        let Ev::SinkReceived { cid, key, accepted: true, data, .. } = &e.ev else { continue };
        match succeeded.get(cid.as_str()) {
            None => found.push(v(
                Invariant::ExactlyOnce,
                e.t_ms,
                format!("conversation {cid} was submitted (key {key}) but no commit ever made it succeeded: {data}"),
            )),
            Some((at, _)) if *at > e.t_ms => found.push(v(
                Invariant::ExactlyOnce,
                e.t_ms,
                format!(
                    "conversation {cid} was submitted (key {key}) at {} ms, before the commit that made it succeeded applied at {at} ms",
                    e.t_ms
                ),
            )),
            Some((_, committed)) if *committed != data => found.push(v(
                Invariant::ExactlyOnce,
                e.t_ms,
                format!("conversation {cid} was submitted with {data}, but it succeeded with {committed}"),
            )),
            Some(_) => {}
        }
        if let Some(Some(fin)) = out.finals.get(cid) {
            let fin_data = serde_json::to_value(&fin.state.collected_data).unwrap_or_default();
            if fin_data != *data {
                found.push(v(
                    Invariant::ExactlyOnce,
                    e.t_ms,
                    format!("conversation {cid} was submitted with {data}, but its final data is {fin_data}"),
                ));
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
    fn exactly_once_fires_on_a_submission_the_store_does_not_bear_out() {
        let email = json!({"email": "alice.c0.email"});
        // Delivered, but long after the heal and the relays' bound.
        let late = crate::world::SINK_SETTLE_MS + 1_000;
        let mut out = submitted(late, email.clone());
        out.sim_ms = late + 1;
        assert!(exactly_once(&out).iter().any(|x| x.evidence.contains("bound")), "{:?}", exactly_once(&out));
        assert_eq!(exactly_once(&submitted(8, email.clone())), vec![], "after the commit, with its data");
        let early = exactly_once(&submitted(4, email.clone()));
        assert!(early.iter().any(|x| x.evidence.contains("before the commit that made it succeeded")), "{early:?}");
        let other = exactly_once(&submitted(8, json!({"email": "alice.c0.other"})));
        assert!(other.iter().any(|x| x.evidence.contains("but it succeeded with")), "{other:?}");
        // A conversation that never succeeded, submitted.
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 8,
            ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data: email, fault: None },
        });
        let never = exactly_once(&out);
        assert!(never.iter().any(|x| x.evidence.contains("no commit ever made it succeeded")), "{never:?}");
    }

    #[test]
    fn exactly_once_fires_on_a_second_submission_a_key_applied_twice_or_a_success_never_submitted() {
        let mut out = clean();
        for t in [30, 31] {
            out.history.push(Entry {
                t_ms: t,
                ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data: json!({}), fault: None },
            });
        }
        fires(&out, Invariant::ExactlyOnce);
        let mut out = clean();
        let mut again = out.history[2].clone();
        if let Ev::ModelCommit { fence, version, record, .. } = &mut again.ev {
            *fence = 2;
            *version = 2;
            record["writerFence"] = json!(2);
            record["state"]["version"] = json!(2);
        }
        again.t_ms = 9;
        out.history.push(again);
        fires(&out, Invariant::ExactlyOnce);
        // Ended succeeded, never submitted.
        let mut out = clean();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.step = Step::Succeeded;
        }
        fires(&out, Invariant::ExactlyOnce);
    }
}
