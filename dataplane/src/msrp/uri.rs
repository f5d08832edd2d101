//! MSRP URIs (RFC 4975 §6, §9; RFC 7977 §5.2.1 adds the `ws` transport).
//!
//! ```text
//! MSRP-URI   = msrp-scheme "://" authority ["/" session-id] ";" transport *( ";" URI-parameter )
//! msrp-scheme = "msrp" / "msrps"
//! session-id = 1*( unreserved / "+" / "=" / "/" )
//! transport  = "tcp" / 1*ALPHANUM
//! ```
//!
//! Parsing borrows from the header value: no allocation.

use std::fmt;

/// A parsed MSRP URI, borrowing its parts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MsrpUri<'a> {
    /// The whole URI text.
    pub raw: &'a [u8],
    /// `msrps` (TLS, or secure WebSocket for RFC 7977).
    pub secure: bool,
    pub userinfo: Option<&'a [u8]>,
    /// Host as written (IPv6 literals keep their brackets).
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub session_id: Option<&'a [u8]>,
    pub transport: &'a [u8],
    /// What follows the transport, without the leading `;`.
    pub params: &'a [u8],
}

impl fmt::Debug for MsrpUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsrpUri({})", String::from_utf8_lossy(self.raw))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("scheme is not msrp or msrps")]
    Scheme,
    #[error("bad authority")]
    Authority,
    #[error("bad port")]
    Port,
    #[error("bad session-id")]
    SessionId,
    #[error("missing or bad transport")]
    Transport,
}

/// Character classes of RFC 3986 as one lookup table (URIs are parsed
/// for every relayed frame).
const UNRESERVED: u8 = 1;
const SUB_DELIM: u8 = 2;
/// reg-name characters: unreserved, sub-delims, "%" (RFC 3986 §3.2.2).
const HOST: u8 = 4;
/// userinfo characters: host characters and ":" (RFC 3986 §3.2.1).
const USERINFO: u8 = 8;
/// session-id = 1*( unreserved / "+" / "=" / "/" ) (RFC 4975 §9).
const SESSION: u8 = 16;
/// Not allowed in URI parameters: controls, space, DQUOTE, "<", ">".
const PARAM_BAD: u8 = 32;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let sub_delim = matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        );
        if unreserved {
            t[i] |= UNRESERVED | SESSION;
        }
        if sub_delim {
            t[i] |= SUB_DELIM;
        }
        // ";" ends the authority before the host is looked at.
        if (unreserved || sub_delim || b == b'%') && b != b';' {
            t[i] |= HOST | USERINFO;
        }
        if b == b':' || b == b';' {
            t[i] |= USERINFO;
        }
        if matches!(b, b'+' | b'=' | b'/') {
            t[i] |= SESSION;
        }
        if b <= b' ' || b == 0x7f || b == b'"' || b == b'<' || b == b'>' {
            t[i] |= PARAM_BAD;
        }
        i += 1;
    }
    t
};

fn all_in(s: &[u8], class: u8) -> bool {
    s.iter().all(|&b| CLASS[usize::from(b)] & class != 0)
}

