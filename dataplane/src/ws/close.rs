//! Close codes and Close frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! A Close payload is empty, or a 2-byte big-endian status code followed by
//! a UTF-8 reason (§5.5.1). Codes a peer may send (§7.4.1, §7.4.2 and the
//! IANA registry of §11.7): 1000-1003, 1007-1011, the registered 1012-1014,
//! and the application ranges 3000-4999. 1004 is reserved; 1005, 1006 and
//! 1015 only report conditions locally and must never appear on the wire.

use super::frame::ProtocolError;

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Local only: the peer's Close had no status code.
pub const NO_STATUS: u16 = 1005;
/// Local only: the connection dropped without a Close.
pub const ABNORMAL: u16 = 1006;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const MANDATORY_EXTENSION: u16 = 1010;
pub const INTERNAL_ERROR: u16 = 1011;

/// Whether `code` may appear in a Close frame on the wire.
pub const fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Decode a received Close payload: `None` for an empty payload, else the code
/// and reason. A 1-byte payload or a code that may not be sent is 1002; a
/// reason that is not UTF-8 is 1007 (§8.1).
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return Err(ProtocolError::protocol("1-byte close payload"));
    };
    let code = u16::from_be_bytes(*code);
    if !is_valid_code(code) {
        return Err(ProtocolError::protocol("invalid close code"));
    }
    match simdutf8::basic::from_utf8(reason) {
        Ok(reason) => Ok(Some((code, reason))),
        Err(_) => Err(ProtocolError::new(
            INVALID_PAYLOAD,
            "close reason is not UTF-8",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ranges() {
        let valid: Vec<u16> = (0..=u16::MAX).filter(|&c| is_valid_code(c)).collect();
        let expect: Vec<u16> = (1000..=1003)
            .chain(1007..=1014)
            .chain(3000..=4999)
            .collect();
        assert_eq!(valid, expect);
        for c in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(!is_valid_code(c), "{c}");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(parse_close_payload(&[0x03]).unwrap_err().code, 1002);
        assert_eq!(parse_close_payload(&[0x03, 0xe8]), Ok(Some((1000, ""))));
        assert_eq!(parse_close_payload(b"\x0f\xa0bye"), Ok(Some((4000, "bye"))));
        assert_eq!(parse_close_payload(&[0x03, 0xed]).unwrap_err().code, 1002); // 1005
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8, 0xff]).unwrap_err().code,
            1007
        );
    }
}
