//! Frame header parsing and building (RFC 6455 §5.2).
//!
//! [`parse_header`] judges everything that can be judged from the header
//! alone, as soon as the bytes that decide it are present, so a bad frame is
//! rejected before its payload is waited for:
//! - RSV1-3 must be 0: rtedge negotiates no extension (§5.2);
//! - opcodes 3-7 and 0xB-0xF are reserved (§5.2);
//! - control frames carry at most 125 bytes and are never fragmented (§5.5);
//! - the payload length uses the minimal number of bytes and a 64-bit length
//!   has its most significant bit clear (§5.2);
//! - frames from a client are masked (§5.1), checked by [`parse_client_header`].
//!
//! Every error carries the close code to send (§7.4.1). Frames built here are
//! server frames: unmasked, minimal length encoding, except
//! [`write_masked_frame`] which builds client frames for tests and the load
//! generator.

use std::fmt;

use super::unmask::unmask;

/// Largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest header: 2 bytes, 8-byte extended length, 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// Frame opcodes defined by RFC 6455 (§5.2, §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

impl OpCode {
    /// Control frames are the opcodes with the high bit set (§5.5).
    pub const fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }

    /// The opcode for a 4-bit value, `None` for reserved values.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Continuation),
            1 => Some(Self::Text),
            2 => Some(Self::Binary),
            8 => Some(Self::Close),
            9 => Some(Self::Ping),
            10 => Some(Self::Pong),
            _ => None,
        }
    }
}

/// A peer broke the protocol; `code` is the close code to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: u16,
    pub reason: &'static str,
}

impl ProtocolError {
    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// A 1002 (protocol error) close.
    pub const fn protocol(reason: &'static str) -> Self {
        Self::new(1002, reason)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.reason, self.code)
    }
}

impl std::error::Error for ProtocolError {}

/// A parsed frame header (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1-3 as the low 3 bits; always 0 in a header [`parse_header`] accepts.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes of header before the payload (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header length for this payload length and masking, minimal encoding.
    pub const fn encoded_len(payload_len: u64, masked: bool) -> usize {
        let ext = if payload_len < 126 {
            0
        } else if payload_len <= 0xffff {
            2
        } else {
            8
        };
        2 + ext + if masked { 4 } else { 0 }
    }

    /// Append this header with the minimal length encoding. `header_len` is
    /// not read: the encoding decides it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let b0 = u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        push_header(out, b0, self.mask, self.payload_len);
    }
}

fn push_header(out: &mut Vec<u8>, b0: u8, mask: Option<[u8; 4]>, len: u64) {
    // Built on the stack and appended once: this runs for every frame sent.
    let mut h = [0u8; MAX_HEADER_LEN];
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = 2;
    h[0] = b0;
    if len < 126 {
        h[1] = mbit | len as u8;
    } else if len <= 0xffff {
        h[1] = mbit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        n = 4;
    } else {
        h[1] = mbit | 127;
        h[2..10].copy_from_slice(&len.to_be_bytes());
        n = 10;
    }
    if let Some(m) = mask {
        h[n..n + 4].copy_from_slice(&m);
        n += 4;
    }
    out.extend_from_slice(&h[..n]);
}

/// Parse a frame header without requiring a mask (e.g. a client reading
/// server frames). `Ok(None)`: more bytes are needed to decide.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    parse(buf, false)
}

/// How many more bytes a streaming reader (one that takes data frames'
/// payloads as they arrive) needs behind `held`, the start of a frame:
/// those that complete its header and, for a control frame (whole before
/// it is handled, at most 125 bytes of payload), its payload too; 0 when
/// that is all there or `held` is empty. A caller appending input behind
/// held bytes can append exactly that, leaving the rest where it lies
/// (§5.2: the first two bytes give the length of the rest).
pub fn streamed_need(held: &[u8]) -> usize {
    match held {
        [] => 0,
        [_] => 1,
        [b0, b1, ..] => {
            let len7 = b1 & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
            // Control opcodes have the high bit of the opcode set (§5.5).
            let payload = if b0 & 0x08 != 0 { usize::from(len7) } else { 0 };
            (2usize + ext + mask + payload).saturating_sub(held.len())
        }
    }
}

/// Parse a frame header received by a server: as [`parse_header`], and an
/// unmasked frame is a 1002 error (§5.1).
pub fn parse_client_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    parse(buf, true)
}

