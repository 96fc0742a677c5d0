//! Invariant 14: Every turn that took the lease ends: it commits, or it hands the lease back (its worker's
//! `Committed` or `Released` for that fence), unless its worker crashed first or the run ended
//! while it could still be working. A turn that simply stops — its request's handler dropped
//! because the client hung up, a task cancelled mid-turn — leaves the lease and the key's
//! in-flight marker to lapse at their TTL: meanwhile every turn of that conversation waits or
//! gets a 503, and the same key answers 409 although nobody is working on it.

use super::{down_windows, v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use std::collections::BTreeMap;

pub fn turns_end(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let down = down_windows(&out.history);
    // (worker, cid, fence) → when the lease was taken, and the key it was taken for.
    let mut open: BTreeMap<(&str, &str, u64), (u64, &str)> = BTreeMap::new();
    for e in &out.history {
        match &e.ev {
            Ev::LeaseTaken { worker, cid, idem_key, fence, .. } => {
                open.insert((worker, cid, *fence), (e.t_ms, idem_key));
            }
            Ev::Committed { worker, cid, fence, .. } | Ev::Released { worker, cid, fence, .. } => {
                open.remove(&(worker.as_str(), cid.as_str(), *fence));
            }
            _ => {}
        }
    }
    for ((worker, cid, fence), (taken, key)) in open {
        let crashed_after = down.get(worker).is_some_and(|ws| ws.iter().any(|(from, _)| *from >= taken));
        let still_working = taken + out.answer_bound_ms >= out.sim_ms;
        if crashed_after || still_working {
            continue;
        }
        // The client's side of it, for the reader: the requests with this key and how they ended.
        let user_key = key.rsplit(':').next().unwrap_or(key);
        let requests: Vec<String> = super::calls(&out.history)
            .iter()
            .filter(|c| c.cid == Some(cid) && c.key == Some(user_key) && c.at_ms <= taken)
            .rev()
            .take(2)
            .map(|c| match (c.answer, c.no_answer) {
                (Some((t, s, _, _)), _) => format!("#{} via {} answered {s} at {t} ms", c.req, c.worker),
                (None, Some((t, why))) => format!("#{} via {} ended at {t} ms: {why}", c.req, c.worker),
                _ => format!("#{} via {} never ended", c.req, c.worker),
            })
            .collect();
        found.push(v(
            Invariant::TurnsEnd,
            taken,
            format!(
                "{worker} took the lease of conversation {cid} (fence {fence}, key {key}) at {taken} ms and never committed or released it (the run went on to {} ms); requests: {}",
                out.sim_ms,
                if requests.is_empty() { "none seen".to_string() } else { requests.join("; ") }
            ),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;

    use crate::history::{Entry, Ev};

    #[test]
    fn turns_end_fires_on_a_lease_taken_and_never_committed_or_released() {
        let mut out = clean();
        out.history.retain(|e| !matches!(e.ev, Ev::Committed { .. }));
        out.sim_ms = 5_000;
        fires(&out, Invariant::TurnsEnd);
        // Given back (a release, even one the store could not confirm): the turn ended.
        let mut given_back = out.clone();
        given_back
            .history
            .push(Entry { t_ms: 6, ev: Ev::Released { worker: "worker-0".into(), cid: "c1".into(), fence: 1, released: false } });
        assert_eq!(check(&given_back), vec![]);
        // Its worker powered off after taking it: nothing was abandoned.
        let mut crashed = out.clone();
        crashed.history.push(Entry { t_ms: 3, ev: Ev::HostFault { host: "worker-0".into(), change: HostChange::Crashed } });
        assert_eq!(turns_end(&crashed), vec![]);
        // The run ended while the turn could still be working: not judged.
        let mut short = out.clone();
        short.sim_ms = 500;
        assert_eq!(turns_end(&short), vec![]);
    }
}
