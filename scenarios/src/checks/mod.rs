//! The invariants, checked over a finished run's history and final state. Checkers only read;
//! each returns the violations it found with the evidence a person needs to start debugging.
//! Every checker has a test below that feeds it a doctored history and watches it fire.

mod cancel;
mod context;
mod contract;
mod cross_user;
mod exactly_once;
mod fenced_writer;
#[cfg(test)]
pub(crate) mod fixtures;
mod fresh_replay;
mod lost_data;
mod no_hang;
mod no_signal_loop;
mod progress;
mod spec_oracle;
mod turns_end;
mod user_said;
mod valid_transitions;

pub use cancel::cancel_clean;
pub use context::context_well_formed;
pub use contract::contract_statuses;
pub use cross_user::cross_user;
pub use exactly_once::exactly_once;
pub use fenced_writer::fenced_single_writer;
pub use fresh_replay::fresh_replay;
pub use lost_data::lost_collected_data;
pub use no_hang::{answer_bounds, no_500_no_hang};
pub use no_signal_loop::no_signal_loop;
pub use progress::{progress, TERMINAL_AFTER_HEAL_MS_MAX};
pub use spec_oracle::spec_oracle;
pub use turns_end::turns_end;
pub use user_said::user_said;
pub use valid_transitions::valid_transitions;

use crate::history::{Entry, Ev, HostChange, Manner};
use crate::world::RunOutput;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What the suite holds a run to, numbered as DESIGN.md numbers them (9, determinism, is not a
/// checker of one run: `explore` re-runs seeds and compares trace hashes). Ordered by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Invariant {
    LostData,
    CrossUser,
    NoSignalLoop,
    FencedWriter,
    ValidTransitions,
    FreshReplay,
    ExactlyOnce,
    NoHang,
    ContextWellFormed,
    SpecOracle,
    Progress,
    ContractStatuses,
    TurnsEnd,
    UserSaid,
    CancelClean,
    /// A scenario's `never` expectation was reached (see [`crate::suite::Scenario::never`]).
    Never,
}

impl Invariant {
    pub const ALL: [Invariant; 16] = [
        Invariant::LostData,
        Invariant::CrossUser,
        Invariant::NoSignalLoop,
        Invariant::FencedWriter,
        Invariant::ValidTransitions,
        Invariant::FreshReplay,
        Invariant::ExactlyOnce,
        Invariant::NoHang,
        Invariant::ContextWellFormed,
        Invariant::SpecOracle,
        Invariant::Progress,
        Invariant::ContractStatuses,
        Invariant::TurnsEnd,
        Invariant::UserSaid,
        Invariant::CancelClean,
        Invariant::Never,
    ];

    /// Its number and name, as reports print it (`"4 fenced single writer"`).
    pub fn name(self) -> &'static str {
        match self {
            Invariant::LostData => "1 no lost collectedData",
            Invariant::CrossUser => "2 no cross-user data",
            Invariant::NoSignalLoop => "3 no stuck NO_SIGNAL loop",
            Invariant::FencedWriter => "4 fenced single writer",
            Invariant::ValidTransitions => "5 valid transitions only",
            Invariant::FreshReplay => "6 fresh replay",
            Invariant::ExactlyOnce => "7 exactly-once effects",
            Invariant::NoHang => "8 no 500 and no hang",
            Invariant::ContextWellFormed => "10 Copilot context well-formed",
            Invariant::SpecOracle => "11 specification oracle",
            Invariant::Progress => "12 progress after the heal",
            Invariant::ContractStatuses => "13 contract statuses",
            Invariant::TurnsEnd => "14 every turn that took the lease ends",
            Invariant::UserSaid => "15 stored only what the user said",
            Invariant::CancelClean => "16 a cancel wins or loses cleanly",
            Invariant::Never => "expectation: never",
        }
    }

    /// The invariant a name (or just its number) stands for.
    pub fn parse(s: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.name() == s || i.name().split(' ').next() == Some(s))
    }
}

impl std::fmt::Display for Invariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Invariant> for String {
    fn from(i: Invariant) -> String {
        i.name().into()
    }
}

