//! Invariant 4: a fenced single writer per conversation.

use super::{v, Invariant, Violation};
use crate::history::Ev;
use crate::world::RunOutput;
use std::collections::BTreeMap;

/// Invariant 4: Commits per conversation, in the order the store applied them, carry strictly
/// increasing fences and versions that grow by exactly one, and each was written by the holder
/// of the newest lease (the fence counter Redis held when the commit applied).
///
/// For a system that does not fence ([`crate::workers::Reports::fences`]) only the versions
/// are checked: two writers that both read version n both write n + 1.
pub fn fenced_single_writer(out: &RunOutput) -> Vec<Violation> {
    let mut found = Vec::new();
    let fenced = out.reports.fences;
    let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in &out.history {
        if let Ev::ModelCommit { cid, fence, version, record, .. } = &e.ev {
            let (pf, pv) = last.get(cid.as_str()).copied().unwrap_or((0, 0));
            if fenced && *fence <= pf {
                found.push(v(
                    Invariant::FencedWriter,
                    e.t_ms,
                    format!("conversation {cid}: commit under fence {fence} after a commit under fence {pf}"),
                ));
            }
            if *version != pv + 1 {
                found.push(v(
                    Invariant::FencedWriter,
                    e.t_ms,
                    format!("conversation {cid}: version went {pv} -> {version} (fence {fence})"),
                ));
            }
            if fenced && record["writerFence"].as_u64() != Some(*fence) {
                found.push(v(
                    Invariant::FencedWriter,
                    e.t_ms,
                    format!(
                        "conversation {cid}: committed while the newest lease was fence {fence}, by a writer holding fence {}",
                        record["writerFence"]
                    ),
                ));
            }
            last.insert(cid, (*fence, *version));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::fixtures::*;
    use crate::checks::*;

    use crate::history::{Entry, Ev};
    use serde_json::json;

    #[test]
    fn fenced_single_writer_fires_on_a_stale_fence_or_a_version_gap() {
        let mut out = clean();
        let mut second = out.history[2].clone();
        second.t_ms = 8;
        if let Ev::ModelCommit { version, idem_key, record, .. } = &mut second.ev {
            *version = 2;
            *idem_key = "idem:{c:c1}:alice:1:k2".into();
            record["state"]["version"] = json!(2);
            // The same turn's events applied once more, so only the fence is wrong.
            record["state"]["turns"] = json!(2);
        }
        out.history.push(second);
        fires(&out, Invariant::FencedWriter);
    }

    #[test]
    fn without_fences_two_writers_of_one_version_are_still_caught() {
        let out = unreported();
        assert!(check(&out).is_empty(), "{:?}", check(&out));
        // A second commit of the same version: a lost update (both writers read version 0).
        let mut out = unreported();
        let again = out.history.iter().find(|e| matches!(e.ev, Ev::ModelCommit { .. })).cloned().unwrap();
        out.history.push(Entry { t_ms: 9, ..again });
        let v = fenced_single_writer(&out);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].evidence.contains("version went 1 -> 1"), "{v:?}");
    }
}
