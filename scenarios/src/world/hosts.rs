//! The hosts of a world, by type: their names are made here and read back here only.

use std::fmt;

/// One host of the simulated world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// The Redis model.
    Redis,
    /// The LLM-like Copilot host.
    Copilot,
    /// The effects sink.
    Sink,
    /// Worker `n`: the system under test.
    Worker(usize),
    /// Client host `n`: users (and an attacker).
    Client(usize),
    /// Keeps the world running after the heal while effects are owed (not a user).
    Settle,
}

impl Host {
    /// The turmoil host name (`redis`, `worker-0`, …), as history events and reports show it.
    pub fn name(self) -> String {
        self.to_string()
    }

    /// The host a name stands for.
    pub fn parse(name: &str) -> Option<Host> {
        let numbered = |prefix: &str| name.strip_prefix(prefix).and_then(|n| n.parse().ok());
        match name {
            "redis" => Some(Host::Redis),
            "copilot" => Some(Host::Copilot),
            "sink" => Some(Host::Sink),
            "settle" => Some(Host::Settle),
            _ => numbered("worker-").map(Host::Worker).or_else(|| numbered("client-").map(Host::Client)),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Redis => f.write_str("redis"),
            Host::Copilot => f.write_str("copilot"),
            Host::Sink => f.write_str("sink"),
            Host::Worker(n) => write!(f, "worker-{n}"),
            Host::Client(n) => write!(f, "client-{n}"),
            Host::Settle => f.write_str("settle"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_name_reads_back() {
        for h in [Host::Redis, Host::Copilot, Host::Sink, Host::Settle, Host::Worker(0), Host::Worker(12), Host::Client(3)] {
            assert_eq!(Host::parse(&h.name()), Some(h));
        }
        assert_eq!(Host::parse("worker-"), None);
        assert_eq!(Host::parse("worker-x"), None);
        assert_eq!(Host::parse("m0"), None);
    }
}
