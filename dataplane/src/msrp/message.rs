//! Views of a parsed head, and the frames the relay writes: rewritten heads
//! for relaying (RFC 4976 §6.4), responses (RFC 4975 §7.2) and REPORTs
//! (RFC 4975 §7.1.2–§7.1.4, RFC 4976 §6.4.1).

use super::parser::{Flag, HeadIndex, HeaderName, StartKind};
use super::uri::path_uris;

/// Request methods (RFC 4975 §9, RFC 4976 §4 adds AUTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Send,
    Report,
    Auth,
    /// Any other `1*UPALPHA` method: relays forward it (RFC 4976 §6.4.2).
    Other,
}

/// `Failure-Report` (RFC 4975 §7.1.1, §9); absent means `yes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReport {
    Yes,
    No,
    Partial,
}

/// `Byte-Range: start-end/total` (RFC 4975 §9); `None` stands for `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
    pub total: Option<u64>,
}

impl ByteRange {
    /// Absent `Byte-Range`: only a message's first chunk may omit it (RFC
    /// 4975 §7.1.1), so it starts at 1; with `$` it is the whole message
    /// (§7.3.1): `1-*/*`.
    pub const WHOLE: ByteRange = ByteRange {
        start: 1,
        end: None,
        total: None,
    };

    /// The header value, `start-end/total` with `*` for unknown parts.
    pub fn write_value(&self, out: &mut Vec<u8>) {
        let num = |out: &mut Vec<u8>, v: Option<u64>| match v {
            Some(n) => {
                use std::io::Write;
                let _ = write!(out, "{n}");
            }
            None => out.push(b'*'),
        };
        num(out, Some(self.start));
        out.push(b'-');
        num(out, self.end);
        out.push(b'/');
        num(out, self.total);
    }

    /// The whole header line with its CRLF.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Byte-Range: ");
        self.write_value(out);
        out.extend_from_slice(b"\r\n");
    }
}

/// A header value that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed header value")]
pub struct BadValue;

/// A head block with its index.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub block: &'a [u8],
    pub idx: &'a HeadIndex,
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |a, &d| a * 10 + u64::from(d - b'0')))
}

impl<'a> Head<'a> {
    pub fn new(block: &'a [u8], idx: &'a HeadIndex) -> Head<'a> {
        Head { block, idx }
    }

    pub fn tid(&self) -> &'a [u8] {
        self.idx.tid.get(self.block)
    }

    pub fn method_bytes(&self) -> Option<&'a [u8]> {
        match self.idx.kind {
            Some(StartKind::Request { method }) => Some(method.get(self.block)),
            _ => None,
        }
    }

    pub fn method(&self) -> Option<Method> {
        self.method_bytes().map(|m| match m {
            b"SEND" => Method::Send,
            b"REPORT" => Method::Report,
            b"AUTH" => Method::Auth,
            _ => Method::Other,
        })
    }

    pub fn status(&self) -> Option<u16> {
        match self.idx.kind {
            Some(StartKind::Response { code, .. }) => Some(code),
            _ => None,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.idx.kind, Some(StartKind::Request { .. }))
    }

    pub fn has_body(&self) -> bool {
        self.idx.has_body
    }

    /// First header of that name.
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.idx.find(name).map(|h| h.value.get(self.block))
    }

    pub fn header_str(&self, name: HeaderName) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn to_path(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::ToPath)
    }

    pub fn from_path(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::FromPath)
    }

    pub fn message_id(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::MessageId)
    }

    pub fn failure_report(&self) -> Option<FailureReport> {
        match self.header(HeaderName::FailureReport) {
            None => Some(FailureReport::Yes),
            Some(v) if v.eq_ignore_ascii_case(b"yes") => Some(FailureReport::Yes),
            Some(v) if v.eq_ignore_ascii_case(b"no") => Some(FailureReport::No),
            Some(v) if v.eq_ignore_ascii_case(b"partial") => Some(FailureReport::Partial),
            Some(_) => None,
        }
    }

    pub fn byte_range(&self) -> Option<ByteRange> {
        let v = self.header(HeaderName::ByteRange)?;
        let dash = memchr::memchr(b'-', v)?;
        let slash = memchr::memchr(b'/', v)?;
        let start = parse_u64(v.get(..dash)?)?;
        let end_s = v.get(dash + 1..slash)?;
        let total_s = v.get(slash + 1..)?;
        let star = |s: &[u8]| -> Option<Option<u64>> {
            if s == b"*" {
                Some(None)
            } else {
                parse_u64(s).map(Some)
            }
        };
        Some(ByteRange {
            start,
            end: star(end_s)?,
            total: star(total_s)?,
        })
    }

    /// `Expires` seconds: `Ok(None)` when absent, `Err` when malformed.
    pub fn expires(&self) -> Result<Option<u64>, BadValue> {
        match self.header(HeaderName::Expires) {
            None => Ok(None),
            Some(v) => parse_u64(v).map(Some).ok_or(BadValue),
        }
    }

    /// Number of URIs in To-Path.
    pub fn to_path_len(&self) -> usize {
        self.to_path().map_or(0, |p| path_uris(p).count())
    }

    /// The `n`th To-Path URI text.
    pub fn to_uri(&self, n: usize) -> Option<&'a [u8]> {
        path_uris(self.to_path()?).nth(n)
    }

    /// The right-most To-Path URI (RFC 4976 §5.1: the digest-uri of AUTH).
    pub fn to_last(&self) -> Option<&'a [u8]> {
        path_uris(self.to_path()?).last()
    }

    pub fn from_first(&self) -> Option<&'a [u8]> {
        path_uris(self.from_path()?).next()
    }
}

