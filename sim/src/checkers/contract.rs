//! 13. Contract statuses: every hostile request (another user's or a guessed conversation, a bad
//! or missing token, a malformed body or key, a key reused with another body) is answered with
//! a status the contract (README "Statuses") gives that request, and nothing else.

use super::{calls, v, Violation};
use crate::world::RunOutput;

pub const CONTRACT_STATUS: &str = "13 contract statuses";

pub fn contract_statuses(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    for c in calls(&out.history) {
        let (Some(expect), Some((t, status, _, body))) = (c.expect, c.answer) else { continue };
        if !expect.contains(&status) {
            found.push(v(
                CONTRACT_STATUS,
                t,
                format!(
                    "request {} ({} by {} via {}, key {:?}) was answered {status}, the contract gives {expect:?}: {body}",
                    c.req, c.op, c.user, c.worker, c.key
                ),
            ));
        }
    }
    found
}