fn parse(buf: &[u8], require_mask: bool) -> Result<Option<FrameHeader>, ProtocolError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    if rsv != 0 {
        return Err(ProtocolError::protocol("RSV bits set without an extension"));
    }
    let Some(opcode) = OpCode::from_u8(b0 & 0x0f) else {
        return Err(ProtocolError::protocol("reserved opcode"));
    };
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::protocol(
                "control frame payload over 125 bytes",
            ));
        }
    }
    if require_mask && !masked {
        return Err(ProtocolError::protocol("unmasked client frame"));
    }
    let (payload_len, rest) = match len7 {
        126 => {
            let Some((ext, rest)) = rest.split_first_chunk::<2>() else {
                return Ok(None);
            };
            let n = u16::from_be_bytes(*ext);
            if n < 126 {
                return Err(ProtocolError::protocol("non-minimal payload length"));
            }
            (u64::from(n), rest)
        }
        127 => {
            let Some((ext, rest)) = rest.split_first_chunk::<8>() else {
                return Ok(None);
            };
            let n = u64::from_be_bytes(*ext);
            if n >> 63 != 0 {
                return Err(ProtocolError::protocol(
                    "64-bit payload length has its top bit set",
                ));
            }
            if n <= 0xffff {
                return Err(ProtocolError::protocol("non-minimal payload length"));
            }
            (n, rest)
        }
        n => (u64::from(n), rest),
    };
    let mask = if masked {
        let Some(key) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        Some(*key)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv,
        opcode,
        mask,
        payload_len,
        header_len: FrameHeader::encoded_len(payload_len, masked),
    }))
}

/// Append an unmasked (server) frame header with the minimal length encoding.
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: OpCode, len: usize) {
    push_header(out, u8::from(fin) << 7 | opcode as u8, None, len as u64);
}

/// Append a complete unfragmented server frame. A control frame's payload is
/// cut to 125 bytes so that an invalid frame is never sent (§5.5).
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let payload = control_cut(opcode, payload);
    write_header(out, true, opcode, payload.len());
    out.extend_from_slice(payload);
}

fn control_cut(opcode: OpCode, payload: &[u8]) -> &[u8] {
    if opcode.is_control() {
        payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
    } else {
        payload
    }
}

