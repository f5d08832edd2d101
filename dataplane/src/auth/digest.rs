//! HTTP Digest authentication: RFC 7616 (MD5, SHA-256, their `-sess`
//! variants), RFC 2617 (the same computation, used by MSRP `AUTH` per RFC 4976
//! §5) and RFC 2069 compatibility (no `qop`).
//!
//! # Nonces
//!
//! [`NonceManager`] issues stateless nonces (RFC 7616 §3.3 suggests
//! `time-stamp H(time-stamp ":" ETag ":" secret-data)`): the URL-safe base64
//! (no padding, 43 characters) of
//!
//! ```text
//! timestamp (u64 BE seconds) || unique (u64) || HMAC-SHA256(secret, timestamp || unique)[..16]
//! ```
//!
//! so a nonce is checked with no server state: its MAC proves it was issued
//! by a server holding `secret`, and its timestamp tells whether it is still
//! fresh. A nonce older than the lifetime with a correct response is
//! *stale* (RFC 7616 §3.3 `stale=true`): the client retries with the new
//! nonce without asking the user again.
//!
//! # Replay protection
//!
//! Stateless checks cannot stop a captured request from being replayed while
//! its nonce is fresh. Protocols with several requests per nonce (MSRP AUTH,
//! HTTP keep-alive) can use [`NonceCounts`], a bounded map from nonce to the
//! highest `nc` seen (RFC 7616 §3.4 / RFC 2617 §3.2.2 nonce-count). The
//! WebSocket handshake is one request per connection, so it only uses the
//! stateless checks: a replayed handshake within the nonce lifetime is
//! accepted, exactly like a replayed Basic credential would be; run `wss` to
//! stop capture in the first place.

use base64::Engine as _;
use md5::Md5;
use sha2::Sha256;
use sha2::digest::{Digest, Output};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::store::CredentialStore;
use super::{ct_eq, hex_into};

/// Seconds a nonce's timestamp may lie in the future (workers read their
/// clocks independently).
const MAX_CLOCK_SKEW: u64 = 5;
/// Encoded nonce length: 32 bytes, URL-safe base64 without padding.
const NONCE_LEN: usize = 43;
const MAC_LEN: usize = 16;

/// A Digest `algorithm` (RFC 7616 §3.3, the IANA "HTTP Digest Hash
/// Algorithms" registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl DigestAlgorithm {
    /// The token used in challenges and credentials.
    pub fn token(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Parses an `algorithm` value, case-insensitively.
    pub fn parse(s: &str) -> Option<DigestAlgorithm> {
        [
            DigestAlgorithm::Md5,
            DigestAlgorithm::Md5Sess,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.token().eq_ignore_ascii_case(s))
    }

    fn is_sess(self) -> bool {
        matches!(self, DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess)
    }
}

/// Result of a stateless nonce check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by us and within its lifetime.
    Valid,
    /// Issued by us but expired: re-challenge with `stale=true`.
    Stale,
    /// Not ours (bad MAC, bad encoding, or from the future).
    Invalid,
}

/// Issues and checks stateless nonces (see the [module docs](self)).
///
/// `Clone` gives an independent issuer (fresh uniqueness salt) sharing the
/// secret, so each reactor core can own one and all of them accept each
/// other's nonces.
pub struct NonceManager {
    /// SHA-256 state after absorbing `secret ^ ipad` (HMAC, RFC 2104).
    inner: Sha256,
    /// SHA-256 state after absorbing `secret ^ opad`.
    outer: Sha256,
    lifetime_secs: u64,
    salt: u64,
    counter: AtomicU64,
}

impl fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceManager")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl Clone for NonceManager {
    fn clone(&self) -> Self {
        NonceManager {
            inner: self.inner.clone(),
            outer: self.outer.clone(),
            lifetime_secs: self.lifetime_secs,
            salt: random_salt(self.salt),
            counter: AtomicU64::new(0),
        }
    }
}

fn random_salt(fallback: u64) -> u64 {
    // Uniqueness only (the MAC gives unforgeability): a failing RNG falls
    // back to a perturbed value.
    getrandom::u64().unwrap_or_else(|_| fallback.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15)
}

