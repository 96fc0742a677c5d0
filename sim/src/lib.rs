//! The deterministic simulation harness: runs the real orchestrator in seeded turmoil worlds.
//!
//! Codemap:
//! - [`resp`] — RESP2 framing for the Redis model.
//! - [`redis_model`] — the Redis model: our commands and scripts, expiry on the host clock.
pub mod redis_model;
pub mod resp;
