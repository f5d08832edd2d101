//! Large MSRP messages and flow control through the real relay: a 10 MiB
//! single chunk and a 10 MiB message in chunks relay with bounded server
//! memory (re-chunked, RFC 4976 §6.6), and a receiver that stops reading
//! slows its sender instead of making the relay buffer or drop (nothing is
//! lost when it resumes). The client writes frames as text from the RFC
//! 4975 §9 grammar and reads them with its own streaming parser.

mod common;

use common::msrp::{Frame, REALM, USERS, auth_frame, authorization, param, parse};
use common::{IO_TIMEOUT, Rng, Server, ServerConfig, tcp, within};
use dataplane::region::Counter;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MIB: usize = 1 << 20;

fn relay(extra_msrp: &[&str]) -> Server {
    relay_on(1, extra_msrp)
}

fn relay_on(workers: u32, extra_msrp: &[&str]) -> Server {
    let mut c = ServerConfig::new()
        .workers(workers)
        .listen_msrp()
        .msrp_users(REALM, USERS)
        // A small receive-buffer pool, so the server's memory reflects
        // what the relay holds rather than buffers touched once.
        .reactor("recv_buffers = 32");
    for l in extra_msrp {
        c = c.msrp(l);
    }
    c.start()
}

/// A SEND frame's `Byte-Range` start (RFC 4975 §9 `range-start`).
fn range_start(f: &Frame) -> usize {
    let v = f.header("Byte-Range").expect("Byte-Range");
    v[..v.find('-').expect("dash")].parse().expect("start")
}