impl NonceManager {
    /// `secret` keys the nonce MAC (random per deployment, or shared by
    /// servers that must accept each other's nonces); nonces older than
    /// `lifetime_secs` are stale.
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> NonceManager {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, b) in secret.iter().enumerate() {
            if let (Some(ip), Some(op)) = (ipad.get_mut(i), opad.get_mut(i)) {
                *ip ^= b;
                *op ^= b;
            }
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        let mut outer = Sha256::new();
        outer.update(opad);
        let seed = u64::from_be_bytes(Sha256::digest(secret)[..8].try_into().unwrap_or([0; 8]));
        NonceManager {
            inner,
            outer,
            lifetime_secs,
            salt: random_salt(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// Seconds a nonce stays fresh.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    fn mac(&self, ts: &[u8; 8], unique: &[u8; 8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(ts);
        inner.update(unique);
        let mut outer = self.outer.clone();
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// A fresh nonce issued at `now_secs`.
    pub fn issue(&self, now_secs: u64) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let unique = self
            .salt
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .to_be_bytes();
        let ts = now_secs.to_be_bytes();
        let mac = self.mac(&ts, &unique);
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&ts);
        raw[8..16].copy_from_slice(&unique);
        raw[16..].copy_from_slice(&mac[..MAC_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce presented at `now_secs`.
    pub fn check(&self, nonce: &str, now_secs: u64) -> NonceCheck {
        let Some(ts) = self.verified_timestamp(nonce) else {
            return NonceCheck::Invalid;
        };
        if ts > now_secs.saturating_add(MAX_CLOCK_SKEW) {
            NonceCheck::Invalid
        } else if now_secs.saturating_sub(ts) > self.lifetime_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// The issue time of a nonce whose MAC verifies.
    fn verified_timestamp(&self, nonce: &str) -> Option<u64> {
        let (ts, unique, mac) = split_nonce(nonce)?;
        let want = self.mac(&ts, &unique);
        ct_eq(&want[..MAC_LEN], &mac).then(|| u64::from_be_bytes(ts))
    }
}

fn split_nonce(nonce: &str) -> Option<([u8; 8], [u8; 8], [u8; MAC_LEN])> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; 36];
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(nonce, &mut raw)
        .ok()?;
    if n != 32 {
        return None;
    }
    let ts: [u8; 8] = raw.get(..8)?.try_into().ok()?;
    let unique: [u8; 8] = raw.get(8..16)?.try_into().ok()?;
    let mac: [u8; MAC_LEN] = raw.get(16..32)?.try_into().ok()?;
    Some((ts, unique, mac))
}

/// The issue timestamp embedded in one of our nonces (not authenticated:
/// check the nonce with [`NonceManager::check`] first).
pub fn nonce_timestamp(nonce: &str) -> Option<u64> {
    split_nonce(nonce).map(|(ts, _, _)| u64::from_be_bytes(ts))
}

/// Bounded nonce-count tracker for replay protection (RFC 7616 §3.4: the
/// server should reject a repeated `nc`).
///
/// Holds at most `capacity` nonces; when full, the oldest-inserted is
/// evicted and its issue time becomes a watermark: any nonce not tracked and
/// issued at or before the watermark is refused (the caller answers with a
/// `stale=true` challenge and the client moves to a fresh nonce), so evicting
/// a nonce never re-opens it for replay. Memory is `O(capacity)`.
#[derive(Debug)]
pub struct NonceCounts {
    capacity: usize,
    map: HashMap<String, u32>,
    order: VecDeque<String>,
    watermark: Option<u64>,
}

impl NonceCounts {
    /// A tracker holding at most `capacity` (at least 1) nonces.
    pub fn new(capacity: usize) -> NonceCounts {
        let capacity = capacity.max(1);
        NonceCounts {
            capacity,
            map: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::with_capacity(capacity.min(4096)),
            watermark: None,
        }
    }

    /// Records `nc` for `nonce`; `true` when `nc` is higher than any seen for
    /// this nonce (the request is not a replay), `false` otherwise.
    ///
    /// Call only after the nonce and response have verified.
    pub fn check(&mut self, nonce: &str, nc: u32) -> bool {
        if let Some(seen) = self.map.get_mut(nonce) {
            if nc > *seen {
                *seen = nc;
                return true;
            }
            return false;
        }
        if nc == 0 {
            return false;
        }
        let ts = nonce_timestamp(nonce);
        match (self.watermark, ts) {
            (Some(w), Some(t)) if t <= w => return false,
            // Not one of our nonces and history was lost: be strict.
            (Some(_), None) => return false,
            _ => {}
        }
        while self.map.len() >= self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
            let t = nonce_timestamp(&old).unwrap_or(u64::MAX);
            self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        }
        self.map.insert(nonce.to_string(), nc);
        self.order.push_back(nonce.to_string());
        true
    }

    /// Nonces tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no nonce is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Parsed `Authorization: Digest …` credentials (RFC 7616 §3.4). Values
/// borrow from the header unless a quoted-string contained escapes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DigestCredentials<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub response: Cow<'a, str>,
    pub algorithm: Option<Cow<'a, str>>,
    pub cnonce: Option<Cow<'a, str>>,
    /// Eight hex digits when present (checked by the parser).
    pub nc: Option<Cow<'a, str>>,
    pub qop: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
    /// RFC 7616 §3.4.4 `userhash=true` (never offered by us; refused by
    /// [`verify_digest`]).
    pub userhash: bool,
}

impl DigestCredentials<'_> {
    /// The nonce count as a number.
    pub fn nc_value(&self) -> Option<u32> {
        self.nc
            .as_deref()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    }
}

/// Why an `Authorization` value is not usable Digest credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    #[error("not a Digest authorization")]
    NotDigest,
    #[error("malformed auth-param list")]
    Syntax,
    #[error("duplicate parameter {0}")]
    Duplicate(&'static str),
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("invalid value for {0}")]
    Invalid(&'static str),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Bytes allowed in an unquoted value: tokens, plus the characters that
/// lenient clients leave unquoted (`/`, `:`, `@`, `=`, …). Never `,` `"` `\`
/// whitespace or controls.
fn is_bare_value(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && b != b',' && b != b'"' && b != b'\\'
}

struct ParamParser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> ParamParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while self.peek().is_some_and(is_ows) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        // Only ASCII bytes were consumed, so both ends are char boundaries.
        self.s.get(start..self.pos).unwrap_or("")
    }

