//! HTTP Basic authentication (RFC 7617).
//!
//! `credentials = "Basic" 1*SP token68` where the token68 is the base64 of
//! `user-id ":" password` (RFC 7617 §2). The user-id cannot contain `:`; the
//! password can. Only UTF-8 credentials are accepted (the `charset="UTF-8"`
//! challenge parameter of RFC 7617 §2.1). Basic sends the password in clear:
//! only use it over TLS.

use base64::Engine as _;

/// Longest encoded credentials accepted (keeps decoding bounded).
const MAX_TOKEN68: usize = 1024;

/// Parses an `Authorization` value `Basic <base64(user:password)>`.
///
/// The scheme is case-insensitive (RFC 7235 §2.1). Returns `None` for any
/// other scheme, bad base64, non-UTF-8, or a missing `:`.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let token = rest.trim_matches([' ', '\t']);
    if token.is_empty() || token.len() > MAX_TOKEN68 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.chars().any(char::is_control) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

/// A `WWW-Authenticate` value for Basic: `Basic realm="…", charset="UTF-8"`.
pub fn basic_challenge(realm: &str) -> String {
    let mut out = String::with_capacity(realm.len() + 32);
    out.push_str("Basic realm=\"");
    super::digest::push_quoted_content(&mut out, realm);
    out.push_str("\", charset=\"UTF-8\"");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7617_example() {
        // RFC 7617 §2: Aladdin / open sesame.
        assert_eq!(
            parse_basic("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".to_string(), "open sesame".to_string()))
        );
        assert_eq!(
            parse_basic("  basic   QWxhZGRpbjpvcGVuIHNlc2FtZQ==  "),
            Some(("Aladdin".to_string(), "open sesame".to_string()))
        );
    }

    #[test]
    fn password_may_contain_colon() {
        let token = base64::engine::general_purpose::STANDARD.encode("u:p:q");
        assert_eq!(
            parse_basic(&format!("Basic {token}")),
            Some(("u".into(), "p:q".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        for v in [
            "",
            "Basic",
            "Basic ",
            "Digest QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            "Basic !!!!",
            "Basic bm9jb2xvbg==", // "nocolon"
            "Basic //79",         // not UTF-8
        ] {
            assert_eq!(parse_basic(v), None, "{v:?}");
        }
    }

    #[test]
    fn challenge_quotes_realm() {
        assert_eq!(
            basic_challenge("a\"b"),
            "Basic realm=\"a\\\"b\", charset=\"UTF-8\""
        );
    }
}
