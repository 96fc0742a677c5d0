//! World-building primitives any suite needs: seeded sub-streams, a deterministic turmoil
//! `Sim`, power-off crashes, links cut both ways or one way, and the host changes a history
//! records.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, UNIX_EPOCH};

/// A seed's sub-stream for one purpose: independent of how much other purposes draw.
pub fn stream(seed: u64, purpose: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(purpose);
    r
}

/// The simulated network's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    pub tick_ms: u64,
    /// Bound on simulated time for the whole run.
    pub run_limit_ms: u64,
    /// One-way message latency, lowest and highest.
    pub net_latency_ms: (u64, u64),
    /// Poll hosts in a seeded random order each tick (more interleavings) instead of a fixed one.
    pub random_host_order: bool,
}

/// Simulated wall clock at time zero (fixed, so time-stamped output is equal across runs).
pub const EPOCH_S: u64 = 1_700_000_000;

/// A turmoil `Sim` whose every random choice comes from `rng` (turmoil's own seed is drawn
/// from it) and whose clock starts at [`EPOCH_S`].
pub fn build<'a>(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> turmoil::Sim<'a> {
    let mut builder = turmoil::Builder::new();
    if cfg.random_host_order {
        builder.enable_random_order();
    }
    builder
        .rng_seed(rng.random())
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .tick_duration(Duration::from_millis(cfg.tick_ms))
        .simulation_duration(Duration::from_millis(cfg.run_limit_ms))
        .min_message_latency(Duration::from_millis(cfg.net_latency_ms.0))
        .max_message_latency(Duration::from_millis(cfg.net_latency_ms.1))
        .build()
}

/// Crashes `host` like a power loss: it is cut off from every other host first, so the
/// FIN/RST its dropped sockets would send never leave it. (turmoil drops a crashed host's tasks
/// in an order that depends on tokio's process-wide task ids, so letting those segments out
/// would make the peers' reactions, and the run, depend on what ran before in the process.)
/// Peers notice as a real machine's peers do: on their next send, or by their timeouts. Every
/// link of `host` is whole again afterwards: re-apply the cuts still wanted.
pub fn power_off(sim: &mut turmoil::Sim<'_>, all: &[String], host: &str) {
    for other in all.iter().filter(|h| h.as_str() != host) {
        sim.partition(host, other.as_str());
    }
    sim.crash(host);
    for other in all.iter().filter(|h| h.as_str() != host) {
        sim.repair(host, other.as_str());
    }
}

/// The state of the link between two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    #[default]
    Whole,
    /// Nothing passes either way.
    Cut,
    /// What the far side sends is lost; the other way still works (commands apply, their
    /// answers vanish).
    RepliesLost,
}

impl Link {
    /// Two faults on one link at once: the harsher wins (a cut over lost replies).
    pub fn and(self, other: Link) -> Link {
        match (self, other) {
            (Link::Cut, _) | (_, Link::Cut) => Link::Cut,
            (Link::RepliesLost, _) | (_, Link::RepliesLost) => Link::RepliesLost,
            _ => Link::Whole,
        }
    }
}

/// Sets the link between `host` and `peer` from `have` to `want` and says what changed for
/// `host` (`None` if nothing did). `RepliesLost` loses what `peer` sends to `host`.
pub fn set_link(sim: &mut turmoil::Sim<'_>, host: &str, peer: &str, have: Link, want: Link) -> Option<HostChange> {
    if have == want {
        return None;
    }
    if have != Link::Whole {
        sim.repair(host, peer);
    }
    let peer_name = peer.to_string();
    Some(match want {
        Link::Cut => {
            sim.partition(host, peer);
            HostChange::CutOff { peer: peer_name }
        }
        Link::RepliesLost => {
            sim.partition_oneway(peer, host);
            HostChange::RepliesLost { peer: peer_name }
        }
        Link::Whole => HostChange::Reconnected { peer: peer_name },
    })
}

/// What happened to a host, as a history records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum HostChange {
    /// Powered off: nothing it sends while dying leaves it.
    Crashed,
    Restarted,
    /// Cut off from `peer` both ways.
    CutOff {
        peer: String,
    },
    /// What `peer` sends to this host is lost; the other way still works.
    RepliesLost {
        peer: String,
    },
    /// The link to `peer` is whole again.
    Reconnected {
        peer: String,
    },
    ClockSkewed,
    ClockSetRight,
}

impl HostChange {
    /// The peer of a link change that breaks the link (cut, or replies lost).
    pub fn broken_link(&self) -> Option<&str> {
        match self {
            HostChange::CutOff { peer } | HostChange::RepliesLost { peer } => Some(peer),
            _ => None,
        }
    }
}

impl std::fmt::Display for HostChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostChange::Crashed => write!(f, "crashed"),
            HostChange::Restarted => write!(f, "restarted"),
            HostChange::CutOff { peer } => write!(f, "cut off from {peer}"),
            HostChange::RepliesLost { peer } => write!(f, "loses what {peer} sends"),
            HostChange::Reconnected { peer } => write!(f, "reconnected to {peer}"),
            HostChange::ClockSkewed => write!(f, "clock skewed"),
            HostChange::ClockSetRight => write!(f, "clock set right"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harsher_of_two_link_faults_wins() {
        assert_eq!(Link::RepliesLost.and(Link::Cut), Link::Cut);
        assert_eq!(Link::Whole.and(Link::RepliesLost), Link::RepliesLost);
        assert_eq!(Link::Whole.and(Link::Whole), Link::Whole);
    }
}