/// Reads frames off the read half of a stream, with the shared test
/// parser (its own, not the relay's).
struct Reader {
    io: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    async fn read(&mut self) -> Frame {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some((f, n)) = parse(&self.buf) {
                self.buf.drain(..n);
                return f;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = vec![0u8; 256 << 10];
            let n = tokio::time::timeout(left, self.io.read(&mut chunk))
                .await
                .expect("timed out reading an MSRP frame")
                .expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

struct Client {
    rd: Reader,
    wr: OwnedWriteHalf,
    uri: String,
    relay_uri: String,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        within("msrp write", self.wr.write_all(bytes))
            .await
            .expect("write");
    }
}

/// Connect and AUTH (RFC 4976 §5: 401 with a Digest challenge, then 200
/// with Use-Path).
async fn authed(addr: SocketAddr, name: &str, user: &str, password: &str) -> Client {
    let (r, w) = tcp(addr).await.into_split();
    let mut c = Client {
        rd: Reader {
            io: r,
            buf: Vec::new(),
        },
        wr: w,
        uri: format!("msrp://127.0.0.1:9/{name}s1;tcp"),
        relay_uri: String::new(),
    };
    let relay = format!("msrp://{addr};tcp");
    let from = c.uri.clone();
    c.send(&auth_frame("au1x", &relay, &from, None, None)).await;
    let ch = c.rd.read().await;
    assert_eq!(ch.status(), Some(401));
    let nonce = param(ch.header("WWW-Authenticate").expect("challenge"), "nonce");
    let authz = authorization(user, password, &nonce, &relay, 1);
    c.send(&auth_frame("au2x", &relay, &from, Some(&authz), None))
        .await;
    let ok = c.rd.read().await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    c.relay_uri = ok.header("Use-Path").expect("Use-Path").to_string();
    c
}

/// A SEND chunk's head (RFC 4975 §7.1: Message-ID, Byte-Range).
fn send_head(tid: &str, to: &[&str], from: &str, msg: &str, range: &str) -> Vec<u8> {
    format!(
        "MSRP {tid} SEND\r\nTo-Path: {}\r\nFrom-Path: {from}\r\nMessage-ID: {msg}\r\nByte-Range: {range}\r\nContent-Type: application/octet-stream\r\n\r\n",
        to.join(" ")
    )
    .into_bytes()
}

fn end_line(tid: &str, flag: char) -> Vec<u8> {
    format!("\r\n-------{tid}{flag}\r\n").into_bytes()
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Receives the SEND chunks of one message, answers each with 200 (as an
/// endpoint does, RFC 4975 §7.2) and reassembles the body by Byte-Range.
/// Returns the body and the number of chunks.
async fn receive_message(
    b: &mut Client,
    total: usize,
    watch_rss: Option<i32>,
) -> (Vec<u8>, usize, u64) {
    let mut body = vec![0u8; total];
    let mut got = 0usize;
    let mut chunks = 0usize;
    let mut peak = 0u64;
    let mut last = false;
    while !(last && got == total) {
        let f = b.rd.read().await;
        assert_eq!(f.method(), Some("SEND"), "unexpected frame {f:?}");
        let start = range_start(&f) - 1;
        assert!(start + f.body.len() <= total, "chunk beyond the message");
        body[start..start + f.body.len()].copy_from_slice(&f.body);
        got += f.body.len();
        chunks += 1;
        last |= f.flag == b'$';
        if f.flag != b'$' {
            assert_eq!(f.flag, b'+', "{f:?}");
        }
        assert!(
            f.body.len() <= 64 << 10,
            "a chunk of {} bytes",
            f.body.len()
        );
        let resp = format!(
            "MSRP {} 200 OK\r\nTo-Path: {}\r\nFrom-Path: {}\r\n-------{}$\r\n",
            f.tid,
            f.header("From-Path")
                .expect("From-Path")
                .split(' ')
                .next()
                .expect("uri"),
            b.uri,
            f.tid
        );
        b.send(resp.as_bytes()).await;
        if let Some(pid) = watch_rss
            && chunks.is_multiple_of(16)
        {
            peak = peak.max(rss_kib(pid));
        }
    }
    (body, chunks, peak)
}

/// The 10 MiB payload, random so a misplaced piece is caught.
fn payload(n: usize) -> Vec<u8> {
    Rng::new(0x5eed).bytes(n)
}

#[tokio::test]
async fn ten_mib_single_chunk_is_rechunked_with_bounded_memory() {
    let srv = relay(&[]);
    let addr = srv.addrs[0];
    let a = authed(addr, "alice", "alice", "wonderland").await;
    let mut b = authed(addr, "bob", "bob", "builder").await;
    let base = rss_kib(srv.pid());
    let data = payload(10 * MIB);
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut frame = send_head(
        "big1",
        &to,
        &a.uri,
        "m-big1",
        &format!("1-{0}/{0}", data.len()),
    );
    frame.extend_from_slice(&data);
    frame.extend_from_slice(&end_line("big1", '$'));
    let Client {
        rd: mut ard,
        wr: mut awr,
        ..
    } = a;
    let writer = tokio::spawn(async move {
        awr.write_all(&frame).await.expect("write");
        awr
    });
    let (body, chunks, peak) = within(
        "10 MiB relayed",
        receive_message(&mut b, data.len(), Some(srv.pid())),
    )
    .await;
    assert!(body == data, "the body arrived altered");
    assert!(chunks >= 160, "{chunks} chunks: not re-chunked");
    let _awr = writer.await.expect("writer");
    // The sender gets exactly one 200 for its chunk, after all of it.
    let ok = ard.read().await;
    assert_eq!((ok.tid.as_str(), ok.status()), ("big1", Some(200)));
    srv.wait_counter(Counter::MsrpRechunked, (chunks - 1) as u64)
        .await;
    // A chunk held whole would have grown the server by over 10 MiB.
    let grown = peak.saturating_sub(base);
    assert!(
        grown < 6 * 1024,
        "server grew by {grown} KiB relaying 10 MiB"
    );
}

#[tokio::test]
async fn ten_mib_message_in_chunks_relays_intact() {
    let srv = relay(&[]);
    let addr = srv.addrs[0];
    let a = authed(addr, "alice", "alice", "wonderland").await;
    let mut b = authed(addr, "bob", "bob", "builder").await;
    let data = payload(10 * MIB);
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    // Ten 1 MiB chunks (RFC 4975 §7.1: `+` on all but the last).
    let mut wire = Vec::with_capacity(data.len() + 4096);
    for (i, part) in data.chunks(MIB).enumerate() {
        let tid = format!("ch{i:02}x");
        let range = format!("{}-{}/{}", i * MIB + 1, i * MIB + part.len(), data.len());
        wire.extend(send_head(&tid, &to, &a.uri, "m-parts", &range));
        wire.extend_from_slice(part);
        wire.extend(end_line(&tid, if i == 9 { '$' } else { '+' }));
    }
    let Client {
        rd: mut ard,
        wr: mut awr,
        ..
    } = a;
    let writer = tokio::spawn(async move {
        awr.write_all(&wire).await.expect("write");
        awr
    });
    let (body, chunks, _) =
        within("10 MiB relayed", receive_message(&mut b, data.len(), None)).await;
    assert!(body == data, "the body arrived altered");
    assert!(chunks >= 160, "{chunks}");
    let _awr = writer.await.expect("writer");
    let mut oks = Vec::new();
    for _ in 0..10 {
        let f = ard.read().await;
        assert_eq!(f.status(), Some(200), "{f:?}");
        oks.push(f.tid);
    }
    let want: Vec<String> = (0..10).map(|i| format!("ch{i:02}x")).collect();
    assert_eq!(oks, want);
}

/// The owning core of a session: the first two hex digits of its id.
fn core_of(relay_uri: &str) -> String {
    let id = relay_uri.rsplit('/').next().expect("session id");
    id[..2].to_string()
}

/// The receiver stops reading: the relay stops reading the sender (its
/// writes stall) rather than buffering the message; the relay's memory
/// stays bounded; when the receiver resumes, everything arrives intact.
#[tokio::test]
async fn slow_receiver_slows_sender_without_loss() {
    let srv = relay(&[]);
    let addr = srv.addrs[0];
    let a = authed(addr, "alice", "alice", "wonderland").await;
    let b = authed(addr, "bob", "bob", "builder").await;
    stall_and_resume(&srv, a, b).await;
}

/// The same with sender and receiver on different cores: credit comes
/// back through the sender's core inbox.
#[tokio::test]
async fn slow_receiver_on_another_core_slows_sender_without_loss() {
    let srv = relay_on(2, &[]);
    let addr = srv.addrs[0];
    let a = authed(addr, "alice", "alice", "wonderland").await;
    let mut tries = 0;
    let b = loop {
        // SO_REUSEPORT spreads connections by hash: retry until the
        // receiver's session is owned by the other core.
        let b = authed(addr, &format!("bob{tries}"), "bob", "builder").await;
        if core_of(&b.relay_uri) != core_of(&a.relay_uri) {
            break b;
        }
        tries += 1;
        assert!(tries < 64, "every connection landed on one core");
    };
    stall_and_resume(&srv, a, b).await;
    assert!(srv.counter(Counter::MsrpHandoffs) > 0);
}

async fn stall_and_resume(srv: &Server, a: Client, mut b: Client) {
    let base = rss_kib(srv.pid());
    let total = 48 * MIB;
    let data = payload(total);
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut frame = send_head(
        "flow1",
        &to,
        &a.uri,
        "m-flow",
        &format!("1-{total}/{total}"),
    );
    let head_len = frame.len();
    frame.extend_from_slice(&data);
    frame.extend_from_slice(&end_line("flow1", '$'));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w2 = written.clone();
    let Client {
        rd: mut ard,
        wr: mut awr,
        ..
    } = a;
    let writer = tokio::spawn(async move {
        for part in frame.chunks(64 << 10) {
            awr.write_all(part).await.expect("write");
            w2.fetch_add(part.len(), std::sync::atomic::Ordering::SeqCst);
        }
        awr
    });
    // Wait until the sender's progress stops (B reads nothing).
    let mut last = usize::MAX;
    let mut still = 0;
    let give_up = Instant::now() + IO_TIMEOUT;
    while still < 3 {
        assert!(Instant::now() < give_up, "the sender never stalled");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = written.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
    assert!(
        last < head_len + total,
        "all {last} bytes were taken while the receiver read nothing"
    );
    let grown = rss_kib(srv.pid()).saturating_sub(base);
    assert!(
        grown < 8 * 1024,
        "the relay buffered {grown} KiB for a stalled receiver"
    );
    srv.wait_counter(Counter::MsrpSenderPauses, 1).await;
    // B resumes: the whole message arrives, in order, unaltered.
    let (body, _, _) = within("message after resume", receive_message(&mut b, total, None)).await;
    assert!(body == data, "the body arrived altered");
    let _awr = writer.await.expect("writer");
    let ok = ard.read().await;
    assert_eq!((ok.tid.as_str(), ok.status()), ("flow1", Some(200)));
}
