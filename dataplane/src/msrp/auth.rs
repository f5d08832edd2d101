//! MSRP `AUTH` handling at the relay (RFC 4976 §4–§6).
//!
//! Digest per RFC 2617 with method `AUTH` and the right-most To-Path URI as
//! digest-uri (RFC 4976 §5.1). Clients differ on sending a `uri` parameter
//! (RFC 7977's example sends one); it is accepted when absent and never
//! relied upon. Outcomes:
//! - no `Authorization` → 401 with `WWW-Authenticate: Digest realm, nonce,
//!   qop="auth"`; an expired nonce or a replayed nonce count → 401 with
//!   `stale=true` (RFC 2617 §3.2.1);
//! - wrong credentials → 403; after `max_failures` failures on one
//!   connection the connection is closed;
//! - `Expires` outside `[min, max]` → 423 with `Min-Expires` / `Max-Expires`
//!   (RFC 4976 §6.3); absent → `max`;
//! - otherwise 200 with `Use-Path` (a fresh relay URI), `Expires` and
//!   `Authentication-Info` (RFC 2617 §3.2.3).

use md5::{Digest, Md5};

use super::message::{Head, build_response};
use super::parser::HeaderName;
use super::session_map::SessionId;
use super::uri::path_uris;
use crate::auth::{
    CredentialStore, DigestAlgorithm, DigestParseError, DigestResult, NonceCounts, NonceManager,
    challenge, parse_digest_authorization, verify_digest,
};

/// Relay AUTH policy (from `[auth]` and `[msrp]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub realm: String,
    pub min_expires: u64,
    pub max_expires: u64,
    /// Failed AUTHs per connection before it is closed (0 = unlimited).
    pub max_failures: u32,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            realm: "rtedge".into(),
            min_expires: 60,
            max_expires: 3600,
            max_failures: 3,
        }
    }
}

/// This relay's address as it appears in `Use-Path` for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsePath {
    /// `msrps` when the client connection is TLS or WSS.
    pub secure: bool,
    /// `use_path_addr`, or the listener's address.
    pub host_port: String,
    /// `tcp`, or `ws` for WebSocket clients (RFC 7977 §5.2.1).
    pub transport: &'static str,
}

impl UsePath {
    pub fn uri(&self, sid: &SessionId) -> String {
        format!(
            "{}://{}/{};{}",
            if self.secure { "msrps" } else { "msrp" },
            self.host_port,
            sid,
            self.transport
        )
    }
}

/// Per-connection AUTH state.
#[derive(Debug)]
pub struct ConnAuth {
    pub failures: u32,
    counts: NonceCounts,
}

impl Default for ConnAuth {
    fn default() -> Self {
        ConnAuth {
            failures: 0,
            counts: NonceCounts::new(16),
        }
    }
}

/// What the AUTH handler decided; every variant carries the response bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Challenge {
        response: Vec<u8>,
        stale: bool,
    },
    /// Malformed `Authorization` or `Expires`.
    BadRequest {
        response: Vec<u8>,
        close: bool,
    },
    Forbidden {
        response: Vec<u8>,
        close: bool,
    },
    ExpiresOutOfBounds {
        response: Vec<u8>,
    },
    Granted {
        response: Vec<u8>,
        session: SessionId,
        user: String,
        expires_secs: u64,
        /// The client's URI (last From-Path URI).
        peer_uri: String,
    },
    /// No response is possible (no usable paths).
    Unanswerable,
}

impl AuthOutcome {
    pub fn response(&self) -> Option<&[u8]> {
        match self {
            AuthOutcome::Challenge { response, .. }
            | AuthOutcome::BadRequest { response, .. }
            | AuthOutcome::Forbidden { response, .. }
            | AuthOutcome::ExpiresOutOfBounds { response }
            | AuthOutcome::Granted { response, .. } => Some(response),
            AuthOutcome::Unanswerable => None,
        }
    }
}

/// Inputs that come from outside the engine.
pub struct AuthEnv<'a> {
    pub store: &'a CredentialStore,
    pub nonces: &'a NonceManager,
    pub now_secs: u64,
    pub use_path: &'a UsePath,
    /// The session id to grant (fresh randomness from the caller).
    pub new_session: SessionId,
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// `rspauth` (RFC 2617 §3.2.3): like the request digest with an empty
/// method in A2.
fn rspauth(ha1_hex: &str, nonce: &str, nc: &str, cnonce: &str, qop: &str, uri: &str) -> String {
    let ha2 = hex(&Md5::digest(format!(":{uri}").as_bytes()));
    hex(&Md5::digest(
        format!("{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}").as_bytes(),
    ))
}

