//! Streaming, zero-copy MSRP frame parser (RFC 4975 §7, §9).
//!
//! The caller presents the bytes it holds; [`FrameParser::advance`] returns
//! one [`Event`] and how many bytes of the presentation it consumed, or
//! `None` when it needs more bytes (nothing consumed: present the same bytes
//! again with more appended). Events carry lengths relative to the start of
//! the slice passed in that call, so the caller can forward exactly those
//! bytes (no copy).
//!
//! A frame is reported as:
//! 1. [`Event::Head`]: the first line and header block (headers are indexed
//!    in place, see [`FrameParser::head`]); when a body follows, the block
//!    includes the empty line.
//! 2. Zero or more [`Event::Body`]: body bytes, streamed: at most the
//!    length of the end-line pattern is ever held back, so a 100 MiB chunk
//!    passes through with bounded memory.
//! 3. [`Event::End`]: the end-line (`CRLF "-------" transact-id flag CRLF`,
//!    the leading CRLF included when there was a body).
//!
//! Only the exact end-line for the current transaction id ends a frame
//! (RFC 4975 §7.1: the sender ensures it does not occur in the body). It is
//! found with one `memmem::Finder` for the constant `CRLF "-------"`, built
//! once per process, and each candidate's transaction id is compared: a
//! `Finder` per transaction cost more to build (its SIMD prefilter) than the
//! search of a typical chunk, about 6 % of a relayed message's CPU.
//!
//! Malformed frames whose first line carries a usable transaction id are
//! still delimited by their end-line: `Head` reports the problem (so a 400
//! can be answered where a response is possible) and the frame's remaining
//! bytes come as `Body` events up to its `End`. Input that cannot be
//! delimited (no `MSRP ` first line, no transaction id, a first line or
//! header block over the limits without one) is a [`FatalError`]: the
//! connection must be closed.
//!
//! Nothing here panics on any input (see the property tests).

use memchr::memmem;
use std::sync::LazyLock;

/// `CRLF "-------"`: the end-line's constant prefix.
static END_PREFIX: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n-------"));

/// RFC 7230 `tchar` (MSRP header names, RFC 4975 §9 `hname`; its `token`
/// also allows `{` and `}`).
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

/// `"-------"` (RFC 4975 §9 `end-line`).
const DASHES: &[u8] = b"-------";
/// Longest transaction id (RFC 4975 §9: `ident = ALPHANUM 3*31ident-char`).
pub const MAX_TID: usize = 32;
/// Longest end-line with its leading CRLF: CRLF + 7 dashes + tid + flag + CRLF.
pub const MAX_END_LINE: usize = 2 + 7 + MAX_TID + 1 + 2;

/// Parser limits (the RFC sets none; Kamailio uses 4096 bytes of headers,
/// AG msrprelay 64 header lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// First line plus header block, in bytes.
    pub max_head: usize,
    /// Header lines (To-Path and From-Path included).
    pub max_headers: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_head: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// Continuation flag of an end-line (RFC 4975 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `+`: more chunks of this message follow.
    More,
    /// `$`: last chunk of the message.
    Last,
    /// `#`: the sender aborted the message.
    Abort,
}

impl Flag {
    pub fn byte(self) -> u8 {
        match self {
            Flag::More => b'+',
            Flag::Last => b'$',
            Flag::Abort => b'#',
        }
    }
    fn from_byte(b: u8) -> Option<Flag> {
        match b {
            b'+' => Some(Flag::More),
            b'$' => Some(Flag::Last),
            b'#' => Some(Flag::Abort),
            _ => None,
        }
    }
}

/// What is wrong with a delimitable frame's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Transaction id not `ALPHANUM 3*31ident-char`.
    TransactionId,
    /// Neither `method` (1*UPALPHA) nor `3DIGIT [SP comment]`.
    StartLine,
    /// A header line without `name ":"`, or with a bad name.
    HeaderSyntax,
    /// A line starting with whitespace (RFC 4975 §9 has no folding).
    Folding,
    /// To-Path is not the first header, or missing/duplicated.
    ToPath,
    /// From-Path is not the second header, or missing/duplicated.
    FromPath,
    /// More header lines than the limit.
    TooManyHeaders,
    /// Header block over the size limit (delimited by the end-line only).
    TooLarge,
    /// Bytes that are not valid UTF-8 in the header block.
    Encoding,
}

impl Malformed {
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::TransactionId => "bad transaction id",
            Malformed::StartLine => "bad start line",
            Malformed::HeaderSyntax => "bad header",
            Malformed::Folding => "line folding not allowed",
            Malformed::ToPath => "To-Path must be the first header",
            Malformed::FromPath => "From-Path must be the second header",
            Malformed::TooManyHeaders => "too many headers",
            Malformed::TooLarge => "header block too large",
            Malformed::Encoding => "header block is not UTF-8",
        }
    }
}

/// Input that cannot be delimited: close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FatalError {
    #[error("not an MSRP frame")]
    NotMsrp,
    #[error("first line too long")]
    LineTooLong,
    #[error("no usable transaction id")]
    NoTransactionId,
    #[error("parser used after a fatal error")]
    Poisoned,
}

/// One step of parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first `len` bytes are the frame's head. `malformed` is `Some` when
    /// the head breaks RFC 4975 §9; the frame is still delimited.
    Head {
        len: usize,
        malformed: Option<Malformed>,
    },
    /// The first `len` bytes are body (len > 0).
    Body { len: usize },
    /// The first `len` bytes are the end-line; the frame is complete.
    End { len: usize, flag: Flag },
}

/// Known header names (RFC 4975 §9, RFC 4976 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderName {
    ToPath,
    FromPath,
    MessageId,
    ByteRange,
    FailureReport,
    SuccessReport,
    Status,
    ContentType,
    Expires,
    MinExpires,
    MaxExpires,
    UsePath,
    Authorization,
    WwwAuthenticate,
    AuthenticationInfo,
    Other,
}

impl HeaderName {
    /// Number of names (`Other` included).
    pub const COUNT: usize = HeaderName::Other as usize + 1;

