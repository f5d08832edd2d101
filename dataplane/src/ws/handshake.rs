//! The WebSocket opening handshake, server side (RFC 6455 §4.2), sans-IO.
//!
//! [`process`] takes the bytes received so far on a new connection and
//! answers [`Outcome::Partial`] (read more), [`Outcome::Accepted`] (send the
//! `101` response; bytes after [`Accepted::consumed`] already belong to the
//! WebSocket stream) or [`Outcome::Rejected`] (send the response, then close).
//! It never reads a clock (the caller passes `now_secs`) and never panics on
//! peer bytes.
//!
//! # Checks, in order
//!
//! | check | status | [`RejectReason`] |
//! |---|---|---|
//! | head larger than `max_request_header_size`, or more than 64 header fields | 431 | `TooLarge` |
//! | not an HTTP request (RFC 9112 §3), bad request-target | 400 | `Malformed` |
//! | method is not `GET` (RFC 6455 §4.2.1 item 1) | 405 + `Allow: GET` | `Method` |
//! | not HTTP/1.1 (§4.2.1 item 1) | 400 | `HttpVersion` |
//! | `Host` missing, empty or repeated (§4.2.1 item 2) | 400 | `Host` |
//! | `Upgrade` has no `websocket` token, case-insensitive (§4.2.1 item 3) | 400 | `Upgrade` |
//! | `Connection` has no `Upgrade` token (§4.2.1 item 4; a token, not a substring) | 400 | `Connection` |
//! | `Sec-WebSocket-Key` is not base64 of 16 bytes, or repeated (§4.2.1 item 5) | 400 | `Key` |
//! | `Sec-WebSocket-Version` is not exactly `13` (§4.2.1 item 6, §4.4) | 426 + `Sec-WebSocket-Version: 13` | `Version` |
//! | service disabled (`ws.disable`) | 503 | `Disabled` |
//! | path (query removed) not in `paths` (§4.2.1 "/resource name/") | 404 | `Path` |
//! | `Host` not in `hosts` | 403 | `HostNotAllowed` |
//! | `Origin` not in `origins` (§4.2.2 item 4, §10.2; RFC 6454 §5 comparison) | 403 | `Origin` |
//! | no credentials when auth is required (RFC 7235 §3.1) | 401 + challenges | `AuthRequired` |
//! | stale Digest nonce with a correct response (RFC 7616 §3.3) | 401 + `stale=true` | `AuthRequired` |
//! | wrong credentials | 401 + fresh challenges | `AuthFailed` |
//! | no offered sub-protocol is configured (§4.2.2 item 5.4) | 400 | `SubProtocol` |
//!
//! [`RejectReason::Timeout`] (408) is never produced here; the reactor builds
//! it with [`reject`] when `handshake_timeout` expires.
//!
//! Matching rules:
//!
//! - **Hosts** compare case-insensitively. An allow-list entry without a
//!   port matches any port (`example.com` allows `example.com:8443`); an
//!   entry with a port needs that exact port. IPv6 literals are bracketed.
//! - **Origins** compare as RFC 6454 §5 tuples: scheme and host
//!   case-insensitive, an omitted port equal to the scheme's default (80 for
//!   `http`/`ws`, 443 for `https`/`wss`), one trailing `/` ignored. `null`
//!   matches only a listed `null`. When `origins` is non-empty a request
//!   without `Origin` is refused (non-browser clients must then send one).
//! - **Sub-protocols** are exact, case-sensitive tokens (the client must see
//!   its own token echoed, §4.1): `gossip` is not `sip`. Every
//!   `Sec-WebSocket-Protocol` field is read (fields may repeat, each a
//!   comma-separated list); the first protocol in the *server's* configured
//!   order that the client offered wins.
//!
//! # Authentication
//!
//! With [`HandshakePolicy::auth`] set, the request needs `Authorization`
//! with Digest (RFC 7616: SHA-256 offered first when every user has a
//! password, then MD5; `qop=auth` or RFC 2069 style; the `uri` parameter
//! must equal the request-target) or Basic (RFC 7617; use over `wss`). A 401
//! carries one `WWW-Authenticate` field per Digest algorithm plus one for
//! Basic. Nonces are stateless ([`NonceManager`]); the handshake is one
//! request per connection, so no nonce-count state is kept (see
//! [`crate::auth::digest`]). A stale nonce is counted as `AuthRequired`: the
//! client did nothing wrong and normally retries at once.
//!
//! # Responses
//!
//! Every rejection has a status line with the standard reason phrase,
//! `Server`, `Content-Type: text/plain`, `Content-Length`,
//! `Connection: close` and a one-line body saying what was wrong; the CORS
//! header follows `cors_mode` on rejections too. The acceptance is
//! `101 Switching Protocols` with `Sec-WebSocket-Accept` (§4.2.2 item 5.4:
//! base64 of SHA-1 of the key and the GUID), the chosen
//! `Sec-WebSocket-Protocol`, `Server` and the CORS header (`none`: nothing;
//! `any`: `*`; `origin`: the request's `Origin`, nothing without one).

use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::sync::Arc;

use crate::auth::{
    DigestAlgorithm, DigestResult, NonceManager, Users, basic_challenge, challenge, parse_basic,
    parse_digest_authorization, verify_digest,
};
use crate::config::{CorsMode, SubProtocol, WebSocket};

/// RFC 6455 §1.3 GUID appended to the key.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Header fields parsed at most; more is a 431.
pub const MAX_HEADERS: usize = 64;

/// What the server accepts; built once from the configuration and shared.
#[derive(Debug, Clone)]
pub struct HandshakePolicy {
    /// Accepted sub-protocols, server order of preference.
    pub sub_protocols: Vec<SubProtocol>,
    /// Allowed paths (no query); empty allows any.
    pub paths: Vec<String>,
    /// Allowed `Host` values (`host` or `host:port`); empty allows any.
    pub hosts: Vec<String>,
    /// Allowed origins (RFC 6454 serialisation); empty allows any or none.
    pub origins: Vec<String>,
    pub cors_mode: CorsMode,
    pub server_header: String,
    pub max_request_header_size: usize,
    /// `Some` → HTTP authentication required.
    pub auth: Option<HandshakeAuth>,
}

impl HandshakePolicy {
    /// The policy of a `[websocket]` section, with `auth` when
    /// `require_auth` is set.
    pub fn from_config(ws: &WebSocket, auth: Option<HandshakeAuth>) -> HandshakePolicy {
        HandshakePolicy {
            sub_protocols: ws.sub_protocols.clone(),
            paths: ws.paths.clone(),
            hosts: ws.hosts.clone(),
            origins: ws.origins.clone(),
            cors_mode: ws.cors_mode,
            server_header: ws.server_header.clone(),
            max_request_header_size: ws.max_request_header_size,
            auth,
        }
    }
}

/// HTTP authentication on the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeAuth {
    pub realm: String,
    /// The users in force (reloadable).
    pub store: Arc<Users>,
    pub nonces: NonceManager,
}

