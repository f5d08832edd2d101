//! HTTP Digest (RFC 2617) as MSRP AUTH uses it (RFC 4976 §5.1, §7): MD5,
//! `qop=auth`, method `AUTH`, digest-uri = the relay's URI (the To-Path of
//! the AUTH request).

use md5::{Digest, Md5};

/// A parsed `WWW-Authenticate: Digest ...` challenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// Offered qop values (`qop="auth,auth-int"`).
    pub qop: Vec<String>,
    pub algorithm: Option<String>,
}

/// Parse a `Digest` challenge: `Digest` then a comma-separated auth-param
/// list, values tokens or quoted strings (RFC 2617 §1.2, §3.2.1).
pub fn parse_challenge(v: &str) -> Result<Challenge, String> {
    let v = v.trim();
    let rest = match v.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("digest") => rest,
        _ => return Err(format!("not a Digest challenge: {v:?}")),
    };
    let mut c = Challenge::default();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = rest[k0..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(format!("auth-param {key:?} without a value"));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut s = Vec::new();
            loop {
                match b.get(i) {
                    None => return Err("unterminated quoted string".into()),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        s.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            String::from_utf8(s).map_err(|_| "non-UTF-8 quoted string".to_string())?
        } else {
            let v0 = i;
            while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            rest[v0..i].to_string()
        };
        match key.as_str() {
            "realm" => c.realm = value,
            "nonce" => c.nonce = value,
            "opaque" => c.opaque = Some(value),
            "algorithm" => c.algorithm = Some(value),
            "qop" => {
                c.qop = value
                    .split(',')
                    .map(|q| q.trim().to_ascii_lowercase())
                    .filter(|q| !q.is_empty())
                    .collect()
            }
            _ => {} // domain, stale and extensions: not needed to answer
        }
    }
    if c.nonce.is_empty() {
        return Err("challenge without a nonce".into());
    }
    Ok(c)
}

pub fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    let mut out = String::with_capacity(32);
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The `Authorization` header value answering `c` for `method` on `uri`.
/// With `qop=auth` offered (RFC 4976 §7 requires it) the response is
/// `MD5(HA1:nonce:nc:cnonce:auth:HA2)`; a challenge without qop gets the
/// RFC 2069 form `MD5(HA1:nonce:HA2)`. Only MD5 is defined for MSRP.
pub fn authorization(
    c: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> Result<String, String> {
    if let Some(a) = &c.algorithm
        && !a.eq_ignore_ascii_case("md5")
    {
        return Err(format!("unsupported digest algorithm {a:?}"));
    }
    let ha1 = md5_hex(&format!("{user}:{}:{password}", c.realm));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let mut h = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"",
        c.realm, c.nonce
    );
    if c.qop.iter().any(|q| q == "auth") {
        let nc = format!("{nc:08x}");
        let resp = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
        h.push_str(&format!(
            ", qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{resp}\""
        ));
    } else if c.qop.is_empty() {
        let resp = md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce));
        h.push_str(&format!(", response=\"{resp}\""));
    } else {
        return Err(format!("no supported qop in {:?}", c.qop));
    }
    if let Some(a) = &c.algorithm {
        h.push_str(&format!(", algorithm={a}"));
    }
    if let Some(o) = &c.opaque {
        h.push_str(&format!(", opaque=\"{o}\""));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5.
        let c = parse_challenge(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(c.realm, "testrealm@host.com");
        assert_eq!(c.qop, vec!["auth", "auth-int"]);
        let h = authorization(
            &c,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        )
        .unwrap();
        assert!(
            h.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{h}"
        );
        assert!(h.contains("nc=00000001"), "{h}");
        assert!(
            h.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{h}"
        );
    }

    #[test]
    fn kamailio_style_challenge_and_errors() {
        // auth_get_www_authenticate() output: unquoted algorithm, qop list.
        let c = parse_challenge(
            "Digest realm=\"myrealm\", nonce=\"YWJj\", qop=\"auth\", algorithm=MD5",
        )
        .unwrap();
        assert_eq!(c.algorithm.as_deref(), Some("MD5"));
        assert!(authorization(&c, "u", "p", "AUTH", "msrp://r:1;tcp", "c", 1).is_ok());
        assert!(parse_challenge("Basic realm=\"x\"").is_err());
        assert!(parse_challenge("Digest realm=\"x\"").is_err());
        assert!(parse_challenge("Digest nonce=\"x").is_err());
        let mut c2 = c.clone();
        c2.algorithm = Some("SHA-256".into());
        assert!(authorization(&c2, "u", "p", "AUTH", "u", "c", 1).is_err());
        c2.algorithm = None;
        c2.qop = vec!["auth-int".into()];
        assert!(authorization(&c2, "u", "p", "AUTH", "u", "c", 1).is_err());
    }
}