    pub fn classify(name: &[u8]) -> HeaderName {
        use HeaderName::*;
        // By length, then one or two fixed-size compares of the lowercased
        // name (header names are case-insensitive, RFC 4975 §9 ABNF
        // strings): the compiler turns each into a few word compares
        // instead of a memcmp call per candidate.
        match name.len() {
            6 => lower_is(name, b"status", Status),
            7 => lower_is(name, b"to-path", ToPath).or_else(|| lower_is(name, b"expires", Expires)),
            8 => lower_is(name, b"use-path", UsePath),
            9 => lower_is(name, b"from-path", FromPath),
            10 => lower_is(name, b"message-id", MessageId)
                .or_else(|| lower_is(name, b"byte-range", ByteRange)),
            11 => lower_is(name, b"min-expires", MinExpires)
                .or_else(|| lower_is(name, b"max-expires", MaxExpires)),
            12 => lower_is(name, b"content-type", ContentType),
            13 => lower_is(name, b"authorization", Authorization),
            14 => lower_is(name, b"failure-report", FailureReport)
                .or_else(|| lower_is(name, b"success-report", SuccessReport)),
            16 => lower_is(name, b"www-authenticate", WwwAuthenticate),
            19 => lower_is(name, b"authentication-info", AuthenticationInfo),
            _ => None,
        }
        .unwrap_or(Other)
    }
}

impl HeaderName {
    /// The known header a header line starts with (its name and the `:`
    /// right after it): the common case, where no byte-by-byte name scan
    /// is needed (a known name is all letters and dashes, so it is a valid
    /// `hname`). Only the lengths of the known names are listed here, by
    /// first letter; [`HeaderName::classify`] holds their spellings.
    fn known_at_start(line: &[u8]) -> Option<(HeaderName, usize)> {
        let at = |len: usize| {
            let name = line.get(..len).filter(|_| line.get(len) == Some(&b':'))?;
            Some((HeaderName::classify(name), len)).filter(|(h, _)| *h != HeaderName::Other)
        };
        match line.first()? | 0x20 {
            b't' | b'e' => at(7),
            b'f' => at(9).or_else(|| at(14)),
            b'm' => at(10).or_else(|| at(11)),
            b'b' => at(10),
            b's' => at(6).or_else(|| at(14)),
            b'c' => at(12),
            b'u' => at(8),
            b'a' => at(13).or_else(|| at(19)),
            b'w' => at(16),
            _ => None,
        }
    }
}

/// `then` when `name` is `lower` in any letter case. Compared a word at
/// a time (overlapping words for lengths that are not a multiple of 8): a
/// name byte is ORed with 0x20 only where `lower` has a letter, so a dash
/// matches only a dash (0x0D | 0x20 would pass for one otherwise).
#[inline(always)]
fn lower_is<const N: usize>(name: &[u8], lower: &[u8; N], then: HeaderName) -> Option<HeaderName> {
    let name: &[u8; N] = name.try_into().ok()?;
    // Word `at..at + 8` of `s` (zero-padded past its end), little-endian.
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        let part = s.get(at..).unwrap_or(&[]);
        let n = part.len().min(8);
        w[..n].copy_from_slice(&part[..n]);
        u64::from_le_bytes(w)
    }
    let same_at = |at: usize| {
        let want = word(lower, at);
        let case = want & 0x4040_4040_4040_4040; // letters have bit 6 set
        word(name, at) | (case >> 1) == want
    };
    if N <= 8 {
        return same_at(0).then_some(then);
    }
    let last = N - 8;
    (same_at(0) && same_at(last) && (N <= 16 || same_at(8))).then_some(then)
}

/// Byte offsets `[start, end)` inside the head block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }
    pub fn get(self, block: &[u8]) -> &[u8] {
        block
            .get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
    pub fn is_empty(self) -> bool {
        self.end <= self.start
    }
}

/// One header line, indexed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderIdx {
    pub name: HeaderName,
    pub name_span: Span,
    pub value: Span,
    /// The whole line without its CRLF.
    pub line: Span,
}

/// Request method or response status of the first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    Request {
        method: Span,
    },
    Response {
        code: u16,
        comment: Span,
    },
    /// Malformed first line (only the transaction id is known).
    Unknown,
}

/// The in-place index of the current frame's head (offsets into the head
/// block reported by [`Event::Head`]).
#[derive(Debug, Clone, Default)]
pub struct HeadIndex {
    pub tid: Span,
    pub kind: Option<StartKind>,
    pub headers: Vec<HeaderIdx>,
    /// Position + 1 in `headers` of the first header of each known name
    /// (0: absent), so a lookup by name costs no scan.
    first: [u8; HeaderName::COUNT],
    /// Bit `name as u32` set: a known name occurs more than once.
    repeated: u32,
    /// The head ends with the empty line: a body follows.
    pub has_body: bool,
}

#[derive(Debug)]
enum State {
    /// Waiting for a frame's first line.
    Idle,
    /// Inside a frame, after the head: scanning for the end-line.
    Body {
        at_start: bool,
    },
    Poisoned,
}

impl HeadIndex {
    /// The first header named `name`.
    pub fn find(&self, name: HeaderName) -> Option<&HeaderIdx> {
        if name == HeaderName::Other || self.headers.len() > usize::from(u8::MAX) {
            // Not recorded: unknown names, positions past 255.
            return self.headers.iter().find(|h| h.name == name);
        }
        match self.first.get(name as usize) {
            Some(&i) if i > 0 => self.headers.get(usize::from(i) - 1),
            _ => None,
        }
    }
}

/// Streaming parser for one connection's MSRP byte stream.
#[derive(Debug)]
pub struct FrameParser {
    limits: ParserLimits,
    state: State,
    head: HeadIndex,
    /// `CRLF "-------" tid` of the current frame.
    needle: [u8; 2 + 7 + MAX_TID],
    needle_len: usize,
    frames: u64,
    /// The bytes being fed are known to be UTF-8 (see
    /// [`FrameParser::set_input_is_utf8`]).
    input_is_utf8: bool,
    crlf: CrLf,
    cr: Cr,
}

impl FrameParser {
    /// Whether the bytes fed next are already known to be valid UTF-8 (a
    /// WebSocket text message, validated whole by RFC 6455 §8.1): a head
    /// then needs no second check (a head ends at a CRLF, so it is a valid
    /// prefix).
    pub fn set_input_is_utf8(&mut self, yes: bool) {
        self.input_is_utf8 = yes;
    }

