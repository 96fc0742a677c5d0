//! The deterministic-simulation kit: seeded turmoil worlds over named hosts, power-off
//! crashes, links cut both ways or one way, a history log with its trace hash, fault-schedule
//! shrinking, and the infrastructure hosts such systems need (a Redis model that runs real Lua
//! scripts). It knows nothing of any particular system under test: `scenarios` builds the
//! suite for chat orchestrators on it.
//!
//! Codemap:
//! - [`world`] — seeded streams, the `Sim` builder, `power_off`, `Link`/`set_link`, `HostChange`.
//! - [`net`] — turmoil TCP as an axum listener and a retrying dialler.
//! - [`history`] — `History<E>`, `Entry<E>`, JSON lines and the trace hash.
//! - [`shrink`] — a failing fault schedule cut down to the faults the failure needs.
//! - [`redis_model`], [`resp`] — the Redis model and its wire format.

pub mod history;
pub mod net;
pub mod redis_model;
pub mod resp;
pub mod shrink;
pub mod world;
