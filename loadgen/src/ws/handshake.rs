//! RFC 6455 §4.1 client opening handshake: request building and response
//! verification (status 101, Upgrade/Connection, Sec-WebSocket-Accept, and
//! the negotiated sub-protocol).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::{Digest, Sha1};
use std::fmt;

use crate::rng::Rng;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A fresh Sec-WebSocket-Key: base64 of 16 random bytes.
pub fn client_key(rng: &mut Rng) -> String {
    let mut nonce = [0u8; 16];
    rng.fill(&mut nonce);
    B64.encode(nonce)
}

/// Sec-WebSocket-Accept for a key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    B64.encode(h.finalize())
}

/// The GET upgrade request.
pub fn request(host: &str, path: &str, key: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: rtedge-loadgen\r\n"
    );
    if let Some(p) = subprotocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    Malformed(String),
    TooLarge,
    Status(u16, String),
    MissingUpgrade,
    MissingConnection,
    BadAccept {
        expected: String,
        got: Option<String>,
    },
    SubprotocolMissing(String),
    SubprotocolMismatch {
        requested: Option<String>,
        got: String,
    },
    UnexpectedExtensions(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(e) => write!(f, "malformed response: {e}"),
            HandshakeError::TooLarge => write!(f, "response head larger than 16 KiB"),
            HandshakeError::Status(c, r) => write!(f, "status {c} {r} (expected 101)"),
            HandshakeError::MissingUpgrade => write!(f, "no `Upgrade: websocket`"),
            HandshakeError::MissingConnection => write!(f, "no `Connection: upgrade`"),
            HandshakeError::BadAccept { expected, got } => {
                write!(f, "Sec-WebSocket-Accept {got:?}, expected {expected:?}")
            }
            HandshakeError::SubprotocolMissing(p) => {
                write!(f, "server did not select the requested sub-protocol {p:?}")
            }
            HandshakeError::SubprotocolMismatch { requested, got } => {
                write!(
                    f,
                    "server selected sub-protocol {got:?}, requested {requested:?}"
                )
            }
            HandshakeError::UnexpectedExtensions(e) => {
                write!(f, "server enabled extensions {e:?} that were not offered")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Verify the server's response head at the start of `buf`.
/// `Ok(None)`: incomplete; `Ok(Some(n))`: head of `n` bytes verified (bytes
/// after it are already WebSocket frames).
pub fn verify_response(
    buf: &[u8],
    key: &str,
    subprotocol: Option<&str>,
) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(HandshakeError::TooLarge);
            }
            return Ok(None);
        }
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(
            code,
            resp.reason.unwrap_or("").to_string(),
        ));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept: Option<String> = None;
    let mut proto: Option<String> = None;
    let mut ext: Option<String> = None;
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value).trim().to_string();
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= v.eq_ignore_ascii_case("websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(v);
        } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            proto = Some(v);
        } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") && !v.is_empty() {
            ext = Some(v);
        }
    }
    if !upgrade {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !connection {
        return Err(HandshakeError::MissingConnection);
    }
    let expected = accept_key(key);
    if accept.as_deref() != Some(expected.as_str()) {
        return Err(HandshakeError::BadAccept {
            expected,
            got: accept,
        });
    }
    match (subprotocol, proto) {
        (None, None) => {}
        (Some(want), Some(got)) if got == want => {}
        (Some(want), None) => return Err(HandshakeError::SubprotocolMissing(want.to_string())),
        (requested, Some(got)) => {
            return Err(HandshakeError::SubprotocolMismatch {
                requested: requested.map(str::to_string),
                got,
            });
        }
    }
    if let Some(e) = ext {
        return Err(HandshakeError::UnexpectedExtensions(e));
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6455 §1.3 / §4.2.2 example.
    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn key_is_16_bytes_base64() {
        let k = client_key(&mut Rng::seeded(5));
        assert_eq!(k.len(), 24);
        assert_eq!(B64.decode(&k).unwrap().len(), 16);
    }

    #[test]
    fn request_shape() {
        let r = request("h:1", "/x?y", "KEY", Some("echo"));
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("GET /x?y HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(s.contains("Sec-WebSocket-Protocol: echo\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn resp(extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn verify_ok_and_trailing_frames() {
        let mut r = resp("Sec-WebSocket-Protocol: echo\r\n");
        let head = r.len();
        r.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(verify_response(&r, KEY, Some("echo")), Ok(Some(head)));
        assert_eq!(verify_response(&r[..head - 1], KEY, Some("echo")), Ok(None));
        assert_eq!(
            verify_response(&resp(""), KEY, None),
            Ok(Some(resp("").len()))
        );
    }

    #[test]
    fn verify_failures() {
        assert!(matches!(
            verify_response(&resp(""), KEY, Some("echo")),
            Err(HandshakeError::SubprotocolMissing(_))
        ));
        assert!(matches!(
            verify_response(&resp("Sec-WebSocket-Protocol: sip\r\n"), KEY, Some("echo")),
            Err(HandshakeError::SubprotocolMismatch { .. })
        ));
        assert!(matches!(
            verify_response(&resp("Sec-WebSocket-Protocol: sip\r\n"), KEY, None),
            Err(HandshakeError::SubprotocolMismatch { .. })
        ));
        assert!(matches!(
            verify_response(&resp(""), "AAAAAAAAAAAAAAAAAAAAAA==", None),
            Err(HandshakeError::BadAccept { .. })
        ));
        assert!(matches!(
            verify_response(b"HTTP/1.1 400 Bad Request\r\n\r\n", KEY, None),
            Err(HandshakeError::Status(400, _))
        ));
        assert!(matches!(
            verify_response(
                &resp("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                KEY,
                None
            ),
            Err(HandshakeError::UnexpectedExtensions(_))
        ));
        let no_upgrade = b"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            verify_response(no_upgrade, KEY, None),
            Err(HandshakeError::MissingUpgrade)
        );
    }
}
