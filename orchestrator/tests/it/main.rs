//! Integration tests of the reference orchestrator, one binary: the turn protocol and HTTP API
//! on the embedded store (`turns`), the store conformance suite run against `MemStore` and a
//! real `redis-server` alike (`conformance`), and several workers sharing one Redis, with
//! Redis killed mid-run (`redis_workers`).

mod conformance;
mod redis_workers;
mod support;
mod turns;
