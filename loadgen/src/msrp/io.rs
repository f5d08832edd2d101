//! MSRP transports for the load generator: a byte stream (`msrp://` over
//! TCP, `msrps://` over TLS, RFC 4975 §6) or WebSocket with the `msrp`
//! sub-protocol, where every WebSocket message carries exactly one MSRP
//! chunk (RFC 7977 §5.3).
//!
//! Like [`crate::ws::WsIo`]: one read fills a buffer and every complete
//! chunk in it is handled; queued chunks are written with as few system
//! calls as the socket allows.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::chunk::{self, Chunk, Kind};
use crate::net::{ConnError, Stream, poll_write_queued};
use crate::ws::frame::{self, OP_BINARY, OP_TEXT};
use crate::ws::{Event, WsIo};

/// MSRP over a TCP or TLS byte stream.
pub struct StreamIo {
    stream: Stream,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    need_flush: bool,
}

/// One MSRP connection.
pub enum MsrpIo {
    Stream(StreamIo),
    Ws(Box<WsIo>),
}

/// An owned copy of a chunk (AUTH phase, not the hot path).
#[derive(Debug, Clone)]
pub struct OwnedChunk {
    pub tid: String,
    pub status: Option<u16>,
    pub method: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl OwnedChunk {
    fn of(c: &Chunk<'_>) -> OwnedChunk {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = c
            .headers
            .split(|&b| b == b'\n')
            .filter_map(|l| {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                let i = l.iter().position(|&b| b == b':')?;
                Some((s(&l[..i]), s(l[i + 1..].trim_ascii())))
            })
            .collect();
        let (status, method) = match c.kind {
            Kind::Response { status } => (Some(status), None),
            Kind::Request { method } => (None, Some(s(method))),
        };
        OwnedChunk {
            tid: s(c.tid),
            status,
            method,
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn proto(e: chunk::ParseError) -> ConnError {
    ConnError::new("msrp_protocol", e.to_string())
}

impl StreamIo {
    pub fn new(stream: Stream) -> StreamIo {
        StreamIo {
            stream,
            rbuf: vec![0; 64 * 1024],
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            need_flush: false,
        }
    }

    fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        on: &mut impl FnMut(Chunk<'_>) -> Result<(), ConnError>,
    ) -> Poll<Result<usize, ConnError>> {
        if self.rbuf.len() - self.rlen < 1024 {
            if self.rbuf.len() >= max + 64 * 1024 {
                return Poll::Ready(Err(proto(chunk::ParseError::TooLarge)));
            }
            let n = self.rbuf.len() * 2;
            self.rbuf.resize(n, 0);
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rlen..]);
        match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(ConnError::io(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(ConnError::new(
                        "eof",
                        "server closed the MSRP connection",
                    )));
                }
                self.rlen += n;
                let mut pos = 0;
                let r = loop {
                    match chunk::parse(&self.rbuf[pos..self.rlen], max) {
                        Ok(Some((c, len))) => {
                            if let Err(e) = on(c) {
                                break Err(e);
                            }
                            pos += len;
                        }
                        Ok(None) => break Ok(n),
                        Err(e) => break Err(proto(e)),
                    }
                };
                if pos > 0 {
                    self.rbuf.copy_within(pos..self.rlen, 0);
                    self.rlen -= pos;
                }
                Poll::Ready(r)
            }
        }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        poll_write_queued(
            &mut self.stream,
            &mut self.wbuf,
            &mut self.wpos,
            &mut self.need_flush,
            cx,
        )
    }
}

impl MsrpIo {
    /// Append one chunk of `len` bytes produced by `fill` to the write
    /// queue (one WebSocket message over WebSocket, masked).
    #[inline]
    pub fn queue_with(&mut self, len: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        match self {
            MsrpIo::Stream(s) => {
                let before = s.wbuf.len();
                fill(&mut s.wbuf);
                debug_assert_eq!(s.wbuf.len() - before, len);
            }
            MsrpIo::Ws(w) => {
                let mask = w.mask();
                // Chunks are ASCII here (RFC 7977 §5.3 allows text frames
                // for chunks that are valid UTF-8).
                let start = frame::encode_header(&mut w.wbuf, OP_TEXT, len, mask);
                fill(&mut w.wbuf);
                let written = w.wbuf.len() - start;
                if written != len {
                    // A wrong length would desynchronise the stream; keep
                    // the framing valid even if the caller miscounted.
                    let body = w.wbuf.split_off(start);
                    w.wbuf.truncate(start - frame::client_header_len(len));
                    w.queue(OP_TEXT, &body);
                } else {
                    frame::apply_mask(&mut w.wbuf[start..], mask, 0);
                }
            }
        }
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.queue_with(bytes.len(), |b| b.extend_from_slice(bytes));
    }

