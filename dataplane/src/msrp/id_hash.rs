//! Hashing for the relay's own random ids (transaction ids, session ids):
//! they carry 64 or more random bits, so mixing their bytes spreads them
//! well, and SipHash's keyed protection buys nothing — only lookups use ids
//! a peer chose, and they cannot lengthen the chains of ids we generated.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate mixing of 8-byte words (FxHash-style).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn different_ids_hash_apart() {
        let b = IdBuildHasher::default();
        let h1 = b.hash_one(*b"00a2a5024562e5c285");
        let h2 = b.hash_one(*b"00a2a5024562e5c286");
        assert_ne!(h1, h2);
        assert_eq!(h1, b.hash_one(*b"00a2a5024562e5c285"));
    }
}