    /// A quoted-string (RFC 7230 §3.2.6), the opening quote already next.
    fn quoted(&mut self) -> Result<Cow<'a, str>, DigestParseError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let bytes = self.s.as_bytes();
        let mut owned: Option<String> = None;
        let mut run_start = start;
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Err(DigestParseError::Syntax);
            };
            match b {
                b'"' => {
                    let tail = self.s.get(run_start..self.pos).unwrap_or("");
                    self.pos += 1;
                    return Ok(match owned {
                        Some(mut o) => {
                            o.push_str(tail);
                            Cow::Owned(o)
                        }
                        None => Cow::Borrowed(tail),
                    });
                }
                b'\\' => {
                    let run = self.s.get(run_start..self.pos).unwrap_or("");
                    let o = owned.get_or_insert_with(String::new);
                    o.push_str(run);
                    self.pos += 1;
                    // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                    let Some(&next) = bytes.get(self.pos) else {
                        return Err(DigestParseError::Syntax);
                    };
                    if next < 0x80 {
                        if next != b'\t' && !(0x20..0x7f).contains(&next) {
                            return Err(DigestParseError::Syntax);
                        }
                        o.push(char::from(next));
                        self.pos += 1;
                    } else {
                        let ch = self
                            .s
                            .get(self.pos..)
                            .and_then(|r| r.chars().next())
                            .ok_or(DigestParseError::Syntax)?;
                        o.push(ch);
                        self.pos += ch.len_utf8();
                    }
                    run_start = self.pos;
                }
                b'\t' => self.pos += 1,
                b if b < 0x20 || b == 0x7f => return Err(DigestParseError::Syntax),
                _ => self.pos += 1,
            }
        }
    }
}

macro_rules! set_once {
    ($slot:expr, $name:literal, $value:expr) => {{
        if $slot.is_some() {
            return Err(DigestParseError::Duplicate($name));
        }
        $slot = Some($value);
    }};
}

/// Parses an `Authorization` (or `Proxy-Authorization`) header value
/// `Digest auth-param *( "," auth-param )` (RFC 7235 §2.1, RFC 7616 §3.4).
///
/// Scheme and parameter names are case-insensitive; values are tokens or
/// quoted-strings with `\` escapes; whitespace around `=` and `,` is
/// tolerated, as are empty list elements. Unknown parameters are ignored;
/// a known one given twice is an error. `username`, `realm`, `nonce`, `uri`
/// and `response` are required, and `cnonce` and `nc` (8 hex digits) when
/// `qop` is present. (`username*`, RFC 7616 §3.4.4, is not supported.)
pub fn parse_digest_authorization(value: &str) -> Result<DigestCredentials<'_>, DigestParseError> {
    let mut p = ParamParser { s: value, pos: 0 };
    p.skip_ows();
    let scheme = p.take_while(is_tchar);
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestParseError::NotDigest);
    }
    if p.peek().is_some_and(|b| !is_ows(b)) {
        return Err(DigestParseError::NotDigest);
    }
    let mut username = None;
    let mut realm = None;
    let mut nonce = None;
    let mut uri = None;
    let mut response = None;
    let mut algorithm = None;
    let mut cnonce = None;
    let mut nc = None;
    let mut qop = None;
    let mut opaque = None;
    let mut userhash = None;
    loop {
        // Empty list elements and surrounding whitespace (RFC 7230 §7).
        while p.peek().is_some_and(|b| is_ows(b) || b == b',') {
            p.pos += 1;
        }
        if p.peek().is_none() {
            break;
        }
        let name = p.take_while(is_tchar);
        if name.is_empty() {
            return Err(DigestParseError::Syntax);
        }
        p.skip_ows();
        if p.peek() != Some(b'=') {
            return Err(DigestParseError::Syntax);
        }
        p.pos += 1;
        p.skip_ows();
        let v: Cow<'_, str> = if p.peek() == Some(b'"') {
            p.quoted()?
        } else {
            let bare = p.take_while(is_bare_value);
            if bare.is_empty() {
                return Err(DigestParseError::Syntax);
            }
            Cow::Borrowed(bare)
        };
        p.skip_ows();
        match p.peek() {
            None | Some(b',') => {}
            Some(_) => return Err(DigestParseError::Syntax),
        }
        let lower = |n: &str| name.eq_ignore_ascii_case(n);
        if lower("username") {
            set_once!(username, "username", v);
        } else if lower("realm") {
            set_once!(realm, "realm", v);
        } else if lower("nonce") {
            set_once!(nonce, "nonce", v);
        } else if lower("uri") {
            set_once!(uri, "uri", v);
        } else if lower("response") {
            set_once!(response, "response", v);
        } else if lower("algorithm") {
            set_once!(algorithm, "algorithm", v);
        } else if lower("cnonce") {
            set_once!(cnonce, "cnonce", v);
        } else if lower("nc") {
            set_once!(nc, "nc", v);
        } else if lower("qop") {
            set_once!(qop, "qop", v);
        } else if lower("opaque") {
            set_once!(opaque, "opaque", v);
        } else if lower("userhash") {
            let flag = if v.eq_ignore_ascii_case("true") {
                true
            } else if v.eq_ignore_ascii_case("false") {
                false
            } else {
                return Err(DigestParseError::Invalid("userhash"));
            };
            set_once!(userhash, "userhash", flag);
        }
    }
    let creds = DigestCredentials {
        username: username.ok_or(DigestParseError::Missing("username"))?,
        realm: realm.ok_or(DigestParseError::Missing("realm"))?,
        nonce: nonce.ok_or(DigestParseError::Missing("nonce"))?,
        uri: uri.ok_or(DigestParseError::Missing("uri"))?,
        response: response.ok_or(DigestParseError::Missing("response"))?,
        algorithm,
        cnonce,
        nc,
        qop,
        opaque,
        userhash: userhash.unwrap_or(false),
    };
    if creds.qop.is_some() {
        if creds.cnonce.is_none() {
            return Err(DigestParseError::Missing("cnonce"));
        }
        match creds.nc.as_deref() {
            None => return Err(DigestParseError::Missing("nc")),
            Some(n) if n.len() != 8 || !n.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(DigestParseError::Invalid("nc"));
            }
            Some(_) => {}
        }
    }
    Ok(creds)
}