    pub fn reserve(&mut self, n: usize) {
        match self {
            MsrpIo::Stream(s) => s.wbuf.reserve(n),
            MsrpIo::Ws(w) => w.wbuf.reserve(n),
        }
    }

    /// Read once and hand every complete chunk to `on`. `Ready(Ok(n))`: n
    /// bytes were read.
    pub fn poll_read_chunks(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        on: &mut impl FnMut(Chunk<'_>) -> Result<(), ConnError>,
    ) -> Poll<Result<usize, ConnError>> {
        match self {
            MsrpIo::Stream(s) => s.poll_read_chunks(cx, max, on),
            MsrpIo::Ws(w) => {
                let mut each = |_: &mut Vec<u8>, ev: Event<'_>| {
                    let Event::Message { opcode, payload } = ev else {
                        return Ok(());
                    };
                    if opcode != OP_TEXT && opcode != OP_BINARY {
                        return Err(ConnError::new("msrp_protocol", "unexpected opcode"));
                    }
                    // RFC 7977 §5.3: exactly one complete chunk per message.
                    match chunk::parse(payload, max) {
                        Ok(Some((c, n))) if n == payload.len() => on(c),
                        Ok(Some(_)) => Err(ConnError::new(
                            "msrp_protocol",
                            "more than one MSRP chunk in a WebSocket message",
                        )),
                        Ok(None) => Err(ConnError::new(
                            "msrp_protocol",
                            "incomplete MSRP chunk in a WebSocket message",
                        )),
                        Err(e) => Err(proto(e)),
                    }
                };
                let r = w.poll_read_frames(cx, &mut each);
                if let Some(code) = w.close_received
                    && !matches!(r, Poll::Ready(Err(_)))
                {
                    return Poll::Ready(Err(ConnError::new(
                        "closed_by_server",
                        format!("WebSocket close frame with status {code}"),
                    )));
                }
                r
            }
        }
    }

    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        match self {
            MsrpIo::Stream(s) => s.poll_write_out(cx),
            MsrpIo::Ws(w) => w.poll_write_out(cx),
        }
    }

    pub fn pending_write(&self) -> usize {
        match self {
            MsrpIo::Stream(s) => s.wbuf.len() - s.wpos,
            MsrpIo::Ws(w) => w.pending_write(),
        }
    }

    /// Write what is queued, then wait for the next chunk (connection
    /// set-up: AUTH). Chunks that arrive together are kept in `early`.
    pub async fn request(
        &mut self,
        bytes: &[u8],
        early: &mut VecDeque<OwnedChunk>,
        max: usize,
    ) -> Result<OwnedChunk, ConnError> {
        self.queue(bytes);
        poll_fn(|cx| {
            loop {
                let mut progress = false;
                match self.poll_write_out(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(w)) => progress |= w,
                    Poll::Pending => {}
                }
                if let Some(c) = early.pop_front() {
                    return Poll::Ready(Ok(c));
                }
                let mut on = |c: Chunk<'_>| {
                    early.push_back(OwnedChunk::of(&c));
                    Ok(())
                };
                match self.poll_read_chunks(cx, max, &mut on) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
                if !progress && early.is_empty() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// End the connection: WebSocket closing handshake, or TCP shutdown.
    pub async fn close(&mut self, wait: Duration) -> Result<(), ConnError> {
        match self {
            MsrpIo::Ws(w) => w.close(1000, wait).await,
            MsrpIo::Stream(s) => {
                let flush = poll_fn(|cx| match s.poll_write_out(cx) {
                    Poll::Ready(Ok(_)) if s.wpos < s.wbuf.len() => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    other => other.map(|r| r.map(|_| ())),
                });
                let _ = tokio::time::timeout(wait, flush).await;
                let _ = tokio::time::timeout(Duration::from_millis(200), s.stream.shutdown()).await;
                Ok(())
            }
        }
    }
}
