//! Self-checking echo payloads.
//!
//! Binary layout (little endian, 24-byte header, `--size` ≥ 24):
//!
//! ```text
//! 0..4    magic  "RTLG"
//! 4..8    connection id (u32)
//! 8..16   sequence number (u64)
//! 16..24  checksum (u64) = seal(hash64(body), conn, seq)
//! 24..    body: per-connection random bytes
//! ```
//!
//! Text layout (`--text`, 44-byte header, `--size` ≥ 44): the same fields as
//! ASCII, `"RTLG"` + 8 hex digits (conn) + 16 (seq) + 16 (checksum), then a
//! body of random ASCII letters, so every payload is valid UTF-8.
//!
//! The checksum covers the body and binds it to (conn, seq), so a flipped
//! bit, a truncated or extended payload, or a payload delivered on the
//! wrong connection is detected.

use crate::rng::{Rng, mix64};

pub const MAGIC: &[u8; 4] = b"RTLG";
pub const BIN_HEADER: usize = 24;
pub const TEXT_HEADER: usize = 44;

pub fn header_len(text: bool) -> usize {
    if text { TEXT_HEADER } else { BIN_HEADER }
}

/// A fast 64-bit hash over 4 independent lanes (32 bytes per step), with a
/// SplitMix finaliser. Not cryptographic; detects corruption.
#[inline]
pub fn hash64(data: &[u8]) -> u64 {
    const P: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes: [u64; 4] = [
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    ];
    let mut blocks = data.chunks_exact(32);
    for b in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            *lane = (*lane ^ w).wrapping_mul(P).rotate_left(29);
        }
    }
    let rest = blocks.remainder();
    for (i, w) in rest.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        let lane = &mut lanes[i & 3];
        *lane = (*lane ^ u64::from_le_bytes(b))
            .wrapping_mul(P)
            .rotate_left(29);
    }
    let mut h = data.len() as u64;
    for l in lanes {
        h = mix64(h ^ l);
    }
    h
}

/// Bind a body hash to its connection and sequence number.
#[inline]
pub fn seal(body_hash: u64, conn: u32, seq: u64) -> u64 {
    mix64(
        body_hash
            ^ mix64(((conn as u64) << 32) ^ 0x5157_4C47)
            ^ seq.wrapping_mul(0xD6E8_FEB8_6659_FD93),
    )
}

/// A connection's constant message body and its hash.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub hash: u64,
}

impl Body {
    /// Body for messages of `size` bytes (`size` ≥ the header length).
    pub fn new(size: usize, text: bool, rng: &mut Rng) -> Body {
        let n = size.saturating_sub(header_len(text));
        let mut bytes = vec![0u8; n];
        rng.fill(&mut bytes);
        if text {
            for b in bytes.iter_mut() {
                *b = b'a' + (*b % 26);
            }
        }
        let hash = hash64(&bytes);
        Body { bytes, hash }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(dst: &mut [u8], v: u64) {
    let n = dst.len();
    for (i, d) in dst.iter_mut().enumerate() {
        *d = HEX[((v >> (4 * (n - 1 - i))) & 0xF) as usize];
    }
}

fn get_hex(src: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in src {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

/// Append one complete payload (header + body) to `out`.
#[inline]
pub fn append(out: &mut Vec<u8>, text: bool, conn: u32, seq: u64, body: &Body) {
    let sum = seal(body.hash, conn, seq);
    if text {
        let mut h = [0u8; TEXT_HEADER];
        h[..4].copy_from_slice(MAGIC);
        put_hex(&mut h[4..12], conn as u64);
        put_hex(&mut h[12..28], seq);
        put_hex(&mut h[28..44], sum);
        out.extend_from_slice(&h);
    } else {
        let mut h = [0u8; BIN_HEADER];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&conn.to_le_bytes());
        h[8..16].copy_from_slice(&seq.to_le_bytes());
        h[16..24].copy_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(&body.bytes);
}

/// What a received payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Intact: connection id and sequence number.
    Ok { conn: u32, seq: u64 },
    /// The header names a message but the checksum does not match.
    BadChecksum { conn: u32, seq: u64 },
    /// Not one of our payloads at all (too short, bad magic or encoding).
    Garbage,
}

/// Check a received payload.
#[inline]
pub fn verify(p: &[u8], text: bool) -> Verdict {
    let hl = header_len(text);
    if p.len() < hl || &p[..4] != MAGIC {
        return Verdict::Garbage;
    }
    let (conn, seq, sum) = if text {
        match (get_hex(&p[4..12]), get_hex(&p[12..28]), get_hex(&p[28..44])) {
            (Some(c), Some(s), Some(k)) => (c as u32, s, k),
            _ => return Verdict::Garbage,
        }
    } else {
        let c = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        let s = u64::from_le_bytes(p[8..16].try_into().unwrap_or([0; 8]));
        let k = u64::from_le_bytes(p[16..24].try_into().unwrap_or([0; 8]));
        (c, s, k)
    };
    if seal(hash64(&p[hl..]), conn, seq) == sum {
        Verdict::Ok { conn, seq }
    } else {
        Verdict::BadChecksum { conn, seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        for text in [false, true] {
            for size in [header_len(text), 64, 100, 4096] {
                let mut rng = Rng::seeded(size as u64);
                let body = Body::new(size, text, &mut rng);
                let mut p = Vec::new();
                append(&mut p, text, 7, 123_456, &body);
                assert_eq!(p.len(), size);
                if text {
                    assert!(std::str::from_utf8(&p).is_ok());
                }
                assert_eq!(
                    verify(&p, text),
                    Verdict::Ok {
                        conn: 7,
                        seq: 123_456
                    }
                );
                // Flip one bit anywhere in the body or checksum.
                for i in [size - 1, size / 2, hl_sum(text)] {
                    if i < header_len(text) && i != hl_sum(text) {
                        continue;
                    }
                    let mut q = p.clone();
                    q[i] ^= if text { 0x01 } else { 0x40 };
                    assert_ne!(
                        verify(&q, text),
                        Verdict::Ok {
                            conn: 7,
                            seq: 123_456
                        }
                    );
                }
                // Truncation.
                if size > header_len(text) {
                    assert!(matches!(
                        verify(&p[..size - 1], text),
                        Verdict::BadChecksum { .. }
                    ));
                }
                assert_eq!(verify(&p[..3], text), Verdict::Garbage);
            }
        }
    }

    fn hl_sum(text: bool) -> usize {
        if text { 30 } else { 17 }
    }

    #[test]
    fn wrong_connection_detected() {
        let mut rng = Rng::seeded(1);
        let body = Body::new(64, false, &mut rng);
        let mut p = Vec::new();
        append(&mut p, false, 1, 5, &body);
        p[4] = 2; // claims connection 2
        assert!(matches!(
            verify(&p, false),
            Verdict::BadChecksum { conn: 2, .. }
        ));
    }

    #[test]
    fn hash_sensitivity() {
        let a = vec![0u8; 100];
        let mut b = a.clone();
        b[99] = 1;
        assert_ne!(hash64(&a), hash64(&b));
        assert_ne!(hash64(&a[..99]), hash64(&a));
        assert_ne!(hash64(&[]), hash64(&[0]));
    }
}