impl TryFrom<String> for Invariant {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Invariant::parse(&s).ok_or_else(|| format!("unknown invariant {s:?}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_ms: u64,
    pub evidence: String,
}

/// A client request with its invoke and (if any) its answer.
pub(crate) struct Call<'a> {
    at_ms: u64,
    req: u64,
    client: &'a str,
    user: &'a str,
    worker: &'a str,
    op: &'a str,
    cid: Option<&'a str>,
    key: Option<&'a str>,
    /// The statuses the contract allows, for a hostile request.
    expect: Option<&'a [u16]>,
    manner: Option<&'a Manner>,
    answer: Option<(u64, u16, bool, &'a Value)>,
    no_answer: Option<(u64, &'a str)>,
}

pub(crate) fn calls(h: &[Entry]) -> Vec<Call<'_>> {
    let mut by_req: BTreeMap<u64, Call<'_>> = BTreeMap::new();
    for e in h {
        match &e.ev {
            Ev::Invoke { req, client, user, worker, op, cid, key, expect, manner, .. } => {
                let call = Call {
                    at_ms: e.t_ms,
                    req: *req,
                    client,
                    user,
                    worker,
                    op,
                    cid: cid.as_deref(),
                    key: key.as_deref(),
                    expect: expect.as_deref(),
                    manner: manner.as_ref(),
                    answer: None,
                    no_answer: None,
                };
                by_req.insert(*req, call);
            }
            Ev::Response { req, status, retry_after, body } => {
                if let Some(c) = by_req.get_mut(req) {
                    c.answer = Some((e.t_ms, *status, *retry_after, body));
                }
            }
            Ev::NoResponse { req, reason } => {
                if let Some(c) = by_req.get_mut(req) {
                    c.no_answer = Some((e.t_ms, reason));
                }
            }
            _ => {}
        }
    }
    by_req.into_values().collect()
}

/// When each host was down (crashed, not yet restarted), from the world's fault log.
pub(crate) fn down_windows(h: &[Entry]) -> BTreeMap<&str, Vec<(u64, u64)>> {
    let mut w: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for e in h {
        match &e.ev {
            Ev::HostFault { host, change: HostChange::Crashed } => w.entry(host.as_str()).or_default().push((e.t_ms, u64::MAX)),
            Ev::HostFault { host, change: HostChange::Restarted } => {
                if let Some(last) = w.entry(host.as_str()).or_default().last_mut() {
                    last.1 = e.t_ms;
                }
            }
            _ => {}
        }
    }
    w
}

pub(crate) fn v(invariant: Invariant, at_ms: u64, evidence: String) -> Violation {
    Violation { invariant, at_ms, evidence }
}

/// Every checker, in invariant order.
pub fn check(out: &RunOutput) -> Vec<Violation> {
    let mut all = Vec::new();
    all.extend(lost_collected_data(out));
    all.extend(cross_user(out));
    all.extend(no_signal_loop(out));
    all.extend(fenced_single_writer(out));
    all.extend(valid_transitions(out));
    all.extend(fresh_replay(out));
    all.extend(exactly_once(out));
    all.extend(no_500_no_hang(out));
    all.extend(answer_bounds(out));
    all.extend(context_well_formed(out));
    all.extend(spec_oracle(out));
    all.extend(progress(out));
    all.extend(contract_statuses(out));
    all.extend(turns_end(out));
    all.extend(user_said(out));
    all.extend(cancel_clean(out));
    all
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_clean_history_passes_every_checker() {
        assert_eq!(check(&clean()), vec![]);
    }

    #[test]
    fn every_invariant_has_one_name_that_reads_back() {
        let names: std::collections::BTreeSet<&str> = Invariant::ALL.iter().map(|i| i.name()).collect();
        assert_eq!(names.len(), Invariant::ALL.len());
        for i in Invariant::ALL {
            assert_eq!(Invariant::parse(i.name()), Some(i));
            let json = serde_json::to_string(&i).unwrap();
            assert_eq!(serde_json::from_str::<Invariant>(&json).unwrap(), i);
        }
        assert_eq!(Invariant::parse("4"), Some(Invariant::FencedWriter));
        assert_eq!(Invariant::parse("9 determinism"), None);
    }
}