/// Handles an AUTH addressed to this relay (To-Path has exactly our URI).
pub fn handle_auth(
    head: &Head<'_>,
    policy: &AuthPolicy,
    conn: &mut ConnAuth,
    env: &AuthEnv<'_>,
) -> AuthOutcome {
    let respond = |code: u16, extra: &[(&str, &str)]| build_response(head, code, extra);
    let Some(digest_uri) = head.to_last().and_then(|u| std::str::from_utf8(u).ok()) else {
        return AuthOutcome::Unanswerable;
    };
    if head.from_path().is_none() {
        return AuthOutcome::Unanswerable;
    }
    let fail = |conn: &mut ConnAuth, code: u16, bad: bool| {
        conn.failures = conn.failures.saturating_add(1);
        let close = policy.max_failures > 0 && conn.failures >= policy.max_failures;
        match respond(code, &[]) {
            Some(response) if bad => AuthOutcome::BadRequest { response, close },
            Some(response) => AuthOutcome::Forbidden { response, close },
            None => AuthOutcome::Unanswerable,
        }
    };
    let challenge_resp = |stale: bool| {
        let nonce = env.nonces.issue(env.now_secs);
        let www = challenge(&policy.realm, &nonce, stale, &[DigestAlgorithm::Md5]);
        match respond(401, &[("WWW-Authenticate", &www)]) {
            Some(response) => AuthOutcome::Challenge { response, stale },
            None => AuthOutcome::Unanswerable,
        }
    };
    let Some(authz) = head.header(HeaderName::Authorization) else {
        return challenge_resp(false);
    };
    let Ok(authz) = std::str::from_utf8(authz) else {
        return fail(conn, 400, true);
    };
    // The digest-uri is the right-most To-Path URI (RFC 4976 §5.1): a
    // `uri` parameter may be absent, and one sent is ignored.
    let owned;
    let mut creds = match parse_digest_authorization(authz) {
        Ok(c) => c,
        Err(DigestParseError::Missing("uri")) => {
            owned = format!("{authz}, uri=\"\"");
            match parse_digest_authorization(&owned) {
                Ok(c) => c,
                Err(_) => return fail(conn, 400, true),
            }
        }
        Err(_) => return fail(conn, 400, true),
    };
    creds.uri = std::borrow::Cow::Borrowed(digest_uri);
    // RFC 4976 §5.1: qop "auth" with MD5.
    let md5 = match creds.algorithm.as_deref() {
        None => true,
        Some(a) => a.eq_ignore_ascii_case("MD5"),
    };
    if !md5 {
        return fail(conn, 403, false);
    }
    let user = match verify_digest(
        env.store,
        &creds,
        "AUTH",
        &policy.realm,
        env.nonces,
        env.now_secs,
    ) {
        DigestResult::Ok { user } => user,
        DigestResult::Stale => return challenge_resp(true),
        DigestResult::Failed => return fail(conn, 403, false),
    };
    // Nonce-count replay protection (RFC 2617 §3.2.2).
    if let Some(nc) = creds.nc_value()
        && !conn.counts.check(&creds.nonce, nc)
    {
        return challenge_resp(true);
    }
    // Expires (RFC 4976 §6.3): absent → our maximum.
    let expires = match head.expires() {
        Err(_) => return fail(conn, 400, true),
        Ok(None) => policy.max_expires,
        Ok(Some(e)) if e < policy.min_expires => {
            let v = policy.min_expires.to_string();
            return match respond(423, &[("Min-Expires", &v)]) {
                Some(response) => AuthOutcome::ExpiresOutOfBounds { response },
                None => AuthOutcome::Unanswerable,
            };
        }
        Ok(Some(e)) if e > policy.max_expires => {
            let v = policy.max_expires.to_string();
            return match respond(423, &[("Max-Expires", &v)]) {
                Some(response) => AuthOutcome::ExpiresOutOfBounds { response },
                None => AuthOutcome::Unanswerable,
            };
        }
        Ok(Some(e)) => e,
    };
    conn.failures = 0;
    let use_path = env.use_path.uri(&env.new_session);
    let exp = expires.to_string();
    let mut extra: Vec<(&str, &str)> = vec![("Use-Path", &use_path), ("Expires", &exp)];
    let info;
    if let (Some(qop), Some(cnonce), Some(nc), Some(ha1)) = (
        creds.qop.as_deref(),
        creds.cnonce.as_deref(),
        creds.nc.as_deref(),
        env.store.ha1_md5(&user, &policy.realm),
    ) {
        let r = rspauth(&hex(&ha1), &creds.nonce, nc, cnonce, qop, digest_uri);
        info = format!("rspauth=\"{r}\", qop={qop}, cnonce=\"{cnonce}\", nc={nc}");
        extra.push(("Authentication-Info", &info));
    }
    let peer_uri = head
        .from_path()
        .and_then(|f| path_uris(f).last())
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .unwrap_or_default();
    match respond(200, &extra) {
        Some(response) => AuthOutcome::Granted {
            response,
            session: env.new_session,
            user,
            expires_secs: expires,
            peer_uri,
        },
        None => AuthOutcome::Unanswerable,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::message::tests::parse;
    use super::*;

    pub(crate) fn store() -> CredentialStore {
        CredentialStore::from_toml(
            "[[user]]\nname = \"alice\"\npassword = \"secret\"\n",
            "intra.example.com",
        )
        .unwrap()
    }

    pub(crate) fn policy() -> AuthPolicy {
        AuthPolicy {
            realm: "intra.example.com".into(),
            ..AuthPolicy::default()
        }
    }

    fn md5hex(s: &str) -> String {
        hex(&Md5::digest(s.as_bytes()))
    }

    /// Client side of RFC 4976 §5.1 / RFC 2617 §3.2.2 (independent of the
    /// server code): response for method AUTH and the right-most To-Path URI.
    pub(crate) fn client_response(
        user: &str,
        pw: &str,
        realm: &str,
        nonce: &str,
        uri: &str,
        nc: &str,
        cnonce: &str,
    ) -> String {
        let ha1 = md5hex(&format!("{user}:{realm}:{pw}"));
        let ha2 = md5hex(&format!("AUTH:{uri}"));
        md5hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
    }

    // RFC 4976's example first AUTH (no credentials).
    const AUTH1: &[u8] = b"MSRP 49fh AUTH\r\n\
To-Path: msrps://alice@intra.example.com;tcp\r\n\
From-Path: msrps://alice.example.com:9892/98cjs;tcp\r\n\
-------49fh$\r\n";

    pub(crate) fn auth2(nonce: &str, nc: &str, password: &str, expires: Option<u64>) -> Vec<u8> {
        let uri = "msrps://alice@intra.example.com;tcp";
        let resp = client_response(
            "alice",
            password,
            "intra.example.com",
            nonce,
            uri,
            nc,
            "0a4f113b",
        );
        let exp = expires
            .map(|e| format!("Expires: {e}\r\n"))
            .unwrap_or_default();
        format!(
            "MSRP 49fi AUTH\r\nTo-Path: {uri}\r\nFrom-Path: msrps://alice.example.com:9892/98cjs;tcp\r\n\
Authorization: Digest username=\"alice\", realm=\"intra.example.com\", nonce=\"{nonce}\", qop=auth, nc={nc}, cnonce=\"0a4f113b\", response=\"{resp}\"\r\n{exp}-------49fi$\r\n"
        )
        .into_bytes()
    }

    pub(crate) fn nonce_of(resp: &[u8]) -> String {
        let s = String::from_utf8_lossy(resp);
        let i = s.find("nonce=\"").unwrap() + 7;
        s[i..i + s[i..].find('"').unwrap()].to_string()
    }

    fn env<'a>(
        store: &'a CredentialStore,
        nm: &'a NonceManager,
        up: &'a UsePath,
        now: u64,
    ) -> AuthEnv<'a> {
        AuthEnv {
            store,
            nonces: nm,
            now_secs: now,
            use_path: up,
            new_session: SessionId::generate(0, &[7; 15]),
        }
    }

    fn run(frame: &[u8], conn: &mut ConnAuth, now: u64, nm: &NonceManager) -> AuthOutcome {
        let st = store();
        let up = UsePath {
            secure: true,
            host_port: "intra.example.com:9000".into(),
            transport: "tcp",
        };
        let (b, i) = parse(frame);
        handle_auth(&Head::new(&b, &i), &policy(), conn, &env(&st, nm, &up, now))
    }

    #[test]
    fn rfc4976_auth_flow() {
        let nm = NonceManager::new([1; 32], 30);
        let mut c = ConnAuth::default();
        let AuthOutcome::Challenge {
            response,
            stale: false,
        } = run(AUTH1, &mut c, 1000, &nm)
        else {
            panic!()
        };
        let s = String::from_utf8_lossy(&response);
        assert!(s.starts_with("MSRP 49fh 401 Unauthorized\r\nTo-Path: msrps://alice.example.com:9892/98cjs;tcp\r\nFrom-Path: msrps://alice@intra.example.com;tcp\r\nWWW-Authenticate: Digest realm=\"intra.example.com\", nonce=\""), "{s}");
        assert!(s.contains("qop=\"auth\""));
        let nonce = nonce_of(&response);
        let out = run(
            &auth2(&nonce, "00000001", "secret", None),
            &mut c,
            1001,
            &nm,
        );
        let AuthOutcome::Granted {
            response,
            user,
            expires_secs,
            peer_uri,
            session,
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(user, "alice");
        assert_eq!(expires_secs, 3600);
        assert_eq!(peer_uri, "msrps://alice.example.com:9892/98cjs;tcp");
        let s = String::from_utf8_lossy(&response);
        assert!(s.starts_with("MSRP 49fi 200 OK\r\n"));
        assert!(s.contains(&format!(
            "Use-Path: msrps://intra.example.com:9000/{session};tcp\r\nExpires: 3600\r\n"
        )));
        // rspauth per RFC 2617 §3.2.3, computed independently
        let ha1 = md5hex("alice:intra.example.com:secret");
        let ha2 = md5hex(":msrps://alice@intra.example.com;tcp");
        let want = md5hex(&format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
        assert!(
            s.contains(&format!("Authentication-Info: rspauth=\"{want}\"")),
            "{s}"
        );
        // replaying the same nc → stale challenge
        assert!(matches!(
            run(
                &auth2(&nonce, "00000001", "secret", None),
                &mut c,
                1002,
                &nm
            ),
            AuthOutcome::Challenge { stale: true, .. }
        ));
        // next nc works
        assert!(matches!(
            run(
                &auth2(&nonce, "00000002", "secret", Some(600)),
                &mut c,
                1002,
                &nm
            ),
            AuthOutcome::Granted {
                expires_secs: 600,
                ..
            }
        ));
    }

    #[test]
    fn stale_wrong_and_cap() {
        let nm = NonceManager::new([1; 32], 30);
        let mut c = ConnAuth::default();
        let nonce = nm.issue(1000);
        assert!(matches!(
            run(
                &auth2(&nonce, "00000001", "secret", None),
                &mut c,
                2000,
                &nm
            ),
            AuthOutcome::Challenge { stale: true, .. }
        ));
        let r = run(&auth2(&nonce, "00000001", "wrong", None), &mut c, 1001, &nm);
        let AuthOutcome::Forbidden {
            response,
            close: false,
        } = r
        else {
            panic!("{r:?}")
        };
        assert!(response.starts_with(b"MSRP 49fi 403 "));
        assert!(matches!(
            run(&auth2(&nonce, "00000002", "wrong", None), &mut c, 1001, &nm),
            AuthOutcome::Forbidden { close: false, .. }
        ));
        assert!(matches!(
            run(&auth2(&nonce, "00000003", "wrong", None), &mut c, 1001, &nm),
            AuthOutcome::Forbidden { close: true, .. }
        ));
    }

    #[test]
    fn expires_bounds() {
        let nm = NonceManager::new([1; 32], 30);
        let mut c = ConnAuth::default();
        let nonce = nm.issue(1000);
        let AuthOutcome::ExpiresOutOfBounds { response } = run(
            &auth2(&nonce, "00000001", "secret", Some(10)),
            &mut c,
            1000,
            &nm,
        ) else {
            panic!()
        };
        let s = String::from_utf8_lossy(&response);
        assert!(
            s.starts_with("MSRP 49fi 423 ") && s.contains("\r\nMin-Expires: 60\r\n"),
            "{s}"
        );
        let AuthOutcome::ExpiresOutOfBounds { response } = run(
            &auth2(&nonce, "00000002", "secret", Some(99999)),
            &mut c,
            1000,
            &nm,
        ) else {
            panic!()
        };
        assert!(String::from_utf8_lossy(&response).contains("\r\nMax-Expires: 3600\r\n"));
        // the 423 response is a well-formed frame
        let (_, idx) = parse(&response);
        assert_eq!(idx.headers.len(), 3);
    }

    #[test]
    fn malformed_authorization_is_400() {
        let nm = NonceManager::new([1; 32], 30);
        let mut c = ConnAuth::default();
        let f = b"MSRP 49fi AUTH\r\nTo-Path: msrps://r;tcp\r\nFrom-Path: msrps://a:1/b;tcp\r\nAuthorization: Basic abc\r\n-------49fi$\r\n";
        assert!(matches!(
            run(f, &mut c, 1000, &nm),
            AuthOutcome::BadRequest { .. }
        ));
    }
}
