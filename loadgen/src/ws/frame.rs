//! Minimal RFC 6455 client framer.
//!
//! * [`encode`] appends one complete (FIN) client frame, masked with the
//!   given key, to an output buffer; callers append many frames to one buffer
//!   and write them with a single system call.
//! * [`decode`] parses one frame at the start of a byte slice (the read
//!   buffer), unmasking in place if the frame is masked, and returns the
//!   header plus the number of bytes consumed, or `None` when more bytes are
//!   needed.
//!
//! Extensions are never negotiated, so any RSV bit is a protocol error.

use std::fmt;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Size of the header [`encode`] writes for a payload of `len` bytes.
#[inline]
pub fn client_header_len(len: usize) -> usize {
    if len < 126 {
        6
    } else if len <= 0xFFFF {
        8
    } else {
        14
    }
}

/// Append a masked frame with FIN set to `out`.
#[inline]
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let start = encode_header(out, opcode, payload.len(), mask);
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// Append the header (including the mask key) of a masked FIN frame whose
/// payload of `len` bytes the caller appends next and then masks with
/// [`apply_mask`] starting at the returned offset.
#[inline]
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) -> usize {
    out.push(0x80 | (opcode & 0x0F));
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.len()
}

/// XOR `buf` with the masking key; `offset` is the position of `buf[0]`
/// within the frame payload (so a payload can be masked in pieces).
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that index 0 of `buf` lines up with `offset`.
    let r = offset & 3;
    let key = [
        mask[r],
        mask[(r + 1) & 3],
        mask[(r + 2) & 3],
        mask[(r + 3) & 3],
    ];
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// The frame was masked (a server must not mask: the caller decides).
    pub masked: bool,
    /// Bytes of header (2..=14).
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    ReservedBits(u8),
    UnknownOpcode(u8),
    FragmentedControl(u8),
    ControlTooLong(usize),
    LengthMsb,
    NonMinimalLength,
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ReservedBits(b) => write!(f, "reserved bits set (0x{b:02x})"),
            FrameError::UnknownOpcode(o) => write!(f, "unknown opcode 0x{o:x}"),
            FrameError::FragmentedControl(o) => write!(f, "fragmented control frame 0x{o:x}"),
            FrameError::ControlTooLong(n) => write!(f, "control frame payload {n} > 125"),
            FrameError::LengthMsb => write!(f, "64-bit length with the most significant bit set"),
            FrameError::NonMinimalLength => write!(f, "payload length not minimally encoded"),
            FrameError::TooLarge(n) => write!(f, "frame payload {n} bytes exceeds the limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parse a frame header at the start of `buf`. `Ok(None)`: need more bytes.
#[inline]
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    if rsv != 0 {
        return Err(FrameError::ReservedBits(rsv));
    }
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(FrameError::FragmentedControl(opcode));
            }
        }
        o => return Err(FrameError::UnknownOpcode(o)),
    }
    let masked = b1 & 0x80 != 0;
    let len7 = (b1 & 0x7F) as usize;
    let (payload_len, mut header_len) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let l = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if l < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            (l, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let l = u64::from_be_bytes(b);
            if l >> 63 != 0 {
                return Err(FrameError::LengthMsb);
            }
            if l <= 0xFFFF {
                return Err(FrameError::NonMinimalLength);
            }
            if l > max_payload as u64 {
                return Err(FrameError::TooLarge(l));
            }
            (l as usize, 10)
        }
        l => (l, 2),
    };
    if opcode & 0x8 != 0 && payload_len > 125 {
        return Err(FrameError::ControlTooLong(payload_len));
    }
    if payload_len > max_payload {
        return Err(FrameError::TooLarge(payload_len as u64));
    }
    if masked {
        header_len += 4;
    }
    if buf.len() < header_len {
        return Ok(None);
    }
    Ok(Some(Header {
        fin,
        opcode,
        masked,
        header_len,
        payload_len,
    }))
}

/// Parse one complete frame at the start of `buf`, unmasking its payload in
/// place when masked. Returns the header; the payload is
/// `buf[h.header_len..h.frame_len()]`. `Ok(None)`: need more bytes (the
/// header, if already complete, can be read with [`parse_header`] to learn
/// how many).
#[inline]
pub fn decode(buf: &mut [u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let Some(h) = parse_header(buf, max_payload)? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    if h.masked {
        let k = h.header_len - 4;
        let mask = [buf[k], buf[k + 1], buf[k + 2], buf[k + 3]];
        apply_mask(&mut buf[h.header_len..h.frame_len()], mask, 0);
    }
    Ok(Some(h))
}

/// Close frame payload: status code (big-endian) and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + reason.len());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(reason.as_bytes());
    v
}