/// Outcome of [`verify_digest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestResult {
    /// Credentials verified for `user`.
    Ok { user: String },
    /// The response was right but the nonce has expired: re-challenge with
    /// `stale=true` (RFC 7616 §3.3).
    Stale,
    /// Anything else: unknown user, wrong realm or password, forged or
    /// malformed nonce, unsupported algorithm or qop.
    Failed,
}

/// Verifies Digest credentials for a request with `method` (`GET` for the
/// WebSocket handshake, `AUTH` for MSRP per RFC 4976 §5).
///
/// Supports `algorithm` MD5 (default when absent), MD5-sess, SHA-256 and
/// SHA-256-sess (RFC 7616 §3.4.2), `qop=auth` (§3.4.1) and no `qop`
/// (RFC 2069, RFC 2617 §3.2.2.1). The response is compared in constant time.
/// The caller checks that `creds.uri` names the request target (RFC 7616
/// §3.4.6) and, if it wants replay protection, feeds `nc` to a
/// [`NonceCounts`].
pub fn verify_digest(
    store: &CredentialStore,
    creds: &DigestCredentials<'_>,
    method: &str,
    realm: &str,
    nonce_mgr: &NonceManager,
    now_secs: u64,
) -> DigestResult {
    if creds.userhash || creds.realm != realm {
        return DigestResult::Failed;
    }
    let algorithm = match creds.algorithm.as_deref() {
        None => DigestAlgorithm::Md5,
        Some(a) => match DigestAlgorithm::parse(a) {
            Some(a) => a,
            None => return DigestResult::Failed,
        },
    };
    let qop_auth = match creds.qop.as_deref() {
        None => false,
        Some(q) if q.eq_ignore_ascii_case("auth") => true,
        Some(_) => return DigestResult::Failed, // auth-int is not offered
    };
    if algorithm.is_sess() && !qop_auth {
        return DigestResult::Failed; // -sess needs a cnonce
    }
    let nonce_state = nonce_mgr.check(&creds.nonce, now_secs);
    if nonce_state == NonceCheck::Invalid {
        return DigestResult::Failed;
    }
    let ok = match algorithm {
        DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => {
            match store.ha1_md5(&creds.username, realm) {
                Some(ha1) => response_matches::<Md5>(&ha1, algorithm.is_sess(), creds, method),
                None => false,
            }
        }
        DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess => {
            match store.ha1_sha256(&creds.username, realm) {
                Some(ha1) => response_matches::<Sha256>(&ha1, algorithm.is_sess(), creds, method),
                None => false,
            }
        }
    };
    match (ok, nonce_state) {
        (true, NonceCheck::Valid) => DigestResult::Ok {
            user: creds.username.to_string(),
        },
        (true, NonceCheck::Stale) => DigestResult::Stale,
        _ => DigestResult::Failed,
    }
}