/// Result of [`process`].
#[derive(Debug)]
pub enum Outcome {
    /// The request head is incomplete: read more and call again with all
    /// bytes received so far.
    Partial,
    Accepted(Accepted),
    Rejected(Rejected),
}

/// A successful handshake.
#[derive(Debug)]
pub struct Accepted {
    /// Length of the request head; bytes after it are WebSocket frames.
    pub consumed: usize,
    /// The `101` response to send.
    pub response: Vec<u8>,
    pub sub_protocol: SubProtocol,
    /// Request path without the query.
    pub path: String,
    /// `Host` header as sent.
    pub host: String,
    /// `Origin` header as sent.
    pub origin: Option<String>,
    /// Authenticated user, when auth is required.
    pub user: Option<String>,
}

/// A refused handshake: send `response`, then close.
#[derive(Debug)]
pub struct Rejected {
    pub status: u16,
    pub reason: RejectReason,
    pub response: Vec<u8>,
}

/// Why a handshake was refused (a stats label each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectReason {
    Malformed,
    Method,
    HttpVersion,
    Host,
    Upgrade,
    Connection,
    Key,
    Version,
    Path,
    HostNotAllowed,
    Origin,
    AuthRequired,
    AuthFailed,
    SubProtocol,
    TooLarge,
    Disabled,
    Timeout,
}

impl RejectReason {
    /// Every reason, in `repr(u8)` order.
    pub const ALL: [RejectReason; 17] = [
        RejectReason::Malformed,
        RejectReason::Method,
        RejectReason::HttpVersion,
        RejectReason::Host,
        RejectReason::Upgrade,
        RejectReason::Connection,
        RejectReason::Key,
        RejectReason::Version,
        RejectReason::Path,
        RejectReason::HostNotAllowed,
        RejectReason::Origin,
        RejectReason::AuthRequired,
        RejectReason::AuthFailed,
        RejectReason::SubProtocol,
        RejectReason::TooLarge,
        RejectReason::Disabled,
        RejectReason::Timeout,
    ];

    /// snake_case label (metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Method => "method",
            RejectReason::HttpVersion => "http_version",
            RejectReason::Host => "host",
            RejectReason::Upgrade => "upgrade",
            RejectReason::Connection => "connection",
            RejectReason::Key => "key",
            RejectReason::Version => "version",
            RejectReason::Path => "path",
            RejectReason::HostNotAllowed => "host_not_allowed",
            RejectReason::Origin => "origin",
            RejectReason::AuthRequired => "auth_required",
            RejectReason::AuthFailed => "auth_failed",
            RejectReason::SubProtocol => "sub_protocol",
            RejectReason::TooLarge => "too_large",
            RejectReason::Disabled => "disabled",
            RejectReason::Timeout => "timeout",
        }
    }

    /// The HTTP status sent for this reason.
    pub fn status(self) -> u16 {
        match self {
            RejectReason::Malformed
            | RejectReason::HttpVersion
            | RejectReason::Host
            | RejectReason::Upgrade
            | RejectReason::Connection
            | RejectReason::Key
            | RejectReason::SubProtocol => 400,
            RejectReason::Method => 405,
            RejectReason::Version => 426,
            RejectReason::Path => 404,
            RejectReason::HostNotAllowed | RejectReason::Origin => 403,
            RejectReason::AuthRequired | RejectReason::AuthFailed => 401,
            RejectReason::TooLarge => 431,
            RejectReason::Disabled => 503,
            RejectReason::Timeout => 408,
        }
    }

    fn body(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed HTTP request\n",
            RejectReason::Method => "a WebSocket handshake must use GET\n",
            RejectReason::HttpVersion => "a WebSocket handshake must use HTTP/1.1\n",
            RejectReason::Host => "missing, empty or repeated Host header\n",
            RejectReason::Upgrade => "Upgrade header must contain websocket\n",
            RejectReason::Connection => "Connection header must contain Upgrade\n",
            RejectReason::Key => "Sec-WebSocket-Key must be base64 of 16 bytes\n",
            RejectReason::Version => "Sec-WebSocket-Version must be 13\n",
            RejectReason::Path => "no WebSocket service at this path\n",
            RejectReason::HostNotAllowed => "host not allowed\n",
            RejectReason::Origin => "origin not allowed\n",
            RejectReason::AuthRequired => "authentication required\n",
            RejectReason::AuthFailed => "authentication failed\n",
            RejectReason::SubProtocol => "no supported sub-protocol offered\n",
            RejectReason::TooLarge => "request header too large\n",
            RejectReason::Disabled => "WebSocket service disabled\n",
            RejectReason::Timeout => "handshake timed out\n",
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2 item 5.4): base64 of
/// SHA-1 of the key as sent followed by the GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut out = [0u8; 28];
    let s = accept_key_into(key, &mut out);
    String::from_utf8_lossy(s).into_owned()
}

fn accept_key_into<'a>(key: &[u8], out: &'a mut [u8; 28]) -> &'a [u8] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID);
    let digest = h.finalize();
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(digest, out)
        .unwrap_or(0);
    out.get(..n).unwrap_or(&[])
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Elements of a comma-separated list field (RFC 9110 §5.6.1), trimmed,
/// empty ones skipped.
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    list_elements(v).any(|e| e.eq_ignore_ascii_case(token))
}

/// Splits `host[:port]` / `[v6][:port]` into host and port.
fn split_host_port(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    if s.first() == Some(&b'[') {
        if let Some(end) = memchr::memchr(b']', s) {
            let host = s.get(..=end).unwrap_or(s);
            let rest = s.get(end + 1..).unwrap_or(&[]);
            return match rest {
                [] => (host, None),
                [b':', port @ ..] => (host, Some(port)),
                _ => (s, None),
            };
        }
        return (s, None);
    }
    match memchr::memchr(b':', s) {
        Some(i) if memchr::memrchr(b':', s) == Some(i) => {
            (s.get(..i).unwrap_or(s), Some(s.get(i + 1..).unwrap_or(&[])))
        }
        _ => (s, None),
    }
}

fn host_allowed(req: &[u8], allowed: &[String]) -> bool {
    let (rh, rp) = split_host_port(req);
    allowed.iter().any(|entry| {
        let (eh, ep) = split_host_port(entry.as_bytes());
        rh.eq_ignore_ascii_case(eh)
            && match ep {
                None => true,
                Some(p) => rp == Some(p),
            }
    })
}

struct Origin<'a> {
    scheme: &'a [u8],
    host: &'a [u8],
    port: Option<u16>,
}

fn default_port(scheme: &[u8]) -> Option<u16> {
    if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"ws") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case(b"https") || scheme.eq_ignore_ascii_case(b"wss") {
        Some(443)
    } else {
        None
    }
}

