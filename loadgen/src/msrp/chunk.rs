//! MSRP chunks (RFC 4975 §7, ABNF in §9), client side: a parser of complete
//! chunks at the front of a buffer and writers for the frames the load
//! generator sends. Written from the RFC grammar, independently of the
//! relay's own streaming parser, so the two check each other.
//!
//! ```text
//! msrp-request  = req-start headers [content-stuff] end-line
//! msrp-response = resp-start headers end-line
//! req-start     = pMSRP SP transact-id SP method CRLF
//! resp-start    = pMSRP SP transact-id SP status-code [SP comment] CRLF
//! transact-id   = ident            ; ident = ALPHANUM 3*31ident-char
//! content-stuff = *(Other-Mime-header CRLF) Content-Type 2CRLF data CRLF
//! end-line      = "-------" transact-id continuation-flag CRLF
//! continuation-flag = "+" / "$" / "#"
//! ```
//!
//! Every malformed input is an error value, never a panic: the caller
//! counts it and drops the connection.

use memchr::memmem;

/// Why bytes from the server are not an MSRP chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Does not start with `MSRP `.
    NotMsrp,
    /// First line too long, not CRLF-terminated, or neither a method nor a
    /// status code.
    BadStartLine,
    /// The transaction id is not an RFC 4975 ident.
    BadTransactionId,
    /// A header line without a colon.
    BadHeader,
    /// No end-line within the size limit.
    TooLarge,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParseError::NotMsrp => "not an MSRP chunk (no \"MSRP \" prefix)",
            ParseError::BadStartLine => "malformed MSRP start line",
            ParseError::BadTransactionId => "transaction id is not an RFC 4975 ident",
            ParseError::BadHeader => "header line without a colon",
            ParseError::TooLarge => "MSRP chunk larger than the limit",
        })
    }
}

/// First line of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    Request { method: &'a [u8] },
    Response { status: u16 },
}

/// One complete chunk, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub tid: &'a [u8],
    pub kind: Kind<'a>,
    /// Header lines, each ending in CRLF (possibly empty).
    pub headers: &'a [u8],
    /// The data of content-stuff, if the chunk has a body.
    pub body: Option<&'a [u8]>,
    /// Continuation flag of the end-line: `$`, `+` or `#`.
    pub flag: u8,
}

impl<'a> Chunk<'a> {
    /// Value of the first header called `name` (case-insensitive, RFC 4975
    /// §9: header names are tokens), without surrounding whitespace.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers_of([name])[0]
    }

    /// The values of several headers (first occurrence of each), found in
    /// one pass over the header block.
    pub fn headers_of<const N: usize>(&self, names: [&str; N]) -> [Option<&'a [u8]>; N] {
        let mut out = [None; N];
        let mut missing = N;
        let h = self.headers;
        let mut start = 0;
        while start < h.len() && missing > 0 {
            let end = memchr::memchr(b'\n', &h[start..]).map_or(h.len(), |i| start + i);
            let line = &h[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(i) = memchr::memchr(b':', line) {
                let n = &line[..i];
                for (k, name) in names.iter().enumerate() {
                    if out[k].is_none() && n.eq_ignore_ascii_case(name.as_bytes()) {
                        out[k] = Some(line[i + 1..].trim_ascii());
                        missing -= 1;
                        break;
                    }
                }
            }
            start = end + 1;
        }
        out
    }

    #[cfg(test)]
    pub fn is_request(&self, method: &str) -> bool {
        matches!(self.kind, Kind::Request { method: m } if m == method.as_bytes())
    }

    #[cfg(test)]
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            Kind::Response { status } => Some(status),
            Kind::Request { .. } => None,
        }
    }
}

/// RFC 4975 §9: `ident = ALPHANUM 3*31ident-char`,
/// `ident-char = ALPHANUM / "." / "-" / "+" / "%" / "="`.
pub fn is_ident(s: &[u8]) -> bool {
    (4..=32).contains(&s.len())
        && s[0].is_ascii_alphanumeric()
        && s[1..].iter().all(|&c| IDENT_CHAR[usize::from(c)])
}