impl<'a> MsrpUri<'a> {
    /// Parses one URI (no surrounding whitespace). One forward pass with
    /// table lookups: a relayed frame has three URIs parsed, and this runs
    /// for every frame.
    pub fn parse(raw: &'a [u8]) -> Result<MsrpUri<'a>, UriError> {
        let (secure, from) = if raw
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"msrp://"))
        {
            (false, 7)
        } else if raw
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"msrps://"))
        {
            (true, 8)
        } else {
            return Err(UriError::Scheme);
        };
        // authority = [ userinfo "@" ] host [ ":" port ], ending at "/" or
        // ";". Find its end and the last "@" in one pass.
        let mut i = from;
        let mut at = None;
        loop {
            match raw.get(i) {
                None => return Err(UriError::Transport),
                Some(b'/' | b';') => break,
                Some(b'@') => at = Some(i),
                Some(_) => {}
            }
            i += 1;
        }
        let auth_end = i;
        let (userinfo, host_start) = match at {
            Some(a) => {
                let u = raw.get(from..a).unwrap_or(&[]);
                if !all_in(u, USERINFO) {
                    return Err(UriError::Authority);
                }
                (Some(u), a + 1)
            }
            None => (None, from),
        };
        let hostport = raw.get(host_start..auth_end).unwrap_or(&[]);
        let (host, port_s) = if hostport.first() == Some(&b'[') {
            let close = hostport
                .iter()
                .position(|&b| b == b']')
                .ok_or(UriError::Authority)?;
            let host = hostport.get(..=close).unwrap_or(&[]);
            let inner = host.get(1..close).unwrap_or(&[]);
            if inner.is_empty()
                || !inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(UriError::Authority);
            }
            match hostport.get(close + 1..) {
                None | Some([]) => (host, None),
                Some([b':', p @ ..]) => (host, Some(p)),
                Some(_) => return Err(UriError::Authority),
            }
        } else {
            // reg-name / IPv4: stops at the port's ":" (not a host char).
            let h = hostport
                .iter()
                .position(|&b| CLASS[usize::from(b)] & HOST == 0)
                .unwrap_or(hostport.len());
            match hostport.get(h) {
                None => (hostport, None),
                Some(b':') => (hostport.get(..h).unwrap_or(&[]), hostport.get(h + 1..)),
                Some(_) => return Err(UriError::Authority),
            }
        };
        if host.is_empty() {
            return Err(UriError::Authority);
        }
        let port = match port_s {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                    return Err(UriError::Port);
                }
                let v = p.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
                Some(u16::try_from(v).map_err(|_| UriError::Port)?)
            }
        };
        // ["/" session-id] ";" transport *( ";" URI-parameter )
        let mut i = auth_end;
        let mut session_id = None;
        if raw.get(i) == Some(&b'/') {
            let sid_start = i + 1;
            i = sid_start;
            while raw
                .get(i)
                .is_some_and(|&b| CLASS[usize::from(b)] & SESSION != 0)
            {
                i += 1;
            }
            match raw.get(i) {
                Some(b';') if i > sid_start => {}
                Some(b';') => return Err(UriError::SessionId),
                // No ";" transport at all.
                _ if !raw.get(i..).unwrap_or(&[]).contains(&b';') => {
                    return Err(UriError::Transport);
                }
                _ => return Err(UriError::SessionId),
            }
            session_id = raw.get(sid_start..i);
        }
        // raw[i] is ";" here.
        let t_start = i + 1;
        let mut t_end = t_start;
        while raw.get(t_end).is_some_and(u8::is_ascii_alphanumeric) {
            t_end += 1;
        }
        let transport = raw.get(t_start..t_end).unwrap_or(&[]);
        let params = match raw.get(t_end) {
            None => &[][..],
            Some(b';') => raw.get(t_end + 1..).unwrap_or(&[]),
            Some(_) => return Err(UriError::Transport),
        };
        if transport.is_empty()
            || params
                .iter()
                .any(|&b| CLASS[usize::from(b)] & PARAM_BAD != 0)
        {
            return Err(UriError::Transport);
        }
        Ok(MsrpUri {
            raw,
            secure,
            userinfo,
            host,
            port,
            session_id,
            transport,
            params,
        })
    }

    /// RFC 4975 §6.1 comparison:
    /// - schemes match, case-insensitively;
    /// - userinfo is not considered; the host is compared case-insensitively
    ///   after percent-decoding unreserved characters (no DNS);
    /// - a port present in either URI must be present and equal in both;
    /// - session-ids compare case-sensitively; a URI with one never equals
    ///   one without;
    /// - transports compare case-insensitively;
    /// - other URI parameters are ignored.
    pub fn equivalent(&self, other: &MsrpUri<'_>) -> bool {
        self.secure == other.secure
            && host_eq(self.host, other.host)
            && self.port == other.port
            && self.session_id == other.session_id
            && self.transport.eq_ignore_ascii_case(other.transport)
    }

    /// Same scheme, host and port (the relay's own authority).
    pub fn same_authority(&self, other: &MsrpUri<'_>) -> bool {
        self.secure == other.secure && host_eq(self.host, other.host) && self.port == other.port
    }

    /// WebSocket transport (RFC 7977 §5.2.1).
    pub fn is_ws(&self) -> bool {
        self.transport.eq_ignore_ascii_case(b"ws")
    }

    /// RFC 7977 (Appendix A) clients use unresolvable `.invalid` hosts.
    pub fn is_invalid_host(&self) -> bool {
        let h = self.host;
        h.len() >= 8
            && h.get(h.len() - 8..)
                .is_some_and(|t| t.eq_ignore_ascii_case(b".invalid"))
    }
}