/// Parses a serialised origin `scheme "://" host [ ":" port ]` (RFC 6454
/// §6.2), tolerating one trailing `/`.
fn parse_origin(s: &[u8]) -> Option<Origin<'_>> {
    let sep = memchr::memmem::find(s, b"://")?;
    let scheme = s.get(..sep)?;
    let first = *scheme.first()?;
    if !first.is_ascii_alphabetic()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let mut rest = s.get(sep + 3..)?;
    if let [r @ .., b'/'] = rest {
        rest = r;
    }
    if rest.is_empty() || rest.iter().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@')) {
        return None;
    }
    let (host, port) = split_host_port(rest);
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some([]) => default_port(scheme),
        Some(p) => Some(std::str::from_utf8(p).ok()?.parse::<u16>().ok()?),
    };
    Some(Origin { scheme, host, port })
}

fn origin_allowed(req: &[u8], allowed: &[String]) -> bool {
    if req == b"null" {
        return allowed.iter().any(|e| e == "null");
    }
    let Some(r) = parse_origin(req) else {
        return false;
    };
    allowed.iter().any(|e| {
        parse_origin(e.as_bytes()).is_some_and(|a| {
            a.scheme.eq_ignore_ascii_case(r.scheme)
                && a.host.eq_ignore_ascii_case(r.host)
                && a.port == r.port
        })
    })
}

/// The path of a request-target: origin-form `/p?q` or absolute-form
/// `scheme://authority/p?q` (RFC 6455 §4.2.1 item 1 allows both).
fn target_path(target: &str) -> Option<&str> {
    let b = target.as_bytes();
    let path = if b.first() == Some(&b'/') {
        target
    } else {
        let sep = memchr::memmem::find(b, b"://")?;
        let after = target.get(sep + 3..)?;
        match memchr::memchr(b'/', after.as_bytes()) {
            Some(i) => after.get(i..)?,
            None => "/",
        }
    };
    let end = memchr::memchr2(b'?', b'#', path.as_bytes()).unwrap_or(path.len());
    path.get(..end)
}

/// Appends a header value, dropping CR, LF and other controls so a
/// configured or mirrored value can never split the response.
fn push_value(out: &mut Vec<u8>, v: &[u8]) {
    if v.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t') {
        out.extend_from_slice(v);
    } else {
        out.extend(
            v.iter()
                .copied()
                .filter(|&b| b >= 0x20 && b != 0x7f || b == b'\t'),
        );
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_value(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or(&[]));
}

fn push_cors(out: &mut Vec<u8>, mode: CorsMode, origin: Option<&[u8]>) {
    match (mode, origin) {
        (CorsMode::Any, _) => out.extend_from_slice(b"Access-Control-Allow-Origin: *\r\n"),
        (CorsMode::Origin, Some(o)) => push_header(out, b"Access-Control-Allow-Origin", o),
        _ => {}
    }
}

