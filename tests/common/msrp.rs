//! An independent MSRP test client (RFC 4975, RFC 4976, RFC 7977): it
//! writes frames as text from the RFC 4975 §9 grammar and reads them with
//! its own small parser — never the relay's — over TCP, TLS (`msrps`), and
//! WebSocket (`ws`/`wss`, sub-protocol `msrp`, one chunk per message, RFC
//! 7977 §5.3). Digest credentials for AUTH are computed here too (RFC 2617
//! §3.2.2 with method `AUTH` and the relay's URI, RFC 4976 §5.1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{IO_TIMEOUT, Server, ServerConfig, Ws, tcp, tls_connect, within, ws_client_over};

pub const REALM: &str = "rtedge.test";
pub const USERS: &[(&str, &str)] = &[("alice", "wonderland"), ("bob", "builder")];

/// A short window in which "nothing arrives" is checked. Not a
/// performance bound: the claims it serves are "never answered".
pub const QUIET: Duration = Duration::from_millis(300);

/// One relay with one `msrp` (TCP) listener and a `ws` listener for the
/// `msrp` sub-protocol.
pub fn relay(workers: u32) -> Server {
    relay_config(workers).start()
}

/// The configuration [`relay`] starts, for tests that add `[msrp]` keys.
pub fn relay_config(workers: u32) -> ServerConfig {
    ServerConfig::new()
        .workers(workers)
        .listen_msrp()
        .listen_ws()
        .sub_protocols(&["msrp"])
        .msrp_users(REALM, USERS)
}

pub fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One MSRP frame as read by the test's own parser.
#[derive(Debug, Clone)]
pub struct Frame {
    pub first: String,
    pub tid: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub flag: u8,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every header name, in order.
    pub fn names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
    pub fn status(&self) -> Option<u16> {
        let mut it = self.first.split(' ');
        it.next();
        it.next();
        it.next()?.parse().ok()
    }
    pub fn method(&self) -> Option<&str> {
        let m = self.first.split(' ').nth(2)?;
        m.bytes().all(|b| b.is_ascii_uppercase()).then_some(m)
    }
}

/// Parses one frame from the front of `buf`; `None` if incomplete. Only
/// `CRLF "-------" tid flag CRLF` ends a frame (RFC 4975 §7.1).
pub fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let first = String::from_utf8(buf[..eol].to_vec()).expect("utf-8 first line");
    let tid = first.split(' ').nth(1).expect("transaction id").to_string();
    let marker = format!("\r\n-------{tid}");
    let mut from = eol;
    let end = loop {
        let rel = buf[from..]
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())?;
        let at = from + rel;
        let after = at + marker.len();
        if buf.len() < after + 3 {
            return None;
        }
        if matches!(buf[after], b'$' | b'+' | b'#') && &buf[after + 1..after + 3] == b"\r\n" {
            break at;
        }
        from = at + 2;
    };
    let flag = buf[end + marker.len()];
    let inner = &buf[eol + 2..end + 2];
    let (head, body) = match inner.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (&inner[..p + 2], inner[p + 4..inner.len() - 2].to_vec()),
        None => (inner, Vec::new()),
    };
    let headers = String::from_utf8(head.to_vec())
        .expect("utf-8 headers")
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Some((
        Frame {
            first,
            tid,
            headers,
            body,
            flag,
        },
        end + marker.len() + 3,
    ))
}

/// Any byte stream (TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Link {
    Stream(Box<dyn Io>),
    Ws(Box<Ws<Box<dyn Io>>>),
}

/// An MSRP client on one connection to the relay.
pub struct Client {
    link: Link,
    buf: Vec<u8>,
    local: SocketAddr,
    /// The URI to AUTH to: the relay's authority with this transport
    /// (`msrps` over TLS, `;ws` over WebSocket; RFC 7977 §5).
    pub auth_uri: String,
    /// The relay URI from Use-Path after a successful AUTH.
    pub relay_uri: String,
    /// Our own URI (From-Path).
    pub uri: String,
    /// Over WebSocket: whether the last message read was text (else
    /// binary).
    pub last_text: Option<bool>,
}