    pub fn new(limits: ParserLimits) -> FrameParser {
        FrameParser {
            limits,
            state: State::Idle,
            head: HeadIndex::default(),
            needle: [0; 2 + 7 + MAX_TID],
            needle_len: 0,
            frames: 0,
            input_is_utf8: false,
            crlf: CrLf::new(),
            cr: Cr::new(),
        }
    }

    pub fn limits(&self) -> ParserLimits {
        self.limits
    }

    /// Between frames (a WebSocket message must end here, RFC 7977 §5.1:
    /// one chunk per message).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Index of the most recent head (valid after [`Event::Head`] until the
    /// next one).
    pub fn head(&self) -> &HeadIndex {
        &self.head
    }

    /// Moves the head index out (no copy) while the caller works with it
    /// alongside the parser's connection; give it back with
    /// [`FrameParser::put_head`] so its capacity is reused.
    pub fn take_head(&mut self) -> HeadIndex {
        std::mem::take(&mut self.head)
    }

    pub fn put_head(&mut self, head: HeadIndex) {
        self.head = head;
    }

    /// Transaction id of the frame in progress (or the last one).
    pub fn tid(&self) -> &[u8] {
        self.needle.get(9..self.needle_len).unwrap_or(&[])
    }

    /// Frames completed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The next event from `data` and the bytes it consumed (the event's
    /// `len`), or `Ok(None)` when more bytes are needed.
    pub fn advance(&mut self, data: &[u8]) -> Result<Option<Event>, FatalError> {
        match self.state {
            State::Poisoned => Err(FatalError::Poisoned),
            State::Idle => {
                let r = self.parse_head(data);
                if r.is_err() {
                    self.state = State::Poisoned;
                }
                r
            }
            State::Body { at_start } => Ok(self.scan_body(data, at_start)),
        }
    }