/// A client's own URI (the last From-Path URI of its AUTH), with its
/// authority parsed once when the session is created: every frame toward
/// the client is checked against it (RFC 4976 §6.2), so it must not be
/// re-parsed per frame.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerUri {
    text: String,
    /// Scheme, host range in `text`, port; `None` if `text` does not parse
    /// (then nothing is addressed to it).
    authority: Option<(bool, std::ops::Range<usize>, Option<u16>)>,
}

impl PeerUri {
    pub fn new(text: String) -> PeerUri {
        let authority = MsrpUri::parse(text.as_bytes()).ok().map(|u| {
            let start = u.host.as_ptr() as usize - text.as_ptr() as usize;
            (u.secure, start..start + u.host.len(), u.port)
        });
        PeerUri { text, authority }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `uri` has this URI's scheme, host and port (RFC 4975 §6.1 rules).
    pub fn same_authority(&self, uri: &MsrpUri<'_>) -> bool {
        match &self.authority {
            Some((secure, host, port)) => {
                *secure == uri.secure
                    && *port == uri.port
                    && host_eq(
                        self.text.as_bytes().get(host.clone()).unwrap_or(&[]),
                        uri.host,
                    )
            }
            None => false,
        }
    }
}

impl From<String> for PeerUri {
    fn from(s: String) -> PeerUri {
        PeerUri::new(s)
    }
}

impl From<&str> for PeerUri {
    fn from(s: &str) -> PeerUri {
        PeerUri::new(s.to_owned())
    }
}

impl fmt::Debug for PeerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerUri({})", self.text)
    }
}

/// One authority of this relay: scheme (`None`: either), host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authority {
    secure: Option<bool>,
    host: String,
    port: u16,
    /// `host` as an address when it is an IP literal (parsed once).
    ip: Option<std::net::IpAddr>,
}

/// Every authority this relay answers as: the bound addresses of all its
/// msrp/msrps/ws/wss listeners (scheme `msrps` for TLS ones) and
/// `use_path_addr` (either scheme). A URI is "this relay" when its scheme,
/// host and port match one of them (RFC 4975 §6.1: scheme and host
/// case-insensitive, host percent-decoded, ports equal; IP literals compare
/// as addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalAuthorities {
    entries: Vec<Authority>,
}

fn strip_brackets(h: &str) -> &str {
    h.strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h)
}

impl LocalAuthorities {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds `host` (a name, an IPv4 literal or a bracketed IPv6 literal)
    /// and `port`.
    pub fn add(&mut self, secure: Option<bool>, host: &str, port: u16) {
        let a = Authority {
            secure,
            host: host.to_string(),
            port,
            ip: strip_brackets(host).parse().ok(),
        };
        if !self.entries.contains(&a) {
            self.entries.push(a);
        }
    }

    /// Adds a socket address (a listener's bound address or one of the
    /// host's addresses behind a wildcard listener).
    pub fn add_socket(&mut self, secure: Option<bool>, addr: std::net::SocketAddr) {
        let host = match addr.ip() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        self.add(secure, &host, addr.port());
    }

    /// Adds `host:port`, `[v6]:port` or a bare host (port 2855); `false`
    /// when it cannot be parsed.
    pub fn add_host_port(&mut self, secure: Option<bool>, s: &str) -> bool {
        if let Ok(a) = s.parse::<std::net::SocketAddr>() {
            self.add_socket(secure, a);
            return true;
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return false,
            },
            _ => (s, 2855),
        };
        if host.is_empty() {
            return false;
        }
        self.add(secure, host, port);
        true
    }

    /// Whether `uri` names this relay.
    pub fn contains(&self, uri: &MsrpUri<'_>) -> bool {
        let Some(port) = uri.port else {
            return false;
        };
        let candidates = || {
            self.entries
                .iter()
                .filter(move |a| a.port == port && a.secure.is_none_or(|s| s == uri.secure))
        };
        // The same spelling (the usual case: our own Use-Path coming back)
        // needs no address parsing.
        if candidates().any(|a| a.host.as_bytes().eq_ignore_ascii_case(uri.host)) {
            return true;
        }
        let uri_ip = std::str::from_utf8(uri.host)
            .ok()
            .and_then(|h| strip_brackets(h).parse::<std::net::IpAddr>().ok());
        candidates().any(|a| match (uri_ip, a.ip) {
            (Some(x), Some(y)) => x == y,
            _ => host_eq(a.host.as_bytes(), uri.host),
        })
    }
}