/// Status code of a close payload, if any.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 20;

    fn decode_owned(bytes: &[u8]) -> (Header, Vec<u8>) {
        let mut b = bytes.to_vec();
        let h = decode(&mut b, MAX).unwrap().expect("complete frame");
        assert_eq!(h.frame_len(), bytes.len());
        (h, b[h.header_len..h.frame_len()].to_vec())
    }

    // RFC 6455 §5.7: a single-frame unmasked text message.
    #[test]
    fn rfc_unmasked_hello() {
        let (h, p) = decode_owned(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert!(h.fin);
        assert_eq!(h.opcode, OP_TEXT);
        assert!(!h.masked);
        assert_eq!(p, b"Hello");
    }

    // RFC 6455 §5.7: a single-frame masked text message.
    const MASKED_HELLO: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_masked_hello_decode() {
        let (h, p) = decode_owned(&MASKED_HELLO);
        assert!(h.masked);
        assert_eq!(h.header_len, 6);
        assert_eq!(p, b"Hello");
    }

    #[test]
    fn rfc_masked_hello_encode() {
        let mut out = Vec::new();
        encode(&mut out, OP_TEXT, b"Hello", MASK);
        assert_eq!(out, MASKED_HELLO);
        assert_eq!(client_header_len(5), 6);
    }

    // RFC 6455 §5.7: a fragmented unmasked text message.
    #[test]
    fn rfc_fragmented() {
        let (h1, p1) = decode_owned(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert!(!h1.fin);
        assert_eq!(h1.opcode, OP_TEXT);
        assert_eq!(p1, b"Hel");
        let (h2, p2) = decode_owned(&[0x80, 0x02, 0x6c, 0x6f]);
        assert!(h2.fin);
        assert_eq!(h2.opcode, OP_CONT);
        assert_eq!(p2, b"lo");
    }

    // RFC 6455 §5.7: unmasked ping and masked pong.
    #[test]
    fn rfc_ping_pong() {
        let (h, p) = decode_owned(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(h.opcode, OP_PING);
        assert_eq!(p, b"Hello");
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, p) = decode_owned(&pong);
        assert_eq!(h.opcode, OP_PONG);
        assert_eq!(p, b"Hello");
        let mut out = Vec::new();
        encode(&mut out, OP_PONG, b"Hello", MASK);
        assert_eq!(out, pong);
    }

    // RFC 6455 §5.7: 256 bytes and 64 KiB binary messages, unmasked.
    #[test]
    fn rfc_lengths() {
        let mut f = vec![0x82, 0x7E, 0x01, 0x00];
        f.extend((0..256).map(|i| i as u8));
        let (h, p) = decode_owned(&f);
        assert_eq!((h.opcode, h.header_len, h.payload_len), (OP_BINARY, 4, 256));
        assert_eq!(p[255], 255);

        let mut f = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        f.extend(std::iter::repeat_n(7u8, 65536));
        let (h, p) = decode_owned(&f);
        assert_eq!((h.header_len, h.payload_len), (10, 65536));
        assert!(p.iter().all(|&b| b == 7));
    }

    #[test]
    fn encode_lengths_roundtrip() {
        for len in [0usize, 1, 125, 126, 127, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut out = vec![0xAA]; // pre-existing bytes must be kept
            encode(&mut out, OP_BINARY, &payload, [1, 2, 3, 4]);
            assert_eq!(out.len(), 1 + client_header_len(len) + len);
            let (h, p) = decode_owned(&out[1..]);
            assert!(h.masked && h.fin);
            assert_eq!(h.header_len, client_header_len(len));
            assert_eq!(p, payload);
        }
    }

    #[test]
    fn mask_in_pieces_matches_whole() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, MASK, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, MASK, 0);
        apply_mask(b, MASK, 13);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn incomplete_needs_more() {
        for cut in 0..MASKED_HELLO.len() {
            let mut b = MASKED_HELLO[..cut].to_vec();
            assert_eq!(decode(&mut b, MAX).unwrap(), None, "cut {cut}");
        }
        assert_eq!(parse_header(&[0x82, 0x7E, 0x01], MAX).unwrap(), None);
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(
            parse_header(&[0xC1, 0x00], MAX),
            Err(FrameError::ReservedBits(0x40))
        );
        assert_eq!(
            parse_header(&[0x83, 0x00], MAX),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x09, 0x00], MAX),
            Err(FrameError::FragmentedControl(OP_PING))
        );
        assert_eq!(
            parse_header(&[0x89, 0x7E, 0x00, 0x80], MAX),
            Err(FrameError::ControlTooLong(128))
        );
        assert_eq!(
            parse_header(&[0x82, 0x7E, 0x00, 0x05], MAX),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(
            parse_header(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0], MAX),
            Err(FrameError::LengthMsb)
        );
        assert_eq!(
            parse_header(&[0x82, 0x7E, 0x10, 0x00], 100),
            Err(FrameError::TooLarge(4096))
        );
    }

    #[test]
    fn close_payloads() {
        let p = close_payload(1000, "bye");
        assert_eq!(p, [0x03, 0xE8, b'b', b'y', b'e']);
        assert_eq!(close_code(&p), Some(1000));
        assert_eq!(close_code(&[]), None);
    }
}
