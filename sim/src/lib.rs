//! Deterministic simulation harness: runs the orchestrator in seeded turmoil worlds (issue 4).