    fn set_tid(&mut self, tid: &[u8]) {
        let n = tid.len().min(MAX_TID);
        self.needle[..2].copy_from_slice(b"\r\n");
        self.needle[2..9].copy_from_slice(DASHES);
        if let (Some(dst), Some(src)) = (self.needle.get_mut(9..9 + n), tid.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.needle_len = 9 + n;
    }

    /// The first position in `hay` where the current end-line pattern
    /// (`CRLF "-------" tid`) occurs, or where a truncated one starts at
    /// the end of `hay` (the caller holds those bytes back).
    ///
    /// Every end-line starts with its CR: a body without CRs (most text
    /// and chat) is scanned with a one-byte search, 4–5 times faster than
    /// the 9-byte one (measured: 40–60 against 215 ns per 4 KiB). A body
    /// with many CRs (CRLF text, binary) would stop that search at each:
    /// after [`CR_MISSES`] of them the 9-byte search takes over.
    fn find_end(&self, hay: &[u8]) -> Option<usize> {
        let needle = self.needle.get(..self.needle_len).unwrap_or(&[]);
        let mut from = 0;
        let mut misses = 0;
        loop {
            let rest = hay.get(from..).unwrap_or(&[]);
            let i = if misses < CR_MISSES {
                self.cr.find(rest)?
            } else {
                END_PREFIX.find(rest)?
            };
            let at = from + i;
            let rest = hay.get(at..).unwrap_or(&[]);
            let n = rest.len().min(needle.len());
            if rest.get(..n) == needle.get(..n) {
                return Some(at);
            }
            misses += 1;
            from = at + 1;
        }
    }

    fn parse_head(&mut self, data: &[u8]) -> Result<Option<Event>, FatalError> {
        // "MSRP" SP (RFC 4975 §9 pMSRP is case-sensitive %x4D.53.52.50).
        let pre = data.len().min(5);
        if data.get(..pre) != b"MSRP ".get(..pre) {
            return Err(FatalError::NotMsrp);
        }
        // First line: "MSRP" SP transact-id SP (method / 3DIGIT [SP comment]).
        let line_cap = data.len().min(self.limits.max_head);
        let Some(lf) = memchr::memchr(b'\n', data.get(..line_cap).unwrap_or(&[])) else {
            if data.len() >= self.limits.max_head {
                return Err(FatalError::LineTooLong);
            }
            // The tid alone may already show the input cannot be delimited.
            if let Some(rest) = data.get(5..) {
                let tid_end = rest
                    .iter()
                    .position(|&b| b == b' ' || b == b'\r')
                    .unwrap_or(rest.len());
                if tid_end > MAX_TID
                    || rest
                        .get(..tid_end)
                        .is_some_and(|t| !t.iter().all(|&b| is_tid_char(b)))
                {
                    return Err(FatalError::NoTransactionId);
                }
            }
            return Ok(None);
        };
        if lf == 0 || data.get(lf - 1) != Some(&b'\r') {
            return Err(FatalError::NotMsrp);
        }
        let first = data.get(5..lf - 1).unwrap_or(&[]);
        let tid_len = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
        let tid = first.get(..tid_len).unwrap_or(&[]);
        if tid.is_empty() || tid.len() > MAX_TID || !tid.iter().all(|&b| is_tid_char(b)) {
            return Err(FatalError::NoTransactionId);
        }
        self.set_tid(tid);
        self.head.tid = Span::new(5, 5 + tid_len);
        self.head.kind = None;
        self.head.headers.clear();
        self.head.first = [0; HeaderName::COUNT];
        self.head.repeated = 0;
        self.head.has_body = false;

        let mut malformed = None;
        // Every character was checked above: only the length and the
        // first character remain of `ident`.
        if tid.len() < 4 || !tid.first().is_some_and(u8::is_ascii_alphanumeric) {
            malformed = Some(Malformed::TransactionId);
        }
        let rest_start = 5 + tid_len + 1;
        let kind = parse_start(first.get(tid_len + 1..), rest_start);
        match kind {
            StartKind::Unknown => {
                malformed.get_or_insert(Malformed::StartLine);
            }
            // The id and a method were checked character by character; a
            // status comment is free text without CR (RFC 4975 §9
            // `utf8text`): a stray CR there would end the line for a
            // lenient next hop.
            StartKind::Response { comment, .. } if comment.get(data).contains(&b'\r') => {
                malformed.get_or_insert(Malformed::StartLine);
            }
            _ => {}
        }
        self.head.kind = Some(kind);

        // Header block: ends at an empty line (a body follows) or at a line
        // that is this transaction's end-line (no body), within the size
        // limit. One walk over the lines finds the end and indexes each
        // header as it passes (the head's length, not a search through the
        // body or the frames after it).
        let first_line_end = lf + 1;
        let cap = data.len().min(self.limits.max_head);
        let window = data.get(..cap).unwrap_or(&[]);
        let end_line = self.needle.get(2..self.needle_len).unwrap_or(&[]);
        let mut pos = first_line_end;
        let mut header_err = None;
        let crlf = &self.crlf;
        let head_end = loop {
            let rest = window.get(pos..).unwrap_or(&[]);
            // Header lines start with a letter: only a line starting with a
            // dash can be the end-line.
            if rest.first() == Some(&b'-') && rest.starts_with(end_line) {
                if rest.len() < end_line.len() + 3 {
                    // The flag and CRLF are not in yet: a head is not
                    // reported (and acted on) before its frame is whole.
                    break None;
                }
                break Some((pos, false));
            }
            // The line ends at its first CR, which must be followed by LF:
            // a CR anywhere else is malformed (RFC 4975 §9 `utf8text`).
            // Searching CR and LF together checks that for free.
            let nl = match crlf.find(rest) {
                None => break None,
                Some(i) if rest.get(i) == Some(&b'\r') && rest.get(i + 1) == Some(&b'\n') => i + 1,
                Some(i) if rest.get(i) == Some(&b'\r') && i + 1 == rest.len() => break None,
                Some(_) => {
                    header_err.get_or_insert(Malformed::HeaderSyntax);
                    match memchr::memchr(b'\n', rest) {
                        Some(nl) => nl,
                        None => break None,
                    }
                }
            };
            if nl == 1 && rest.first() == Some(&b'\r') {
                break Some((pos + 2, true));
            }
            if let Err(m) = index_header_line(&mut self.head, self.limits, rest, pos, nl) {
                header_err.get_or_insert(m);
            }
            pos += nl + 1;
        };
        let Some((head_len, has_body)) = head_end else {
            if data.len() >= self.limits.max_head {
                // Not delimitable as a head: the frame is delimited by its
                // end-line only. Consume the first line; the rest streams.
                self.state = State::Body { at_start: true };
                return Ok(Some(Event::Head {
                    len: first_line_end,
                    malformed: Some(Malformed::TooLarge),
                }));
            }
            return Ok(None);
        };
        self.head.has_body = has_body;
        if let Err(m) = header_err.map_or_else(|| check_paths(&self.head), Err) {
            malformed.get_or_insert(m);
        }
        let head_bytes = data.get(..head_len).unwrap_or(&[]);
        // No NUL (RFC 4975 §9 `utf8text`): one pass over the whole head.
        // (The header lines' CRs were checked as they were found.)
        if memchr::memchr(0, head_bytes).is_some() {
            malformed.get_or_insert(Malformed::HeaderSyntax);
        }
        if !self.input_is_utf8 && simdutf8::basic::from_utf8(head_bytes).is_err() {
            malformed.get_or_insert(Malformed::Encoding);
        }
        self.state = State::Body { at_start: true };
        Ok(Some(Event::Head {
            len: head_len,
            malformed,
        }))
    }

    fn scan_body(&mut self, data: &[u8], at_start: bool) -> Option<Event> {
        let nl = self.needle_len;
        let needle = self.needle.get(..nl).unwrap_or(&[]);
        // A body-less frame (or an empty body right after the empty line):
        // the end-line follows without a CRLF of its own.
        if at_start {
            let bare = needle.get(2..).unwrap_or(&[]);
            let want = bare.len() + 3;
            let n = data.len().min(bare.len());
            if data.get(..n) == bare.get(..n) {
                if data.len() < want {
                    // Possibly the bare end-line: wait for it.
                    return None;
                }
                if let (Some(flag), Some(b"\r\n")) = (
                    data.get(bare.len()).and_then(|&b| Flag::from_byte(b)),
                    data.get(bare.len() + 1..want),
                ) {
                    return Some(self.finish(want, flag));
                }
            }
        }
        let mut from = 0;
        loop {
            let hit = self
                .find_end(data.get(from..).unwrap_or(&[]))
                .map(|i| i + from);
            match hit {
                Some(i) => {
                    let want = i + nl + 3;
                    if data.len() < want {
                        // Need the flag and CRLF to decide.
                        return self.body_upto(i);
                    }
                    let flag = data.get(i + nl).and_then(|&b| Flag::from_byte(b));
                    let crlf = data.get(i + nl + 1..want) == Some(b"\r\n");
                    match (flag, crlf) {
                        (Some(flag), true) => {
                            if i > 0 {
                                self.state = State::Body { at_start: false };
                                return Some(Event::Body { len: i });
                            }
                            return Some(self.finish(want, flag));
                        }
                        _ => from = i + 1, // just body content that looks alike
                    }
                }
                None => {
                    // A match can only start in the last nl-1 bytes.
                    let keep = nl.saturating_sub(1);
                    return self.body_upto(data.len().saturating_sub(keep));
                }
            }
        }
    }

    fn body_upto(&mut self, n: usize) -> Option<Event> {
        if n == 0 {
            return None;
        }
        self.state = State::Body { at_start: false };
        Some(Event::Body { len: n })
    }

    fn finish(&mut self, len: usize, flag: Flag) -> Event {
        self.state = State::Idle;
        self.frames += 1;
        Event::End { len, flag }
    }
}

/// Finds a head line's CR or LF. Built once per connection:
/// `memchr::memchr2` goes through its dispatch and sets up its needles on
/// every (short) header line's search, and building this searcher per head
/// cost a copy of its vectors.
#[derive(Debug)]
struct CrLf {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
}

impl CrLf {
    #[inline]
    fn new() -> CrLf {
        CrLf {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(b'\r', b'\n'),
        }
    }

    #[inline]
    fn find(&self, hay: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(two) = &self.avx2 {
            return two.find(hay);
        }
        memchr::memchr2(b'\r', b'\n', hay)
    }
}

/// CRs in a body that are not its end-line before [`FrameParser::find_end`]
/// switches from the one-byte search to the 9-byte one.
const CR_MISSES: usize = 8;

/// Finds a body's CRs (built once per connection, like [`CrLf`]).
#[derive(Debug)]
struct Cr {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::One>,
}

impl Cr {
    fn new() -> Cr {
        Cr {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::One::new(b'\r'),
        }
    }

