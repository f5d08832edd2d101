//! Credentials store and HTTP authentication (Digest and Basic), sans-IO.
//!
//! Shared by the WebSocket opening handshake (RFC 6455 §4.2 leaves HTTP
//! authentication to the server, RFC 6455 §10.5) and, later, MSRP `AUTH`
//! (RFC 4976 §5, which reuses RFC 2617 Digest with the method `AUTH`).
//!
//! - [`store`]: [`CredentialStore`], the users file.
//! - [`users`]: [`Users`], the store in force and its reload.
//! - [`digest`]: HTTP Digest (RFC 7616, RFC 2617, RFC 2069 compatibility):
//!   stateless nonces ([`NonceManager`]), `Authorization` parsing
//!   ([`parse_digest_authorization`]), verification ([`verify_digest`]),
//!   challenges ([`challenge`]) and optional nonce-count replay protection
//!   ([`NonceCounts`]).
//! - [`basic`]: HTTP Basic (RFC 7617) credentials ([`parse_basic`]) and
//!   challenge ([`basic_challenge`]).
//!
//! The challenge/response framework itself (`WWW-Authenticate`,
//! `Authorization`, auth-param syntax, 401) is RFC 7235 §2 and §4.
//!
//! # Users file
//!
//! TOML, one `[[user]]` table per user:
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password = "secret"
//!
//! [[user]]
//! name = "bob"
//! # hex MD5 of "bob:example.com:builder" (RFC 7616 §3.4.2 HA1); only
//! # usable in that realm, and only with algorithm MD5
//! ha1 = "37593d991414f52c30246c60c7798431"
//! realm = "example.com"            # optional: overrides the default realm
//! ```
//!
//! Every entry has a `name` (non-empty, no `:` since it is the separator in
//! HA1 and in Basic credentials) and exactly one of `password` or `ha1`
//! (32 hex digits). A user belongs to exactly one realm: its `realm` or the
//! default realm passed to [`CredentialStore::load`]; lookups in any other
//! realm find nothing. Unknown keys and duplicate names are errors naming the
//! offending entry.
//!
//! # Reloading
//!
//! A [`CredentialStore`] is immutable once loaded. [`Users`] holds the one in
//! force and replaces it whole when the file is reloaded (SIGHUP or the
//! management API); an AUTH or a handshake is checked against the store it
//! took, and connections are not touched.

pub mod basic;
pub mod digest;
pub mod store;
pub mod users;

pub use basic::{basic_challenge, parse_basic};
pub use digest::{
    DigestAlgorithm, DigestCredentials, DigestParseError, DigestResult, NonceCheck, NonceCounts,
    NonceManager, challenge, parse_digest_authorization, verify_digest,
};
pub use store::{AuthError, CredentialStore};
pub use users::{ReloadError, Users};

/// Constant-time equality of two byte strings of public length.
///
/// The lengths are not secret (hash outputs); only the contents are compared
/// without an early exit.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Lower-case hex of `bytes` into `out` (which must be twice as long).
pub(crate) fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a [u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(out.len() / 2);
    for (b, slot) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        if let [hi, lo] = slot {
            *hi = HEX[usize::from(b >> 4)];
            *lo = HEX[usize::from(b & 0x0f)];
        }
    }
    out.get(..2 * n).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn hex_into_lowercase() {
        let mut buf = [0u8; 8];
        assert_eq!(hex_into(&[0xde, 0xad, 0xbe, 0xef], &mut buf), b"deadbeef");
    }
}
