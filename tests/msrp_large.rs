//! Large MSRP messages and flow control through the real relay: a 10 MiB
//! single chunk and a 10 MiB message in chunks relay with bounded server
//! memory (re-chunked, RFC 4976 §6.6), and a receiver that stops reading
//! slows its sender instead of making the relay buffer or drop (nothing is
//! lost when it resumes). Small chunks relayed plain TCP to plain TCP go
//! out from the receive buffer they arrived in — also when a body spans two
//! buffers, to a plain WebSocket receiver (text or binary as the chunk is
//! UTF-8 or not) and from a WebSocket sender — and a stalled receiver (TCP
//! or WebSocket) pins no more than a bounded share of those buffers; one
//! on `msrps` slows its sender too. The client writes frames
//! as text from the RFC 4975 §9 grammar and reads them with its own
//! streaming parser.

mod common;

use common::msrp::{Frame, REALM, USERS, auth_frame, authorization, param, parse};
use common::{IO_TIMEOUT, Rng, Server, ServerConfig, tcp, within};
use dataplane::region::Counter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    let last = until_stalled(&written, Duration::from_millis(200), || {}).await;
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

// ------------------------------------------------ bodies from the receive buffer

/// The relay's hold cap with `recv_buffers = 32`: a quarter of the ring.
const HOLD_CAP: i64 = 32 / 4;

/// A 4 KiB (whole-message) SEND without responses (`Failure-Report: no`,
/// RFC 4975 §7.1.2), so a receiver that stops reading stalls only its
/// sender's chunks.
/// Polls `written` (bytes a writer task got into its socket) every `poll`
/// until it has not moved for three polls in a row, calling `each` at every
/// poll; returns the count it stopped at.
async fn until_stalled(written: &AtomicUsize, poll: Duration, mut each: impl FnMut()) -> usize {
    let mut last = usize::MAX;
    let mut still = 0;
    let give_up = Instant::now() + IO_TIMEOUT;
    while still < 3 {
        assert!(Instant::now() < give_up, "the sender never stalled");
        tokio::time::sleep(poll).await;
        each();
        let now = written.load(Ordering::SeqCst);
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
    last
}

fn small_send(i: usize, to: &[&str], from: &str, body: &[u8]) -> Vec<u8> {
    let tid = format!("z{i:06}x");
    let mut f = format!(
        "MSRP {tid} SEND\r\nTo-Path: {}\r\nFrom-Path: {from}\r\nMessage-ID: mz{i}\r\nByte-Range: 1-{1}/{1}\r\nFailure-Report: no\r\nContent-Type: application/octet-stream\r\n\r\n",
        to.join(" "),
        body.len()
    )
    .into_bytes();
    f.extend_from_slice(body);
    f.extend(end_line(&tid, '$'));
    f
}

/// Writes `bodies` as 4 KiB SENDs from `from` along `to`, a few per
/// write, in a task; `written` counts the bytes taken.
fn push_sends(
    mut w: OwnedWriteHalf,
    to: Vec<String>,
    from: String,
    bodies: Vec<Vec<u8>>,
    written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<OwnedWriteHalf> {
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let frames: Vec<Vec<u8>> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| small_send(i, &to, &from, body))
        .collect();
    tokio::spawn(async move {
        for batch in frames.chunks(4) {
            let wire = batch.concat();
            w.write_all(&wire).await.expect("write");
            written.fetch_add(wire.len(), std::sync::atomic::Ordering::SeqCst);
        }
        w
    })
}

/// The path from `a` through the relay to `b`.
fn path(a: &Client, b: &Client) -> Vec<String> {
    vec![a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()]
}

/// Reads the SENDs of [`push_sends`] in order and checks every body.
async fn expect_sends(rd: &mut Reader, bodies: &[Vec<u8>], mut each: impl FnMut()) {
    for (i, body) in bodies.iter().enumerate() {
        let f = rd.read().await;
        assert_eq!(f.method(), Some("SEND"), "{f:?}");
        assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
        assert!(f.body == *body, "message {i}: the body arrived altered");
        assert_eq!(f.flag, b'$');
        each();
    }
}

/// A sender writes 16 MiB of 4 KiB SENDs (more than the sockets and the
/// relay's window take) to a receiver that reads nothing: returns once its
/// progress has stopped and the relay holds no receive buffer for it (its
/// bodies were copied out), with the bodies and the writer. `most` tracks
/// the receive buffers held meanwhile.
async fn stall_sender(
    srv: &Server,
    wr: OwnedWriteHalf,
    to: Vec<String>,
    from: String,
    seed: u64,
    most: &mut i64,
) -> (Vec<Vec<u8>>, tokio::task::JoinHandle<OwnedWriteHalf>) {
    let stalled = bodies(seed, 4096);
    let total: usize = stalled.len() * (4096 + 200);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = push_sends(wr, to, from, stalled.clone(), written.clone());
    let last = until_stalled(&written, Duration::from_millis(100), || {
        *most = (*most).max(srv.gauge(Counter::RecvBuffersHeld));
    })
    .await;
    assert!(
        last < total,
        "all was taken while the receiver read nothing"
    );
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    (stalled, writer)
}

/// While another pair is stalled: pair `a` → `b` on the same worker
/// relays 300 SENDs intact, some of them from the receive buffer, and
/// `most` tracks the receive buffers held meanwhile.
async fn neighbour_relays_from_the_buffer(
    srv: &Server,
    a: Client,
    b: &mut Client,
    seed: u64,
    most: &mut i64,
) {
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let other = bodies(seed, 300);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (to, from) = (path(&a, b), a.uri.clone());
    let writer = push_sends(a.wr, to, from, other.clone(), written);
    within(
        "the other pair's SENDs",
        expect_sends(&mut b.rd, &other, || {
            *most = (*most).max(srv.gauge(Counter::RecvBuffersHeld))
        }),
    )
    .await;
    let _w = writer.await.expect("writer");
    assert!(
        srv.counter(Counter::MsrpZeroCopyChunks) > chunks0,
        "the other pair's chunks were all copied"
    );
}

fn bodies(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.bytes(4096)).collect()
}

