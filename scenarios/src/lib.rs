//! The suite for chat orchestrators that speak orchsim's HTTP contract, built on the `sim` kit:
//! the simulated world (users and attackers, the LLM-like Copilot host, the effects sink, the
//! fault plan), its history, the invariants checked over it, the scenario table with its
//! expectations, and the report a person reads. The worker under test is plugged in.
//!
//! Codemap (the flow of a run: world → history → checks → report):
//! - [`world`] — options → one turmoil simulation: hosts `redis`, `copilot`, `sink`,
//!   `worker-N`, `client-N`; [`world::client`], [`world::copilot_host`], [`world::sink`],
//!   [`world::faults`].
//! - [`contract`] — the HTTP contract's shapes and bounds, restated from the specification.
//! - [`history`] — the events a run records.
//! - [`checks`] — the invariants, read from the history after the run.
//! - [`report`] — a run's verdict, failure report and replay command.
//! - [`workers`] — the workers under test: orchsim's orchestrator, and its known bugs.
//! - [`explore`] — many seeds on all cores, determinism re-checks, the summary.
//! - [`runner`] — run a seed, replay a run file, shrink a failure, on any worker.
//! - [`suite`] — named scenarios and their expectations.

pub mod checks;
pub mod contract;
pub mod explore;
pub mod history;
pub mod html;
pub mod regressions;
pub mod report;
pub mod runner;
pub mod suite;
pub mod workers;
pub mod world;

pub use suite::*;
pub use workers::KnownBug;
