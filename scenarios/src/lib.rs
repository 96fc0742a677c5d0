//! Named scenarios and the swarm generator for the harness (issue 4).