/// `ident-char` as a table (a `contains` per character was a tenth of the
/// loadgen's work per message).
const IDENT_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'%' | b'=');
        i += 1;
    }
    t
};

/// CRLF and the seven dashes that start an end-line.
const END_PREFIX: &[u8] = b"\r\n-------";

/// The empty line after the headers (built once: a one-shot
/// `memmem::find` builds its searcher on every call).
fn blank_line_finder() -> &'static memmem::Finder<'static> {
    static F: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memmem::Finder::new(b"\r\n\r\n"))
}

fn end_finder() -> &'static memmem::Finder<'static> {
    static F: std::sync::OnceLock<memmem::Finder<'static>> = std::sync::OnceLock::new();
    F.get_or_init(|| memmem::Finder::new(END_PREFIX))
}

/// Longest first line accepted (`MSRP` + ident + status + comment).
const MAX_START_LINE: usize = 512;

/// Parse the chunk at the front of `buf`. `Ok(None)`: incomplete, read
/// more. `Ok(Some((chunk, n)))`: the chunk occupies `buf[..n]`. `max` bounds
/// the size of one chunk.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<(Chunk<'_>, usize)>, ParseError> {
    const PREFIX: &[u8] = b"MSRP ";
    let p = PREFIX.len().min(buf.len());
    if buf[..p] != PREFIX[..p] {
        return Err(ParseError::NotMsrp);
    }
    let Some(eol) = memchr::memchr(b'\n', &buf[..buf.len().min(MAX_START_LINE)]) else {
        return if buf.len() >= MAX_START_LINE {
            Err(ParseError::BadStartLine)
        } else {
            Ok(None)
        };
    };
    if eol < 1 || buf[eol - 1] != b'\r' {
        return Err(ParseError::BadStartLine);
    }
    let line = &buf[PREFIX.len()..eol - 1];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let tid = parts.next().unwrap_or(&[]);
    if !is_ident(tid) {
        return Err(ParseError::BadTransactionId);
    }
    let word = parts.next().unwrap_or(&[]);
    let kind = if word.len() == 3 && word.iter().all(u8::is_ascii_digit) {
        let status = word.iter().fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
        Kind::Response { status }
    } else if !word.is_empty() && word.iter().all(u8::is_ascii_uppercase) {
        // A request line has nothing after the method.
        if parts.next().is_some() {
            return Err(ParseError::BadStartLine);
        }
        Kind::Request { method: word }
    } else {
        return Err(ParseError::BadStartLine);
    };
    // End-line: CRLF "-------" tid flag CRLF. The CRLF in front is the one
    // ending the last header line or the data (RFC 4975 §9). One prebuilt
    // searcher for the fixed part; the tid is compared after it.
    let mlen = END_PREFIX.len() + tid.len();
    let mut from = eol - 1;
    let at = loop {
        let Some(rel) = end_finder().find(&buf[from..]) else {
            return if buf.len() > max {
                Err(ParseError::TooLarge)
            } else {
                Ok(None)
            };
        };
        let at = from + rel;
        let after = at + mlen;
        if buf.len() < after + 3 {
            // The end-line, if it is this one, is not complete yet.
            return if after + 3 > max {
                Err(ParseError::TooLarge)
            } else {
                Ok(None)
            };
        }
        if &buf[at + END_PREFIX.len()..after] == tid
            && matches!(buf[after], b'$' | b'+' | b'#')
            && &buf[after + 1..after + 3] == b"\r\n"
        {
            break at;
        }
        // "-------" inside the data, or another transaction's id: go on.
        from = at + 2;
    };
    let end = at + mlen + 3;
    if end > max {
        return Err(ParseError::TooLarge);
    }
    let flag = buf[at + mlen];
    // Headers run up to an empty line (content-stuff follows) or to the
    // end-line (no body).
    let region = &buf[eol + 1..at + 2];
    let (headers, body) = match blank_line_finder().find(&buf[eol - 1..at + 2]) {
        Some(p) => {
            let hdr_end = eol - 1 + p + 2;
            let body_start = (hdr_end + 2).min(at);
            (&buf[eol + 1..hdr_end], Some(&buf[body_start..at]))
        }
        None => (region, None),
    };
    // Every header line has a colon (memchr per line: a byte-at-a-time
    // split was the loadgen's largest cost per chunk).
    let mut start = 0;
    while start < headers.len() {
        let end = memchr::memchr(b'\n', &headers[start..]).map_or(headers.len(), |i| start + i);
        let line = &headers[start..end];
        if !line.is_empty() && memchr::memchr(b':', line).is_none() {
            return Err(ParseError::BadHeader);
        }
        start = end + 1;
    }
    Ok(Some((
        Chunk {
            tid,
            kind,
            headers,
            body,
            flag,
        },
        end,
    )))
}

