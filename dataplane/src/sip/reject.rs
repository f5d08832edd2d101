//! Recognise SIP on a connection's first line (RFC 3261 §7.1 Request-Line,
//! §7.2 Status-Line) and answer a request with `501 Not Implemented`
//! built as RFC 3261 §8.2.6 wants: Via, From, To (with a tag), Call-ID and
//! CSeq copied from the request. Sans-IO: bytes in, bytes out.

/// What the start of a connection's input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLine {
    /// Not enough bytes to tell.
    Incomplete,
    /// A SIP request; `head_len` is the length of its header block with the
    /// empty line, or `None` while that has not all arrived.
    SipRequest { ack: bool, head_len: Option<usize> },
    /// A SIP response (nothing to answer).
    SipResponse,
    /// Something else (MSRP or not, the caller's parser decides).
    Other,
}

const VERSION: &[u8] = b"SIP/2.0";

/// RFC 3261 §25.1 `token` characters (methods are tokens).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Classify the first bytes of a connection. Lines longer than `max_head`
/// or a header block beyond it are `Other` (the caller closes).
pub fn classify(data: &[u8], max_head: usize) -> FirstLine {
    let window = &data[..data.len().min(max_head)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        // A status line starts with the version; a request with a token.
        let n = data.len().min(VERSION.len());
        if data.len() < max_head
            && (data[..n].eq_ignore_ascii_case(&VERSION[..n])
                || data.iter().take(16).all(|&b| is_token(b)))
        {
            return FirstLine::Incomplete;
        }
        return FirstLine::Other;
    };
    let line = window[..lf].strip_suffix(b"\r").unwrap_or(&window[..lf]);
    if line.len() > VERSION.len()
        && line[..VERSION.len()].eq_ignore_ascii_case(VERSION)
        && line.get(VERSION.len()) == Some(&b' ')
    {
        return FirstLine::SipResponse;
    }
    // Method SP Request-URI SP SIP-Version
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return FirstLine::Other;
    };
    if method.is_empty()
        || !method.iter().all(|&b| is_token(b))
        || uri.is_empty()
        || !version.eq_ignore_ascii_case(VERSION)
    {
        return FirstLine::Other;
    }
    let head_len = memchr::memmem::find(window, b"\r\n\r\n").map(|i| i + 4);
    if head_len.is_none() && data.len() >= max_head {
        return FirstLine::Other;
    }
    FirstLine::SipRequest {
        ack: method == b"ACK",
        head_len,
    }
}

/// The header lines of `head` (after the request line), with folded
/// continuation lines (RFC 3261 §7.3.1) joined to their header.
fn header_lines(head: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = match memchr::memmem::find(head, b"\r\n") {
        Some(i) => i + 2,
        None => return lines,
    };
    while pos < head.len() {
        let end = memchr::memmem::find(&head[pos..], b"\r\n").map_or(head.len(), |i| pos + i);
        let line = &head[pos..end];
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // Continuation: extends the current header.
        } else {
            if let Some(s) = start {
                lines.push(&head[s..pos - 2]);
            }
            start = Some(pos);
        }
        pos = end + 2;
    }
    if let Some(s) = start {
        lines.push(&head[s..(pos - 2).min(head.len())]);
    }
    lines
}

/// Header name of a line, lower-cased long form for compact ones
/// (RFC 3261 §7.3.3: v, f, t, i).
fn name_of(line: &[u8]) -> Option<&'static str> {
    let colon = memchr::memchr(b':', line)?;
    let name = line[..colon].trim_ascii();
    let known: [(&[u8], &'static str); 9] = [
        (b"via", "via"),
        (b"v", "via"),
        (b"from", "from"),
        (b"f", "from"),
        (b"to", "to"),
        (b"t", "to"),
        (b"call-id", "call-id"),
        (b"i", "call-id"),
        (b"cseq", "cseq"),
    ];
    known
        .iter()
        .find(|(k, _)| name.eq_ignore_ascii_case(k))
        .map(|&(_, v)| v)
}