/// Append a Close frame with `code` and `reason` (§5.5.1). The reason is cut
/// at a character boundary to fit the 125-byte control payload.
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or("");
    write_header(out, true, OpCode::Close, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Append a masked (client) frame (§5.3). Control payloads are cut to 125 bytes.
pub fn write_masked_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
) {
    let payload = control_cut(opcode, payload);
    push_header(
        out,
        u8::from(fin) << 7 | opcode as u8,
        Some(mask),
        payload.len() as u64,
    );
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(p) = out.get_mut(start..) {
        unmask(p, mask, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(buf: &[u8]) -> ProtocolError {
        parse_client_header(buf).expect_err("should be rejected")
    }

    #[test]
    fn parses_small_masked_text() {
        let h = parse_client_header(&[0x81, 0x85, 1, 2, 3, 4, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: Some([1, 2, 3, 4]),
                payload_len: 5,
                header_len: 6
            }
        );
    }

    #[test]
    fn needs_more_bytes_at_every_cut() {
        let mut f = Vec::new();
        write_masked_frame(&mut f, true, OpCode::Binary, &[7; 70000], [9, 8, 7, 6]);
        for cut in 0..14 {
            assert_eq!(parse_client_header(&f[..cut]), Ok(None), "cut {cut}");
        }
        let h = parse_client_header(&f[..14]).unwrap().unwrap();
        assert_eq!((h.payload_len, h.header_len), (70000, 14));
    }

    #[test]
    fn rejects_rsv_bits() {
        for b0 in [0xc1, 0xa1, 0x91] {
            assert_eq!(err(&[b0, 0x80]).code, 1002);
        }
    }

    #[test]
    fn rejects_reserved_opcodes() {
        for op in (3..=7).chain(11..=15) {
            assert_eq!(err(&[0x80 | op, 0x80]).code, 1002, "opcode {op}");
        }
    }

    #[test]
    fn rejects_bad_control_frames() {
        // Ping with 126 (needs extended length) and Close with FIN=0.
        assert_eq!(err(&[0x89, 0x80 | 126]).code, 1002);
        assert_eq!(err(&[0x89, 0x80 | 127]).code, 1002);
        assert_eq!(err(&[0x08, 0x80]).code, 1002);
        assert!(parse_client_header(&[0x89, 0x80 | 125, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn rejects_non_minimal_lengths() {
        assert_eq!(err(&[0x82, 0x80 | 126, 0, 125]).code, 1002);
        assert!(parse_client_header(&[0x82, 0x80 | 126, 0, 126]).is_ok());
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&0xffffu64.to_be_bytes());
        assert_eq!(err(&f).code, 1002);
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&0x1_0000u64.to_be_bytes());
        assert!(parse_client_header(&f).is_ok());
    }

    #[test]
    fn rejects_top_bit_of_64_bit_length() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63 | 70000).to_be_bytes());
        assert_eq!(err(&f).code, 1002);
    }

    #[test]
    fn server_requires_mask_but_plain_parse_does_not() {
        assert_eq!(err(&[0x81, 0x00]).code, 1002);
        assert!(parse_header(&[0x81, 0x00]).unwrap().is_some());
    }

    #[test]
    fn writes_minimal_unmasked_headers() {
        for (len, want) in [
            (0usize, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            write_header(&mut out, true, OpCode::Binary, len);
            assert_eq!(out, want, "len {len}");
        }
        let mut out = Vec::new();
        write_header(&mut out, false, OpCode::Continuation, 3);
        assert_eq!(out, [0x00, 3]);
    }

    #[test]
    fn write_close_cuts_reason_on_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        let len = usize::from(out[1]);
        assert!(len <= 125);
        assert_eq!(&out[2..4], &1000u16.to_be_bytes());
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        assert_eq!(out.len(), 2 + len);
        assert_eq!(len, 2 + 122);
    }

    #[test]
    fn masked_frame_roundtrip() {
        let mut out = Vec::new();
        write_masked_frame(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        // RFC 6455 §5.7 example: a single-frame masked text message.
        assert_eq!(
            out,
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
    }

    #[test]
    fn error_display() {
        let e = ProtocolError::protocol("reserved opcode");
        assert_eq!(e.to_string(), "reserved opcode (close code 1002)");
    }

    fn header_strategy() -> impl Strategy<Value = FrameHeader> {
        let opcode = prop::sample::select(vec![
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ]);
        let len = prop_oneof![0u64..=125, 126u64..=0xffff, 0x1_0000u64..=(u64::MAX >> 1)];
        (any::<bool>(), opcode, any::<Option<[u8; 4]>>(), len).prop_map(
            |(fin, opcode, mask, len)| {
                let (fin, payload_len) = if opcode.is_control() {
                    (true, len % 126)
                } else {
                    (fin, len)
                };
                FrameHeader {
                    fin,
                    rsv: 0,
                    opcode,
                    mask,
                    payload_len,
                    header_len: FrameHeader::encoded_len(payload_len, mask.is_some()),
                }
            },
        )
    }

    proptest! {
        #[test]
        fn parse_of_encode_is_identity(h in header_strategy()) {
            let mut out = Vec::new();
            h.encode(&mut out);
            prop_assert_eq!(out.len(), h.header_len);
            prop_assert_eq!(parse_header(&out), Ok(Some(h)));
            // Any proper prefix asks for more bytes.
            for cut in 0..out.len() {
                prop_assert_eq!(parse_header(&out[..cut]), Ok(None));
            }
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse_client_header(&bytes);
            let _ = parse_header(&bytes);
        }
    }

    #[test]
    fn streamed_need_completes_exactly_a_header_or_a_control_frame() {
        let mut frames = Vec::new();
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut f = Vec::new();
            write_masked_frame(&mut f, true, OpCode::Binary, &vec![0; len], [1, 2, 3, 4]);
            frames.push((f, false));
        }
        let mut unmasked = Vec::new();
        write_frame(&mut unmasked, OpCode::Text, &[0; 300]);
        frames.push((unmasked, false));
        for (op, len) in [(OpCode::Ping, 125), (OpCode::Close, 2), (OpCode::Pong, 0)] {
            let mut f = Vec::new();
            write_masked_frame(&mut f, true, op, &vec![7; len], [5, 6, 7, 8]);
            frames.push((f, true));
        }
        assert_eq!(streamed_need(&[]), 0);
        for (f, control) in frames {
            let h = parse_header(&f).unwrap().unwrap();
            // A data frame's payload is read where it lies; a control
            // frame is wanted whole.
            let want = if control { f.len() } else { h.header_len };
            for held in 1..want {
                let need = streamed_need(&f[..held]);
                assert!(need > 0 && held + need <= want, "{held} + {need}");
                // Appending what it asks for, as often as it asks, ends
                // exactly there.
                let mut have = held + need;
                while streamed_need(&f[..have]) > 0 {
                    have += streamed_need(&f[..have]);
                }
                assert_eq!(have, want);
            }
            assert_eq!(streamed_need(&f[..want]), 0);
        }
    }
}
