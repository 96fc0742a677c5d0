//! Doctored histories the invariants' tests start from.

use super::*;
use crate::contract::Conversation as ConversationRecord;
use crate::contract::Extracted;
use crate::contract::{Confidence, Step, WorkflowState};
use crate::history::{Entry, Ev, Meant};
use crate::world::RunOutput;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A small clean history: alice creates c1 and sets her email in one turn.
pub(crate) fn clean() -> RunOutput {
    let mut state = WorkflowState::new("lead");
    state.collected_data.insert("email".into(), "alice.c0.email".into());
    state.version = 1;
    state.turns = 1;
    let record = json!({"owner":"alice","state":state,"writerFence":1});
    let body = json!({"conversationId":"c1","turn":1,"reply":"","extracted":[],"workflowState":state,"replayed":false});
    let h = vec![
        Entry {
            t_ms: 0,
            ev: Ev::Invoke {
                req: 0,
                client: "client-0".into(),
                user: "alice".into(),
                worker: "worker-0".into(),
                op: "turn".into(),
                cid: Some("c1".into()),
                key: Some("k".into()),
                query: Some("email is alice.c0.email".into()),
                duplicate: false,
                expect: None,
                manner: None,
                meant: Some(Meant::Field { field: Some("email".into()), value: "alice.c0.email".into(), sure: true }),
            },
        },
        Entry {
            t_ms: 5,
            ev: Ev::Transition {
                worker: "worker-0".into(),
                cid: "c1".into(),
                user: "alice".into(),
                fence: 1,
                from: Step::Gathering,
                to: Step::Gathering,
                events: vec![Extracted {
                    kind: "field".into(),
                    field: Some("email".into()),
                    value: Some("alice.c0.email".into()),
                    confidence: Some(Confidence::High),
                }],
            },
        },
        Entry {
            t_ms: 6,
            ev: Ev::ModelCommit {
                cid: "c1".into(),
                fence: 1,
                version: 1,
                idem_key: "idem:{c:c1}:alice:1:k".into(),
                record: record.clone(),
            },
        },
        Entry { t_ms: 7, ev: Ev::Response { req: 0, status: 200, retry_after: false, body } },
        // The worker's own account of the same turn (kept at the end: tests index the above).
        Entry {
            t_ms: 2,
            ev: Ev::LeaseTaken {
                worker: "worker-0".into(),
                cid: "c1".into(),
                user: "alice".into(),
                idem_key: "idem:{c:c1}:alice:1:k".into(),
                fence: 1,
                version: 0,
            },
        },
        Entry {
            t_ms: 6,
            ev: Ev::Committed {
                worker: "worker-0".into(),
                cid: "c1".into(),
                user: "alice".into(),
                idem_key: "idem:{c:c1}:alice:1:k".into(),
                fence: 1,
                version: 1,
            },
        },
    ];
    let mut fin = state.clone();
    fin.step = Step::Cancelled;
    RunOutput {
        reports: crate::workers::Reports { fences: true, turn_events: true },
        history: h,
        finals: BTreeMap::from([("c1".to_string(), Some(ConversationRecord { owner: "alice".into(), state: fin, writer_fence: 1 }))]),
        owners: BTreeMap::from([("c1".to_string(), "alice".to_string())]),
        workload: BTreeMap::from([("alice".to_string(), 1)]),
        heal_at_ms: 0,
        answer_bound_ms: 1_000,
        sim_ms: 10,
        error: None,
    }
}

pub(crate) fn fires(out: &RunOutput, invariant: Invariant) {
    let v = check(out);
    assert!(v.iter().any(|x| x.invariant == invariant), "{invariant} did not fire: {v:?}");
    // Some doctored histories break a second rule by their nature: a state no turn's events
    // give (the oracle sees it too), or a conversation handed to another user (its creator
    // is then short of one).
    let witnesses: &[Invariant] = match invariant {
        Invariant::ExactlyOnce | Invariant::NoSignalLoop => &[Invariant::SpecOracle],
        // A value or step no request of the user meant, stored.
        Invariant::ValidTransitions => &[Invariant::SpecOracle, Invariant::UserSaid],
        Invariant::Progress => &[Invariant::UserSaid],
        Invariant::CrossUser => &[Invariant::Progress, Invariant::UserSaid],
        _ => &[],
    };
    assert!(v.iter().all(|x| x.invariant == invariant || witnesses.contains(&x.invariant)), "only {invariant} should fire: {v:?}");
}

pub(crate) fn response_body(out: &mut RunOutput) -> &mut Value {
    out.history
        .iter_mut()
        .find_map(|e| match &mut e.ev {
            Ev::Response { body, .. } => Some(body),
            _ => None,
        })
        .unwrap()
}