/// `SIP/2.0 501 Not Implemented` for the request whose header block is
/// `head`, or `None` when the request lacks what a response needs (no
/// Via, From, To, Call-ID or CSeq) — then the connection is just closed.
/// `tag` is a random To tag (hex), added when To has none.
pub fn not_implemented(head: &[u8], tag: &str, reason: &str) -> Option<Vec<u8>> {
    let lines = header_lines(head);
    let mut out = Vec::with_capacity(head.len() + 128);
    out.extend_from_slice(b"SIP/2.0 501 Not Implemented\r\n");
    let mut seen = [false; 5];
    let order = ["via", "from", "to", "call-id", "cseq"];
    // Via headers in their order first (RFC 3261 §8.2.6.2), then the rest.
    for want in order {
        for line in &lines {
            if name_of(line) != Some(want) {
                continue;
            }
            let i = order.iter().position(|o| *o == want).unwrap_or(0);
            if want != "via" && seen[i] {
                continue;
            }
            seen[i] = true;
            out.extend_from_slice(line);
            if want == "to" && !has_tag(line) {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(tag.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if seen.iter().any(|s| !s) {
        return None;
    }
    out.extend_from_slice(b"Warning: 399 rtedge \"");
    out.extend(reason.bytes().filter(|&b| b != b'"' && b >= b' '));
    out.extend_from_slice(b"\"\r\nContent-Length: 0\r\n\r\n");
    Some(out)
}

fn has_tag(to_line: &[u8]) -> bool {
    to_line.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag="))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n\
v: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKx\r\n\
Max-Forwards: 70\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob\r\n <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn classifies_first_lines() {
        assert_eq!(classify(b"MSRP a786hjs2 SEND\r\n", 4096), FirstLine::Other);
        assert_eq!(classify(b"INV", 4096), FirstLine::Incomplete);
        assert_eq!(classify(b"SIP/2", 4096), FirstLine::Incomplete);
        assert_eq!(
            classify(b"SIP/2.0 200 OK\r\n", 4096),
            FirstLine::SipResponse
        );
        assert_eq!(
            classify(b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n", 4096),
            FirstLine::SipRequest {
                ack: false,
                head_len: None
            }
        );
        assert_eq!(
            classify(INVITE, 4096),
            FirstLine::SipRequest {
                ack: false,
                head_len: Some(INVITE.len())
            }
        );
        assert_eq!(
            classify(b"ACK sip:x SIP/2.0\r\n\r\n", 4096),
            FirstLine::SipRequest {
                ack: true,
                head_len: Some(21)
            }
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", 4096), FirstLine::Other);
        assert_eq!(classify(b"\x16\x03\x01\x02", 4096), FirstLine::Other);
        // A request whose header never ends within the limit.
        let long = [b"OPTIONS sip:x SIP/2.0\r\n".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(classify(&long, 64), FirstLine::Other);
    }

    #[test]
    fn answer_copies_what_rfc_3261_requires() {
        let r = not_implemented(INVITE, "8a1f", "SIP is not served here").unwrap();
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"), "{r}");
        let via1 = r.find("Via: SIP/2.0/TCP client").unwrap();
        let via2 = r.find("v: SIP/2.0/TCP proxy").unwrap();
        assert!(via1 < via2);
        assert!(r.contains("\r\nFrom: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"));
        assert!(
            r.contains("\r\nTo: Bob\r\n <sip:bob@biloxi.example.com>;tag=8a1f\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nCall-ID: 3848276298220188511@atlanta.example.com\r\n"));
        assert!(r.contains("\r\nCSeq: 1 INVITE\r\n"));
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"));
        assert!(!r.contains("Max-Forwards"));
    }

    #[test]
    fn incomplete_requests_get_no_answer() {
        assert!(not_implemented(b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n\r\n", "1", "r").is_none());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = classify(&data, 128);
            let _ = not_implemented(&data, "t", "r");
        }
    }
}