/// One worker with its default pool of 256 receive buffers, and an
/// AUTHed sender and receiver on it (plain TCP).
async fn zero_copy_pair() -> (Server, Client, Client) {
    let srv = ServerConfig::new()
        .workers(1)
        .listen_msrp()
        .msrp_users(REALM, USERS)
        .reactor("recv_buffers = 256")
        .start();
    let addr = srv.addrs[0];
    let a = authed(addr, "alice", "alice", "wonderland").await;
    let b = authed(addr, "bob", "bob", "builder").await;
    (srv, a, b)
}

/// Plain TCP to plain TCP on one worker, the common relay case: chunk
/// bodies go out from the buffer they were received in (counted), intact,
/// and every held buffer goes back.
#[tokio::test]
async fn small_sends_relay_from_the_receive_buffer() {
    let (srv, a, mut b) = zero_copy_pair().await;
    let n = 400;
    let sent = bodies(7, n);
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let bytes0 = srv.counter(Counter::MsrpZeroCopyBytes);
    let a_uri = a.uri.clone();
    // Four at a time, each batch read before the next is written: the
    // receiver keeps up (a target that lags gets copies).
    let to = path(&a, &b);
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let Client { mut wr, .. } = a;
    let mut most = 0;
    for (k, batch) in sent.chunks(4).enumerate() {
        let wire: Vec<u8> = batch
            .iter()
            .enumerate()
            .flat_map(|(j, body)| small_send(k * 4 + j, &to, &a_uri, body))
            .collect();
        within("msrp write", wr.write_all(&wire))
            .await
            .expect("write");
        for (j, body) in batch.iter().enumerate() {
            let f = b.rd.read().await;
            assert_eq!(f.method(), Some("SEND"), "{f:?}");
            let i = k * 4 + j;
            assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
            assert!(f.body == *body, "message {i}: the body arrived altered");
        }
        most = most.max(srv.gauge(Counter::RecvBuffersHeld));
    }
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    let bytes = srv.counter(Counter::MsrpZeroCopyBytes) - bytes0;
    eprintln!("{chunks} of {n} chunks without a copy, at most {most} buffers held");
    // Most chunks go by reference (see also
    // bodies_across_two_receive_buffers_relay_without_a_copy).
    assert!(
        chunks >= n as u64 / 4,
        "{chunks} of {n} chunks sent without a copy"
    );
    // Of a body split across two reads, the few bytes the relay kept
    // between them (an end-line candidate) or a short tail are copies.
    assert!(bytes <= chunks * 4096, "{bytes} bytes by reference");
    assert!(bytes >= chunks * (4096 - 128), "{bytes} bytes by reference");
    assert!(most <= 256 / 4, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// One receiver stops reading while its sender pushes 4 KiB chunks: the
/// relay holds no more than its share of receive buffers for it, and none
/// once it is seen not to read (its bodies are copied out), another
/// pair on the same worker keeps relaying (from the receive buffer), and
/// when the receiver resumes everything arrives intact.
#[tokio::test]
async fn stalled_receiver_pins_no_more_than_a_share_of_receive_buffers() {
    let srv = relay(&[]);
    let addr = srv.addrs[0];
    let a1 = authed(addr, "alice1", "alice", "wonderland").await;
    let mut b1 = authed(addr, "bob1", "bob", "builder").await;
    let a2 = authed(addr, "alice2", "alice", "wonderland").await;
    let mut b2 = authed(addr, "bob2", "bob", "builder").await;
    let mut most = 0;
    let (to, from) = (path(&a1, &b1), a1.uri.clone());
    let (stalled, writer1) = stall_sender(&srv, a1.wr, to, from, 11, &mut most).await;
    // The other pair relays normally meanwhile, bodies from the buffer.
    neighbour_relays_from_the_buffer(&srv, a2, &mut b2, 12, &mut most).await;
    assert!(most <= HOLD_CAP, "{most} receive buffers held");
    // b1 resumes: everything, in order, intact.
    within(
        "the stalled pair's SENDs after resuming",
        expect_sends(&mut b1.rd, &stalled, || {
            most = most.max(srv.gauge(Counter::RecvBuffersHeld))
        }),
    )
    .await;
    let _w1 = writer1.await.expect("writer");
    assert!(most <= HOLD_CAP, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

// ------------------------------------- bodies across receive buffers, WebSocket

/// Bodies of `sizes` (cycled), random bytes.
fn sized_bodies(seed: u64, n: usize, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| rng.bytes(sizes[i % sizes.len()])).collect()
}

/// Writes `bodies` as SENDs from `a` to `to`, `per` to a write, and reads
/// each batch with `read` before the next is written (the receiver keeps
/// up: a target that lags gets copies). Returns the most receive buffers
/// seen held.
async fn relay_in_batches<F>(
    srv: &Server,
    a: Client,
    to: &[String],
    bodies: &[Vec<u8>],
    per: usize,
    mut read: F,
) -> i64
where
    F: AsyncFnMut(usize, &[u8]),
{
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let a_uri = a.uri.clone();
    let Client { mut wr, .. } = a;
    let mut most = 0;
    for (k, batch) in bodies.chunks(per).enumerate() {
        let wire: Vec<u8> = batch
            .iter()
            .enumerate()
            .flat_map(|(j, body)| small_send(k * per + j, &to, &a_uri, body))
            .collect();
        within("msrp write", wr.write_all(&wire))
            .await
            .expect("write");
        for (j, body) in batch.iter().enumerate() {
            read(k * per + j, body).await;
        }
        most = most.max(srv.gauge(Counter::RecvBuffersHeld));
    }
    most
}

/// Plain TCP to plain TCP on one worker, chunks of 4 KiB and odd sizes
/// written eight at a time: a third or so of the bodies begin in one
/// 16 KiB receive buffer and end in the next. Those go out by reference
/// from both buffers too (with the few end-line candidate bytes the
/// relay kept between the reads as a copy), so nearly every chunk is
/// sent without a body copy; every byte arrives, and every buffer is
/// given back.
#[tokio::test]
async fn bodies_across_two_receive_buffers_relay_without_a_copy() {
    let (srv, a, mut b) = zero_copy_pair().await;
    let n = 480;
    let sent = sized_bodies(21, n, &[4096, 3000, 5000, 4096]);
    let total: usize = sent.iter().map(Vec::len).sum();
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let bytes0 = srv.counter(Counter::MsrpZeroCopyBytes);
    let to = path(&a, &b);
    let most = relay_in_batches(&srv, a, &to, &sent, 8, async |i, body| {
        is_relayed_send(&b.rd.read().await, i, body)
    })
    .await;
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    let bytes = srv.counter(Counter::MsrpZeroCopyBytes) - bytes0;
    eprintln!(
        "{chunks} of {n} chunks, {bytes} of {total} body bytes without a copy, at most {most} buffers held"
    );
    // Before bodies could span two buffers, about a quarter went copied.
    assert!(
        chunks * 100 >= n as u64 * 90,
        "{chunks} of {n} chunks sent without a copy"
    );
    assert!(bytes <= total as u64);
    assert!(
        bytes * 100 >= total as u64 * 88,
        "{bytes} of {total} body bytes sent without a copy"
    );
    assert!(most <= 256 / 4, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// A relay on two workers with plain TCP (and, `ws`, plain WebSocket)
/// MSRP listeners, and an AUTHed TCP sender on it.
async fn two_core_relay(ws: bool) -> (Server, Client) {
    let mut c = ServerConfig::new()
        .workers(2)
        .listen_msrp()
        .msrp_users(REALM, USERS)
        .reactor("recv_buffers = 256");
    if ws {
        c = c.listen_ws().sub_protocols(&["msrp"]);
    }
    let srv = c.start();
    let a = authed(srv.addrs[0], "alice", "alice", "wonderland").await;
    (srv, a)
}

/// Retries `connect` until the connection's session is owned by another
/// core than `other`'s (SO_REUSEPORT spreads connections by hash).
async fn on_another_core<C, F>(other: &str, mut connect: F) -> C
where
    F: AsyncFnMut(usize) -> (C, String),
{
    for tries in 0..64 {
        let (c, relay_uri) = connect(tries).await;
        if core_of(&relay_uri) != core_of(other) {
            return c;
        }
    }
    panic!("every connection landed on one core");
}

/// Plain TCP sender and receiver on different cores (workers = 2): the
/// receiver's core sends each body from the receive buffer of the
/// sender's core (handed over with the head, no copy), bodies arrive
/// byte for byte, and every buffer goes back to the core that owns it
/// (released through its queue).
#[tokio::test]
async fn bodies_for_another_core_relay_from_the_receive_buffer() {
    let (srv, a) = two_core_relay(false).await;
    let addr = srv.addrs[0];
    let a_relay = a.relay_uri.clone();
    let mut b = on_another_core(&a_relay, async |i| {
        let b = authed(addr, &format!("bob{i}"), "bob", "builder").await;
        let uri = b.relay_uri.clone();
        (b, uri)
    })
    .await;
    let n = 400;
    let sent = sized_bodies(41, n, &[4096, 3000, 5000, 4096]);
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let handoffs0 = srv.counter(Counter::MsrpHandoffs);
    let to = path(&a, &b);
    let most = relay_in_batches(&srv, a, &to, &sent, 8, async |i, body| {
        is_relayed_send(&b.rd.read().await, i, body)
    })
    .await;
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    let handoffs = srv.counter(Counter::MsrpHandoffs) - handoffs0;
    eprintln!("{chunks} of {n} chunks to another core without a copy, at most {most} held");
    assert_eq!(handoffs, n as u64, "every chunk crosses cores");
    assert!(
        chunks * 100 >= n as u64 * 90,
        "{chunks} of {n} chunks sent without a copy"
    );
    assert!(most <= 256 / 4, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// A TCP sender to a WebSocket receiver on another core: the receiver's
/// core reads the body where the sender's core received it to choose the
/// opcode (text when the chunk is UTF-8) and sends it from there.
#[tokio::test]
async fn bodies_for_a_websocket_on_another_core_relay_from_the_receive_buffer() {
    let (srv, a) = two_core_relay(true).await;
    let ws = srv.addrs[1];
    let a_relay = a.relay_uri.clone();
    let mut b = on_another_core(&a_relay, async |i| {
        let mut b = common::msrp::Client::connect_ws(ws, &format!("bob{i}")).await;
        b.authed_as("bob", "builder").await;
        let uri = b.relay_uri.clone();
        (b, uri)
    })
    .await;
    let n = 240;
    let (sent, bodies) = mixed_sends(43, n);
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let to = vec![a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let most = relay_in_batches(&srv, a, &to, &bodies, 8, async |i, body| {
        let f = b.read().await;
        is_relayed_send(&f, i, body);
        assert_eq!(b.last_text, Some(sent[i].1), "message {i}: wrong opcode");
    })
    .await;
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    eprintln!("{chunks} of {n} chunks to a WebSocket on another core without a copy");
    assert!(
        chunks * 100 >= n as u64 * 90,
        "{chunks} of {n} chunks sent without a copy"
    );
    assert!(most <= 256 / 4, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    b.quiet(Duration::from_millis(100)).await;
}

/// A relay with plain TCP and plain WebSocket MSRP listeners (in that
/// order) on one worker.
fn relay_with_ws(recv_buffers: u32) -> Server {
    ServerConfig::new()
        .workers(1)
        .listen_msrp()
        .listen_ws()
        .sub_protocols(&["msrp"])
        .msrp_users(REALM, USERS)
        .reactor(&format!("recv_buffers = {recv_buffers}"))
        .start()
}

/// A body and whether it is text (UTF-8).
type TextOrNot = (Vec<u8>, bool);

/// `f` is SEND number `i` of [`relay_in_batches`], whole (`$`), with
/// `body` unaltered.
fn is_relayed_send(f: &Frame, i: usize, body: &[u8]) {
    assert_eq!(f.method(), Some("SEND"), "{f:?}");
    assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
    assert!(f.body == body, "message {i}: the body arrived altered");
    assert_eq!(f.flag, b'$');
}

/// `n` bodies of 4096, 3000 and 5000 bytes in turn, every third binary
/// (see [`mixed_body`]), each with whether it is text; and the bodies alone.
fn mixed_sends(seed: u64, n: usize) -> (Vec<TextOrNot>, Vec<Vec<u8>>) {
    let mut rng = Rng::new(seed);
    let sizes = [4096, 3000, 5000];
    let sent: Vec<TextOrNot> = (0..n)
        .map(|i| {
            let binary = i % 3 == 1;
            (mixed_body(&mut rng, sizes[i % 3], binary), !binary)
        })
        .collect();
    let bodies = sent.iter().map(|(b, _)| b.clone()).collect();
    (sent, bodies)
}

/// A body of `n` bytes that is UTF-8 with characters of 1 to 4 bytes (so
/// that receive buffers cut some of them), or, `binary`, that is not.
fn mixed_body(rng: &mut Rng, n: usize, binary: bool) -> Vec<u8> {
    if binary {
        let mut b = rng.bytes(n);
        b[n / 2] = 0xFF;
        return b;
    }
    let chars = ["a", "é", "✓", "😀", "\r\n", "-------"];
    let mut s = String::new();
    while s.len() < n - 4 {
        let r = rng.bytes(1)[0] as usize;
        s.push_str(chars[r % chars.len()]);
    }
    while s.len() < n {
        s.push('z');
    }
    s.into_bytes()
}

/// TCP sender to a plain WebSocket receiver on the same worker (RFC 7977:
/// one MSRP chunk per WebSocket message): the frame header, head, body by
/// reference and end-line leave in one writev. Each message is text when
/// the chunk is UTF-8 (checked across the receive buffers the body lies
/// in) and binary otherwise; bodies arrive byte for byte; the chunks count
/// as sent without a copy.
#[tokio::test]
async fn tcp_to_websocket_relays_from_the_receive_buffer() {
    let srv = relay_with_ws(256);
    let a = authed(srv.addrs[0], "alice", "alice", "wonderland").await;
    let mut b = common::msrp::Client::connect_ws(srv.addrs[1], "bob").await;
    b.authed_as("bob", "builder").await;
    let n = 240;
    let (sent, bodies) = mixed_sends(31, n);
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let to = vec![a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let most = relay_in_batches(&srv, a, &to, &bodies, 8, async |i, body| {
        let f = b.read().await;
        is_relayed_send(&f, i, body);
        assert_eq!(
            b.last_text,
            Some(sent[i].1),
            "message {i}: wrong opcode (text: UTF-8 chunk, RFC 6455 §5.6)"
        );
    })
    .await;
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    eprintln!("{chunks} of {n} chunks to WebSocket without a copy, at most {most} held");
    assert!(
        chunks * 100 >= n as u64 * 90,
        "{chunks} of {n} chunks sent without a copy"
    );
    assert!(most <= 256 / 4, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    // Nothing but those messages came.
    b.quiet(Duration::from_millis(100)).await;
}

/// A WebSocket receiver stops reading while its TCP sender pushes 4 KiB
/// chunks: the relay pins no more than its share of receive buffers for
/// it, and none once it is seen not to read; another pair on the worker
/// keeps relaying from the receive buffer; when the receiver resumes,
/// every message arrives, in order, intact.
#[tokio::test]
async fn stalled_websocket_receiver_pins_no_receive_buffer() {
    let srv = relay_with_ws(32);
    let a1 = authed(srv.addrs[0], "alice1", "alice", "wonderland").await;
    let mut b1 = common::msrp::Client::connect_ws(srv.addrs[1], "bob1").await;
    b1.authed_as("bob", "builder").await;
    let a2 = authed(srv.addrs[0], "alice2", "alice", "wonderland").await;
    let mut b2 = authed(srv.addrs[0], "bob2", "bob", "builder").await;
    let mut most = 0;
    let to = vec![a1.relay_uri.clone(), b1.relay_uri.clone(), b1.uri.clone()];
    let (stalled, writer1) = stall_sender(&srv, a1.wr, to, a1.uri.clone(), 13, &mut most).await;
    neighbour_relays_from_the_buffer(&srv, a2, &mut b2, 14, &mut most).await;
    assert!(most <= HOLD_CAP, "{most} receive buffers held");
    within("the stalled WebSocket's messages after resuming", async {
        for (i, body) in stalled.iter().enumerate() {
            let f = b1.read().await;
            assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
            assert!(f.body == *body, "message {i}: the body arrived altered");
            assert_eq!(b1.last_text, Some(false));
            most = most.max(srv.gauge(Counter::RecvBuffersHeld));
        }
    })
    .await;
    let _w1 = writer1.await.expect("writer");
    assert!(most <= HOLD_CAP, "{most} receive buffers held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// A WebSocket sender to a TCP receiver on one worker: a chunk's message
/// is unmasked in place in the receive buffer, so its body goes out from
/// there too; bodies arrive byte for byte.
#[tokio::test]
async fn websocket_sender_bodies_relay_from_the_receive_buffer() {
    let srv = relay_with_ws(256);
    let mut a = common::msrp::Client::connect_ws(srv.addrs[1], "alice").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = authed(srv.addrs[0], "bob", "bob", "builder").await;
    let n = 100;
    let sent = sized_bodies(41, n, &[4096, 3000, 5000]);
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    for (i, body) in sent.iter().enumerate() {
        a.send(&small_send(i, &to, &a.uri.clone(), body)).await;
        let f = b.rd.read().await;
        assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
        assert!(f.body == *body, "message {i}: the body arrived altered");
    }
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    eprintln!("{chunks} of {n} chunks from WebSocket without a copy");
    assert!(chunks > 0, "every chunk from the WebSocket was copied");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// A text message re-chunked on its way from one WebSocket to another: the
/// relay cuts the body every 64 KiB, inside a character, so a piece goes
/// out as text only when it is UTF-8 by itself (RFC 6455 §8.1; a chunk
/// forwarded whole from a text message is sent as text unchecked, a cut
/// one never is), and the pieces put together are the body.
#[tokio::test]
async fn a_text_message_cut_by_rechunking_goes_out_as_text_only_where_valid() {
    let srv = relay_with_ws(256);
    let mut a = common::msrp::Client::connect_ws(srv.addrs[1], "alice").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = common::msrp::Client::connect_ws(srv.addrs[1], "bob").await;
    b.authed_as("bob", "builder").await;
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    // 3-byte characters: 64 KiB (65536 = 3 × 21845 + 1) cuts one.
    let body = "€".repeat(70_000).into_bytes();
    a.send(&small_send(0, &to, &a.uri.clone(), &body)).await;
    let mut got = Vec::new();
    let mut binary = 0;
    while got.len() < body.len() {
        let f = b.read().await;
        let text = b.last_text.expect("a WebSocket message");
        assert_eq!(
            text,
            std::str::from_utf8(&f.body).is_ok(),
            "a piece sent as text must be UTF-8, and one that is, as text"
        );
        binary += usize::from(!text);
        got.extend_from_slice(&f.body);
    }
    assert!(got == body, "the body arrived altered");
    assert!(binary > 0, "no piece was cut inside a character");
    // A message that is not cut goes as text.
    let body = "€ ok".repeat(1000).into_bytes();
    a.send(&small_send(1, &to, &a.uri.clone(), &body)).await;
    let f = b.read().await;
    assert!(f.body == body && b.last_text == Some(true));
}

/// (WebSocket header length, message length) → (cuts in the wire bytes,
/// frame boundaries in the message).
type CutShape = fn(usize, usize) -> (Vec<usize>, Vec<usize>);

/// WebSocket messages that reach the relay in two or three reads — a frame
/// cut in its header, a body cut once or twice, a message in three frames,
/// a message behind a Ping cut by a read — are parsed as their bytes
/// arrive, not put back together first: each
/// chunk relays intact, and every body goes from the receive buffers it
/// arrived in (before, a message cut by a read was reassembled and then
/// copied). Cuts inside the MSRP head or end-line relay intact too (those
/// few bytes are carried over). A sender that stops mid-message pins no
/// receive buffer. A message that ends inside its chunk still closes the
/// connection (RFC 7977 §5.3), its neighbours unaffected.
#[tokio::test]
async fn websocket_messages_cut_by_reads_relay_from_the_receive_buffers() {
    let srv = relay_with_ws(256);
    let mut a = common::msrp::Client::connect_ws(srv.addrs[1], "alice").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = authed(srv.addrs[0], "bob", "bob", "builder").await;
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut rng = Rng::new(77);
    let shapes: [(&str, CutShape); 4] = [
        ("cut in the frame header", |_, _| (vec![3], vec![])),
        ("body cut once", |h, len| (vec![h + len / 2], vec![])),
        ("body cut twice", |h, len| {
            (vec![h + len / 3, h + 2 * len / 3], vec![])
        }),
        ("three frames, each read apart", |h, len| {
            // Frame 2 starts after frame 1 (header h + len/3 bytes of
            // payload); frame 3 after frame 2 (a 4-byte mask and a 2-byte
            // length: the pieces are under 64 KiB but over 125 bytes).
            let f2 = h + len / 3;
            let f3 = f2 + 8 + (2 * len / 3 - len / 3);
            (vec![f2, f3 + 4], vec![len / 3, 2 * len / 3])
        }),
    ];
    let chunks0 = srv.counter(Counter::MsrpZeroCopyChunks);
    let mut n = 0;
    for round in 0..3 {
        for (name, shape) in &shapes {
            let body = mixed_body(&mut rng, 4096 + 700 * round, round == 1);
            let msg = small_send(n, &to, &a.uri.clone(), &body);
            let (cuts, fragments) = shape(8, msg.len());
            a.send_ws_cut(&msg, &fragments, &cuts).await;
            let f = b.rd.read().await;
            assert_eq!(
                f.header("Message-ID"),
                Some(format!("mz{n}").as_str()),
                "{name}"
            );
            assert!(f.body == body, "{name}: the body arrived altered");
            n += 1;
        }
    }
    // A Ping cut by a read, then a whole message behind it in the next
    // read: the message is still read where it lies.
    let body = mixed_body(&mut rng, 4096, true);
    let mut wire = common::msrp::ws_ping(&[7; 100]);
    wire.extend(common::msrp::ws_frames(
        &small_send(n, &to, &a.uri.clone(), &body),
        &[],
    ));
    a.send_ws_raw(&wire[..50]).await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    a.send_ws_raw(&wire[50..]).await;
    let f = b.rd.read().await;
    assert_eq!(f.header("Message-ID"), Some(format!("mz{n}").as_str()));
    assert!(
        f.body == body,
        "behind a cut Ping: the body arrived altered"
    );
    n += 1;
    let chunks = srv.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    assert_eq!(
        chunks, n as u64,
        "bodies copied instead of relayed from the receive buffers"
    );
    // Cut inside the MSRP head, and inside the end-line.
    let body = mixed_body(&mut rng, 5000, false);
    let msg = small_send(n, &to, &a.uri.clone(), &body);
    let head_cut = 8 + 40;
    let end_cut = 8 + msg.len() - 6;
    a.send_ws_cut(&msg, &[], &[head_cut, end_cut]).await;
    let f = b.rd.read().await;
    assert_eq!(f.header("Message-ID"), Some(format!("mz{n}").as_str()));
    assert!(
        f.body == body,
        "head and end-line cuts: the body arrived altered"
    );
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    // A sender that stops mid-message pins its receive buffer only
    // briefly (copied out after 100 ms); the chunk relays once the rest
    // comes.
    let body = mixed_body(&mut rng, 6000, false);
    let wire = common::msrp::ws_frames(&small_send(n + 3, &to, &a.uri.clone(), &body), &[]);
    a.send_ws_raw(&wire[..3000]).await;
    assert!(saw_held(&srv, 1).await, "the body so far was not held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    a.send_ws_raw(&wire[3000..]).await;
    let f = b.rd.read().await;
    assert_eq!(
        f.header("Message-ID"),
        Some(format!("mz{}", n + 3).as_str())
    );
    assert!(f.body == body, "after a stall: the body arrived altered");
    // A message that ends mid-body, in two reads: Close 1002.
    let mut c = common::msrp::Client::connect_ws(srv.addrs[1], "carol").await;
    c.authed_as("alice", "wonderland").await;
    let to_c = [c.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let to_c: Vec<&str> = to_c.iter().map(String::as_str).collect();
    let msg = small_send(n + 1, &to_c, &c.uri.clone(), &body);
    c.send_ws_cut(&msg[..msg.len() - 100], &[], &[2000]).await;
    assert_eq!(c.close_code().await, Some(1002));
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    // Nothing of it reached B, and A still relays.
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(common::msrp::QUIET, b.rd.io.read(&mut one)).await;
    assert!(
        r.is_err() && b.rd.buf.is_empty(),
        "bytes of the broken message arrived"
    );
    let body = mixed_body(&mut rng, 4096, false);
    let msg = small_send(n + 2, &to, &a.uri.clone(), &body);
    a.send_ws_cut(&msg, &[], &[]).await;
    let f = b.rd.read().await;
    assert_eq!(
        f.header("Message-ID"),
        Some(format!("mz{}", n + 2).as_str())
    );
}

/// Polls the held-buffer gauge briefly for `value` (it may not stay long).
async fn saw_held(srv: &Server, value: i64) -> bool {
    for _ in 0..40 {
        if srv.gauge(Counter::RecvBuffersHeld) == value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// A sender stops partway through a chunk's body: the part received is
/// held in its receive buffer (the chunk may still go without a copy)
/// only briefly — copied out after 100 ms, so a sender that stalls pins
/// no buffer — and the chunk relays intact once the rest comes. A sender
/// that disconnects mid-chunk leaves no buffer held.
#[tokio::test]
async fn sender_stopping_mid_chunk_pins_no_receive_buffer() {
    let srv = relay(&[]);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "alice", "alice", "wonderland").await;
    let mut b = authed(addr, "bob", "bob", "builder").await;
    let body = Rng::new(51).bytes(4096);
    let to = path(&a, &b);
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let frame = small_send(0, &to, &a.uri, &body);
    let cut = frame.len() - 1500;
    a.send(&frame[..cut]).await;
    assert!(saw_held(&srv, 1).await, "the body so far was not held");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    a.send(&frame[cut..]).await;
    let f = b.rd.read().await;
    assert_eq!(f.header("Message-ID"), Some("mz0"));
    assert!(f.body == body, "the body arrived altered");
    assert_eq!(f.flag, b'$');
    // Half a chunk, then the sender is gone (a pair of its own: the relay
    // binds a session to the first connection that sends into it, and
    // answers others 506).
    let mut c = authed(addr, "carol", "alice", "wonderland").await;
    let mut d = authed(addr, "dave", "bob", "builder").await;
    let to = path(&c, &d);
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let frame = small_send(1, &to, &c.uri, &body);
    c.send(&frame[..cut]).await;
    assert!(saw_held(&srv, 1).await, "the body so far was not held");
    drop(c);
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
    // Nothing of the unfinished chunk reached its receiver.
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(200), d.rd.io.read(&mut one)).await;
    assert!(
        r.is_err() && d.rd.buf.is_empty(),
        "bytes of an unfinished chunk arrived"
    );
}

/// A receiver on `msrps` stops reading while its sender (plain TCP) pushes
/// 4 KiB chunks, which the relay encrypts for it as they are queued: the
/// sender is slowed (it cannot get everything in), the relay holds no
/// more than a share of receive buffers (none for the receiver), and
/// when the receiver resumes every chunk
/// arrives intact and in order.
#[tokio::test]
async fn stalled_tls_receiver_slows_its_sender() {
    let srv = ServerConfig::new()
        .workers(1)
        .listen_msrp()
        .listen_msrps()
        .msrp_users(REALM, USERS)
        .reactor("recv_buffers = 32")
        .start();
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let a = authed(srv.addrs[0], "alice1", "alice", "wonderland").await;
    let mut b = common::msrp::Client::connect_tls(srv.addrs[1], "b", &der).await;
    b.authed_as("bob", "builder").await;
    let to = vec![a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    let mut most = 0;
    let (stalled, writer) = stall_sender(&srv, a.wr, to, a.uri.clone(), 31, &mut most).await;
    // Held at most while a sender's chunk spans reads: bodies for the
    // TLS receiver are encrypted as they are queued.
    assert!(most <= HOLD_CAP, "{most} receive buffers held");
    for (i, body) in stalled.iter().enumerate() {
        let f = b.read().await;
        assert_eq!(f.method(), Some("SEND"), "{f:?}");
        assert_eq!(f.header("Message-ID"), Some(format!("mz{i}").as_str()));
        assert!(f.body == *body, "message {i}: the body arrived altered");
    }
    let _w = writer.await.expect("writer");
    assert!(
        srv.counter(Counter::MsrpZeroCopyChunks) > 0,
        "no body encrypted from its receive buffer"
    );
}