/// Expected response (RFC 7616 §3.4.1) compared with the client's hex.
fn response_matches<D: Digest>(
    ha1_raw: &[u8],
    sess: bool,
    creds: &DigestCredentials<'_>,
    method: &str,
) -> bool {
    let mut ha1_hex_buf = [0u8; 64];
    let mut sess_hex_buf = [0u8; 64];
    let mut ha1_hex = hex_into(ha1_raw, &mut ha1_hex_buf);
    if sess {
        let mut h = D::new();
        h.update(ha1_hex);
        h.update(b":");
        h.update(creds.nonce.as_bytes());
        h.update(b":");
        h.update(creds.cnonce.as_deref().unwrap_or("").as_bytes());
        ha1_hex = hex_into(&h.finalize(), &mut sess_hex_buf);
    }
    let mut h = D::new();
    h.update(method.as_bytes());
    h.update(b":");
    h.update(creds.uri.as_bytes());
    let ha2: Output<D> = h.finalize();
    let mut ha2_hex_buf = [0u8; 64];
    let ha2_hex = hex_into(&ha2, &mut ha2_hex_buf);

    let mut h = D::new();
    h.update(ha1_hex);
    h.update(b":");
    h.update(creds.nonce.as_bytes());
    h.update(b":");
    if let Some(qop) = creds.qop.as_deref() {
        h.update(creds.nc.as_deref().unwrap_or("").as_bytes());
        h.update(b":");
        h.update(creds.cnonce.as_deref().unwrap_or("").as_bytes());
        h.update(b":");
        h.update(qop.as_bytes());
        h.update(b":");
    }
    h.update(ha2_hex);
    let expected: Output<D> = h.finalize();

    let mut given = [0u8; 32];
    let Some(given) = given.get_mut(..expected.len()) else {
        return false;
    };
    if hex::decode_to_slice(creds.response.as_bytes(), given).is_err() {
        return false;
    }
    ct_eq(&expected, given)
}

/// Appends `s` as quoted-string content (escaping `"` and `\`, dropping
/// controls so a value can never break a header line).
pub(crate) fn push_quoted_content(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
}