    #[inline]
    fn find(&self, hay: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(one) = &self.avx2 {
            return one.find(hay);
        }
        memchr::memchr(b'\r', hay)
    }
}

/// Index one header line: `rest[..nl]` is the line up to its LF, found at
/// offset `pos` of the head block.
fn index_header_line(
    head: &mut HeadIndex,
    limits: ParserLimits,
    rest: &[u8],
    pos: usize,
    nl: usize,
) -> Result<(), Malformed> {
    if nl == 0 || rest.get(nl - 1) != Some(&b'\r') {
        return Err(Malformed::HeaderSyntax);
    }
    if head.headers.len() >= limits.max_headers {
        return Err(Malformed::TooManyHeaders);
    }
    let content_end = nl - 1;
    let line = rest.get(..content_end).unwrap_or(&[]);
    let (name, name_len, vstart, vend) = match HeaderName::known_at_start(line) {
        Some((name, colon)) => {
            let (vs, ve) = header_value(line, colon);
            (name, colon, vs, ve)
        }
        None => {
            let (name_len, vs, ve) = parse_header_line(line)?;
            let name = HeaderName::classify(line.get(..name_len).unwrap_or(&[]));
            (name, name_len, vs, ve)
        }
    };
    if let Some(f) = head.first.get_mut(name as usize)
        && name != HeaderName::Other
    {
        if *f == 0 {
            // Past 255, `find` scans instead.
            *f = u8::try_from(head.headers.len() + 1).unwrap_or(0);
        } else {
            head.repeated |= 1 << name as u32;
        }
    }
    head.headers.push(HeaderIdx {
        name,
        name_span: Span::new(pos, pos + name_len),
        value: Span::new(pos + vstart, pos + vend),
        line: Span::new(pos, pos + content_end),
    });
    Ok(())
}

/// RFC 4975 §9: `headers = To-Path CRLF From-Path CRLF 1*( header CRLF )`,
/// each of the two exactly once (further headers are not required: the
/// RFC's own responses carry none).
fn check_paths(head: &HeadIndex) -> Result<(), Malformed> {
    let hs = &head.headers;
    // Both are recorded in `first` (positions 1 and 2), so a second
    // occurrence of either, anywhere, set its `repeated` bit.
    let once = |n: HeaderName| head.repeated & (1 << n as u32) == 0;
    if hs.first().map(|h| h.name) != Some(HeaderName::ToPath) || !once(HeaderName::ToPath) {
        return Err(Malformed::ToPath);
    }
    if hs.get(1).map(|h| h.name) != Some(HeaderName::FromPath) || !once(HeaderName::FromPath) {
        return Err(Malformed::FromPath);
    }
    Ok(())
}

/// RFC 4975 §9 `ident-char = ALPHANUM / "." / "-" / "+" / "%" / "="`.
pub fn is_tid_char(b: u8) -> bool {
    TID_CHAR[usize::from(b)]
}

const TID_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'%' | b'=');
        i += 1;
    }
    t
};

/// `method / 3DIGIT [SP comment]` after the transaction id (`rest` is what
/// follows the SP; `base` its offset in the head).
fn parse_start(rest: Option<&[u8]>, base: usize) -> StartKind {
    let Some(rest) = rest else {
        return StartKind::Unknown;
    };
    if rest.len() >= 3 && rest.iter().take(3).all(u8::is_ascii_digit) {
        let code = rest
            .iter()
            .take(3)
            .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
        return match rest.get(3) {
            None => StartKind::Response {
                code,
                comment: Span::new(base + 3, base + 3),
            },
            Some(b' ') => StartKind::Response {
                code,
                comment: Span::new(base + 4, base + rest.len()),
            },
            Some(_) => StartKind::Unknown,
        };
    }
    // other-method = 1*UPALPHA
    if !rest.is_empty() && rest.iter().all(u8::is_ascii_uppercase) {
        return StartKind::Request {
            method: Span::new(base, base + rest.len()),
        };
    }
    StartKind::Unknown
}

/// `hname ":" SP hval` (RFC 4975 §9 `ext-header`); returns the name length
/// and the value's trimmed bounds within `line`.
fn parse_header_line(line: &[u8]) -> Result<(usize, usize, usize), Malformed> {
    match line.first() {
        None => return Err(Malformed::HeaderSyntax),
        Some(b' ' | b'\t') => return Err(Malformed::Folding),
        Some(b) if !b.is_ascii_alphabetic() => return Err(Malformed::HeaderSyntax),
        Some(_) => {}
    }
    // hname = ALPHA *token, then ":". One pass: header lines are short, so
    // a table-driven loop beats a memchr call per line.
    let colon = line
        .iter()
        .position(|&b| !TCHAR[usize::from(b)])
        .ok_or(Malformed::HeaderSyntax)?;
    if line.get(colon) != Some(&b':') {
        return Err(Malformed::HeaderSyntax);
    }
    let (vs, ve) = header_value(line, colon);
    Ok((colon, vs, ve))
}