/// Percent-decodes one position: returns the byte and how many input bytes
/// it took.
fn decode_at(s: &[u8], i: usize) -> Option<(u8, usize)> {
    let b = *s.get(i)?;
    if b == b'%'
        && let (Some(h), Some(l)) = (s.get(i + 1), s.get(i + 2))
        && let (Some(h), Some(l)) = ((*h as char).to_digit(16), (*l as char).to_digit(16))
    {
        return Some((u8::try_from(h * 16 + l).unwrap_or(0), 3));
    }
    Some((b, 1))
}

fn host_eq(a: &[u8], b: &[u8]) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true; // the usual case; percent-decoding below is rare
    }
    if !a.contains(&b'%') && !b.contains(&b'%') {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    loop {
        match (decode_at(a, i), decode_at(b, j)) {
            (None, None) => return true,
            (Some((x, di)), Some((y, dj))) => {
                if !x.eq_ignore_ascii_case(&y) {
                    return false;
                }
                i += di;
                j += dj;
            }
            _ => return false,
        }
    }
}

/// The URIs of a To-Path / From-Path / Use-Path value (`URI *( SP URI )`),
/// in order. Extra whitespace is tolerated.
pub fn path_uris(value: &[u8]) -> PathUriIter<'_> {
    PathUriIter { rest: value }
}

/// Iterator of [`path_uris`]: the separators are found with memchr (a
/// byte-at-a-time split was a tenth of the relay's work per SEND).
#[derive(Debug, Clone)]
pub struct PathUriIter<'a> {
    rest: &'a [u8],
}

impl<'a> PathUriIter<'a> {
    /// What follows the URIs taken so far, from the next URI on (empty
    /// when none is left): the rest of the path, to copy in one piece.
    pub fn rest(&self) -> &'a [u8] {
        let skip = self
            .rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(self.rest.len());
        &self.rest[skip..]
    }
}

impl<'a> Iterator for PathUriIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest();
        if rest.is_empty() {
            self.rest = rest;
            return None;
        }
        let end = memchr::memchr2(b' ', b'\t', rest).unwrap_or(rest.len());
        let (uri, after) = rest.split_at(end);
        self.rest = after;
        Some(uri)
    }
}

