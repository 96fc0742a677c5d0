//! The one place that chooses real or loom synchronisation types (the tokio pattern).
//!
//! Business code imports `crate::sync::*` and never mentions loom;
//! `RUSTFLAGS="--cfg orchsim_loom"` swaps in loom's types so the lease table and the
//! idempotency tracking of `MemStore` run unchanged under the model checker.
//!
//! Why not the customary `--cfg loom`: tokio compiles `tokio::net` out under `cfg(loom)`,
//! which breaks hyper-util and axum (both use it) for the whole build. A name of our own
//! swaps only our types.

#[cfg(orchsim_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(orchsim_loom)]
pub(crate) use loom::sync::Mutex;

#[cfg(not(orchsim_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(orchsim_loom))]
pub(crate) use std::sync::Mutex;

/// Locks a mutex, treating poisoning as the panic it came from: a panic while holding the
/// lock already failed the run, and the data behind it is not trusted afterwards.
pub(crate) fn lock<T>(m: &Mutex<T>) -> crate::sync::Guard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(orchsim_loom)]
pub(crate) type Guard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(not(orchsim_loom))]
pub(crate) type Guard<'a, T> = std::sync::MutexGuard<'a, T>;
