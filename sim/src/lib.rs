//! The deterministic simulation harness: runs the real orchestrator in seeded turmoil worlds,
//! checks invariants over the history, and reproduces any failure from its seed.
//!
//! Codemap:
//! - [`world`] — options → one turmoil simulation (hosts: redis, copilot, workers, clients).
//! - [`redis_model`], [`resp`] — the Redis model and its wire format.
//! - [`copilot_host`] — the fake LLM host.
//! - [`client`] — simulated users and their retries and duplicate deliveries.
//! - [`sink`] — the effects sink.
//! - [`faults`] — the serialisable fault plan.
//! - [`shrink`] — a failing plan cut down to the faults the failure needs.
//! - [`history`] — the event log, trace hash, JSON lines.
//! - [`known_bugs`] — pitfalls re-created by decorating the orchestrator's seams.
//! - [`checkers`] — the invariants, read from the history after the run.
//! - [`report`] — a run's verdict, failure report and replay command.
//! - [`net`] — turmoil behind the orchestrator's connector and listener seams.

pub mod checkers;
pub mod client;
pub mod copilot_host;
pub mod faults;
pub mod history;
pub mod known_bugs;
pub mod net;
pub mod redis_model;
pub mod report;
pub mod resp;
pub mod shrink;
pub mod sink;
pub mod world;

pub use known_bugs::KnownBug;
