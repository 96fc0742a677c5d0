//! Invariant 2: no user sees or stores another user's data.

use super::{calls, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;

/// Invariant 2: No response, replay or read gives a user anything of another user's, and no Copilot
/// call made for a user carries another user's data in its context.
pub fn cross_user(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    for e in &out.history {
        if let Ev::CopilotSawForeignData { cid, user, field, value } = &e.ev {
            found.push(v(
                Invariant::CrossUser,
                e.t_ms,
                format!("Copilot was asked for {user} on conversation {cid} with {field}={value} in the context"),
            ));
        }
    }
    for c in calls(&out.history) {
        let Some((t, 200, _, body)) = c.answer else { continue };
        if let Some(cid) = body["conversationId"].as_str() {
            if let Some(owner) = out.owners.get(cid) {
                if owner != c.user {
                    found.push(v(
                        Invariant::CrossUser,
                        t,
                        format!("request {} of {} via {} answered with conversation {cid} of {owner}", c.req, c.user, c.worker),
                    ));
                }
            }
        }
        let stored = body["workflowState"]["collectedData"].as_object().into_iter().flatten().map(|(f, v)| (f.as_str(), v));
        let extracted = body["extracted"].as_array().into_iter().flatten().filter_map(|x| Some((x["field"].as_str()?, &x["value"])));
        for (field, value) in stored.chain(extracted) {
            let tag = value.as_str().and_then(|s| s.split('.').next()).unwrap_or("");
            if tag != c.user {
                found.push(v(
                    Invariant::CrossUser,
                    t,
                    format!("request {} of {} via {} saw {field}={value}, which belongs to {tag}", c.req, c.user, c.worker),
                ));
            }
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
    fn cross_user_fires_on_another_users_value_or_conversation() {
        let mut out = clean();
        response_body(&mut out)["workflowState"]["collectedData"]["email"] = json!("bob.c0.email");
        out.finals.get_mut("c1").unwrap().as_mut().unwrap().state.collected_data.insert("email".into(), "bob.c0.email".into());
        fires(&out, Invariant::CrossUser);
        let mut out = clean();
        out.owners.insert("c1".into(), "bob".into());
        fires(&out, Invariant::CrossUser);
        let mut out = clean();
        response_body(&mut out)["extracted"] = json!([{"kind":"field","field":"email","value":"bob.c0.email","confidence":"high"}]);
        fires(&out, Invariant::CrossUser);
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 3,
            ev: Ev::CopilotSawForeignData { cid: "c1".into(), user: "alice".into(), field: "email".into(), value: "bob.c0.email".into() },
        });
        fires(&out, Invariant::CrossUser);
    }
}