impl Client {
    fn new(link: Link, local: SocketAddr, auth_uri: String, uri: String) -> Client {
        Client {
            link,
            buf: Vec::new(),
            local,
            auth_uri,
            relay_uri: String::new(),
            uri,
            last_text: None,
        }
    }

    /// MSRP over TCP (`msrp:` URIs, transport `tcp`).
    pub async fn connect(addr: SocketAddr, name: &str) -> Client {
        let s = tcp(addr).await;
        let local = s.local_addr().expect("local addr");
        Client::new(
            Link::Stream(Box::new(s)),
            local,
            format!("msrp://{addr};tcp"),
            format!("msrp://127.0.0.1:9/{name}s1;tcp"),
        )
    }

    /// MSRP over TLS (`msrps:` URIs, transport `tcp`).
    pub async fn connect_tls(addr: SocketAddr, name: &str, cert_der: &[u8]) -> Client {
        let s = tls_connect(addr, cert_der).await;
        let local = s.get_ref().0.local_addr().expect("local addr");
        Client::new(
            Link::Stream(Box::new(s)),
            local,
            format!("msrps://{addr};tcp"),
            format!("msrps://127.0.0.1:9/{name}s1;tcp"),
        )
    }

    /// MSRP over a plain WebSocket: the client's own URI has an
    /// unresolvable `.invalid` host and transport `ws` (RFC 7977 §5.2).
    pub async fn connect_ws(addr: SocketAddr, name: &str) -> Client {
        let s = tcp(addr).await;
        let local = s.local_addr().expect("local addr");
        let io: Box<dyn Io> = Box::new(s);
        let ws = ws_client_over(io, &format!("ws://{addr}/"), Some("msrp")).await;
        Client::new(
            Link::Ws(Box::new(ws)),
            local,
            format!("msrp://{addr};ws"),
            format!("msrp://{name}.invalid:2855/{name}s1;ws"),
        )
    }

    /// MSRP over a secure WebSocket (scheme `msrps`, transport `ws`).
    pub async fn connect_wss(addr: SocketAddr, name: &str, cert_der: &[u8]) -> Client {
        let s = tls_connect(addr, cert_der).await;
        let local = s.get_ref().0.local_addr().expect("local addr");
        let io: Box<dyn Io> = Box::new(s);
        let ws = ws_client_over(
            io,
            &format!("wss://localhost:{}/", addr.port()),
            Some("msrp"),
        )
        .await;
        Client::new(
            Link::Ws(Box::new(ws)),
            local,
            format!("msrps://{addr};ws"),
            format!("msrps://{name}.invalid:2855/{name}s1;ws"),
        )
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The relay session id of our Use-Path URI (its first two hex digits
    /// name the owning core).
    pub fn session(&self) -> String {
        session_of(&self.relay_uri)
    }

    /// Writes `bytes`: on a byte stream as they are, on a WebSocket as one
    /// message (text when UTF-8).
    pub async fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Stream(s) => within("msrp write", async {
                s.write_all(bytes).await?;
                s.flush().await
            })
            .await
            .expect("write"),
            Link::Ws(ws) => {
                let m = match std::str::from_utf8(bytes) {
                    Ok(t) => Message::Text(t.to_string().into()),
                    Err(_) => Message::Binary(bytes.to_vec().into()),
                };
                within("ws write", ws.send(m)).await.expect("ws write");
            }
        }
    }