/// A `WWW-Authenticate` value with one Digest challenge per algorithm, most
/// preferred first (RFC 7616 §3.3, §3.7), comma-separated as RFC 7235 §4.1
/// allows: `Digest realm="…", qop="auth", algorithm=SHA-256, nonce="…"`,
/// plus `stale=true` when `stale`. An empty `algorithms` means MD5.
pub fn challenge(realm: &str, nonce: &str, stale: bool, algorithms: &[DigestAlgorithm]) -> String {
    let algorithms = if algorithms.is_empty() {
        &[DigestAlgorithm::Md5][..]
    } else {
        algorithms
    };
    let mut out = String::with_capacity(algorithms.len() * (realm.len() + nonce.len() + 80));
    for (i, a) in algorithms.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str("Digest realm=\"");
        push_quoted_content(&mut out, realm);
        out.push_str("\", nonce=\"");
        push_quoted_content(&mut out, nonce);
        out.push_str("\", qop=\"auth\", algorithm=");
        out.push_str(a.token());
        if stale {
            out.push_str(", stale=true");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5_hex(s: &str) -> String {
        hex::encode(Md5::digest(s.as_bytes()))
    }

    fn rfc2617_header() -> &'static str {
        // RFC 2617 §3.5 (the opaque is informational).
        "Digest username=\"Mufasa\",\r\n realm=\"testrealm@host.com\",\
         \n nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\
         uri=\"/dir/index.html\", qop=auth, nc=00000001, cnonce=\"0a4f113b\",\
         response=\"6629fae49393a05397450978507c4ef1\",\
         opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
    }

    #[test]
    fn rfc2617_example_response() {
        // Folded whitespace is removed by the HTTP parser; use a clean value.
        let v = rfc2617_header().replace("\r\n", "").replace('\n', "");
        let c = parse_digest_authorization(&v).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.realm, "testrealm@host.com");
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc_value(), Some(1));
        let store = CredentialStore::from_toml(
            "[[user]]\nname = \"Mufasa\"\npassword = \"Circle Of Life\"\n",
            "testrealm@host.com",
        )
        .unwrap();
        // The RFC's nonce is not one of ours, so check the arithmetic
        // directly.
        assert!(response_matches::<Md5>(
            &store.ha1_md5("Mufasa", "testrealm@host.com").unwrap(),
            false,
            &c,
            "GET"
        ));
        let mut wrong = c.clone();
        wrong.response = Cow::Borrowed("6629fae49393a05397450978507c4ef2");
        assert!(!response_matches::<Md5>(
            &store.ha1_md5("Mufasa", "testrealm@host.com").unwrap(),
            false,
            &wrong,
            "GET"
        ));
        // HA1 from the file form too.
        assert_eq!(
            md5_hex("Mufasa:testrealm@host.com:Circle Of Life"),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn rfc7616_sha256_and_md5_examples() {
        // RFC 7616 §3.9.1.
        let store = CredentialStore::from_toml(
            "[[user]]\nname = \"Mufasa\"\npassword = \"Circle of Life\"\n",
            "http-auth@example.org",
        )
        .unwrap();
        let base = "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", \
             uri=\"/dir/index.html\", qop=auth, nc=00000001, \
             cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let sha = format!(
            "{base}, algorithm=SHA-256, \
             response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
        );
        let c = parse_digest_authorization(&sha).unwrap();
        let ha1 = store.ha1_sha256("Mufasa", "http-auth@example.org").unwrap();
        assert!(response_matches::<Sha256>(&ha1, false, &c, "GET"));
        let md5 = format!("{base}, algorithm=MD5, response=\"8ca523f5e9506fed4657c9700eebdbec\"");
        let c = parse_digest_authorization(&md5).unwrap();
        let ha1 = store.ha1_md5("Mufasa", "http-auth@example.org").unwrap();
        assert!(response_matches::<Md5>(&ha1, false, &c, "GET"));
        // Upper-case hex is the same response.
        let mut upper = c.clone();
        upper.response = Cow::Owned(c.response.to_ascii_uppercase());
        assert!(response_matches::<Md5>(&ha1, false, &upper, "GET"));
    }

    #[allow(clippy::too_many_arguments)]
    fn client_response(
        alg: DigestAlgorithm,
        user: &str,
        realm: &str,
        pw: &str,
        nonce: &str,
        uri: &str,
        qop: Option<(&str, &str)>,
        method: &str,
    ) -> String {
        fn h(alg: DigestAlgorithm, s: &str) -> String {
            match alg {
                DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => {
                    hex::encode(Md5::digest(s.as_bytes()))
                }
                _ => hex::encode(Sha256::digest(s.as_bytes())),
            }
        }
        let mut ha1 = h(alg, &format!("{user}:{realm}:{pw}"));
        if alg.is_sess() {
            let cn = qop.map(|q| q.1).unwrap_or("");
            ha1 = h(alg, &format!("{ha1}:{nonce}:{cn}"));
        }
        let ha2 = h(alg, &format!("{method}:{uri}"));
        match qop {
            Some((nc, cnonce)) => h(alg, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
            None => h(alg, &format!("{ha1}:{nonce}:{ha2}")),
        }
    }

    fn store() -> CredentialStore {
        let bob_ha1 = md5_hex("bob:rtedge:builder");
        CredentialStore::from_toml(
            &format!(
                "[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n\
                 [[user]]\nname = \"bob\"\nha1 = \"{bob_ha1}\"\n"
            ),
            "rtedge",
        )
        .unwrap()
    }

    #[test]
    fn verify_round_trip_all_algorithms() {
        let store = store();
        let nm = NonceManager::new([7; 32], 300);
        let nonce = nm.issue(1000);
        for alg in [
            DigestAlgorithm::Md5,
            DigestAlgorithm::Md5Sess,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha256Sess,
        ] {
            let resp = client_response(
                alg,
                "alice",
                "rtedge",
                "wonderland",
                &nonce,
                "/ws",
                Some(("00000001", "abc")),
                "AUTH",
            );
            let v = format!(
                "Digest username=\"alice\", realm=\"rtedge\", nonce=\"{nonce}\", uri=\"/ws\", \
                 response=\"{resp}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"abc\"",
                alg.token()
            );
            let c = parse_digest_authorization(&v).unwrap();
            assert_eq!(
                verify_digest(&store, &c, "AUTH", "rtedge", &nm, 1010),
                DigestResult::Ok {
                    user: "alice".into()
                },
                "{alg:?}"
            );
            // Method is bound into the response.
            assert_eq!(
                verify_digest(&store, &c, "GET", "rtedge", &nm, 1010),
                DigestResult::Failed
            );
            // Expired nonce with a correct response is stale.
            assert_eq!(
                verify_digest(&store, &c, "AUTH", "rtedge", &nm, 1000 + 301),
                DigestResult::Stale
            );
            // Wrong realm.
            assert_eq!(
                verify_digest(&store, &c, "AUTH", "other", &nm, 1010),
                DigestResult::Failed
            );
        }
    }

    #[test]
    fn verify_rfc2069_and_ha1_only_users() {
        let store = store();
        let nm = NonceManager::new([1; 32], 60);
        let nonce = nm.issue(50);
        let resp = client_response(
            DigestAlgorithm::Md5,
            "bob",
            "rtedge",
            "builder",
            &nonce,
            "/",
            None,
            "GET",
        );
        let v = format!(
            "Digest username=\"bob\", realm=\"rtedge\", nonce=\"{nonce}\", uri=\"/\", response=\"{resp}\""
        );
        let c = parse_digest_authorization(&v).unwrap();
        assert_eq!(
            verify_digest(&store, &c, "GET", "rtedge", &nm, 50),
            DigestResult::Ok { user: "bob".into() }
        );
        // SHA-256 is impossible for an ha1-only user.
        let resp = client_response(
            DigestAlgorithm::Sha256,
            "bob",
            "rtedge",
            "builder",
            &nonce,
            "/",
            None,
            "GET",
        );
        let v = format!(
            "Digest username=\"bob\", realm=\"rtedge\", nonce=\"{nonce}\", uri=\"/\", \
             response=\"{resp}\", algorithm=SHA-256"
        );
        let c = parse_digest_authorization(&v).unwrap();
        assert_eq!(
            verify_digest(&store, &c, "GET", "rtedge", &nm, 50),
            DigestResult::Failed
        );
    }

    #[test]
    fn verify_rejects_bad_inputs() {
        let store = store();
        let nm = NonceManager::new([1; 32], 60);
        let other = NonceManager::new([2; 32], 60);
        let nonce = nm.issue(50);
        let foreign = other.issue(50);
        let resp = |n: &str, pw: &str| {
            client_response(
                DigestAlgorithm::Md5,
                "alice",
                "rtedge",
                pw,
                n,
                "/",
                Some(("00000001", "c")),
                "GET",
            )
        };
        let hdr = |n: &str, r: &str, extra: &str| {
            format!(
                "Digest username=\"alice\", realm=\"rtedge\", nonce=\"{n}\", uri=\"/\", \
                 response=\"{r}\", qop=auth, nc=00000001, cnonce=\"c\"{extra}"
            )
        };
        let check = |v: String| {
            let c = parse_digest_authorization(&v).unwrap();
            verify_digest(&store, &c, "GET", "rtedge", &nm, 55)
        };
        assert_eq!(
            check(hdr(&nonce, &resp(&nonce, "wonderland"), "")),
            DigestResult::Ok {
                user: "alice".into()
            }
        );
        assert_eq!(
            check(hdr(&nonce, &resp(&nonce, "wrong"), "")),
            DigestResult::Failed
        );
        assert_eq!(
            check(hdr(&foreign, &resp(&foreign, "wonderland"), "")),
            DigestResult::Failed
        );
        assert_eq!(
            check(hdr(
                &nonce,
                &resp(&nonce, "wonderland"),
                ", algorithm=SHA-512"
            )),
            DigestResult::Failed
        );
        assert_eq!(
            check(hdr(&nonce, &resp(&nonce, "wonderland"), ", userhash=true")),
            DigestResult::Failed
        );
        assert_eq!(check(hdr(&nonce, "zz", "")), DigestResult::Failed);
        assert_eq!(check(hdr(&nonce, "", "")), DigestResult::Failed);
        // Stale only when the response is also right.
        let c = hdr(&nonce, &resp(&nonce, "wrong"), "");
        let c = parse_digest_authorization(&c).unwrap();
        assert_eq!(
            verify_digest(&store, &c, "GET", "rtedge", &nm, 500),
            DigestResult::Failed
        );
        // qop=auth-int is not supported.
        let v = hdr(&nonce, &resp(&nonce, "wonderland"), "").replace("qop=auth", "qop=auth-int");
        assert_eq!(check(v), DigestResult::Failed);
    }

    #[test]
    fn nonces() {
        let nm = NonceManager::new([9; 32], 100);
        let a = nm.issue(1_000_000);
        let b = nm.issue(1_000_000);
        assert_ne!(a, b, "same-second nonces differ");
        assert_eq!(a.len(), NONCE_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(nm.check(&a, 1_000_000), NonceCheck::Valid);
        assert_eq!(nm.check(&a, 1_000_100), NonceCheck::Valid);
        assert_eq!(nm.check(&a, 1_000_101), NonceCheck::Stale);
        assert_eq!(
            nm.check(&a, 999_990),
            NonceCheck::Invalid,
            "from the future"
        );
        assert_eq!(nm.check(&a, 999_996), NonceCheck::Valid, "small skew");
        // A clone accepts the original's nonces and issues distinct ones.
        let c = nm.clone();
        assert_eq!(c.check(&a, 1_000_000), NonceCheck::Valid);
        assert_ne!(c.issue(1_000_000), a);
        // Tampering.
        let mut t = a.clone().into_bytes();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        assert_eq!(nm.check(&t, 1_000_000), NonceCheck::Invalid);
        for bad in [
            "",
            "x",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            &"A".repeat(43),
            &"é".repeat(22),
        ] {
            assert_eq!(nm.check(bad, 1_000_000), NonceCheck::Invalid, "{bad:?}");
        }
        assert_eq!(nonce_timestamp(&a), Some(1_000_000));
        assert!(!format!("{nm:?}").contains("9"));
    }

    #[test]
    fn nonce_counts_bounded_and_replay_safe() {
        let nm = NonceManager::new([3; 32], 100);
        let mut nc = NonceCounts::new(2);
        let n1 = nm.issue(10);
        let n2 = nm.issue(11);
        let n3 = nm.issue(12);
        assert!(nc.check(&n1, 1));
        assert!(!nc.check(&n1, 1), "replay");
        assert!(nc.check(&n1, 2));
        assert!(!nc.check(&n1, 1));
        assert!(nc.check(&n2, 1));
        assert!(!nc.check(&n3, 0));
        assert!(nc.check(&n3, 1)); // evicts n1
        assert_eq!(nc.len(), 2);
        assert!(!nc.check(&n1, 5), "evicted nonce is not re-opened");
        let n4 = nm.issue(20);
        assert!(nc.check(&n4, 1));
        assert!(nc.len() <= 2);
    }

    #[test]
    fn parse_quoting_whitespace_and_errors() {
        let c = parse_digest_authorization(
            "  digest  USERNAME = \"a\\\"b\\\\c\" ,, realm=r ,nonce=\"n\",uri=\"/x?y=1\",response=\"00\",  foo=\"bar, baz\", opaque=\"\" ",
        )
        .unwrap();
        assert_eq!(c.username, "a\"b\\c");
        assert!(matches!(c.username, Cow::Owned(_)));
        assert!(matches!(c.realm, Cow::Borrowed(_)));
        assert_eq!(c.uri, "/x?y=1");
        assert_eq!(c.opaque.as_deref(), Some(""));
        let ok = "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"0\"";
        assert!(parse_digest_authorization(ok).is_ok());
        let cases: &[(&str, DigestParseError)] = &[
            ("Basic abc", DigestParseError::NotDigest),
            ("Digestx username=\"u\"", DigestParseError::NotDigest),
            ("", DigestParseError::NotDigest),
            ("Digest", DigestParseError::Missing("username")),
            (
                "Digest username=\"u\", username=\"v\"",
                DigestParseError::Duplicate("username"),
            ),
            ("Digest username=\"u", DigestParseError::Syntax),
            ("Digest username", DigestParseError::Syntax),
            ("Digest username=", DigestParseError::Syntax),
            (
                "Digest username=\"u\" realm=\"r\"",
                DigestParseError::Syntax,
            ),
            ("Digest =x", DigestParseError::Syntax),
            ("Digest username=\"a\u{1}b\"", DigestParseError::Syntax),
            ("Digest username=\"a\\", DigestParseError::Syntax),
        ];
        for (v, e) in cases {
            assert_eq!(parse_digest_authorization(v), Err(*e), "{v:?}");
        }
        assert_eq!(
            parse_digest_authorization(&format!("{ok}, qop=auth, nc=00000001")),
            Err(DigestParseError::Missing("cnonce"))
        );
        assert_eq!(
            parse_digest_authorization(&format!("{ok}, qop=auth, cnonce=\"c\"")),
            Err(DigestParseError::Missing("nc"))
        );
        assert_eq!(
            parse_digest_authorization(&format!("{ok}, qop=auth, cnonce=\"c\", nc=1")),
            Err(DigestParseError::Invalid("nc"))
        );
        assert_eq!(
            parse_digest_authorization(&format!("{ok}, userhash=maybe")),
            Err(DigestParseError::Invalid("userhash"))
        );
        // Non-ASCII inside quotes and escaped.
        let c = parse_digest_authorization(
            "Digest username=\"J\u{e4}s\\\u{f6}\", realm=\"r\", nonce=\"n\", uri=\"/\", response=\"0\"",
        )
        .unwrap();
        assert_eq!(c.username, "J\u{e4}s\u{f6}");
    }

    #[test]
    fn challenge_format() {
        assert_eq!(
            challenge("rtedge", "abc", false, &[]),
            "Digest realm=\"rtedge\", nonce=\"abc\", qop=\"auth\", algorithm=MD5"
        );
        assert_eq!(
            challenge(
                "r\"x",
                "n",
                true,
                &[DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
            ),
            "Digest realm=\"r\\\"x\", nonce=\"n\", qop=\"auth\", algorithm=SHA-256, stale=true, \
             Digest realm=\"r\\\"x\", nonce=\"n\", qop=\"auth\", algorithm=MD5, stale=true"
        );
        assert_eq!(
            DigestAlgorithm::parse("sha-256"),
            Some(DigestAlgorithm::Sha256)
        );
        assert_eq!(
            DigestAlgorithm::parse("md5-SESS"),
            Some(DigestAlgorithm::Md5Sess)
        );
        assert_eq!(DigestAlgorithm::parse("sha-512"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_digest_authorization(&s);
            let _ = super::super::parse_basic(&s);
            let nm = NonceManager::new([0; 32], 10);
            let _ = nm.check(&s, 0);
            let _ = nonce_timestamp(&s);
        }

        #[test]
        fn parse_never_panics_structured(
            parts in proptest::collection::vec(
                ("[a-zA-Z]{0,9}", "[ \t]{0,2}", "(\"([^\"\\\\]|\\\\.){0,10}\"?|[!-~]{0,10})"),
                0..8,
            )
        ) {
            let mut s = String::from("Digest ");
            for (n, ws, v) in &parts {
                s.push_str(n);
                s.push_str(ws);
                s.push('=');
                s.push_str(v);
                s.push(',');
            }
            let _ = parse_digest_authorization(&s);
        }
    }
}
