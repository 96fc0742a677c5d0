//! A fast, fixed (unkeyed) hasher for turmoil's per-tick maps, keyed by addresses and small
//! integers (orchsim patch 4, see PATCHED.md). `IndexMap`'s default SipHash with random keys
//! showed as ~4% of a simulation's time; the maps' iteration order is their insertion order
//! either way, so nothing observable changes. Not for keys an adversary chooses.

use std::hash::{BuildHasherDefault, Hasher};

/// The multiply-rotate hash of rustc's `FxHasher` (rustc-hash 2).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

/// `IndexMap` with [`FxHasher`].
pub(crate) type FxIndexMap<K, V> = indexmap::IndexMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn addresses_spread_and_look_up() {
        let mut m: FxIndexMap<IpAddr, usize> = FxIndexMap::default();
        for i in 0..=255u8 {
            m.insert(IpAddr::V4(Ipv4Addr::new(192, 168, 0, i)), i as usize);
        }
        for i in 0..=255u8 {
            assert_eq!(m[&IpAddr::V4(Ipv4Addr::new(192, 168, 0, i))], i as usize);
        }
        // Insertion order is kept, whatever the hasher.
        assert_eq!(m.values().copied().collect::<Vec<_>>(), (0..=255).collect::<Vec<_>>());
    }
}