/// The URIs of a path header (`To-Path`, `From-Path`, `Use-Path`):
/// whitespace-separated (RFC 4975 §9: `1*(SP MSRP-URI)`).
pub fn path_uris(mut v: &[u8]) -> impl Iterator<Item = &[u8]> {
    // memchr, not a byte-at-a-time split: paths are most of a head.
    std::iter::from_fn(move || {
        let start = v.iter().position(|&b| b != b' ' && b != b'\t')?;
        let rest = &v[start..];
        let end = memchr::memchr2(b' ', b'\t', rest).unwrap_or(rest.len());
        let (uri, after) = rest.split_at(end);
        v = after;
        Some(uri)
    })
}

/// Append an AUTH request (RFC 4976 §5.1): To-Path is the relay's URI,
/// From-Path the client's own.
pub fn write_auth(
    out: &mut Vec<u8>,
    tid: &str,
    to: &str,
    from: &str,
    authorization: Option<&str>,
    expires: Option<u64>,
) {
    out.extend_from_slice(
        format!("MSRP {tid} AUTH\r\nTo-Path: {to}\r\nFrom-Path: {from}\r\n").as_bytes(),
    );
    if let Some(a) = authorization {
        out.extend_from_slice(format!("Authorization: {a}\r\n").as_bytes());
    }
    if let Some(e) = expires {
        out.extend_from_slice(format!("Expires: {e}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("-------{tid}$\r\n").as_bytes());
}

/// Append a response without a body (RFC 4975 §7.2).
pub fn write_response(out: &mut Vec<u8>, tid: &[u8], status: &str, to: &[u8], from: &[u8]) {
    out.extend_from_slice(b"MSRP ");
    out.extend_from_slice(tid);
    out.push(b' ');
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nTo-Path: ");
    out.extend_from_slice(to);
    out.extend_from_slice(b"\r\nFrom-Path: ");
    out.extend_from_slice(from);
    out.extend_from_slice(b"\r\n-------");
    out.extend_from_slice(tid);
    out.extend_from_slice(b"$\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &[u8] = b"MSRP a786hjs2 SEND\r\n\
        To-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp\r\n\
        From-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp\r\n\
        Message-ID: 87652491\r\n\
        Byte-Range: 1-25/25\r\n\
        Content-Type: text/plain\r\n\
        \r\n\
        Hey Bob, are you there?\r\n\
        \r\n-------a786hjs2$\r\n";

    #[test]
    fn parses_the_rfc_example_send() {
        // RFC 4975 §7.1.1 example; the body here ends in CRLF itself.
        let (c, n) = parse(SEND, 1 << 20).unwrap().unwrap();
        assert_eq!(n, SEND.len());
        assert_eq!(c.tid, b"a786hjs2");
        assert!(c.is_request("SEND"));
        assert_eq!(c.header("message-id"), Some(&b"87652491"[..]));
        assert_eq!(c.header("Byte-Range"), Some(&b"1-25/25"[..]));
        assert_eq!(c.body, Some(&b"Hey Bob, are you there?\r\n"[..]));
        assert_eq!(
            c.headers_of(["byte-range", "Nope", "TO-PATH"]),
            [
                Some(&b"1-25/25"[..]),
                None,
                Some(&b"msrp://bob.example.com:8888/9di4eae923wzd;tcp"[..])
            ]
        );
        assert_eq!(c.flag, b'$');
        // Every prefix is incomplete, never an error.
        for i in 0..SEND.len() {
            assert!(parse(&SEND[..i], 1 << 20).unwrap().is_none(), "{i}");
        }
    }

    #[test]
    fn parses_responses_and_bodiless_requests() {
        let r = b"MSRP d93kswow 200 OK\r\nTo-Path: msrp://a.example:1/x;tcp\r\n\
                  From-Path: msrp://b.example:2/y;tcp\r\n-------d93kswow$\r\nMSRP";
        let (c, n) = parse(r, 1 << 20).unwrap().unwrap();
        assert_eq!(n, r.len() - 4);
        assert_eq!(c.status(), Some(200));
        assert_eq!(c.body, None);
        assert_eq!(
            c.header("From-Path"),
            Some(&b"msrp://b.example:2/y;tcp"[..])
        );
        let mut v = Vec::new();
        write_auth(
            &mut v,
            "auth1",
            "msrp://r:1;tcp",
            "msrp://c:2/s;tcp",
            None,
            Some(60),
        );
        let (c, _) = parse(&v, 1 << 20).unwrap().unwrap();
        assert!(c.is_request("AUTH"));
        assert_eq!(c.header("Expires"), Some(&b"60"[..]));
        let mut v = Vec::new();
        write_response(
            &mut v,
            b"x1y2",
            "200 OK",
            b"msrp://r:1/s;tcp",
            b"msrp://c:2/s;tcp",
        );
        let (c, n) = parse(&v, 1 << 20).unwrap().unwrap();
        assert_eq!((c.status(), n), (Some(200), v.len()));
        assert_eq!(
            path_uris(b" a  b\tc ").collect::<Vec<_>>(),
            vec![&b"a"[..], b"b", b"c"]
        );
    }

    #[test]
    fn tid_inside_the_body_is_not_the_end() {
        let f =
            b"MSRP abcd SEND\r\nTo-Path: x:\r\nFrom-Path: y:\r\nContent-Type: text/plain\r\n\r\n\
                  a\r\n-------abcdX\r\n-------abcd+\r\n";
        let (c, n) = parse(f, 1 << 20).unwrap().unwrap();
        assert_eq!(n, f.len());
        assert_eq!(c.body, Some(&b"a\r\n-------abcdX"[..]));
        assert_eq!(c.flag, b'+');
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"MSRP ab SEND\r\n",
            b"MSRP abcd send\r\n",
            b"MSRP abcd SEND extra\r\n",
            b"MSRP abcd 20 OK\r\n",
            b"MSRP abcd\n",
            b"MSRP abcd SEND\r\nno colon here\r\n-------abcd$\r\n",
        ] {
            assert!(
                parse(bad, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'M'; 10];
        assert!(parse(&long, 1 << 20).is_err());
        let mut big = b"MSRP abcd SEND\r\nTo-Path: x:\r\n".to_vec();
        big.resize(5000, b'a');
        assert_eq!(parse(&big, 4096).unwrap_err(), ParseError::TooLarge);
        assert!(parse(b"MS", 100).unwrap().is_none());
        assert!(parse(b"", 100).unwrap().is_none());
    }

    #[test]
    fn idents() {
        assert!(is_ident(b"a786hjs2"));
        assert!(is_ident(b"s0000001"));
        assert!(!is_ident(b"abc"));
        assert!(!is_ident(b"-abc"));
        assert!(!is_ident(&[b'a'; 33]));
        assert!(is_ident(b"a.b-c+d%e=f"));
    }
}
