//! The workers under test: orchsim's orchestrator, and the same with a known bug.

pub mod known_bugs;
pub mod orchsim;

pub use known_bugs::KnownBug;