/// The first URIs of a path and how many it has, from one scan of the
/// value (the relay looks at up to three To-Path URIs per frame).
#[derive(Debug, Clone, Copy, Default)]
pub struct PathUris<'a> {
    first: [&'a [u8]; 3],
    pub len: usize,
}

impl<'a> PathUris<'a> {
    pub fn of(value: Option<&'a [u8]>) -> PathUris<'a> {
        let mut p = PathUris::default();
        for u in value.map(path_uris).into_iter().flatten() {
            if let Some(slot) = p.first.get_mut(p.len) {
                *slot = u;
            }
            p.len += 1;
        }
        p
    }

    /// The `n`th URI, for `n` < 3.
    pub fn get(&self, n: usize) -> Option<&'a [u8]> {
        (n < self.len).then(|| self.first.get(n).copied()).flatten()
    }
}

/// Writes the head to relay: `new_tid` on the first line, the first `pops`
/// To-Path URIs removed and pushed to the front of From-Path (RFC 4976 §6.4:
/// the relay removes its URI from To-Path and inserts it at the start of
/// From-Path; with `pops = 2` for a hairpin through two of our own URIs the
/// most recent hop ends first), every other header line unchanged, and the
/// empty line when a body follows. Returns `false` (writing nothing) if the
/// head has fewer To-Path URIs than `pops + 1`.
pub fn write_relayed_head(out: &mut Vec<u8>, head: &Head<'_>, new_tid: &[u8], pops: usize) -> bool {
    write_relayed_head_ranged(out, head, new_tid, pops, None)
}

/// [`write_relayed_head`] for a piece of a re-chunked SEND (RFC 4975
/// §7.1.1: a relay may split chunks): the same head with `Byte-Range`
/// replaced by `byte_range` (added when the original had none).
pub fn write_relayed_head_ranged(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    new_tid: &[u8],
    pops: usize,
    byte_range: Option<&ByteRange>,
) -> bool {
    write_relayed(out, head, new_tid, pops, byte_range, &[])
}

