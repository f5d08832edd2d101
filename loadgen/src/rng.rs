//! A small, fast pseudo-random generator (SplitMix64) for masking keys,
//! handshake nonces and payload bodies. Seeded from the OS through std's
//! `RandomState`, so no extra dependency is needed. Not for cryptography:
//! RFC 6455 masking only needs keys the peer cannot predict from the
//! payload, which a per-thread OS-seeded generator provides.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from the OS (via std's hasher keys) and `salt`.
    pub fn from_os(salt: u64) -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        h.write_u64(t);
        Rng(h.finish())
    }

    /// A generator with a fixed seed (tests).
    #[cfg(test)]
    pub fn seeded(seed: u64) -> Self {
        Rng(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            rest.copy_from_slice(&v[..rest.len()]);
        }
    }

    /// Uniform in `0..n` (n > 0), slightly biased for huge n, fine here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// SplitMix64 / MurmurHash3 finaliser: a strong 64-bit avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_below() {
        let mut r = Rng::seeded(1);
        let mut b = [0u8; 13];
        r.fill(&mut b);
        assert!(b.iter().any(|&x| x != 0));
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
        }
        let a = Rng::from_os(1).next_u64();
        let c = Rng::from_os(1).next_u64();
        assert_ne!(a, c);
    }
}