fn build_rejection(
    policy: &HandshakePolicy,
    reason: RejectReason,
    origin: Option<&[u8]>,
    extra: &[u8],
    body: &str,
) -> Rejected {
    let status = reason.status();
    let mut out = Vec::with_capacity(160 + policy.server_header.len() + extra.len() + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, usize::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, b"Server", policy.server_header.as_bytes());
    match reason {
        RejectReason::Method => out.extend_from_slice(b"Allow: GET\r\n"),
        RejectReason::Version => {
            // RFC 7231 §6.5.15: a 426 carries Upgrade (listed in Connection).
            out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n")
        }
        _ => {}
    }
    out.extend_from_slice(extra);
    push_cors(&mut out, policy.cors_mode, origin);
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(&mut out, body.len());
    if reason == RejectReason::Version {
        out.extend_from_slice(b"\r\nConnection: close, Upgrade\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    }
    out.extend_from_slice(body.as_bytes());
    Rejected {
        status,
        reason,
        response: out,
    }
}

/// A rejection built outside [`process`] (e.g. [`RejectReason::Timeout`]
/// when `handshake_timeout` expires). Carries no CORS origin mirror and no
/// authentication challenge.
pub fn reject(policy: &HandshakePolicy, reason: RejectReason) -> Rejected {
    build_rejection(policy, reason, None, b"", reason.body())
}

fn rejected(policy: &HandshakePolicy, reason: RejectReason, origin: Option<&[u8]>) -> Outcome {
    Outcome::Rejected(build_rejection(policy, reason, origin, b"", reason.body()))
}

/// A 401 with fresh Digest challenges and a Basic challenge.
fn auth_rejection(
    policy: &HandshakePolicy,
    auth: &HandshakeAuth,
    reason: RejectReason,
    stale: bool,
    origin: Option<&[u8]>,
    now_secs: u64,
) -> Outcome {
    let nonce = auth.nonces.issue(now_secs);
    let algorithms: &[DigestAlgorithm] = if auth.store.current().supports_sha256() {
        &[DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
    } else {
        &[DigestAlgorithm::Md5]
    };
    let mut extra = Vec::with_capacity(256);
    for a in algorithms {
        let c = challenge(&auth.realm, &nonce, stale, std::slice::from_ref(a));
        push_header(&mut extra, b"WWW-Authenticate", c.as_bytes());
    }
    push_header(
        &mut extra,
        b"WWW-Authenticate",
        basic_challenge(&auth.realm).as_bytes(),
    );
    let body = if stale {
        "authentication required: nonce expired, retry\n"
    } else {
        reason.body()
    };
    Outcome::Rejected(build_rejection(policy, reason, origin, &extra, body))
}

enum AuthError {
    /// Missing credentials, or stale nonce (`true`).
    Required {
        stale: bool,
    },
    Failed,
}

fn authenticate(
    auth: &HandshakeAuth,
    authorization: Option<&[u8]>,
    target: &str,
    now_secs: u64,
) -> Result<String, AuthError> {
    let Some(raw) = authorization else {
        return Err(AuthError::Required { stale: false });
    };
    let value = std::str::from_utf8(raw).map_err(|_| AuthError::Failed)?;
    let scheme = value
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or("");
    if scheme.eq_ignore_ascii_case("Digest") {
        let creds = parse_digest_authorization(value).map_err(|_| AuthError::Failed)?;
        if creds.uri != target {
            return Err(AuthError::Failed);
        }
        match verify_digest(
            &auth.store.current(),
            &creds,
            "GET",
            &auth.realm,
            &auth.nonces,
            now_secs,
        ) {
            DigestResult::Ok { user } => Ok(user),
            DigestResult::Stale => Err(AuthError::Required { stale: true }),
            DigestResult::Failed => Err(AuthError::Failed),
        }
    } else if scheme.eq_ignore_ascii_case("Basic") {
        let (user, password) = parse_basic(value).ok_or(AuthError::Failed)?;
        if auth
            .store
            .current()
            .check_password_in_realm(&user, &auth.realm, &password)
        {
            Ok(user)
        } else {
            Err(AuthError::Failed)
        }
    } else {
        Err(AuthError::Failed)
    }
}

/// The header fields the handshake looks at, from one pass.
#[derive(Default)]
struct Fields<'a> {
    host: Option<&'a [u8]>,
    host_count: u8,
    upgrade_ok: bool,
    connection_ok: bool,
    key: Option<&'a [u8]>,
    key_count: u8,
    version: Option<&'a [u8]>,
    version_count: u8,
    origin: Option<&'a [u8]>,
    origin_count: u8,
    authorization: Option<&'a [u8]>,
    /// Bit `i` set: the client offered `policy.sub_protocols[i]`.
    offered: u64,
    protocol_fields: bool,
}

fn bump(count: &mut u8) {
    *count = count.saturating_add(1);
}

fn scan<'a>(headers: &[httparse::Header<'a>], policy: &HandshakePolicy) -> Fields<'a> {
    let mut f = Fields::default();
    for h in headers {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                bump(&mut f.host_count);
                f.host.get_or_insert(value);
            }
            6 if name.eq_ignore_ascii_case(b"origin") => {
                bump(&mut f.origin_count);
                f.origin.get_or_insert(value);
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                f.upgrade_ok |= has_token(value, b"websocket");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                f.connection_ok |= has_token(value, b"upgrade");
            }
            13 if name.eq_ignore_ascii_case(b"authorization") => {
                f.authorization.get_or_insert(value);
            }
            17 if name.eq_ignore_ascii_case(b"sec-websocket-key") => {
                bump(&mut f.key_count);
                f.key.get_or_insert(value);
            }
            21 if name.eq_ignore_ascii_case(b"sec-websocket-version") => {
                bump(&mut f.version_count);
                f.version.get_or_insert(value);
            }
            22 if name.eq_ignore_ascii_case(b"sec-websocket-protocol") => {
                f.protocol_fields = true;
                for offered in list_elements(value) {
                    for (i, sp) in policy.sub_protocols.iter().enumerate().take(64) {
                        if offered == sp.token().as_bytes() {
                            f.offered |= 1u64 << i;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    f
}

fn key_valid(key: &[u8]) -> bool {
    if key.len() != 24 {
        return false;
    }
    let mut out = [0u8; 18];
    matches!(
        base64::engine::general_purpose::STANDARD.decode_slice(key, &mut out),
        Ok(16)
    )
}

fn sub_protocol_rejection(
    policy: &HandshakePolicy,
    origin: Option<&[u8]>,
    offered_any: bool,
) -> Outcome {
    let mut body = String::with_capacity(64);
    body.push_str(if offered_any {
        "no supported sub-protocol offered; "
    } else {
        "no Sec-WebSocket-Protocol offered; "
    });
    body.push_str("supported sub-protocols: ");
    if policy.sub_protocols.is_empty() {
        body.push_str("(none)");
    }
    for (i, sp) in policy.sub_protocols.iter().enumerate() {
        if i > 0 {
            body.push_str(", ");
        }
        body.push_str(sp.token());
    }
    body.push('\n');
    Outcome::Rejected(build_rejection(
        policy,
        RejectReason::SubProtocol,
        origin,
        b"",
        &body,
    ))
}

/// Validates the opening handshake in `buf` (everything received so far)
/// against `policy`. `enabled` is false while the service is disabled
/// (`ws.disable`); `now_secs` is Unix time for Digest nonces.
pub fn process(buf: &[u8], policy: &HandshakePolicy, enabled: bool, now_secs: u64) -> Outcome {
    let max = policy.max_request_header_size;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max {
                return rejected(policy, RejectReason::TooLarge, None);
            }
            return Outcome::Partial;
        }
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return rejected(policy, RejectReason::TooLarge, None);
        }
        Err(httparse::Error::Version) => return rejected(policy, RejectReason::HttpVersion, None),
        Err(_) => return rejected(policy, RejectReason::Malformed, None),
    };
    if consumed > max {
        return rejected(policy, RejectReason::TooLarge, None);
    }
    let f = scan(req.headers, policy);
    let origin = f.origin;
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return rejected(policy, RejectReason::Malformed, origin);
    };
    let Some(path) = target_path(target) else {
        return rejected(policy, RejectReason::Malformed, origin);
    };
    if method != "GET" {
        return rejected(policy, RejectReason::Method, origin);
    }
    if version != 1 {
        return rejected(policy, RejectReason::HttpVersion, origin);
    }
    let host = match (f.host, f.host_count) {
        (Some(h), 1) if !h.is_empty() => h,
        _ => return rejected(policy, RejectReason::Host, origin),
    };
    let Ok(host_str) = std::str::from_utf8(host) else {
        return rejected(policy, RejectReason::Host, origin);
    };
    if !f.upgrade_ok {
        return rejected(policy, RejectReason::Upgrade, origin);
    }
    if !f.connection_ok {
        return rejected(policy, RejectReason::Connection, origin);
    }
    let key = match (f.key, f.key_count) {
        (Some(k), 1) if key_valid(k) => k,
        _ => return rejected(policy, RejectReason::Key, origin),
    };
    if f.version_count != 1 || f.version != Some(b"13".as_slice()) {
        return rejected(policy, RejectReason::Version, origin);
    }
    if !enabled {
        return rejected(policy, RejectReason::Disabled, origin);
    }
    if !policy.paths.is_empty() && !policy.paths.iter().any(|p| p == path) {
        return rejected(policy, RejectReason::Path, origin);
    }
    if !policy.hosts.is_empty() && !host_allowed(host, &policy.hosts) {
        return rejected(policy, RejectReason::HostNotAllowed, origin);
    }
    let origin_str = match origin {
        None => None,
        Some(o) => match std::str::from_utf8(o) {
            Ok(s) if f.origin_count == 1 => Some(s),
            _ => return rejected(policy, RejectReason::Origin, None),
        },
    };
    if !policy.origins.is_empty() && !origin.is_some_and(|o| origin_allowed(o, &policy.origins)) {
        return rejected(policy, RejectReason::Origin, origin);
    }
    let user = match &policy.auth {
        None => None,
        Some(auth) => match authenticate(auth, f.authorization, target, now_secs) {
            Ok(user) => Some(user),
            Err(AuthError::Required { stale }) => {
                return auth_rejection(
                    policy,
                    auth,
                    RejectReason::AuthRequired,
                    stale,
                    origin,
                    now_secs,
                );
            }
            Err(AuthError::Failed) => {
                return auth_rejection(
                    policy,
                    auth,
                    RejectReason::AuthFailed,
                    false,
                    origin,
                    now_secs,
                );
            }
        },
    };
    let chosen = policy
        .sub_protocols
        .get(f.offered.trailing_zeros() as usize)
        .copied();
    let Some(sub_protocol) = chosen.filter(|_| f.offered != 0) else {
        return sub_protocol_rejection(policy, origin, f.protocol_fields);
    };

    let mut accept = [0u8; 28];
    let accept = accept_key_into(key, &mut accept);
    let token = sub_protocol.token().as_bytes();
    let mut out =
        Vec::with_capacity(150 + policy.server_header.len() + origin.map_or(0, |o| o.len() + 32));
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept);
    out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
    out.extend_from_slice(token);
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, b"Server", policy.server_header.as_bytes());
    push_cors(&mut out, policy.cors_mode, origin);
    out.extend_from_slice(b"\r\n");

    Outcome::Accepted(Accepted {
        consumed,
        response: out,
        sub_protocol,
        path: path.to_string(),
        host: host_str.to_string(),
        origin: origin_str.map(str::to_string),
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialStore;
    use crate::auth::DigestAlgorithm;
    use md5::Md5;
    use sha2::Sha256;

    fn policy() -> HandshakePolicy {
        HandshakePolicy {
            sub_protocols: vec![SubProtocol::Sip, SubProtocol::Msrp],
            paths: Vec::new(),
            hosts: Vec::new(),
            origins: Vec::new(),
            cors_mode: CorsMode::None,
            server_header: "rtedge-test".into(),
            max_request_header_size: 8192,
            auth: None,
        }
    }

    type Headers = Vec<(&'static str, String)>;

    /// A typical browser (Chrome) SIP handshake.
    fn browser() -> Headers {
        [
            ("Host", "example.com:8080"),
            ("Connection", "Upgrade"),
            ("Pragma", "no-cache"),
            ("Cache-Control", "no-cache"),
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
            ),
            ("Upgrade", "websocket"),
            ("Origin", "https://example.com"),
            ("Sec-WebSocket-Version", "13"),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("Accept-Language", "en-US,en;q=0.9"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("Sec-WebSocket-Protocol", "sip"),
        ]
        .into_iter()
        .map(|(n, v)| (n, v.to_string()))
        .collect()
    }

    fn set(mut h: Headers, name: &'static str, value: Option<&str>) -> Headers {
        let pos = h.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
        match (pos, value) {
            (Some(i), Some(v)) => h[i].1 = v.to_string(),
            (Some(i), None) => {
                h.remove(i);
            }
            (None, Some(v)) => h.push((name, v.to_string())),
            (None, None) => {}
        }
        h
    }

    fn build(request_line: &str, h: &Headers) -> Vec<u8> {
        let mut s = format!("{request_line}\r\n");
        for (n, v) in h {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    fn get(h: &Headers) -> Vec<u8> {
        build("GET /ws HTTP/1.1", h)
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn all(&self, name: &str) -> Vec<&str> {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    fn parse_resp(bytes: &[u8]) -> Resp {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(bytes).expect("valid response") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete response"),
        };
        let status = r.code.unwrap();
        let phrase = r.reason.unwrap();
        assert_eq!(phrase, reason_phrase(status));
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        let body = String::from_utf8(bytes[n..].to_vec()).unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }

    fn accepted(buf: &[u8], p: &HandshakePolicy) -> Accepted {
        match process(buf, p, true, 1_000) {
            Outcome::Accepted(a) => a,
            Outcome::Rejected(r) => panic!(
                "rejected {:?}: {}",
                r.reason,
                String::from_utf8_lossy(&r.response)
            ),
            Outcome::Partial => panic!("partial"),
        }
    }

    fn rejected_with(buf: &[u8], p: &HandshakePolicy, enabled: bool) -> (Rejected, Resp) {
        match process(buf, p, enabled, 1_000) {
            Outcome::Rejected(r) => {
                let resp = parse_resp(&r.response);
                assert_eq!(resp.status, r.status);
                assert_eq!(r.status, r.reason.status());
                assert_eq!(resp.header("Server"), Some("rtedge-test"));
                assert_eq!(
                    resp.header("Connection").map(|c| c.contains("close")),
                    Some(true)
                );
                assert_eq!(
                    resp.header("Content-Length"),
                    Some(resp.body.len().to_string().as_str())
                );
                assert!(!resp.body.is_empty());
                (r, resp)
            }
            Outcome::Accepted(a) => panic!("accepted {:?}", a.sub_protocol),
            Outcome::Partial => panic!("partial"),
        }
    }

    fn expect_reject(buf: &[u8], p: &HandshakePolicy, reason: RejectReason, status: u16) -> Resp {
        let (r, resp) = rejected_with(buf, p, true);
        assert_eq!((r.reason, r.status), (reason, status), "{}", resp.body);
        resp
    }

    #[test]
    fn rfc6455_example_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_browser_sip_handshake() {
        let buf = get(&browser());
        let a = accepted(&buf, &policy());
        assert_eq!(a.consumed, buf.len());
        assert_eq!(a.sub_protocol, SubProtocol::Sip);
        assert_eq!(a.path, "/ws");
        assert_eq!(a.host, "example.com:8080");
        assert_eq!(a.origin.as_deref(), Some("https://example.com"));
        assert_eq!(a.user, None);
        let text = String::from_utf8(a.response.clone()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        let r = parse_resp(&a.response);
        assert_eq!(r.status, 101);
        assert_eq!(r.header("Upgrade"), Some("websocket"));
        assert_eq!(r.header("Connection"), Some("Upgrade"));
        assert_eq!(
            r.header("Sec-WebSocket-Accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(r.header("Sec-WebSocket-Protocol"), Some("sip"));
        assert_eq!(r.header("Server"), Some("rtedge-test"));
        assert_eq!(r.header("Access-Control-Allow-Origin"), None);
        assert!(r.body.is_empty());
    }

    #[test]
    fn partial_until_end_of_head_and_consumed_excludes_trailing_bytes() {
        let buf = get(&browser());
        let p = policy();
        for cut in [0, 1, 3, 20, buf.len() - 2, buf.len() - 1] {
            assert!(
                matches!(process(&buf[..cut], &p, true, 0), Outcome::Partial),
                "cut at {cut}"
            );
        }
        let mut with_frame = buf.clone();
        with_frame.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let a = accepted(&with_frame, &p);
        assert_eq!(a.consumed, buf.len());
        assert_eq!(&with_frame[a.consumed..][..2], &[0x81, 0x85]);
    }

    #[test]
    fn too_large_is_431() {
        let mut p = policy();
        p.max_request_header_size = 256;
        // Incomplete and already at the limit.
        let buf = get(&browser());
        let (r, _) = rejected_with(&buf[..256], &p, true);
        assert_eq!((r.reason, r.status), (RejectReason::TooLarge, 431));
        // Complete but over the limit.
        let (r, _) = rejected_with(&buf, &p, true);
        assert_eq!(r.reason, RejectReason::TooLarge);
        // Just under the limit is still partial.
        assert!(matches!(
            process(&buf[..255], &p, true, 0),
            Outcome::Partial
        ));
        // A head of exactly the limit is fine.
        p.max_request_header_size = buf.len();
        accepted(&buf, &p);
        // Too many header fields.
        let mut h = browser();
        for _ in 0..MAX_HEADERS {
            h.push(("X-Filler", "1".into()));
        }
        let resp = expect_reject(&get(&h), &policy(), RejectReason::TooLarge, 431);
        assert_eq!(resp.body, "request header too large\n");
    }

    #[test]
    fn malformed_is_400() {
        let p = policy();
        for buf in [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            b"GET  HTTP/1.1\r\n\r\n".to_vec(),
            build("GET * HTTP/1.1", &browser()),
            build("GET ws HTTP/1.1", &browser()),
        ] {
            expect_reject(&buf, &p, RejectReason::Malformed, 400);
        }
    }

    #[test]
    fn method_must_be_get() {
        let resp = expect_reject(
            &build("POST /ws HTTP/1.1", &browser()),
            &policy(),
            RejectReason::Method,
            405,
        );
        assert_eq!(resp.header("Allow"), Some("GET"));
        expect_reject(
            &build("get /ws HTTP/1.1", &browser()),
            &policy(),
            RejectReason::Method,
            405,
        );
    }

    #[test]
    fn version_must_be_http11() {
        expect_reject(
            &build("GET /ws HTTP/1.0", &browser()),
            &policy(),
            RejectReason::HttpVersion,
            400,
        );
        expect_reject(
            &build("GET /ws HTTP/2.0", &browser()),
            &policy(),
            RejectReason::HttpVersion,
            400,
        );
    }

    #[test]
    fn host_required_once() {
        let p = policy();
        expect_reject(
            &get(&set(browser(), "Host", None)),
            &p,
            RejectReason::Host,
            400,
        );
        expect_reject(
            &get(&set(browser(), "Host", Some(""))),
            &p,
            RejectReason::Host,
            400,
        );
        let mut h = browser();
        h.push(("host", "evil.com".into()));
        expect_reject(&get(&h), &p, RejectReason::Host, 400);
    }

    #[test]
    fn upgrade_token() {
        let p = policy();
        expect_reject(
            &get(&set(browser(), "Upgrade", None)),
            &p,
            RejectReason::Upgrade,
            400,
        );
        expect_reject(
            &get(&set(browser(), "Upgrade", Some("websockets"))),
            &p,
            RejectReason::Upgrade,
            400,
        );
        accepted(&get(&set(browser(), "Upgrade", Some("h2c, WebSocket"))), &p);
    }

    #[test]
    fn connection_token_not_substring() {
        let p = policy();
        for bad in [
            None,
            Some("keep-alive"),
            Some("upgraded"),
            Some("no-upgrade, close"),
        ] {
            expect_reject(
                &get(&set(browser(), "Connection", bad)),
                &p,
                RejectReason::Connection,
                400,
            );
        }
        // Firefox sends "keep-alive, Upgrade".
        accepted(
            &get(&set(browser(), "Connection", Some("keep-alive, Upgrade"))),
            &p,
        );
        accepted(&get(&set(browser(), "Connection", Some("UPGRADE"))), &p);
        // Repeated Connection fields count as one list.
        let mut h = set(browser(), "Connection", Some("keep-alive"));
        h.push(("Connection", "upgrade".into()));
        accepted(&get(&h), &p);
    }

    #[test]
    fn key_must_be_16_bytes_base64() {
        let p = policy();
        for bad in [
            None,
            Some(""),
            Some("dGhlIHNhbXBsZSBub25jZQ"),   // no padding
            Some("dGhlIHNhbXBsZSBub25jZXg="), // 17 bytes
            Some("dGhlIHNhbXBsZSBub25j"),     // 15 bytes
            Some("!!!!!!!!!!!!!!!!!!!!!!=="), // not base64
        ] {
            expect_reject(
                &get(&set(browser(), "Sec-WebSocket-Key", bad)),
                &p,
                RejectReason::Key,
                400,
            );
        }
        let mut h = browser();
        h.push(("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==".into()));
        expect_reject(&get(&h), &p, RejectReason::Key, 400);
    }

    #[test]
    fn version_must_be_13_with_426() {
        let p = policy();
        for bad in [None, Some("8"), Some("13, 8"), Some("130")] {
            let resp = expect_reject(
                &get(&set(browser(), "Sec-WebSocket-Version", bad)),
                &p,
                RejectReason::Version,
                426,
            );
            assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"));
            assert_eq!(resp.header("Upgrade"), Some("websocket"));
        }
    }

    #[test]
    fn disabled_is_503_after_protocol_checks() {
        let p = policy();
        let (r, _) = rejected_with(&get(&browser()), &p, false);
        assert_eq!((r.reason, r.status), (RejectReason::Disabled, 503));
        // A bad key is still reported as such.
        let (r, _) = rejected_with(&get(&set(browser(), "Sec-WebSocket-Key", None)), &p, false);
        assert_eq!(r.reason, RejectReason::Key);
    }

    #[test]
    fn path_allow_list_ignores_query() {
        let mut p = policy();
        p.paths = vec!["/ws".into(), "/sip".into()];
        accepted(&build("GET /ws?token=abc HTTP/1.1", &browser()), &p);
        let a = accepted(&build("GET /sip HTTP/1.1", &browser()), &p);
        assert_eq!(a.path, "/sip");
        let a = accepted(&build("GET ws://example.com/ws?x HTTP/1.1", &browser()), &p);
        assert_eq!(a.path, "/ws");
        expect_reject(
            &build("GET /other HTTP/1.1", &browser()),
            &p,
            RejectReason::Path,
            404,
        );
        expect_reject(
            &build("GET /ws/ HTTP/1.1", &browser()),
            &p,
            RejectReason::Path,
            404,
        );
        expect_reject(
            &build("GET /WS HTTP/1.1", &browser()),
            &p,
            RejectReason::Path,
            404,
        );
    }

    #[test]
    fn host_allow_list() {
        let mut p = policy();
        p.hosts = vec![
            "Example.COM".into(),
            "sip.example.org:443".into(),
            "[::1]".into(),
        ];
        let ok = [
            "example.com:8080",
            "EXAMPLE.com",
            "sip.example.org:443",
            "[::1]:8080",
            "[::1]",
        ];
        for h in ok {
            accepted(&get(&set(browser(), "Host", Some(h))), &p);
        }
        for h in [
            "evil.com",
            "example.com.evil.com",
            "sip.example.org",
            "sip.example.org:80",
            "[::2]",
        ] {
            expect_reject(
                &get(&set(browser(), "Host", Some(h))),
                &p,
                RejectReason::HostNotAllowed,
                403,
            );
        }
    }

    #[test]
    fn origin_allow_list_rfc6454() {
        let mut p = policy();
        p.origins = vec![
            "https://example.com".into(),
            "http://app.example.com:8080/".into(),
        ];
        for o in [
            "https://example.com",
            "HTTPS://EXAMPLE.COM",
            "https://example.com:443",
            "http://app.example.com:8080",
        ] {
            accepted(&get(&set(browser(), "Origin", Some(o))), &p);
        }
        for o in [
            Some("http://example.com"),
            Some("https://example.com:8443"),
            Some("https://evil.com"),
            Some("https://example.com.evil.com"),
            Some("http://app.example.com"),
            Some("null"),
            Some("garbage"),
            None,
        ] {
            expect_reject(
                &get(&set(browser(), "Origin", o)),
                &p,
                RejectReason::Origin,
                403,
            );
        }
        p.origins.push("null".into());
        accepted(&get(&set(browser(), "Origin", Some("null"))), &p);
    }

    #[test]
    fn sub_protocol_exact_token_server_order() {
        let p = policy();
        // Kamailio accepts "gossip" as "sip"; we must not.
        let resp = expect_reject(
            &get(&set(browser(), "Sec-WebSocket-Protocol", Some("gossip"))),
            &p,
            RejectReason::SubProtocol,
            400,
        );
        assert_eq!(
            resp.body,
            "no supported sub-protocol offered; supported sub-protocols: sip, msrp\n"
        );
        assert_eq!(resp.header("Sec-WebSocket-Protocol"), None);
        for bad in ["SIP", "sips", "sip2, msrp-x", ""] {
            expect_reject(
                &get(&set(browser(), "Sec-WebSocket-Protocol", Some(bad))),
                &p,
                RejectReason::SubProtocol,
                400,
            );
        }
        let resp = expect_reject(
            &get(&set(browser(), "Sec-WebSocket-Protocol", None)),
            &p,
            RejectReason::SubProtocol,
            400,
        );
        assert!(resp.body.starts_with("no Sec-WebSocket-Protocol offered"));
        // Server order wins over client order.
        let a = accepted(
            &get(&set(browser(), "Sec-WebSocket-Protocol", Some("msrp, sip"))),
            &p,
        );
        assert_eq!(a.sub_protocol, SubProtocol::Sip);
        let mut p2 = policy();
        p2.sub_protocols = vec![SubProtocol::Msrp, SubProtocol::Sip];
        let a = accepted(
            &get(&set(browser(), "Sec-WebSocket-Protocol", Some("sip, msrp"))),
            &p2,
        );
        assert_eq!(a.sub_protocol, SubProtocol::Msrp);
        assert_eq!(
            parse_resp(&a.response).header("Sec-WebSocket-Protocol"),
            Some("msrp")
        );
        // Repeated fields.
        let mut h = set(browser(), "Sec-WebSocket-Protocol", Some("chat, gossip"));
        h.push(("Sec-WebSocket-Protocol", "xmpp ,  msrp".into()));
        let a = accepted(&get(&h), &p);
        assert_eq!(a.sub_protocol, SubProtocol::Msrp);
        // Not configured → refused even if known to rtedge.
        expect_reject(
            &get(&set(browser(), "Sec-WebSocket-Protocol", Some("xmpp"))),
            &p,
            RejectReason::SubProtocol,
            400,
        );
        let mut none = policy();
        none.sub_protocols.clear();
        let resp = expect_reject(&get(&browser()), &none, RejectReason::SubProtocol, 400);
        assert!(resp.body.contains("(none)"));
    }

    #[test]
    fn cors_modes_on_accept_and_reject() {
        let mut p = policy();
        p.cors_mode = CorsMode::Any;
        let a = accepted(&get(&browser()), &p);
        assert_eq!(
            parse_resp(&a.response).header("Access-Control-Allow-Origin"),
            Some("*")
        );
        p.cors_mode = CorsMode::Origin;
        let a = accepted(&get(&browser()), &p);
        assert_eq!(
            parse_resp(&a.response).header("Access-Control-Allow-Origin"),
            Some("https://example.com")
        );
        let a = accepted(&get(&set(browser(), "Origin", None)), &p);
        assert_eq!(
            parse_resp(&a.response).header("Access-Control-Allow-Origin"),
            None
        );
        assert_eq!(a.origin, None);
        // Rejections too.
        let resp = expect_reject(
            &get(&set(browser(), "Sec-WebSocket-Protocol", Some("gossip"))),
            &p,
            RejectReason::SubProtocol,
            400,
        );
        assert_eq!(
            resp.header("Access-Control-Allow-Origin"),
            Some("https://example.com")
        );
        p.cors_mode = CorsMode::Any;
        let resp = expect_reject(
            &build("PUT /ws HTTP/1.1", &browser()),
            &p,
            RejectReason::Method,
            405,
        );
        assert_eq!(resp.header("Access-Control-Allow-Origin"), Some("*"));
    }

    #[test]
    fn server_header_cannot_inject() {
        let mut p = policy();
        p.server_header = "x\r\nSet-Cookie: a=b".into();
        let a = accepted(&get(&browser()), &p);
        let r = parse_resp(&a.response);
        assert_eq!(r.header("Server"), Some("xSet-Cookie: a=b"));
        assert_eq!(r.header("Set-Cookie"), None);
    }

    #[test]
    fn reject_builder_for_timeout() {
        let r = reject(&policy(), RejectReason::Timeout);
        assert_eq!(r.status, 408);
        let resp = parse_resp(&r.response);
        assert_eq!(resp.status, 408);
        assert_eq!(resp.body, "handshake timed out\n");
    }

    #[test]
    fn reason_labels() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as u8 as usize, i);
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert_ne!(reason_phrase(r.status()), "Error");
        }
        assert_eq!(RejectReason::Origin.as_str(), "origin");
        assert_eq!(RejectReason::HostNotAllowed.as_str(), "host_not_allowed");
    }

    const NOW: u64 = 1_000;

    fn auth_policy(users: &str) -> HandshakePolicy {
        let mut p = policy();
        p.auth = Some(HandshakeAuth {
            realm: "rtedge".into(),
            store: Arc::new(Users::fixed(
                CredentialStore::from_toml(users, "rtedge").unwrap(),
            )),
            nonces: NonceManager::new([42; 32], 300),
        });
        p
    }

    fn hex_hash(alg: DigestAlgorithm, s: &str) -> String {
        match alg {
            DigestAlgorithm::Sha256 => hex::encode(Sha256::digest(s.as_bytes())),
            _ => hex::encode(Md5::digest(s.as_bytes())),
        }
    }

    /// Pulls `nonce="…"` for `algorithm` out of the 401's challenges.
    fn challenge_nonce(resp: &Resp, alg: DigestAlgorithm) -> String {
        let c = resp
            .all("WWW-Authenticate")
            .into_iter()
            .find(|c| {
                c.ends_with(&format!("algorithm={}", alg.token()))
                    || c.contains(&format!("algorithm={},", alg.token()))
            })
            .unwrap_or_else(|| panic!("no {alg:?} challenge in {:?}", resp.headers))
            .to_string();
        let start = c.find("nonce=\"").unwrap() + 7;
        let end = c[start..].find('"').unwrap() + start;
        c[start..end].to_string()
    }

    fn digest_header(alg: DigestAlgorithm, user: &str, pw: &str, nonce: &str, uri: &str) -> String {
        let ha1 = hex_hash(alg, &format!("{user}:rtedge:{pw}"));
        let ha2 = hex_hash(alg, &format!("GET:{uri}"));
        let resp = hex_hash(alg, &format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"rtedge\", nonce=\"{nonce}\", uri=\"{uri}\", \
             algorithm={}, response=\"{resp}\", qop=auth, nc=00000001, cnonce=\"0a4f113b\"",
            alg.token()
        )
    }

    fn with_authz(v: &str) -> Vec<u8> {
        get(&set(browser(), "Authorization", Some(v)))
    }

    #[test]
    fn digest_auth_round_trip() {
        let p = auth_policy("[[user]]\nname = \"alice\"\npassword = \"wonderland\"\n");
        let resp = expect_reject(&get(&browser()), &p, RejectReason::AuthRequired, 401);
        let challenges = resp.all("WWW-Authenticate");
        assert_eq!(challenges.len(), 3, "{challenges:?}");
        assert!(challenges[0].starts_with("Digest realm=\"rtedge\", nonce=\""));
        assert!(challenges[0].ends_with("qop=\"auth\", algorithm=SHA-256"));
        assert!(challenges[1].ends_with("algorithm=MD5"));
        assert_eq!(challenges[2], "Basic realm=\"rtedge\", charset=\"UTF-8\"");
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Md5] {
            let nonce = challenge_nonce(&resp, alg);
            let a = accepted(
                &with_authz(&digest_header(alg, "alice", "wonderland", &nonce, "/ws")),
                &p,
            );
            assert_eq!(a.user.as_deref(), Some("alice"));
            // Wrong password → AuthFailed with a fresh challenge.
            let r = expect_reject(
                &with_authz(&digest_header(alg, "alice", "wrong", &nonce, "/ws")),
                &p,
                RejectReason::AuthFailed,
                401,
            );
            assert_ne!(challenge_nonce(&r, alg), nonce);
            assert!(!r.all("WWW-Authenticate")[0].contains("stale"));
            // uri must name the request target.
            expect_reject(
                &with_authz(&digest_header(alg, "alice", "wonderland", &nonce, "/other")),
                &p,
                RejectReason::AuthFailed,
                401,
            );
            // Stale nonce, right password → 401 stale=true, counted as AuthRequired.
            let buf = with_authz(&digest_header(alg, "alice", "wonderland", &nonce, "/ws"));
            match process(&buf, &p, true, NOW + 301) {
                Outcome::Rejected(r) => {
                    assert_eq!((r.reason, r.status), (RejectReason::AuthRequired, 401));
                    let resp = parse_resp(&r.response);
                    assert!(resp.all("WWW-Authenticate")[0].ends_with("stale=true"));
                }
                other => panic!("{other:?}"),
            }
        }
        // Unknown user, forged nonce, garbage, unknown scheme.
        let nonce = challenge_nonce(&resp, DigestAlgorithm::Md5);
        for v in [
            digest_header(DigestAlgorithm::Md5, "mallory", "wonderland", &nonce, "/ws"),
            digest_header(DigestAlgorithm::Md5, "alice", "wonderland", "forged", "/ws"),
            "Digest garbage".to_string(),
            "Bearer abc".to_string(),
        ] {
            expect_reject(&with_authz(&v), &p, RejectReason::AuthFailed, 401);
        }
        // Auth precedes the sub-protocol check.
        let nonce = challenge_nonce(&resp, DigestAlgorithm::Md5);
        let h = set(
            set(browser(), "Sec-WebSocket-Protocol", Some("gossip")),
            "Authorization",
            Some(&digest_header(
                DigestAlgorithm::Md5,
                "alice",
                "wonderland",
                &nonce,
                "/ws",
            )),
        );
        expect_reject(&get(&h), &p, RejectReason::SubProtocol, 400);
    }

    #[test]
    fn md5_only_challenge_for_ha1_users_and_basic() {
        let ha1 = hex::encode(Md5::digest(b"bob:rtedge:builder"));
        let p = auth_policy(&format!("[[user]]\nname = \"bob\"\nha1 = \"{ha1}\"\n"));
        let resp = expect_reject(&get(&browser()), &p, RejectReason::AuthRequired, 401);
        let challenges = resp.all("WWW-Authenticate");
        assert_eq!(challenges.len(), 2);
        assert!(challenges[0].ends_with("algorithm=MD5"));
        let nonce = challenge_nonce(&resp, DigestAlgorithm::Md5);
        let a = accepted(
            &with_authz(&digest_header(
                DigestAlgorithm::Md5,
                "bob",
                "builder",
                &nonce,
                "/ws",
            )),
            &p,
        );
        assert_eq!(a.user.as_deref(), Some("bob"));
        // Basic (RFC 7617).
        let basic = |u: &str, pw: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"))
            )
        };
        let a = accepted(&with_authz(&basic("bob", "builder")), &p);
        assert_eq!(a.user.as_deref(), Some("bob"));
        expect_reject(
            &with_authz(&basic("bob", "nope")),
            &p,
            RejectReason::AuthFailed,
            401,
        );
        expect_reject(&with_authz("Basic %%%"), &p, RejectReason::AuthFailed, 401);
    }

    #[test]
    fn check_order() {
        // A request wrong in every way reports the first failing check.
        let mut p = policy();
        p.paths = vec!["/ws".into()];
        p.hosts = vec!["example.com".into()];
        p.origins = vec!["https://example.com".into()];
        let bad_origin = set(browser(), "Origin", Some("https://evil.com"));
        let bad_host = set(bad_origin.clone(), "Host", Some("evil.com"));
        expect_reject(
            &build("GET /x HTTP/1.1", &bad_host),
            &p,
            RejectReason::Path,
            404,
        );
        expect_reject(&get(&bad_host), &p, RejectReason::HostNotAllowed, 403);
        expect_reject(&get(&bad_origin), &p, RejectReason::Origin, 403);
        let no_version = set(bad_host.clone(), "Sec-WebSocket-Version", None);
        expect_reject(&get(&no_version), &p, RejectReason::Version, 426);
        let no_key = set(no_version, "Sec-WebSocket-Key", None);
        expect_reject(&get(&no_key), &p, RejectReason::Key, 400);
        let no_conn = set(no_key, "Connection", None);
        expect_reject(&get(&no_conn), &p, RejectReason::Connection, 400);
        let no_upgrade = set(no_conn, "Upgrade", None);
        expect_reject(&get(&no_upgrade), &p, RejectReason::Upgrade, 400);
        let no_host = set(no_upgrade, "Host", None);
        expect_reject(&get(&no_host), &p, RejectReason::Host, 400);
        expect_reject(
            &build("GET /x HTTP/1.0", &no_host),
            &p,
            RejectReason::HttpVersion,
            400,
        );
        expect_reject(
            &build("PUT /x HTTP/1.0", &no_host),
            &p,
            RejectReason::Method,
            405,
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let p = auth_policy("[[user]]\nname = \"a\"\npassword = \"b\"\n");
            let _ = process(&bytes, &p, true, NOW);
            let _ = process(&bytes, &policy(), false, NOW);
        }

        #[test]
        fn mutated_requests_never_panic(
            idx in 0usize..2000,
            byte in proptest::num::u8::ANY,
            cut in 0usize..2000,
        ) {
            let mut buf = with_authz("Digest username=\"a\", realm=\"rtedge\", nonce=\"x\", uri=\"/ws\", response=\"00\"");
            let len = buf.len();
            buf[idx % len] = byte;
            buf.truncate(cut.min(len));
            let mut p = auth_policy("[[user]]\nname = \"a\"\npassword = \"b\"\n");
            p.origins = vec!["https://example.com".into()];
            p.hosts = vec!["example.com".into()];
            p.paths = vec!["/ws".into()];
            p.cors_mode = CorsMode::Origin;
            let _ = process(&buf, &p, true, NOW);
        }
    }
}