/// [`write_relayed_head`] for an end-to-end response (RFC 4976 §6.4.3) to
/// a request that arrived with From-Path `request_from`. A response
/// whose To-Path ends at our URI goes on toward `request_from`: RFC 4975
/// §7.2 makes a response's To-Path the request's From-Path, but some
/// relays (Kamailio 5.6's `msrp` module, for AUTH) address only the
/// previous hop, and the transaction id still says where it belongs.
pub fn write_relayed_response_head(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    new_tid: &[u8],
    pops: usize,
    request_from: &[u8],
) -> bool {
    write_relayed(out, head, new_tid, pops, None, trim_end(request_from))
}

/// [`write_relayed_head_ranged`], with `to_if_ends_here` as the To-Path
/// when nothing of the head's To-Path is left after the pops (empty: refuse).
fn write_relayed(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    new_tid: &[u8],
    pops: usize,
    byte_range: Option<&ByteRange>,
    to_if_ends_here: &[u8],
) -> bool {
    let (Some(to), Some(from)) = (head.to_path(), head.from_path()) else {
        return false;
    };
    // The URIs popped (RFC 4976 §6.4: at most two, for a hairpin), then
    // the rest in order; no collection of the path.
    let mut popped: [&[u8]; 2] = [&[], &[]];
    let mut to_uris = path_uris(to);
    for slot in popped.iter_mut().take(pops) {
        match to_uris.next() {
            Some(u) => *slot = u,
            None => return false,
        }
    }
    // The To-Path URIs left, copied as they are (RFC 4976 §6.4 changes
    // only the front of the paths).
    let to_rest = match trim_end(to_uris.rest()) {
        [] => to_if_ends_here,
        rest => rest,
    };
    if pops > popped.len() || to_rest.is_empty() {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(b"MSRP ");
    out.extend_from_slice(new_tid);
    out.push(b' ');
    // The first line ends where To-Path (the first header) starts.
    let line_end = head
        .idx
        .headers
        .first()
        .map(|h| (h.line.start as usize).saturating_sub(2))
        .unwrap_or_else(|| memchr::memchr(b'\r', head.block).unwrap_or(0));
    let after_tid = head.idx.tid.end as usize + 1;
    out.extend_from_slice(head.block.get(after_tid..line_end).unwrap_or(&[]));
    out.extend_from_slice(b"\r\nTo-Path: ");
    out.extend_from_slice(to_rest);
    out.extend_from_slice(b"\r\nFrom-Path:");
    for u in popped.iter().take(pops).rev() {
        out.push(b' ');
        out.extend_from_slice(u);
    }
    let from_all = trim_end(path_uris(from).rest());
    if !from_all.is_empty() {
        out.push(b' ');
        out.extend_from_slice(from_all);
    }
    out.extend_from_slice(b"\r\n");
    let rest = head.idx.headers.get(2..).unwrap_or(&[]);
    match (byte_range, contiguous(rest)) {
        // The usual case: the header lines after From-Path, unchanged and
        // back to back, go in one copy.
        (None, Some(span)) => out.extend_from_slice(span.get(head.block)),
        _ => {
            for h in rest {
                if let (Some(r), HeaderName::ByteRange) = (byte_range, h.name) {
                    r.write_header(out);
                    continue;
                }
                out.extend_from_slice(h.line.get(head.block));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Some(r) = byte_range
        && head.header(HeaderName::ByteRange).is_none()
    {
        r.write_header(out);
    }
    if head.has_body() {
        out.extend_from_slice(b"\r\n");
    }
    debug_assert!(out.len() > start);
    true
}

/// `v` without trailing spaces and tabs.
fn trim_end(v: &[u8]) -> &[u8] {
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &v[..end]
}

/// The span of `headers`' lines with their CRLFs when they follow each
/// other with nothing between (always so in a well-formed head).
fn contiguous(headers: &[super::parser::HeaderIdx]) -> Option<super::parser::Span> {
    let first = headers.first()?;
    let mut end = first.line.start;
    for h in headers {
        if h.line.start != end {
            return None;
        }
        end = h.line.end + 2;
    }
    Some(super::parser::Span {
        start: first.line.start,
        end,
    })
}

/// The end-line (RFC 4975 §9 `end-line`), with the CRLF that ends the body
/// when the frame has one.
pub fn write_end_line(out: &mut Vec<u8>, tid: &[u8], flag: Flag, after_body: bool) {
    if after_body {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"-------");
    out.extend_from_slice(tid);
    out.push(flag.byte());
    out.extend_from_slice(b"\r\n");
}

/// Reason phrases for the codes the relay uses (IANA MSRP registry).
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        408 => "Request Timeout",
        413 => "Stop Sending Message",
        423 => "Interval Out Of Bounds",
        481 => "Session Does Not Exist",
        501 => "Method Not Understood",
        506 => "Session Already In Use",
        _ => "Error",
    }
}

/// A response (RFC 4975 §7.2) to the request `head`: the transaction id of
/// the request; To-Path is the first From-Path URI for SEND (responses to
/// SEND go hop by hop, RFC 4976 §6.4.1) and the whole From-Path otherwise;
/// From-Path is the first To-Path URI (this hop). `extra` headers are
/// written as given (`name: value`). Returns `None` when the request has no
/// usable paths (no response is possible).
pub fn build_response(head: &Head<'_>, code: u16, extra: &[(&str, &str)]) -> Option<Vec<u8>> {
    let to = if head.method() == Some(Method::Send) {
        head.from_first()?
    } else {
        let f = head.from_path()?;
        path_uris(f).next()?;
        f
    };
    let from = head.to_uri(0)?;
    Some(write_response(head.tid(), code, to, from, extra))
}

/// A response with transaction id `tid`, To-Path `to` and From-Path `from`
/// (see [`build_response`]; the relay calls this directly when it already
/// holds the paths).
pub fn write_response(
    tid: &[u8],
    code: u16,
    to: &[u8],
    from: &[u8],
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::new();
    write_response_into(&mut out, tid, code, to, from, extra);
    out
}

/// [`write_response`] appended to `out`.
pub fn write_response_into(
    out: &mut Vec<u8>,
    tid: &[u8],
    code: u16,
    to: &[u8],
    from: &[u8],
    extra: &[(&str, &str)],
) {
    out.reserve(64 + tid.len() * 2 + to.len() + from.len());
    out.extend_from_slice(b"MSRP ");
    out.extend_from_slice(tid);
    // " NNN reason" without the formatting machinery (hot: every SEND).
    let c = code.min(999);
    out.extend_from_slice(&[
        b' ',
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(reason(code).as_bytes());
    out.extend_from_slice(b"\r\nTo-Path: ");
    out.extend_from_slice(to);
    out.extend_from_slice(b"\r\nFrom-Path: ");
    out.extend_from_slice(from);
    out.extend_from_slice(b"\r\n");
    for (n, v) in extra {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_end_line(out, tid, Flag::Last, false);
}

/// The first To-Path URI of a frame this relay wrote (a forwarded head
/// starts with the request line, then `To-Path: `).
pub fn first_to_uri(frame: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(frame, b"\r\nTo-Path: ")? + 11;
    let rest = frame.get(at..)?;
    let end = memchr::memchr2(b' ', b'\r', rest)?;
    rest.get(..end)
}

/// The response `resp` (one this relay built) with another status code.
pub fn restatus(resp: &[u8], code: u16) -> Option<Vec<u8>> {
    // "MSRP " tid SP code SP reason CRLF ...
    let tid_end = 5 + memchr::memchr(b' ', resp.get(5..)?)?;
    let line_end = memchr::memmem::find(resp, b"\r\n")?;
    let mut out = Vec::with_capacity(resp.len() + 16);
    out.extend_from_slice(resp.get(..tid_end)?);
    out.extend_from_slice(format!(" {code:03} {}", reason(code)).as_bytes());
    out.extend_from_slice(resp.get(line_end..)?);
    Some(out)
}

/// A failure REPORT (RFC 4975 §7.1.2–§7.1.4, RFC 4976 §6.4.1) for the request
/// `head` as we received it: To-Path is its From-Path (the way back), From-
/// Path is `our_uri`, same Message-ID and Byte-Range, `Status: 000 code`.
pub fn build_failure_report(
    head: &Head<'_>,
    our_uri: &[u8],
    new_tid: &[u8],
    code: u16,
) -> Option<Vec<u8>> {
    let ctx = ReportContext::new(
        head.from_path()?,
        our_uri,
        head.message_id(),
        head.header(HeaderName::ByteRange),
    );
    ctx.build(new_tid, code)
}

/// What a later failure REPORT needs from a request (kept while its
/// transaction is pending): its From-Path as received (the way back), our
/// URI, Message-ID and Byte-Range — in one buffer (one allocation per
/// forwarded request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportContext {
    buf: Vec<u8>,
    /// Ends of to_path, our_uri, message_id, byte_range in `buf`.
    ends: [u32; 4],
    has_message_id: bool,
    has_byte_range: bool,
}

impl ReportContext {
    pub fn new(
        to_path: &[u8],
        our_uri: &[u8],
        message_id: Option<&[u8]>,
        byte_range: Option<&[u8]>,
    ) -> ReportContext {
        Self::new_in(Vec::new(), to_path, our_uri, message_id, byte_range)
    }

    /// [`ReportContext::new`] in a buffer the caller had (emptied first).
    pub fn new_in(
        mut buf: Vec<u8>,
        to_path: &[u8],
        our_uri: &[u8],
        message_id: Option<&[u8]>,
        byte_range: Option<&[u8]>,
    ) -> ReportContext {
        let parts = [
            to_path,
            our_uri,
            message_id.unwrap_or(&[]),
            byte_range.unwrap_or(&[]),
        ];
        buf.clear();
        buf.reserve(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 4];
        for (e, p) in ends.iter_mut().zip(parts) {
            buf.extend_from_slice(p);
            *e = buf.len() as u32;
        }
        ReportContext {
            buf,
            ends,
            has_message_id: message_id.is_some(),
            has_byte_range: byte_range.is_some(),
        }
    }

    /// The buffer, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    fn part(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.buf.get(start..self.ends[i] as usize).unwrap_or(&[])
    }

    pub fn to_path(&self) -> &[u8] {
        self.part(0)
    }
    pub fn our_uri(&self) -> &[u8] {
        self.part(1)
    }
    pub fn message_id(&self) -> Option<&[u8]> {
        self.has_message_id.then(|| self.part(2))
    }
    pub fn byte_range(&self) -> Option<&[u8]> {
        self.has_byte_range.then(|| self.part(3))
    }

    /// The same context for another piece of the message.
    pub fn with_byte_range(&self, byte_range: &[u8]) -> ReportContext {
        ReportContext::new(
            self.to_path(),
            self.our_uri(),
            self.message_id(),
            Some(byte_range),
        )
    }

    pub fn build(&self, new_tid: &[u8], code: u16) -> Option<Vec<u8>> {
        path_uris(self.to_path()).next()?;
        let mut out = Vec::with_capacity(192 + self.buf.len());
        out.extend_from_slice(b"MSRP ");
        out.extend_from_slice(new_tid);
        out.extend_from_slice(b" REPORT\r\nTo-Path: ");
        out.extend_from_slice(self.to_path());
        out.extend_from_slice(b"\r\nFrom-Path: ");
        out.extend_from_slice(self.our_uri());
        out.extend_from_slice(b"\r\n");
        if let Some(m) = self.message_id() {
            out.extend_from_slice(b"Message-ID: ");
            out.extend_from_slice(m);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(b) = self.byte_range() {
            out.extend_from_slice(b"Byte-Range: ");
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Status: 000 {code:03} {}\r\n", reason(code)).as_bytes());
        write_end_line(&mut out, new_tid, Flag::Last, false);
        Some(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::parser::{Event, FrameParser, ParserLimits};
    use super::*;

    pub(crate) fn parse(frame: &[u8]) -> (Vec<u8>, HeadIndex) {
        let mut p = FrameParser::new(ParserLimits::default());
        let Ok(Some(Event::Head { len, .. })) = p.advance(frame) else {
            panic!("no head")
        };
        (frame[..len].to_vec(), p.head().clone())
    }

    // RFC 4976-style SEND through a relay.
    const SEND: &[u8] = b"MSRP 6aef SEND\r\n\
To-Path: msrps://relay.example.com:9000/jui787s2f;tcp msrps://bob.example.net:8145/foo;tcp\r\n\
From-Path: msrps://alice.example.com:9892/98cjs;tcp\r\n\
Message-ID: 87652\r\n\
Byte-Range: 1-8/8\r\n\
Failure-Report: partial\r\n\
Content-Type: text/plain\r\n\
\r\n\
Hi, Bob!\r\n\
-------6aef$\r\n";

    #[test]
    fn accessors() {
        let (b, i) = parse(SEND);
        let h = Head::new(&b, &i);
        assert_eq!(h.method(), Some(Method::Send));
        assert_eq!(h.tid(), b"6aef");
        assert_eq!(h.to_path_len(), 2);
        assert_eq!(
            h.to_last(),
            Some(&b"msrps://bob.example.net:8145/foo;tcp"[..])
        );
        assert_eq!(h.message_id(), Some(&b"87652"[..]));
        assert_eq!(h.failure_report(), Some(FailureReport::Partial));
        assert_eq!(
            h.byte_range(),
            Some(ByteRange {
                start: 1,
                end: Some(8),
                total: Some(8)
            })
        );
        assert_eq!(h.expires(), Ok(None));
    }

    #[test]
    fn relay_rewrite_pops_and_pushes() {
        let (b, i) = parse(SEND);
        let h = Head::new(&b, &i);
        let mut out = Vec::new();
        assert!(write_relayed_head(&mut out, &h, b"xyz123", 1));
        let want = b"MSRP xyz123 SEND\r\n\
To-Path: msrps://bob.example.net:8145/foo;tcp\r\n\
From-Path: msrps://relay.example.com:9000/jui787s2f;tcp msrps://alice.example.com:9892/98cjs;tcp\r\n\
Message-ID: 87652\r\n\
Byte-Range: 1-8/8\r\n\
Failure-Report: partial\r\n\
Content-Type: text/plain\r\n\
\r\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        let mut out = Vec::new();
        assert!(!write_relayed_head(&mut out, &h, b"x", 2));
        assert!(out.is_empty());
    }

    #[test]
    fn responses_and_reports() {
        let (b, i) = parse(SEND);
        let h = Head::new(&b, &i);
        let r = build_response(&h, 200, &[]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&r),
            "MSRP 6aef 200 OK\r\nTo-Path: msrps://alice.example.com:9892/98cjs;tcp\r\n\
From-Path: msrps://relay.example.com:9000/jui787s2f;tcp\r\n-------6aef$\r\n"
        );
        let rep = build_failure_report(
            &h,
            b"msrps://relay.example.com:9000/jui787s2f;tcp",
            b"rep1",
            481,
        )
        .unwrap();
        let s = String::from_utf8_lossy(&rep);
        assert!(s.starts_with(
            "MSRP rep1 REPORT\r\nTo-Path: msrps://alice.example.com:9892/98cjs;tcp\r\n"
        ));
        assert!(s.contains("Message-ID: 87652\r\nByte-Range: 1-8/8\r\nStatus: 000 481 Session Does Not Exist\r\n-------rep1$\r\n"));
        // the REPORT parses as a valid frame
        let (_, idx) = parse(&rep);
        assert_eq!(idx.headers.len(), 5);
    }
}