/// Parses every URI of a path; `None` if one is invalid or there is none.
pub fn parse_path(value: &[u8]) -> Option<Vec<MsrpUri<'_>>> {
    let v: Result<Vec<_>, _> = path_uris(value).map(MsrpUri::parse).collect();
    v.ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> MsrpUri<'_> {
        MsrpUri::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn path_uris_split_on_any_whitespace_and_give_the_rest() {
        let v = b"msrp://a:1/x;tcp \t msrp://b:2/y;tcp\tmsrp://c:3/z;ws  ";
        let mut it = path_uris(v);
        assert_eq!(it.next(), Some(&b"msrp://a:1/x;tcp"[..]));
        assert_eq!(it.rest(), b"msrp://b:2/y;tcp\tmsrp://c:3/z;ws  ");
        assert_eq!(
            it.collect::<Vec<_>>(),
            [&b"msrp://b:2/y;tcp"[..], b"msrp://c:3/z;ws"]
        );
        assert_eq!(path_uris(b"  ").count(), 0);
        assert_eq!(path_uris(b"").rest(), b"");
        assert_eq!(path_uris(b" u").last(), Some(&b"u"[..]));
    }

    #[test]
    fn parse_rfc_examples() {
        // RFC 4975 §4 and RFC 4976 (AUTH example) URIs, then RFC 7977 forms.
        let a = u("msrp://atlanta.example.com:7654/jshA7weztas;tcp");
        assert!(!a.secure);
        assert_eq!(a.host, b"atlanta.example.com");
        assert_eq!(a.port, Some(7654));
        assert_eq!(a.session_id, Some(&b"jshA7weztas"[..]));
        assert_eq!(a.transport, b"tcp");
        let r = u("msrps://alice@intra.example.com;tcp");
        assert!(r.secure);
        assert_eq!(r.userinfo, Some(&b"alice"[..]));
        assert_eq!(r.port, None);
        assert_eq!(r.session_id, None);
        let v6 = u("msrp://[2001:db8::1]:2855/abc=+/d;ws;foo=bar");
        assert_eq!(v6.host, b"[2001:db8::1]");
        assert!(v6.is_ws());
        assert_eq!(v6.params, b"foo=bar");
        assert!(u("msrps://df7jal23ls0d.invalid/2s93i93idj;ws").is_invalid_host());
    }

    #[test]
    fn parse_errors() {
        for s in [
            "http://a;tcp",
            "msrp://a:1/x",
            "msrp://a:99999/x;tcp",
            "msrp://a:/x;tcp",
            "msrp://:1/x;tcp",
            "msrp://a:1/;tcp",
            "msrp://a:1/x;",
            "msrp://a:1/x y;tcp",
            "msrp://[zz]:1/x;tcp",
            "msrp://a:1/x;t-p",
            "msrp:/",
            "",
        ] {
            assert!(MsrpUri::parse(s.as_bytes()).is_err(), "{s}");
        }
    }

    #[test]
    fn rfc4975_6_1_comparison() {
        let base = u("msrp://Alice.Example.com:7777/iau39soe2843z;tcp");
        assert!(base.equivalent(&u("MSRP://alice.example.COM:7777/iau39soe2843z;TCP")));
        assert!(base.equivalent(&u(
            "msrp://bob@alice.example.com:7777/iau39soe2843z;tcp;x=y"
        )));
        assert!(base.equivalent(&u("msrp://%61lice.example.com:7777/iau39soe2843z;tcp")));
        assert!(!base.equivalent(&u("msrps://alice.example.com:7777/iau39soe2843z;tcp")));
        assert!(!base.equivalent(&u("msrp://alice.example.com/iau39soe2843z;tcp")));
        assert!(!base.equivalent(&u("msrp://alice.example.com:7778/iau39soe2843z;tcp")));
        assert!(!base.equivalent(&u("msrp://alice.example.com:7777/IAU39soe2843z;tcp")));
        assert!(!base.equivalent(&u("msrp://alice.example.com:7777;tcp")));
        assert!(!base.equivalent(&u("msrp://alice.example.com:7777/iau39soe2843z;ws")));
    }

    #[test]
    fn local_authorities() {
        let mut l = LocalAuthorities::default();
        assert!(!l.contains(&u("msrp://127.0.0.1:2855/x;tcp")));
        l.add_socket(Some(false), "127.0.0.1:2855".parse().unwrap());
        l.add_socket(Some(true), "[::1]:2856".parse().unwrap());
        assert!(l.add_host_port(None, "Relay.Example.com:9000"));
        assert!(l.add_host_port(None, "bare.example.com"));
        assert!(!l.add_host_port(None, "x:notaport"));
        assert!(l.contains(&u("msrp://127.0.0.1:2855/x;tcp")));
        assert!(l.contains(&u("msrp://127.0.0.1:2855/x;ws")));
        assert!(!l.contains(&u("msrps://127.0.0.1:2855/x;tcp")));
        assert!(!l.contains(&u("msrp://127.0.0.1/x;tcp")));
        assert!(!l.contains(&u("msrp://127.0.0.2:2855/x;tcp")));
        assert!(l.contains(&u("msrps://[0:0::1]:2856/x;tcp")));
        assert!(!l.contains(&u("msrp://[::1]:2856/x;tcp")));
        assert!(l.contains(&u("msrp://relay.example.COM:9000/x;tcp")));
        assert!(l.contains(&u("msrps://%72elay.example.com:9000/x;ws")));
        assert!(l.contains(&u("msrp://bare.example.com:2855;tcp")));
        assert!(!l.contains(&u("msrp://relay.example.com:9001/x;tcp")));
    }

    #[test]
    fn paths() {
        let p = parse_path(b"msrp://a:1/x;tcp  msrps://b/y;ws").unwrap();
        assert_eq!(p.len(), 2);
        assert!(parse_path(b"").is_none());
        assert!(parse_path(b"msrp://a:1/x;tcp junk").is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if let Ok(a) = MsrpUri::parse(&s) {
                proptest::prop_assert!(a.equivalent(&a));
            }
            let mut p = b"msrp://".to_vec();
            p.extend_from_slice(&s);
            let _ = MsrpUri::parse(&p);
        }
    }
}