/// A second turn (fence 2) of alice's conversation whose events set `phone` to `value` with
/// `confidence`, and the commit that stored it under `idem_key`.
pub(crate) fn second_turn_sets_phone(out: &mut RunOutput, value: &str, confidence: Confidence, idem_key: &str) {
    out.history.push(Entry {
        t_ms: 8,
        ev: Ev::Transition {
            worker: "worker-1".into(),
            cid: "c1".into(),
            user: "alice".into(),
            fence: 2,
            from: Step::Gathering,
            to: Step::Gathering,
            events: vec![Extracted {
                kind: "field".into(),
                field: Some("phone".into()),
                value: Some(value.into()),
                confidence: Some(confidence),
            }],
        },
    });
    let mut rec = match &out.history[2].ev {
        Ev::ModelCommit { record, .. } => record.clone(),
        _ => unreachable!(),
    };
    rec["state"]["collectedData"]["phone"] = json!(value);
    rec["state"]["version"] = json!(2);
    rec["writerFence"] = json!(2);
    out.history
        .push(Entry { t_ms: 9, ev: Ev::ModelCommit { cid: "c1".into(), fence: 2, version: 2, idem_key: idem_key.into(), record: rec } });
}

/// `clean()` as a system that reports neither fences nor turn events would leave it.
pub(crate) fn unreported() -> RunOutput {
    let mut out = clean();
    out.reports = crate::workers::Reports::default();
    out.history.retain(|e| !matches!(e.ev, Ev::Transition { .. } | Ev::LeaseTaken { .. } | Ev::Committed { .. }));
    for e in &mut out.history {
        if let Ev::ModelCommit { fence, record, .. } = &mut e.ev {
            *fence = 0;
            record["writerFence"] = json!(0);
        }
    }
    // What Copilot really extracted for the turn.
    out.history.push(Entry {
        t_ms: 4,
        ev: Ev::CopilotReply {
            cid: "c1".into(),
            latency_ms: 1,
            spike: false,
            misbehaviour: None,
            payload: json!({"intent":"provide","confidence":"high","fields":{"email":"alice.c0.email"}}),
        },
    });
    out
}

/// `clean()`, then alice presses cancel (#1, at 15 ms): the cancel's own commit (no key,
/// fence 2, version 2) at 20 ms, its answer at 25 ms.
pub(crate) fn cancelled() -> RunOutput {
    let mut out = clean();
    let Ev::ModelCommit { record, .. } = &out.history[2].ev else { unreachable!() };
    let mut record = record.clone();
    record["state"]["step"] = json!("cancelled");
    record["state"]["version"] = json!(2);
    record["writerFence"] = json!(2);
    let body = json!({"result": "cancelled", "workflowState": record["state"].clone()});
    out.history.push(Entry {
        t_ms: 15,
        ev: Ev::Invoke {
            req: 1,
            client: "client-0".into(),
            user: "alice".into(),
            worker: "worker-1".into(),
            op: "cancel".into(),
            cid: Some("c1".into()),
            key: None,
            query: None,
            duplicate: false,
            expect: None,
            manner: None,
            meant: Some(Meant::Decline),
        },
    });
    out.history.push(Entry { t_ms: 20, ev: Ev::ModelCommit { cid: "c1".into(), fence: 2, version: 2, idem_key: String::new(), record } });
    out.history.push(Entry { t_ms: 25, ev: Ev::Response { req: 1, status: 200, retry_after: false, body } });
    out.history.sort_by_key(|e| e.t_ms);
    out
}

pub(crate) fn cancel_commit(out: &mut RunOutput) -> &mut Entry {
    out.history.iter_mut().find(|e| matches!(&e.ev, Ev::ModelCommit { idem_key, .. } if idem_key.is_empty())).unwrap()
}

/// Invariant 7 against the write log, on a history whose one commit made c1 succeed with
/// alice's email, submitted at `sent_ms` with `data`.
pub(crate) fn submitted(sent_ms: u64, data: Value) -> RunOutput {
    let mut out = clean();
    for e in &mut out.history {
        if let Ev::ModelCommit { record, .. } = &mut e.ev {
            record["state"]["step"] = json!("succeeded");
        }
    }
    if let Some(Some(r)) = out.finals.get_mut("c1") {
        r.state.step = Step::Succeeded;
    }
    out.history.push(Entry {
        t_ms: sent_ms,
        ev: Ev::SinkReceived { cid: "c1".into(), key: "submit:c1".into(), accepted: true, data, fault: None },
    });
    out.history.sort_by_key(|e| e.t_ms);
    out
}