/// The value's trimmed bounds within `line`, whose name ends with the `:`
/// at `colon`.
#[inline(always)]
fn header_value(line: &[u8], colon: usize) -> (usize, usize) {
    let mut vs = colon + 1;
    while line.get(vs).is_some_and(|&b| b == b' ' || b == b'\t') {
        vs += 1;
    }
    let mut ve = line.len();
    while ve > vs && line.get(ve - 1).is_some_and(|&b| b == b' ' || b == b'\t') {
        ve -= 1;
    }
    (vs, ve)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `split` bytes (0 = all at once), as a
    /// reactor would, and returns the events with their bytes.
    pub(crate) fn run(
        input: &[u8],
        split: usize,
        limits: ParserLimits,
    ) -> (Vec<(Event, Vec<u8>)>, Option<FatalError>) {
        let mut p = FrameParser::new(limits);
        let mut held: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match p.advance(&held) {
                Ok(Some(ev)) => {
                    let len = match ev {
                        Event::Head { len, .. } | Event::Body { len } | Event::End { len, .. } => {
                            len
                        }
                    };
                    assert!(
                        len > 0 && len <= held.len(),
                        "bad len {len} of {}",
                        held.len()
                    );
                    out.push((ev, held[..len].to_vec()));
                    held.drain(..len);
                }
                Ok(None) => {
                    if fed >= input.len() {
                        return (out, None);
                    }
                    let n = if split == 0 {
                        input.len()
                    } else {
                        split.min(input.len() - fed)
                    };
                    held.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn body_of(evs: &[(Event, Vec<u8>)]) -> Vec<u8> {
        evs.iter()
            .filter(|(e, _)| matches!(e, Event::Body { .. }))
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    // RFC 4975 §4 (Figure 2) example SEND and its response.
    pub(crate) const SEND: &[u8] = b"MSRP a786hjs2 SEND\r\n\
To-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\r\n\
From-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\r\n\
Message-ID: 87652491\r\n\
Byte-Range: 1-25/25\r\n\
Content-Type: text/plain\r\n\
\r\n\
Hey Bob, are you there?\r\n\
-------a786hjs2$\r\n";

    const OK: &[u8] = b"MSRP a786hjs2 200 OK\r\n\
To-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\r\n\
From-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\r\n\
-------a786hjs2$\r\n";

    #[test]
    fn rfc4975_send_all_splits() {
        for split in [0, 1, 2, 3, 7, 13, 64] {
            let (evs, err) = run(SEND, split, ParserLimits::default());
            assert_eq!(err, None);
            assert!(
                matches!(
                    evs[0].0,
                    Event::Head {
                        malformed: None,
                        ..
                    }
                ),
                "{split}"
            );
            assert_eq!(body_of(&evs), b"Hey Bob, are you there?");
            let (last, bytes) = evs.last().unwrap();
            assert_eq!(
                *last,
                Event::End {
                    len: 20,
                    flag: Flag::Last
                }
            );
            assert_eq!(bytes, b"\r\n-------a786hjs2$\r\n");
            let total: usize = evs.iter().map(|(_, b)| b.len()).sum();
            assert_eq!(total, SEND.len());
        }
    }

    #[test]
    fn head_index_send() {
        let mut p = FrameParser::new(ParserLimits::default());
        let Ok(Some(Event::Head {
            len,
            malformed: None,
        })) = p.advance(SEND)
        else {
            panic!()
        };
        let block = &SEND[..len];
        let h = p.head();
        assert!(h.has_body);
        assert_eq!(h.tid.get(block), b"a786hjs2");
        let Some(StartKind::Request { method }) = h.kind else {
            panic!()
        };
        assert_eq!(method.get(block), b"SEND");
        assert_eq!(h.headers.len(), 5);
        assert_eq!(h.headers[0].name, HeaderName::ToPath);
        assert_eq!(h.headers[1].name, HeaderName::FromPath);
        assert_eq!(h.headers[2].value.get(block), b"87652491");
        assert_eq!(h.headers[4].name, HeaderName::ContentType);
        assert!(block.ends_with(b"text/plain\r\n\r\n"));
    }

    #[test]
    fn header_names_classify_case_insensitively_and_exactly() {
        use HeaderName as H;
        for (name, want) in [
            (&b"To-Path"[..], H::ToPath),
            (b"to-path", H::ToPath),
            (b"TO-PATH", H::ToPath),
            (b"From-Path", H::FromPath),
            (b"Expires", H::Expires),
            (b"Message-Id", H::MessageId),
            (b"Byte-Range", H::ByteRange),
            (b"Min-Expires", H::MinExpires),
            (b"max-expires", H::MaxExpires),
            (b"Failure-Report", H::FailureReport),
            (b"Success-Report", H::SuccessReport),
            (b"WWW-Authenticate", H::WwwAuthenticate),
            (b"Authentication-Info", H::AuthenticationInfo),
            (b"Authorization", H::Authorization),
            (b"Content-Type", H::ContentType),
            (b"Use-Path", H::UsePath),
            (b"Status", H::Status),
            // Same lengths, one character off: not these headers.
            (b"To_Path", H::Other),
            (b"To-Patx", H::Other),
            (b"Expire", H::Other),
            (b"Use-Path-", H::Other),
            (b"", H::Other),
            // A control character is not a dash in disguise.
            (b"To\rPath", H::Other),
        ] {
            assert_eq!(
                HeaderName::classify(name),
                want,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    /// The known-name shortcut agrees with the full header-line parse
    /// (name scan, then classification) wherever it answers.
    #[test]
    fn known_header_names_at_line_start_agree_with_the_full_parse() {
        let slow = |line: &[u8]| {
            parse_header_line(line)
                .ok()
                .map(|(n, ..)| (HeaderName::classify(&line[..n]), n))
        };
        for line in [
            &b"To-Path: msrp://a:1/x;tcp"[..],
            b"to-path:msrp://a:1/x;tcp",
            b"FROM-PATH: x",
            b"Message-ID: 12339sdqwer",
            b"Byte-Range: 1-16/16",
            b"Content-Type: text/plain",
            b"Failure-Report: yes",
            b"Success-Report: no",
            b"Status: 000 200 OK",
            b"Expires: 900",
            b"Min-Expires: 60",
            b"Max-Expires: 3600",
            b"Use-Path: msrp://r:2855/s;tcp",
            b"Authorization: Digest x",
            b"Authentication-Info: y",
            b"WWW-Authenticate: Digest z",
        ] {
            let fast = HeaderName::known_at_start(line);
            assert!(fast.is_some(), "{}", String::from_utf8_lossy(line));
            assert_eq!(fast, slow(line), "{}", String::from_utf8_lossy(line));
        }
        // Not known names: the shortcut declines, the full parse decides.
        for line in [
            &b"To-Pathx: a"[..],
            b"To-Path : a",
            b"To_Path: a",
            b"To\rPath: a",
            b"X-Thing: a",
            b"Status",
            b"",
        ] {
            assert_eq!(
                HeaderName::known_at_start(line),
                None,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_known_name_shortcut_never_disagrees(
            name in proptest::sample::select(vec!["To-Path", "to-path", "From-Path", "Message-ID", "Byte-Range", "Status", "Expires", "Use-Path", "X-Y"]),
            edit in proptest::collection::vec((0usize..20, proptest::sample::select(vec![b'-', b'_', b':', b' ', b'\r', b'A', b'z', b'\t'])), 0..3),
        ) {
            let mut line = format!("{name}: value").into_bytes();
            for (at, b) in edit {
                if let Some(c) = line.get_mut(at) {
                    *c = b;
                }
            }
            if let Some((h, n)) = HeaderName::known_at_start(&line) {
                let (n2, ..) = parse_header_line(&line).expect("a known name parses");
                proptest::prop_assert_eq!(n, n2);
                proptest::prop_assert_eq!(h, HeaderName::classify(&line[..n2]));
            }
        }
    }

    #[test]
    fn response_without_body() {
        let (evs, err) = run(OK, 0, ParserLimits::default());
        assert_eq!(err, None);
        assert_eq!(evs.len(), 2);
        assert!(evs[0].1.ends_with(b";tcp\r\n"));
        assert_eq!(evs[1].1, b"-------a786hjs2$\r\n");
        let mut p = FrameParser::new(ParserLimits::default());
        p.advance(OK).unwrap();
        assert!(matches!(
            p.head().kind,
            Some(StartKind::Response { code: 200, .. })
        ));
    }

    #[test]
    fn kamailio_crasher_is_delimited_and_malformed() {
        // 23 bytes that crash Kamailio's parser.
        let f = b"MSRP abc\r\n-------abc$\r\n";
        assert_eq!(f.len(), 23);
        for split in [0, 1, 5] {
            let (evs, err) = run(f, split, ParserLimits::default());
            assert_eq!(err, None);
            assert!(matches!(
                evs[0].0,
                Event::Head {
                    malformed: Some(_),
                    ..
                }
            ));
            assert!(matches!(
                evs.last().unwrap().0,
                Event::End {
                    flag: Flag::Last,
                    ..
                }
            ));
        }
    }

    #[test]
    fn head_utf8_is_checked_unless_the_input_is_known_utf8() {
        let f = b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nX-A: \xff\r\n-------abcd$\r\n";
        let mut p = FrameParser::new(ParserLimits::default());
        assert!(matches!(
            p.advance(f),
            Ok(Some(Event::Head {
                malformed: Some(Malformed::Encoding),
                ..
            }))
        ));
        // Told the input is UTF-8 (a validated WebSocket text message),
        // it does not check a second time.
        let mut p = FrameParser::new(ParserLimits::default());
        p.set_input_is_utf8(true);
        assert!(matches!(
            p.advance(f),
            Ok(Some(Event::Head {
                malformed: None,
                ..
            }))
        ));
    }

    #[test]
    fn a_bodiless_head_waits_for_its_whole_end_line() {
        let f = b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------abcd$\r\n";
        for cut in f.len() - 3..f.len() {
            let mut p = FrameParser::new(ParserLimits::default());
            assert_eq!(p.advance(&f[..cut]), Ok(None), "cut {cut}");
        }
        let mut p = FrameParser::new(ParserLimits::default());
        assert!(matches!(p.advance(f), Ok(Some(Event::Head { .. }))));
    }

    #[test]
    fn bodies_with_many_crs_are_delimited_the_same() {
        // More CRs than the one-byte search tolerates, lookalikes among
        // them, then the end-line: the 9-byte search takes over and finds
        // the same end, wherever the input is split.
        let mut body = Vec::new();
        for i in 0..3 * CR_MISSES {
            body.extend_from_slice(format!("line {i}\r\n-------abc$\r\n").as_bytes());
        }
        body.extend_from_slice(b"last\r\r\n-------abcd+x");
        let mut f =
            b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n\
Content-Type: text/plain\r\n\r\n"
                .to_vec();
        f.extend_from_slice(&body);
        f.extend_from_slice(b"\r\n-------abcd$\r\n");
        for split in [0, 1, 7, 64] {
            let (evs, err) = run(&f, split, ParserLimits::default());
            assert_eq!(err, None);
            assert_eq!(body_of(&evs), body, "split {split}");
            assert!(matches!(
                evs.last().unwrap().0,
                Event::End {
                    flag: Flag::Last,
                    ..
                }
            ));
        }
    }

    #[test]
    fn body_lookalike_end_lines_are_body() {
        let f = b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n\
Content-Type: text/plain\r\n\r\nline\r\n-------abcd\r\n-------abcde$\r\n-------abc$\r\n-------abcd!\r\nend\r\n-------abcd+\r\n";
        for split in [0, 1, 4, 9] {
            let (evs, err) = run(f, split, ParserLimits::default());
            assert_eq!(err, None);
            assert_eq!(
                body_of(&evs),
                b"line\r\n-------abcd\r\n-------abcde$\r\n-------abc$\r\n-------abcd!\r\nend"
            );
            assert!(matches!(
                evs.last().unwrap().0,
                Event::End {
                    flag: Flag::More,
                    ..
                }
            ));
        }
    }

    #[test]
    fn empty_body_forms() {
        for f in [
            &b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nContent-Type: t/p\r\n\r\n\r\n-------abcd$\r\n"[..],
            &b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nContent-Type: t/p\r\n\r\n-------abcd$\r\n"[..],
        ] {
            let (evs, err) = run(f, 1, ParserLimits::default());
            assert_eq!(err, None);
            assert!(body_of(&evs).is_empty());
            assert!(matches!(evs.last().unwrap().0, Event::End { .. }));
        }
    }

    #[test]
    fn pipelined_frames() {
        let mut s = SEND.to_vec();
        s.extend_from_slice(OK);
        s.extend_from_slice(SEND);
        let (evs, err) = run(&s, 5, ParserLimits::default());
        assert_eq!(err, None);
        assert_eq!(
            evs.iter()
                .filter(|(e, _)| matches!(e, Event::End { .. }))
                .count(),
            3
        );
    }

    #[test]
    fn fatal_inputs() {
        let l = ParserLimits::default();
        assert_eq!(
            run(b"GET / HTTP/1.1\r\n\r\n", 0, l).1,
            Some(FatalError::NotMsrp)
        );
        assert_eq!(
            run(b"msrp abcd SEND\r\n", 0, l).1,
            Some(FatalError::NotMsrp)
        );
        assert_eq!(
            run(b"MSRP  SEND\r\n", 0, l).1,
            Some(FatalError::NoTransactionId)
        );
        assert_eq!(
            run(b"MSRP ab\"cd SEND\r\n", 0, l).1,
            Some(FatalError::NoTransactionId)
        );
        assert_eq!(run(b"MSRP abcd SEND\n", 0, l).1, Some(FatalError::NotMsrp));
        let long = [b"MSRP abcd ".as_slice(), &[b'A'; 20000]].concat();
        assert_eq!(run(&long, 0, l).1, Some(FatalError::LineTooLong));
    }

    #[test]
    fn malformed_heads() {
        let l = ParserLimits::default();
        let cases: &[(&[u8], Malformed)] = &[
            (b"MSRP abcd SEND\r\nFrom-Path: msrp://b:2/y;tcp\r\nTo-Path: msrp://a:1/x;tcp\r\n-------abcd$\r\n", Malformed::ToPath),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\n-------abcd$\r\n", Malformed::FromPath),
            // Each exactly once (RFC 4975 §9), whatever the spelling of the
            // repeat and wherever it is.
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nMessage-ID: m\r\nto-path: msrp://c:3/z;tcp\r\n-------abcd$\r\n", Malformed::ToPath),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nFROM-PATH: msrp://c:3/z;tcp\r\n-------abcd$\r\n", Malformed::FromPath),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\n msrp://c:3/z;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------abcd$\r\n", Malformed::Folding),
            (b"MSRP abcd send\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------abcd$\r\n", Malformed::StartLine),
            (b"MSRP .bcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------.bcd$\r\n", Malformed::TransactionId),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nNoColon\r\n-------abcd$\r\n", Malformed::HeaderSyntax),
            // A CR or a NUL in the first line (a status comment too).
            (b"MSRP abcd SEND\0\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------abcd$\r\n", Malformed::StartLine),
            (b"MSRP abcd 200 O\rK\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------abcd$\r\n", Malformed::StartLine),
            // A CR or a NUL inside a value, with and without a body.
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nX-A: a\rb\r\n-------abcd$\r\n", Malformed::HeaderSyntax),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nX-A: a\0b\r\n\r\nbody\r\n-------abcd$\r\n", Malformed::HeaderSyntax),
            (b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nContent-Type: text/plain\r\r\n\r\nbody\r\n-------abcd$\r\n", Malformed::HeaderSyntax),
        ];
        for (f, want) in cases {
            let (evs, err) = run(f, 0, l);
            assert_eq!(err, None, "{}", String::from_utf8_lossy(f));
            assert_eq!(
                evs[0].0,
                Event::Head {
                    len: evs[0].1.len(),
                    malformed: Some(*want)
                },
                "{}",
                String::from_utf8_lossy(f)
            );
            assert!(matches!(evs.last().unwrap().0, Event::End { .. }));
        }
        let many = (0..70)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>();
        let f = format!(
            "MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n{many}-------abcd$\r\n"
        );
        let (evs, _) = run(f.as_bytes(), 0, l);
        assert_eq!(
            evs[0].0,
            Event::Head {
                len: evs[0].1.len(),
                malformed: Some(Malformed::TooManyHeaders)
            }
        );
    }

    #[test]
    fn oversized_head_is_skipped_to_end_line() {
        let l = ParserLimits {
            max_head: 256,
            max_headers: 64,
        };
        let big = "X-Pad: ".to_string() + &"p".repeat(1000) + "\r\n";
        let f = format!(
            "MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n{big}-------abcd$\r\nMSRP efgh SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\n-------efgh$\r\n"
        );
        let (evs, err) = run(f.as_bytes(), 100, l);
        assert_eq!(err, None);
        assert!(matches!(
            evs[0].0,
            Event::Head {
                malformed: Some(Malformed::TooLarge),
                ..
            }
        ));
        let heads: Vec<_> = evs
            .iter()
            .filter(|(e, _)| matches!(e, Event::Head { .. }))
            .collect();
        assert_eq!(heads.len(), 2);
        assert!(matches!(
            heads[1].0,
            Event::Head {
                malformed: None,
                ..
            }
        ));
    }

    #[test]
    fn large_body_streams_with_bounded_holdback() {
        let mut p = FrameParser::new(ParserLimits::default());
        let head = b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nContent-Type: a/b\r\n\r\n";
        let Ok(Some(Event::Head { len, .. })) = p.advance(head) else {
            panic!()
        };
        assert_eq!(len, head.len());
        let chunk = vec![b'-'; 65536];
        let mut total = 0usize;
        let mut held = Vec::new();
        for _ in 0..64 {
            held.extend_from_slice(&chunk);
            while let Ok(Some(Event::Body { len })) = p.advance(&held) {
                total += len;
                held.drain(..len);
            }
            assert!(held.len() < MAX_END_LINE);
        }
        held.extend_from_slice(b"\r\n-------abcd$\r\n");
        loop {
            match p.advance(&held).unwrap() {
                Some(Event::Body { len }) => {
                    total += len;
                    held.drain(..len);
                }
                Some(Event::End { len, flag }) => {
                    assert_eq!(flag, Flag::Last);
                    held.drain(..len);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(total, 64 * 65536);
        assert!(held.is_empty() && p.at_boundary());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), split in 0usize..40) {
            let _ = run(&data, split, ParserLimits { max_head: 300, max_headers: 8 });
            let mut with_prefix = b"MSRP abcd ".to_vec();
            with_prefix.extend_from_slice(&data);
            let _ = run(&with_prefix, split, ParserLimits { max_head: 300, max_headers: 8 });
        }

        #[test]
        fn split_points_do_not_change_events(split in 1usize..200, body in proptest::collection::vec(proptest::sample::select(vec![b'-', b'\r', b'\n', b'a', b'b', b'c', b'd', b'$', b'+']), 0..300)) {
            let mut f = b"MSRP abcd SEND\r\nTo-Path: msrp://a:1/x;tcp\r\nFrom-Path: msrp://b:2/y;tcp\r\nContent-Type: a/b\r\n\r\n".to_vec();
            f.extend_from_slice(&body);
            f.extend_from_slice(b"\r\n-------abcd#\r\n");
            let (whole, e1) = run(&f, 0, ParserLimits::default());
            let (parts, e2) = run(&f, split, ParserLimits::default());
            proptest::prop_assert_eq!(e1, None);
            proptest::prop_assert_eq!(e2, None);
            proptest::prop_assert_eq!(body_of(&whole), body_of(&parts));
            let ends = |v: &Vec<(Event, Vec<u8>)>| v.iter().filter(|(e, _)| matches!(e, Event::End{..})).count();
            proptest::prop_assert!(ends(&whole) >= 1);
            proptest::prop_assert_eq!(ends(&whole), ends(&parts));
        }
    }
}
