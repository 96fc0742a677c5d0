//! 8, sharpened: every answer arrives within the bound the orchestrator's configuration promises
//! — the acquire deadline, the Copilot deadline, a store reply timeout for each store call a
//! turn may wait on, and the network — not within a generic client timeout. A request whose
//! worker was down, or whose link was broken, while it waited is excused (as for no answer); a
//! client that sent its request slowly is owed its answer that much later.

use super::{calls, v, Excuses, Violation, NO_500_NO_HANG};
use crate::history::Manner;
use crate::world::RunOutput;

pub fn answer_bounds(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let excuses = Excuses::of(&out.history);
    for c in calls(&out.history) {
        let Some((t, status, _, _)) = c.answer else { continue };
        let took = t.saturating_sub(c.at_ms);
        let sending = match c.manner {
            Some(Manner::Slow { send_ms }) => *send_ms,
            _ => 0,
        };
        if took > out.answer_bound_ms + sending && !excuses.meanwhile(c.client, c.worker, c.at_ms, t) {
            found.push(v(
                NO_500_NO_HANG,
                t,
                format!(
                    "request {} ({} {} via {}, key {:?}) was answered {status} after {took} ms; the configuration promises {} ms",
                    c.req, c.op, c.user, c.worker, c.key, out.answer_bound_ms
                ),
            ));
        }
    }
    found
}
