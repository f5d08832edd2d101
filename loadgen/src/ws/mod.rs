//! WebSocket client side: framer, handshake, and [`WsIo`], the buffered
//! frame I/O every scenario drives from its own poll loop.

pub mod frame;
pub mod handshake;

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::net::{ConnError, Stream, Upgraded, poll_write_queued};
use crate::rng::Rng;
use frame::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};

/// A frame the scenario sees (ping and close are handled by [`WsIo`]).
pub enum Event<'a> {
    /// A complete data message (reassembled if it was fragmented).
    Message {
        opcode: u8,
        payload: &'a [u8],
    },
    Pong(&'a [u8]),
}

/// Buffered WebSocket frame I/O over one connection.
///
/// Reads go into one growable buffer and every complete frame in it is
/// parsed per read; writes are queued into one buffer and written with as
/// few system calls as the socket allows.
pub struct WsIo {
    pub stream: Stream,
    rbuf: Vec<u8>,
    rlen: usize,
    pub wbuf: Vec<u8>,
    wpos: usize,
    need_flush: bool,
    pub rng: Rng,
    max_payload: usize,
    frag: Option<(u8, Vec<u8>)>,
    pub close_sent: bool,
    /// Status code of the server's close frame (1005 when it had none).
    pub close_received: Option<u16>,
    pub pings_received: u64,
    /// Bytes that arrived with the handshake response, not parsed yet.
    unparsed: bool,
}

impl WsIo {
    pub fn new(up: Upgraded, rng: Rng, read_buf: usize, max_payload: usize) -> WsIo {
        let mut rbuf = up.leftover;
        let rlen = rbuf.len();
        rbuf.resize(read_buf.max(rlen + 64), 0);
        WsIo {
            stream: up.stream,
            rbuf,
            rlen,
            wbuf: Vec::new(),
            wpos: 0,
            need_flush: false,
            rng,
            max_payload,
            frag: None,
            close_sent: false,
            close_received: None,
            pings_received: 0,
            unparsed: rlen > 0,
        }
    }

    /// A fresh masking key.
    #[inline]
    pub fn mask(&mut self) -> [u8; 4] {
        self.rng.next_u32().to_ne_bytes()
    }