    /// Over WebSocket: writes `msg` as the frames `fragments` cut it into
    /// (see [`ws_frames`]), putting the bytes on the wire in parts cut at
    /// the offsets `cuts`, each part its own write after a short pause (so
    /// the relay reads them apart).
    pub async fn send_ws_cut(&mut self, msg: &[u8], fragments: &[usize], cuts: &[usize]) {
        let wire = ws_frames(msg, fragments);
        let mut at = 0;
        for end in cuts.iter().copied().chain(std::iter::once(wire.len())) {
            self.send_ws_raw(&wire[at..end]).await;
            at = end;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// Over WebSocket: puts `bytes` on the wire as they are (frames made
    /// with [`ws_frames`], or part of them).
    pub async fn send_ws_raw(&mut self, bytes: &[u8]) {
        let Link::Ws(ws) = &mut self.link else {
            panic!("send_ws_raw: not a WebSocket client");
        };
        let io = ws.get_mut();
        within("ws raw write", async {
            io.write_all(bytes).await?;
            io.flush().await
        })
        .await
        .expect("write");
    }

    /// The next frame, or `None` when nothing complete arrives within `d`.
    pub async fn read_within(&mut self, d: Duration) -> Option<Frame> {
        let deadline = Instant::now() + d;
        loop {
            if let Some((f, n)) = parse(&self.buf) {
                self.buf.drain(..n);
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match &mut self.link {
                Link::Stream(s) => {
                    let mut chunk = [0u8; 65536];
                    let n = tokio::time::timeout(left, s.read(&mut chunk))
                        .await
                        .ok()?
                        .expect("read");
                    assert!(
                        n > 0,
                        "connection closed; buffered: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Link::Ws(ws) => {
                    let m = tokio::time::timeout(left, ws.next()).await.ok()?;
                    let data = match m {
                        Some(Ok(Message::Text(t))) => {
                            self.last_text = Some(true);
                            t.as_bytes().to_vec()
                        }
                        Some(Ok(Message::Binary(b))) => {
                            self.last_text = Some(false);
                            b.to_vec()
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        other => panic!("websocket: expected an MSRP message, got {other:?}"),
                    };
                    // RFC 7977 §5.3: one whole chunk per WebSocket message.
                    assert!(self.buf.is_empty());
                    let (f, n) = parse(&data).unwrap_or_else(|| {
                        panic!(
                            "not one complete MSRP frame: {:?}",
                            String::from_utf8_lossy(&data)
                        )
                    });
                    assert_eq!(n, data.len(), "more than one frame in a message");
                    return Some(f);
                }
            }
        }
    }

    /// The next frame (bounded by [`IO_TIMEOUT`]).
    pub async fn read(&mut self) -> Frame {
        match self.read_within(IO_TIMEOUT).await {
            Some(f) => f,
            None => panic!(
                "timed out reading an MSRP frame; buffered: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Expects nothing to arrive for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match &mut self.link {
            Link::Stream(s) => {
                let mut chunk = [0u8; 4096];
                if let Ok(r) = tokio::time::timeout(d, s.read(&mut chunk)).await {
                    let n = r.expect("read");
                    panic!(
                        "unexpected bytes: {:?}",
                        String::from_utf8_lossy(&chunk[..n])
                    );
                }
            }
            Link::Ws(ws) => {
                let deadline = Instant::now() + d;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, ws.next()).await {
                        Err(_) => return,
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                        Ok(other) => panic!("unexpected message: {other:?}"),
                    }
                }
            }
        }
    }

    /// Reads until the relay closes the connection (EOF, reset, or a
    /// WebSocket Close); returns what arrived first.
    pub async fn expect_closed(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        match &mut self.link {
            Link::Stream(s) => {
                let mut chunk = [0u8; 4096];
                loop {
                    match within("msrp close", s.read(&mut chunk)).await {
                        Ok(0) | Err(_) => return all,
                        Ok(n) => all.extend_from_slice(&chunk[..n]),
                    }
                }
            }
            Link::Ws(ws) => loop {
                match within("ws close", ws.next()).await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return all,
                    Some(Ok(Message::Text(t))) => all.extend_from_slice(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => all.extend_from_slice(&b),
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Over WebSocket: reads until the relay's Close and returns its code
    /// (`None`: no code, or the connection ended without a Close).
    pub async fn close_code(&mut self) -> Option<u16> {
        let Link::Ws(ws) = &mut self.link else {
            panic!("close_code: not a WebSocket client");
        };
        loop {
            match within("ws close", ws.next()).await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// AUTH without credentials (expects 401), then with them for
    /// `user`/`password` and `expires`: the final response.
    pub async fn auth_with(&mut self, user: &str, password: &str, expires: Option<u64>) -> Frame {
        let (relay, from) = (self.auth_uri.clone(), self.uri.clone());
        self.send(&auth_frame("a1x9", &relay, &from, None, None))
            .await;
        let r = self.read().await;
        assert_eq!(r.status(), Some(401), "{r:?}");
        let ch = r.header("WWW-Authenticate").expect("WWW-Authenticate");
        let nonce = param(ch, "nonce");
        let authz = authorization(user, password, &nonce, &relay, 1);
        self.send(&auth_frame("a2x9", &relay, &from, Some(&authz), expires))
            .await;
        let r = self.read().await;
        assert_eq!(r.tid, "a2x9");
        r
    }

    /// A successful AUTH: remembers the Use-Path URI.
    pub async fn authed_as(&mut self, user: &str, password: &str) {
        let r = self.auth_with(user, password, None).await;
        assert_eq!(r.status(), Some(200), "{r:?}");
        self.relay_uri = r.header("Use-Path").expect("Use-Path").to_string();
    }
}

/// A TCP client that AUTHed as `user`.
pub async fn authed(addr: SocketAddr, name: &str, user: &str, password: &str) -> Client {
    let mut c = Client::connect(addr, name).await;
    c.authed_as(user, password).await;
    c
}

/// Connects and AUTHs on `addr` until the session lands on a core other
/// than `not_core` (SO_REUSEPORT spreads connections by a hash of the
/// 4-tuple; the session id's first two hex digits name the owning core).
pub async fn client_not_on(
    addr: std::net::SocketAddr,
    name: &str,
    user: &str,
    pw: &str,
    not_core: &str,
) -> Client {
    for _ in 0..64 {
        let mut c = Client::connect(addr, name).await;
        c.authed_as(user, pw).await;
        if &c.session()[..2] != not_core {
            return c;
        }
    }
    panic!("64 connections all landed on core {not_core}");
}

/// The session id of a relay URI.
pub fn session_of(relay_uri: &str) -> String {
    let tail = relay_uri.rsplit('/').next().expect("path");
    tail.split(';').next().expect("session id").to_string()
}

/// An AUTH request (RFC 4976 §3 / §7: To-Path is the relay's URI alone).
pub fn auth_frame(
    tid: &str,
    relay: &str,
    from: &str,
    authz: Option<&str>,
    expires: Option<u64>,
) -> Vec<u8> {
    let mut s = format!("MSRP {tid} AUTH\r\nTo-Path: {relay}\r\nFrom-Path: {from}\r\n");
    if let Some(a) = authz {
        s.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(e) = expires {
        s.push_str(&format!("Expires: {e}\r\n"));
    }
    s.push_str(&format!("-------{tid}$\r\n"));
    s.into_bytes()
}

/// A quoted parameter of a challenge (`name="value"`).
pub fn param(challenge: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let i = challenge.find(&key).expect("challenge parameter") + key.len();
    challenge[i..i + challenge[i..].find('"').expect("closing quote")].to_string()
}

/// Digest credentials (RFC 2617 §3.2.2, qop=auth) for method AUTH and
/// digest-uri `uri` (RFC 4976 §5.1), nonce count `nc`.
pub fn authorization(user: &str, password: &str, nonce: &str, uri: &str, nc: u32) -> String {
    let ha1 = md5_hex(&format!("{user}:{REALM}:{password}"));
    let ha2 = md5_hex(&format!("AUTH:{uri}"));
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\""
    )
}

/// A SEND (RFC 4975 §7.1) carrying `body` in one chunk.
pub fn send_frame(tid: &str, to: &[&str], from: &str, msg_id: &str, body: &[u8]) -> Vec<u8> {
    send_frame_with(tid, to, from, msg_id, &[], body)
}

/// A SEND with `extra` headers (e.g. `Failure-Report`) before
/// Content-Type, which must be the last header (RFC 4975 §9).
pub fn send_frame_with(
    tid: &str,
    to: &[&str],
    from: &str,
    msg_id: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let whole = Chunk {
        start: 1,
        total: body.len(),
        flag: '$',
    };
    chunk_frame(tid, to, from, msg_id, extra, whole, body)
}

/// Where a chunk's body lies in its message (RFC 4975 §7.1): from byte
/// `start` (1-based) of `total`, with end-line flag `+` (more to come) or
/// `$` (the last).
#[derive(Clone, Copy)]
pub struct Chunk {
    pub start: usize,
    pub total: usize,
    pub flag: char,
}

/// One chunk of message `msg_id` carrying `body`, with `extra` headers
/// before Content-Type.
pub fn chunk_frame(
    tid: &str,
    to: &[&str],
    from: &str,
    msg_id: &str,
    extra: &[(&str, &str)],
    chunk: Chunk,
    body: &[u8],
) -> Vec<u8> {
    let Chunk { start, total, flag } = chunk;
    let mut s = format!(
        "MSRP {tid} SEND\r\nTo-Path: {}\r\nFrom-Path: {from}\r\nMessage-ID: {msg_id}\r\nByte-Range: {start}-{}/{total}\r\n",
        to.join(" "),
        start + body.len() - 1,
    );
    for (n, v) in extra {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("Content-Type: text/plain\r\n\r\n");
    let mut s = s.into_bytes();
    s.extend_from_slice(body);
    s.extend_from_slice(format!("\r\n-------{tid}{flag}\r\n").as_bytes());
    s
}

/// A sends B one SEND through their sessions (`tag` and `n` make its
/// transaction and message ids unique): B gets the body intact, A the
/// relay's 200. The check that a pair still relays.
pub async fn relays_one(a: &mut Client, b: &mut Client, tag: &str, n: usize) {
    let body = format!("{tag} check #{n}").into_bytes();
    a.send(&send_frame(
        &format!("{tag}{n:02}x"),
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        &format!("{tag}-m{n}"),
        &body,
    ))
    .await;
    let got = b.read().await;
    assert_eq!(got.method(), Some("SEND"), "{got:?}");
    assert_eq!(got.body, body, "{got:?}");
    assert_eq!(a.read().await.status(), Some(200));
}

/// `from` sends one SEND to `to` through their relay URIs (RFC 4976 §6.4:
/// each relay pops itself from To-Path and pushes itself onto From-Path;
/// the body is untouched); `to` answers 200, which is absorbed (hop by
/// hop, §6.4.1) while `from` gets the relay's own 200.
pub async fn one_way(from: &mut Client, to: &mut Client, tid: &str, body: &[u8]) {
    from.send(&send_frame(
        tid,
        &[&from.relay_uri, &to.relay_uri, &to.uri],
        &from.uri,
        &format!("m-{tid}"),
        body,
    ))
    .await;
    let got = to.read().await;
    assert_eq!(got.method(), Some("SEND"), "{got:?}");
    assert_eq!(got.header("To-Path"), Some(to.uri.as_str()));
    assert_eq!(
        got.header("From-Path"),
        Some(format!("{} {} {}", to.relay_uri, from.relay_uri, from.uri).as_str()),
        "{got:?}"
    );
    assert_eq!(got.header("Message-ID"), Some(format!("m-{tid}").as_str()));
    assert_eq!(
        got.header("Byte-Range"),
        Some(format!("1-{}/{}", body.len(), body.len()).as_str())
    );
    assert_eq!(got.header("Content-Type"), Some("text/plain"));
    assert_eq!(got.body, body);
    assert_eq!(got.flag, b'$');
    assert_ne!(got.tid, tid, "the relay uses its own transaction id");
    let ok = from.read().await;
    assert_eq!(ok.first, format!("MSRP {tid} 200 OK"), "{ok:?}");
    let me = to.uri.clone();
    to.send(&response_to(&got, 200, "OK", &me)).await;
    from.quiet(QUIET).await;
}

/// Both directions, with a body that is not ASCII (multi-byte UTF-8, and
/// a line of dashes that is not this transaction's end-line).
pub async fn exchange(a: &mut Client, b: &mut Client) {
    one_way(
        a,
        b,
        "ab01x",
        "héllo ✓\r\n-------ab01y$\r\nstill body".as_bytes(),
    )
    .await;
    one_way(b, a, "ba01x", b"and back").await;
}

/// A response (RFC 4975 §7.2) to the request `req` as received by `me`:
/// To-Path is the first From-Path URI (the previous hop; SEND responses go
/// hop by hop, RFC 4976 §6.4.1).
pub fn response_to(req: &Frame, code: u16, comment: &str, me: &str) -> Vec<u8> {
    let prev = req
        .header("From-Path")
        .and_then(|p| p.split(' ').next())
        .expect("From-Path");
    format!(
        "MSRP {} {code} {comment}\r\nTo-Path: {prev}\r\nFrom-Path: {me}\r\n-------{}$\r\n",
        req.tid, req.tid
    )
    .into_bytes()
}

/// Checks a failure REPORT from the relay (RFC 4975 §7.1.2, RFC 4976
/// §6.4.1): toward `to` (the failed request's From-Path), from `from` (the
/// relay URI that received it), same Message-ID, `Status: 000 code`.
pub fn assert_failure_report(rep: &Frame, to: &str, from: &str, msg_id: &str, code: u16) {
    assert_eq!(rep.method(), Some("REPORT"), "{rep:?}");
    assert_eq!(rep.header("To-Path"), Some(to), "{rep:?}");
    assert_eq!(rep.header("From-Path"), Some(from), "{rep:?}");
    assert_eq!(rep.header("Message-ID"), Some(msg_id), "{rep:?}");
    let status = rep.header("Status").expect("Status");
    assert!(
        status.starts_with(&format!("000 {code}")),
        "want 000 {code}: {rep:?}"
    );
    assert!(rep.body.is_empty(), "{rep:?}");
}

/// `msg` as a client's WebSocket message in frames ending at the payload
/// offsets `fragments` (none: one frame), masked here by RFC 6455
/// §5.2–§5.3 rather than by the WebSocket library: text when `msg` is
/// UTF-8, else binary.
pub fn ws_frames(msg: &[u8], fragments: &[usize]) -> Vec<u8> {
    let text = std::str::from_utf8(msg).is_ok();
    let mut wire = Vec::new();
    let mut start = 0;
    let ends = fragments.iter().copied().chain(std::iter::once(msg.len()));
    for (i, end) in ends.enumerate() {
        let fin = end == msg.len();
        let opcode = match (i, text) {
            (0, true) => 0x1,
            (0, false) => 0x2,
            _ => 0x0,
        };
        masked_frame(
            &mut wire,
            fin,
            opcode,
            &msg[start..end],
            [0x37, 0xfa, 0x21, i as u8],
        );
        start = end;
    }
    wire
}

/// A client's Ping frame carrying `payload` (at most 125 bytes, §5.5),
/// masked as [`ws_frames`] masks.
pub fn ws_ping(payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    masked_frame(&mut wire, true, 0x9, payload, [0x5a, 0x01, 0x33, 0xc4]);
    wire
}

/// A client's frame (RFC 6455 §5.2): FIN and opcode, the payload length in
/// 7, 16 or 64 bits with the mask bit set, the masking key, then the
/// payload XORed with it (§5.3).
fn masked_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}
