//! Invariant 16: A cancel wins or loses cleanly. A cancel the user saw answered 200 says what happened:
//! `cancelled` (this cancel took the conversation over) or `already_finished` (it had ended —
//! succeeded, cancelled or handed over — and was left alone). Either way the answer must be
//! true of the store, in the store's own order of writes:
//!
//! - the state it shows was applied before the answer came (a cancel's own write, with no
//!   idempotency key, for `cancelled`): a cancel acknowledged before it took effect lets a turn
//!   still in flight commit after the user was told it was over;
//! - after the answer, no commit changes that conversation's step or data (a turn after the
//!   end may count itself, nothing more), and it ends the run in the step the answer showed;
//! - a cancel never writes over a finished conversation (a success stays a success, its
//!   submission standing; never `succeeded` then `cancelled`).

use super::{calls, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use serde_json::Value;
use std::collections::BTreeMap;

/// One applied commit of a conversation, in the store's order.
struct Applied<'a> {
    t_ms: u64,
    version: u64,
    step: &'a str,
    data: &'a Value,
    /// A commit with no idempotency key: a cancel's.
    cancel: bool,
}

fn terminal(step: &str) -> bool {
    matches!(step, "succeeded" | "cancelled" | "needs_human")
}

pub fn cancel_clean(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut applied: BTreeMap<&str, Vec<Applied<'_>>> = BTreeMap::new();
    for e in &out.history {
        let Ev::ModelCommit { cid, version, idem_key, record, fence } = &e.ev else { continue };
        let step = record["state"]["step"].as_str().unwrap_or("");
        let commits = applied.entry(cid).or_default();
        if let Some(prev) = commits.last().filter(|p| idem_key.is_empty() && terminal(p.step)) {
            found.push(v(
                Invariant::CancelClean,
                e.t_ms,
                format!("conversation {cid}: a cancel (fence {fence}) wrote {step} over a conversation that had already {}", prev.step),
            ));
        }
        commits.push(Applied {
            t_ms: e.t_ms,
            version: *version,
            step,
            data: &record["state"]["collectedData"],
            cancel: idem_key.is_empty(),
        });
    }
    let none = Vec::new();
    for c in calls(&out.history) {
        let (Some(cid), Some((t, 200, _, body))) = (c.cid, c.answer) else { continue };
        if c.op != "cancel" {
            continue;
        }
        let who = format!("cancel #{} of {} via {} on conversation {cid}, answered at {t} ms", c.req, c.user, c.worker);
        let state = &body["workflowState"];
        let (step, version, data) = (state["step"].as_str().unwrap_or(""), state["version"].as_u64().unwrap_or(0), &state["collectedData"]);
        let cancelled = match body["result"].as_str() {
            Some("cancelled") if step == "cancelled" => true,
            Some("already_finished") if terminal(step) => false,
            _ => {
                found.push(v(Invariant::CancelClean, t, format!("{who}: the answer does not say what happened: {body}")));
                continue;
            }
        };
        let commits = applied.get(cid).unwrap_or(&none);
        let shown = commits.iter().any(|a| a.t_ms <= t && a.version == version && a.step == step && (a.cancel || !cancelled));
        if !shown {
            found.push(v(
                Invariant::CancelClean,
                t,
                format!(
                    "{who}: it answered {} at version {version}, but the store had applied no such {} by then",
                    body["result"],
                    if cancelled { "cancel" } else { "state" }
                ),
            ));
        }
        for a in commits.iter().filter(|a| a.t_ms > t) {
            if a.step != step || a.data != data {
                found.push(v(
                    Invariant::CancelClean,
                    a.t_ms,
                    format!(
                        "{who} ({step}, data {data}): afterwards the store applied version {} in {} with data {}",
                        a.version, a.step, a.data
                    ),
                ));
            }
        }
        if let Some(Some(fin)) = out.finals.get(cid) {
            if fin.state.step.as_str() != step {
                found.push(v(
                    Invariant::CancelClean,
                    out.sim_ms,
                    format!("{who} showed {step}, but the conversation ended the run {:?}", fin.state.step),
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
    fn cancel_clean_fires_when_a_cancel_is_acknowledged_but_does_not_hold() {
        assert_eq!(check(&cancelled()), vec![], "a clean cancel");
        // Acknowledged before the store applied it (the write came after the answer).
        let mut out = cancelled();
        cancel_commit(&mut out).t_ms = 30;
        out.history.sort_by_key(|e| e.t_ms);
        fires(&out, Invariant::CancelClean);
        // The answer says cancelled, but shows another step.
        let mut out = cancelled();
        response_body(&mut out)["result"] = json!("cancelled");
        if let Some(Ev::Response { body, .. }) =
            out.history.iter_mut().map(|e| &mut e.ev).find(|e| matches!(e, Ev::Response { req: 1, .. }))
        {
            body["workflowState"]["step"] = json!("gathering");
        }
        assert!(cancel_clean(&out).iter().any(|x| x.evidence.contains("does not say what happened")), "{:?}", cancel_clean(&out));
        // After the answer, a turn still in flight commits a field: a state mixing both.
        let mut out = cancelled();
        let Ev::ModelCommit { record, .. } = &cancel_commit(&mut out).ev else { unreachable!() };
        let mut later = record.clone();
        later["state"]["collectedData"]["phone"] = json!("alice.c0.phone");
        later["state"]["version"] = json!(3);
        later["writerFence"] = json!(3);
        out.history.push(Entry {
            t_ms: 40,
            ev: Ev::ModelCommit { cid: "c1".into(), fence: 3, version: 3, idem_key: "idem:{c:c1}:alice:1:k2".into(), record: later },
        });
        assert!(
            cancel_clean(&out).iter().any(|x| x.evidence.contains("afterwards the store applied version 3")),
            "{:?}",
            cancel_clean(&out)
        );
        // It ended the run in another step than the answer showed.
        let mut out = cancelled();
        if let Some(Some(r)) = out.finals.get_mut("c1") {
            r.state.step = Step::NeedsHuman;
        }
        fires(&out, Invariant::CancelClean);
        // A cancel written over a success (`succeeded`, then `cancelled`).
        let mut out = cancelled();
        for e in &mut out.history {
            if let Ev::ModelCommit { record, idem_key, .. } = &mut e.ev {
                if !idem_key.is_empty() {
                    record["state"]["step"] = json!("succeeded");
                }
            }
        }
        assert!(cancel_clean(&out).iter().any(|x| x.evidence.contains("had already succeeded")), "{:?}", cancel_clean(&out));
    }
}
