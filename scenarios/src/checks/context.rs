//! Invariant 10: the context prefix Copilot gets is well-formed.

use super::{v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;

/// Every Copilot call carried a context prefix that parses.
pub fn context_well_formed(out: &RunOutput) -> Vec<Violation> {
    out.history
        .iter()
        .filter_map(|e| match &e.ev {
            Ev::CopilotBadContext { cid, error, text } => {
                Some(v(Invariant::ContextWellFormed, e.t_ms, format!("conversation {cid}: Copilot got {text:?}: {error}")))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use crate::checks::fixtures::*;
    use crate::checks::*;

    use crate::history::{Entry, Ev};

    #[test]
    fn context_well_formed_fires_on_a_prefix_copilot_cannot_parse() {
        let mut out = clean();
        out.history.push(Entry {
            t_ms: 3,
            ev: Ev::CopilotBadContext { cid: "c1".into(), error: "missing step=".into(), text: "[WORKFLOW_CONTEXT]step=gathering".into() },
        });
        fires(&out, Invariant::ContextWellFormed);
    }
}