    /// Queue a masked frame.
    pub fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let m = self.mask();
        frame::encode(&mut self.wbuf, opcode, payload, m);
    }

    /// Bytes queued but not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Read once (if the socket has data) and handle every complete frame.
    /// `Ready(Ok(n))`: n bytes were read (0 only if the server closed after
    /// its close frame). `on` receives data messages and pongs together
    /// with the write buffer, to queue frames in reply.
    pub fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        on: &mut impl FnMut(&mut Vec<u8>, Event<'_>) -> Result<(), ConnError>,
    ) -> Poll<Result<usize, ConnError>> {
        if self.unparsed {
            self.unparsed = false;
            let mut buf = std::mem::take(&mut self.rbuf);
            let r = self.parse_frames(&mut buf, on);
            self.rbuf = buf;
            return Poll::Ready(r.map(|_| self.rlen.max(1)));
        }
        if self.rbuf.len() - self.rlen < 512 {
            let n = (self.rbuf.len() * 2).max(4096);
            self.rbuf.resize(n, 0);
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rlen..]);
        match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(ConnError::io(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(if self.close_received.is_some() {
                        Ok(0)
                    } else {
                        Err(ConnError::new(
                            "eof",
                            "server closed the TCP connection without a close frame",
                        ))
                    });
                }
                self.rlen += n;
                let mut buf = std::mem::take(&mut self.rbuf);
                let r = self.parse_frames(&mut buf, on);
                self.rbuf = buf;
                Poll::Ready(r.map(|_| n))
            }
        }
    }

    fn parse_frames(
        &mut self,
        buf: &mut Vec<u8>,
        on: &mut impl FnMut(&mut Vec<u8>, Event<'_>) -> Result<(), ConnError>,
    ) -> Result<usize, ConnError> {
        let mut pos = 0;
        let mut frames = 0;
        let end = self.rlen;
        let proto = |e: frame::FrameError| ConnError::new("protocol", e.to_string());
        while let Some(h) = frame::decode(&mut buf[pos..end], self.max_payload).map_err(proto)? {
            frames += 1;
            let payload = &buf[pos + h.header_len..pos + h.frame_len()];
            if h.masked {
                return Err(ConnError::new("protocol", "server sent a masked frame"));
            }
            if self.close_received.is_some() {
                return Err(ConnError::new("protocol", "frame after the close frame"));
            }
            match h.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.frag.is_some() {
                        return Err(ConnError::new(
                            "protocol",
                            "new data frame inside a fragmented message",
                        ));
                    }
                    if h.fin {
                        on(
                            &mut self.wbuf,
                            Event::Message {
                                opcode: h.opcode,
                                payload,
                            },
                        )?;
                    } else {
                        self.frag = Some((h.opcode, payload.to_vec()));
                    }
                }
                OP_CONT => {
                    let Some((op, mut acc)) = self.frag.take() else {
                        return Err(ConnError::new("protocol", "continuation without a start"));
                    };
                    if acc.len() + payload.len() > self.max_payload {
                        return Err(ConnError::new("protocol", "message too large"));
                    }
                    acc.extend_from_slice(payload);
                    if h.fin {
                        on(
                            &mut self.wbuf,
                            Event::Message {
                                opcode: op,
                                payload: &acc,
                            },
                        )?;
                    } else {
                        self.frag = Some((op, acc));
                    }
                }
                OP_PING => {
                    self.pings_received += 1;
                    if !self.close_sent {
                        let m = self.rng.next_u32().to_ne_bytes();
                        frame::encode(&mut self.wbuf, OP_PONG, payload, m);
                    }
                }
                OP_PONG => on(&mut self.wbuf, Event::Pong(payload))?,
                OP_CLOSE => {
                    let code = frame::close_code(payload).unwrap_or(1005);
                    self.close_received = Some(code);
                    if !self.close_sent {
                        // Echo the status code (RFC 6455 §5.5.1).
                        let reply = if code == 1005 {
                            Vec::new()
                        } else {
                            code.to_be_bytes().to_vec()
                        };
                        let m = self.rng.next_u32().to_ne_bytes();
                        frame::encode(&mut self.wbuf, OP_CLOSE, &reply, m);
                        self.close_sent = true;
                    }
                }
                _ => unreachable!("parse_header rejects other opcodes"),
            }
            pos += h.frame_len();
        }
        if pos > 0 {
            buf.copy_within(pos..end, 0);
            self.rlen = end - pos;
        }
        // Make room for a large frame whose header is already here.
        if let Ok(Some(h)) = frame::parse_header(&buf[..self.rlen], self.max_payload)
            && h.frame_len() > buf.len()
        {
            buf.resize(h.frame_len().max(buf.len() * 2), 0);
        }
        Ok(frames)
    }

    /// Write queued bytes. `Ready(Ok(true))`: something was written;
    /// `Ready(Ok(false))`: nothing was pending; `Pending`: the socket is
    /// full (waker registered).
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnError>> {
        poll_write_queued(
            &mut self.stream,
            &mut self.wbuf,
            &mut self.wpos,
            &mut self.need_flush,
            cx,
        )
    }

    /// Closing handshake: send a close frame (unless already sent), wait up
    /// to `wait` for the server's, then shut the socket down.
    pub async fn close(&mut self, code: u16, wait: Duration) -> Result<(), ConnError> {
        if !self.close_sent {
            let m = self.mask();
            frame::encode(&mut self.wbuf, OP_CLOSE, &frame::close_payload(code, ""), m);
            self.close_sent = true;
        }
        let handshake = poll_fn(|cx| {
            let mut ignore = |_: &mut Vec<u8>, _: Event<'_>| Ok(());
            loop {
                let mut progress = false;
                match self.poll_write_out(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(w)) => progress |= w,
                    Poll::Pending => {}
                }
                if self.close_received.is_some() && self.pending_write() == 0 && !self.need_flush {
                    return Poll::Ready(Ok(()));
                }
                match self.poll_read_frames(cx, &mut ignore) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => {}
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        });
        let r = match tokio::time::timeout(wait, handshake).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::new(
                "close_timeout",
                format!("no close frame from the server within {wait:?}"),
            )),
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), self.stream.shutdown()).await;
        r
    }
}
