//! `msrp-relay`: N sender/receiver pairs talk through an MSRP relay
//! (RFC 4975, RFC 4976; over WebSocket RFC 7977).
//!
//! Per pair, both clients connect (TCP `msrp://`, TLS `msrps://`, or
//! WebSocket with the `msrp` sub-protocol), AUTH to the relay (RFC 4976
//! §5.1: a 401 is answered with an MD5 digest, qop=auth, method AUTH,
//! digest-uri = the relay URI) and learn their Use-Path. The sender then
//! keeps `--window` SENDs in flight to the receiver: To-Path = the
//! receiver's Use-Path + the receiver's URI (one pass through the relay;
//! `--full-path` puts the sender's own Use-Path first, the RFC 4976 §5
//! two-relay path, which hairpins through the same relay). A SEND stays in
//! flight until the receiver got it and, with Failure-Report yes (the
//! default, RFC 4975 §7.1.1), the relay's hop-by-hop 200 came back.
//!
//! The receiver checks every SEND: body checksum bound to (pair, sequence
//! number), Message-ID, Byte-Range, To-Path and From-Path; counts lost,
//! duplicated, reordered and corrupted messages; and answers 200 to the
//! relay when Failure-Report asks for it (RFC 4975 §7.2: the response goes
//! to the previous hop, the first From-Path URI). Delivery latency is send
//! (queued at the sender) → complete chunk parsed at the receiver; both
//! ends are driven by one task, so one clock serves both.
//!
//! `--receiver-url`: the receivers connect and AUTH to a second relay, so
//! every SEND crosses two (sender → relay1 → relay2 → receiver) on the
//! full path.
//!
//! Open loop (`--rate R`): each pair sends R / pairs SENDs/s on the
//! schedule of `engine::OpenLoop` (the one ws-echo uses), whatever the
//! relay answers, and latency runs from the *intended* send time
//! (coordinated omission). `--window` is then only a cap on SENDs in
//! flight, so a dead relay cannot make the client queue without bound.

use serde::Serialize;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::engine::{
    Clock, ErrorLog, OpenLoop, Phase, PhaseState, Scenario, ThreadCtx, wait_phase,
};
use crate::msrp::chunk::{self, Chunk, Kind};
use crate::msrp::digest;
use crate::msrp::io::{MsrpIo, StreamIo};
use crate::net::{ConnError, Connector};
use crate::payload::{self, Body, Verdict};
use crate::report;
use crate::rng::Rng;
use crate::scenario::units::{self, Counters, Hists, UnitsThread, run_units};
use crate::ws::WsIo;

/// RFC 4975 §7.1.1 Failure-Report values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FailureReport {
    /// Header omitted: its default, `yes`: every hop answers 200.
    Yes,
    /// Only error responses.
    Partial,
    /// No responses at all.
    No,
}

/// A relay the receivers connect to instead of the senders' one
/// (`--receiver-url`): a two-relay chain A → relay1 → relay2 → B.
#[derive(Clone)]
pub struct ReceiverRelay {
    pub connector: Connector,
    /// WebSocket (RFC 7977) rather than a byte stream.
    pub ws: bool,
    /// Its MSRP URI: To-Path of the receivers' AUTH and their digest-uri.
    pub relay_uri: String,
}

/// Settings of one msrp-relay run.
#[derive(Clone)]
pub struct MsrpRelay {
    pub connector: Connector,
    /// WebSocket (RFC 7977) rather than a byte stream.
    pub ws: bool,
    pub pairs: usize,
    /// Body bytes per SEND.
    pub size: usize,
    /// SENDs in flight per pair (closed loop), or the in-flight cap per
    /// pair (open loop).
    pub window: usize,
    /// Open loop: SENDs per second over all pairs (`None`: closed loop).
    pub rate: Option<f64>,
    /// Open loop: lateness of the client's own timer not charged to the
    /// relay (see `engine::OpenLoop`).
    pub timer_slack: Duration,
    /// The relay's URI: To-Path of AUTH and the digest-uri.
    pub relay_uri: String,
    /// (user, password); `None`: no AUTH at all.
    pub auth: Option<(String, String)>,
    /// Expires header in AUTH (RFC 4976 §5.1); `None`: omitted.
    pub expires: Option<u64>,
    pub full_path: bool,
    /// Receivers on a second relay (`None`: both ends on `connector`).
    /// Implies the full path: relay1 only forwards what is addressed to a
    /// session of its own first (RFC 4976 §6.2), so the sender's Use-Path
    /// must lead.
    pub receiver_relay: Option<ReceiverRelay>,
    pub failure_report: FailureReport,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    /// Largest chunk accepted from the relay.
    pub max_chunk: usize,
}

/// Traffic and integrity counts.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct MsrpStats {
    /// SENDs written by the senders.
    pub sent: u64,
    /// SENDs delivered to the receivers (intact or not).
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    /// The relay's 200 responses to SENDs.
    pub relay_ok: u64,
    /// Non-200 responses to SENDs (the message is counted lost too).
    pub relay_errors: u64,
    /// SENDs delivered whose hop-by-hop 200 never came (Failure-Report yes).
    pub relay_ok_missing: u64,
    /// REPORT requests received (failure reports from the relay).
    pub reports: u64,
    /// 200 responses the receivers sent to the relay.
    pub receiver_ok: u64,
    /// Chunks nobody asked for (unknown transaction, other methods).
    pub unexpected: u64,
    /// TCP/WebSocket connections established / failed (2 per pair).
    pub connections_established: u64,
    pub connections_failed: u64,
    /// AUTHs answered with a digest challenge (401).
    pub auth_challenges: u64,
    pub closed_by_server: u64,
}

impl Counters for MsrpStats {
    fn add(&mut self, o: &MsrpStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.corrupted += o.corrupted;
        self.relay_ok += o.relay_ok;
        self.relay_errors += o.relay_errors;
        self.relay_ok_missing += o.relay_ok_missing;
        self.reports += o.reports;
        self.receiver_ok += o.receiver_ok;
        self.unexpected += o.unexpected;
        self.connections_established += o.connections_established;
        self.connections_failed += o.connections_failed;
        self.auth_challenges += o.auth_challenges;
        self.closed_by_server += o.closed_by_server;
    }
}

/// One worker thread's results.
pub type MsrpThread = UnitsThread<MsrpStats>;

type Shared = units::Shared<MsrpStats>;

impl Scenario for MsrpRelay {
    type Thread = MsrpThread;

    /// One unit is one pair: both ends run in one task, on one thread.
    fn units(&self) -> usize {
        self.pairs
    }

    async fn run_thread(self: Arc<Self>, ctx: ThreadCtx) -> MsrpThread {
        let concurrency = self.connect_concurrency;
        run_units(ctx, concurrency, |ctx, sh, sem, idx| {
            pair_task(self.clone(), ctx, sh, sem, idx)
        })
        .await
    }
}

/// One end of a pair after AUTH.
struct Client {
    io: MsrpIo,
    /// Our own URI (From-Path).
    uri: String,
    /// The relay's Use-Path for us (RFC 4976 §5.1), after AUTH.
    use_path: Option<String>,
}

fn random_ident(rng: &mut Rng, n: usize) -> String {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALNUM[rng.below(ALNUM.len() as u64) as usize] as char)
        .collect()
}

fn with_role(role: &str, e: ConnError) -> ConnError {
    ConnError::new(e.kind, format!("{role}: {}", e.detail))
}

impl MsrpRelay {
    /// Connect, pick our URI and AUTH (connection `conn` of the run); a
    /// receiver goes to `--receiver-url` when one is given.
    async fn open(
        &self,
        conn: usize,
        receiver: bool,
        rng: &mut Rng,
        challenges: &mut u64,
    ) -> Result<Client, ConnError> {
        let (connector, ws, relay_uri) = match &self.receiver_relay {
            Some(r) if receiver => (&r.connector, r.ws, r.relay_uri.as_str()),
            _ => (&self.connector, self.ws, self.relay_uri.as_str()),
        };
        let secure = connector.target.tls;
        let scheme = if secure { "msrps" } else { "msrp" };
        let session = random_ident(rng, 12);
        let (io, uri) = if ws {
            let up = connector.connect(conn, rng).await?;
            let io = MsrpIo::Ws(Box::new(WsIo::new(
                up,
                rng.clone(),
                64 * 1024,
                self.max_chunk,
            )));
            // RFC 7977 §5.2: a WebSocket client's URI is not resolvable;
            // it uses an `.invalid` host and the `ws` transport.
            let host = random_ident(rng, 10);
            (io, format!("{scheme}://{host}.invalid:2855/{session};ws"))
        } else {
            let stream = connector.connect_stream(conn).await?;
            let local = stream
                .local_addr()
                .map_err(|e| ConnError::new("connect", e.to_string()))?;
            let io = MsrpIo::Stream(StreamIo::new(stream));
            (io, format!("{scheme}://{local}/{session};tcp"))
        };
        let mut c = Client {
            io,
            uri,
            use_path: None,
        };
        if let Some((user, password)) = &self.auth {
            c.use_path = Some(
                self.authenticate(&mut c, relay_uri, user, password, rng, challenges)
                    .await?,
            );
        }
        Ok(c)
    }

    /// RFC 4976 §5.1: AUTH; a 401 challenge is answered once with digest
    /// credentials. Returns the Use-Path of the 200.
    async fn authenticate(
        &self,
        c: &mut Client,
        relay_uri: &str,
        user: &str,
        password: &str,
        rng: &mut Rng,
        challenges: &mut u64,
    ) -> Result<String, ConnError> {
        let mut early = VecDeque::new();
        let mut authz: Option<String> = None;
        for attempt in 0..2 {
            let tid = random_ident(rng, 10);
            let mut req = Vec::new();
            chunk::write_auth(
                &mut req,
                &tid,
                relay_uri,
                &c.uri,
                authz.as_deref(),
                self.expires,
            );
            let r = c.io.request(&req, &mut early, self.max_chunk).await?;
            if r.tid != tid || r.status.is_none() {
                return Err(ConnError::new(
                    "auth",
                    format!(
                        "expected the response to AUTH {tid}, got {} {}",
                        r.tid,
                        r.method.as_deref().unwrap_or("response")
                    ),
                ));
            }
            match r.status {
                Some(200) => {
                    return r.header("Use-Path").map(str::to_string).ok_or_else(|| {
                        ConnError::new("auth", "200 to AUTH without Use-Path (RFC 4976 §5.1)")
                    });
                }
                Some(401) if attempt == 0 => {
                    *challenges += 1;
                    let ch = r
                        .header("WWW-Authenticate")
                        .ok_or_else(|| ConnError::new("auth", "401 without WWW-Authenticate"))
                        .and_then(|v| {
                            digest::parse_challenge(v).map_err(|e| ConnError::new("auth", e))
                        })?;
                    let cnonce = random_ident(rng, 16);
                    authz = Some(
                        digest::authorization(&ch, user, password, "AUTH", relay_uri, &cnonce, 1)
                            .map_err(|e| ConnError::new("auth", e))?,
                    );
                }
                Some(code) => {
                    return Err(ConnError::new(
                        "auth",
                        format!(
                            "AUTH answered {code}{}",
                            if authz.is_some() {
                                " after the digest response"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                None => unreachable!("checked above"),
            }
        }
        Err(ConnError::new("auth", "AUTH challenged twice"))
    }
}

/// Connect and AUTH both ends of pair `idx`: receiver first, then sender.
async fn open_pair(
    sc: &MsrpRelay,
    idx: usize,
    rng: &mut Rng,
    stats: &mut MsrpStats,
) -> Result<(Client, Client), ConnError> {
    let t = sc.connect_timeout;
    let bounded = |role: &'static str, r: Result<Result<Client, ConnError>, _>| match r {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(with_role(role, e)),
        Err(_) => Err(ConnError::new(
            "connect_timeout",
            format!("{role}: not connected and authenticated within {t:?}"),
        )),
    };
    let mut ch = 0;
    let recv = tokio::time::timeout(t, sc.open(2 * idx + 1, true, rng, &mut ch)).await;
    stats.auth_challenges += std::mem::take(&mut ch);
    let recv = bounded("receiver", recv).inspect_err(|_| stats.connections_failed += 2)?;
    stats.connections_established += 1;
    let send = tokio::time::timeout(t, sc.open(2 * idx, false, rng, &mut ch)).await;
    stats.auth_challenges += ch;
    let send = bounded("sender", send).inspect_err(|_| stats.connections_failed += 1)?;
    stats.connections_established += 1;
    Ok((send, recv))
}

async fn pair_task(
    sc: Arc<MsrpRelay>,
    ctx: Rc<ThreadCtx>,
    sh: Rc<Shared>,
    sem: Rc<Semaphore>,
    idx: usize,
) {
    let mut phase = ctx.phase.clone();
    let mut rng = Rng::from_os(idx as u64);
    let mut stats = MsrpStats::default();
    let opened = {
        let _permit = sem.acquire().await;
        if phase.borrow().phase >= Phase::Drain {
            return;
        }
        ctx.counters.attempted.add(1);
        let mut stop = phase.clone();
        tokio::select! {
            r = open_pair(&sc, idx, &mut rng, &mut stats) => r,
            _ = wait_phase(&mut stop, Phase::Drain) => {
                Err(ConnError::new("aborted", "run stopped while connecting"))
            }
        }
    };
    let (sender, receiver) = match opened {
        Ok(p) => p,
        Err(e) => {
            ctx.counters.failed.add(1);
            ctx.error(&sh.errors, &e);
            sh.stats.borrow_mut().add(&stats);
            return;
        }
    };
    ctx.counters.connected.add(1);
    let st = wait_phase(&mut phase, Phase::Run).await;
    let to_path = match (&sender.use_path, &receiver.use_path) {
        (Some(s), Some(r)) if sc.full_path || sc.receiver_relay.is_some() => {
            format!("{s} {r} {}", receiver.uri)
        }
        (_, Some(r)) => format!("{r} {}", receiver.uri),
        (_, None) => format!("{} {}", sc.relay_uri, receiver.uri),
    };
    let mut send_head = format!("To-Path: {to_path}\r\nFrom-Path: {}\r\n", sender.uri);
    if sc.failure_report != FailureReport::Yes {
        let v = match sc.failure_report {
            FailureReport::No => "no",
            _ => "partial",
        };
        send_head.push_str(&format!("Failure-Report: {v}\r\n"));
    }
    let mut pair = Pair {
        s: sender.io,
        r: receiver.io,
        st: PairState {
            id: idx as u32,
            body: Body::new(sc.size, true, &mut rng),
            size: sc.size,
            byte_range: format!("1-{0}/{0}", sc.size).into_bytes(),
            send_head: send_head.into_bytes(),
            sender_uri: sender.uri.into_bytes(),
            receiver_uri: receiver.uri.into_bytes(),
            next_seq: 0,
            ring: VecDeque::with_capacity(sc.window.min(4096)),
            max_delivered: None,
            expect_ack: sc.failure_report == FailureReport::Yes,
            window: sc.window.max(1),
            measure_from_ns: ctx.clock.ns_of(st.measure_from),
            stats,
            batch_received: 0,
            batch_bytes: 0,
            retired: 0,
            replies: Vec::new(),
            reply_ends: Vec::new(),
            scratch: Vec::with_capacity(512),
        },
        sending: st.phase == Phase::Run,
        open: sc.rate.map(|rate| {
            let per_pair = rate / sc.pairs.max(1) as f64;
            let start = ctx.clock.ns_of(st.run_start);
            OpenLoop::new(per_pair, start, sc.timer_slack, &mut rng)
        }),
        max_chunk: sc.max_chunk,
        clock: ctx.clock,
        sh: sh.clone(),
    };
    let outcome = if pair.sending {
        let mut drain = phase.clone();
        let mut close = phase.clone();
        let drain_f = pin!(wait_phase(&mut drain, Phase::Drain));
        let close_f = pin!(wait_phase(&mut close, Phase::Close));
        pair.run(&ctx, drain_f, close_f).await
    } else {
        Ok(())
    };
    if let Err(e) = &outcome {
        if e.kind == "closed_by_server" || e.kind == "eof" {
            pair.st.stats.closed_by_server += 1;
        }
        ctx.error(&sh.errors, e);
    }
    let wait = if crate::engine::interrupted() || outcome.is_err() {
        Duration::from_millis(50)
    } else {
        sc.close_timeout
    };
    for (role, io) in [("sender", &mut pair.s), ("receiver", &mut pair.r)] {
        if let Err(e) = io.close(wait).await
            && outcome.is_ok()
        {
            ctx.error(&sh.errors, &with_role(role, e));
        }
    }
    let mut st = pair.st;
    // Whatever was never delivered was lost; delivered but never
    // acknowledged by the relay is a missing hop-by-hop 200.
    for p in &st.ring {
        if !p.delivered && !p.failed {
            st.stats.lost += 1;
        } else if p.delivered && st.expect_ack && !p.acked {
            st.stats.relay_ok_missing += 1;
        }
    }
    ctx.counters.inflight.sub(st.ring.len() as u64);
    ctx.counters.finished.add(1);
    sh.stats.borrow_mut().add(&st.stats);
}

/// One SEND in flight.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sent_ns: u64,
    delivered: bool,
    acked: bool,
    /// Rejected by the relay (error response or failure REPORT).
    failed: bool,
}

/// Per-pair state the read callbacks update.
struct PairState {
    id: u32,
    body: Body,
    size: usize,
    byte_range: Vec<u8>,
    /// "To-Path: …\r\nFrom-Path: …\r\n" (+ Failure-Report) of every SEND.
    send_head: Vec<u8>,
    sender_uri: Vec<u8>,
    receiver_uri: Vec<u8>,
    next_seq: u64,
    /// In flight, by sequence number: `ring[i]` is `front_seq() + i`.
    ring: VecDeque<InFlight>,
    max_delivered: Option<u64>,
    expect_ack: bool,
    window: usize,
    measure_from_ns: u64,
    stats: MsrpStats,
    batch_received: u64,
    batch_bytes: u64,
    retired: u64,
    /// The receiver's responses to queue after a read: chunks back to back.
    replies: Vec<u8>,
    reply_ends: Vec<usize>,
    scratch: Vec<u8>,
}

/// Transaction ids and Message-IDs carry the sequence number in hex (both
/// RFC 4975 idents: a letter and 12 hex digits).
fn put_id(out: &mut Vec<u8>, prefix: u8, seq: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(prefix);
    for i in (0..12).rev() {
        out.push(HEX[((seq >> (4 * i)) & 0xF) as usize]);
    }
}

fn get_id(v: &[u8], prefix: u8) -> Option<u64> {
    let (&p, hex) = v.split_first()?;
    if p != prefix || hex.len() != 12 {
        return None;
    }
    hex.iter().try_fold(0u64, |a, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(a << 4 | u64::from(d))
    })
}

const ID_LEN: usize = 13;

impl PairState {
    fn front_seq(&self) -> u64 {
        self.next_seq - self.ring.len() as u64
    }

    fn slot(&mut self, seq: u64) -> Option<&mut InFlight> {
        let front = self.front_seq();
        if seq < front {
            return None;
        }
        self.ring.get_mut((seq - front) as usize)
    }

    /// Queue SEND number `next_seq` on `io`, stamped `now`.
    fn push_send(&mut self, io: &mut MsrpIo, now: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let h = &mut self.scratch;
        h.clear();
        h.extend_from_slice(b"MSRP ");
        put_id(h, b's', seq);
        h.extend_from_slice(b" SEND\r\n");
        h.extend_from_slice(&self.send_head);
        h.extend_from_slice(b"Message-ID: ");
        put_id(h, b'm', seq);
        h.extend_from_slice(b"\r\nByte-Range: ");
        h.extend_from_slice(&self.byte_range);
        h.extend_from_slice(b"\r\nContent-Type: text/plain\r\n\r\n");
        // data CRLF "-------" tid "$" CRLF (RFC 4975 §9).
        let len = h.len() + self.size + 2 + 7 + ID_LEN + 3;
        let (id, body) = (self.id, &self.body);
        io.queue_with(len, |w| {
            w.extend_from_slice(h);
            payload::append(w, true, id, seq, body);
            w.extend_from_slice(b"\r\n-------");
            put_id(w, b's', seq);
            w.extend_from_slice(b"$\r\n");
        });
        self.ring.push_back(InFlight {
            sent_ns: now,
            delivered: false,
            acked: false,
            failed: false,
        });
        self.stats.sent += 1;
    }

    /// A chunk arrived at the receiver.
    fn on_receiver_chunk(&mut self, c: Chunk<'_>, now: u64, h: &mut Hists, errors: &mut ErrorLog) {
        match c.kind {
            Kind::Request { method } if method == b"SEND" => self.on_send(c, now, h),
            Kind::Request { method } if method == b"REPORT" => self.on_report(c, errors),
            _ => {
                self.stats.unexpected += 1;
                errors.record(&ConnError::new(
                    "unexpected_chunk",
                    format!("receiver got {}", describe(&c)),
                ));
            }
        }
    }

    fn on_send(&mut self, c: Chunk<'_>, now: u64, h: &mut Hists) {
        self.batch_received += 1;
        self.stats.received += 1;
        let body = c.body.unwrap_or(&[]);
        self.batch_bytes += body.len() as u64;
        let [fr, from, to, msg_id, range] = c.headers_of([
            "Failure-Report",
            "From-Path",
            "To-Path",
            "Message-ID",
            "Byte-Range",
        ]);
        // Hop-by-hop 200 to the relay (RFC 4975 §7.1.1: Failure-Report
        // absent = yes; partial and no get no 200).
        let from_first = from.and_then(|v| chunk::path_uris(v).next());
        if matches!(fr, None | Some(b"yes"))
            && let Some(prev) = from_first
        {
            chunk::write_response(&mut self.replies, c.tid, "200 OK", prev, &self.receiver_uri);
            self.reply_ends.push(self.replies.len());
            self.stats.receiver_ok += 1;
        }
        let verdict = payload::verify(body, true);
        let msg_seq = msg_id.and_then(|v| get_id(v, b'm'));
        let paths_ok = to == Some(&self.receiver_uri[..])
            && from.and_then(|v| chunk::path_uris(v).last()) == Some(&self.sender_uri[..]);
        let intact = c.flag == b'$'
            && body.len() == self.size
            && range == Some(&self.byte_range[..])
            && paths_ok;
        match verdict {
            Verdict::Ok { conn, seq } if conn == self.id && msg_seq == Some(seq) && intact => {
                self.deliver(seq, now, h);
            }
            Verdict::Ok { conn, seq } | Verdict::BadChecksum { conn, seq } if conn == self.id => {
                // A damaged copy of a known message: corrupted, not also lost.
                self.stats.corrupted += 1;
                if let Some(p) = self.slot(seq) {
                    p.delivered = true;
                }
            }
            _ => self.stats.corrupted += 1,
        }
    }

    fn deliver(&mut self, seq: u64, now: u64, h: &mut Hists) {
        if seq >= self.next_seq {
            self.stats.corrupted += 1; // never sent
            return;
        }
        let Some(p) = self.slot(seq) else {
            self.stats.duplicated += 1; // already retired
            return;
        };
        if p.delivered {
            self.stats.duplicated += 1;
            return;
        }
        p.delivered = true;
        let sent = p.sent_ns;
        match self.max_delivered {
            Some(m) if seq < m => self.stats.reordered += 1,
            _ => self.max_delivered = Some(seq),
        }
        let us = now.saturating_sub(sent) / 1000;
        h.seconds.record(now, us);
        if sent >= self.measure_from_ns {
            h.measured.saturating_record(us);
        }
    }

    /// A REPORT (RFC 4975 §7.1.2; from a relay: a failure report, RFC 4976
    /// §6.4.1): its Message-ID names our message, which failed.
    fn on_report(&mut self, c: Chunk<'_>, errors: &mut ErrorLog) {
        self.stats.reports += 1;
        let status = c
            .header("Status")
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        errors.record(&ConnError::new(
            "report",
            format!("REPORT with Status {status:?}"),
        ));
        if let Some(seq) = c.header("Message-ID").and_then(|v| get_id(v, b'm'))
            && let Some(p) = self.slot(seq)
            && !p.delivered
            && !p.failed
        {
            p.failed = true;
            self.stats.lost += 1;
        }
    }

    /// A chunk arrived at the sender: the relay's responses to SENDs.
    fn on_sender_chunk(&mut self, c: Chunk<'_>, errors: &mut ErrorLog) {
        match c.kind {
            Kind::Response { status } => {
                let Some(seq) = get_id(c.tid, b's') else {
                    self.stats.unexpected += 1;
                    errors.record(&ConnError::new(
                        "unexpected_chunk",
                        format!("sender got {}", describe(&c)),
                    ));
                    return;
                };
                // (first response?, newly failed?)
                let (first, failed_now) = match self.slot(seq) {
                    Some(p) if !p.acked => {
                        p.acked = true;
                        let fail = status != 200 && !p.delivered && !p.failed;
                        if fail {
                            p.failed = true;
                        }
                        (true, fail)
                    }
                    _ => (false, false),
                };
                if !first {
                    // Second response to one transaction, or one for a
                    // retired SEND.
                    self.stats.unexpected += 1;
                    errors.record(&ConnError::new(
                        "unexpected_chunk",
                        format!("sender got an extra {status} for SEND {seq}"),
                    ));
                } else if status == 200 {
                    self.stats.relay_ok += 1;
                    if !self.expect_ack {
                        self.stats.unexpected += 1;
                    }
                } else {
                    self.stats.relay_errors += 1;
                    if failed_now {
                        self.stats.lost += 1;
                    }
                    if errors.0.get("send_rejected").is_none_or(|e| e.count == 0) {
                        // The first one names the path, to tell which
                        // session the relay refused.
                        let head = String::from_utf8_lossy(&self.send_head);
                        let to = head.lines().next().unwrap_or("");
                        errors.record(&ConnError::new(
                            "send_rejected",
                            format!("relay answered a SEND with {status} ({to})"),
                        ));
                    } else {
                        errors.record(&ConnError::new("send_rejected", String::new()));
                    }
                }
            }
            Kind::Request { method } if method == b"REPORT" => self.on_report(c, errors),
            Kind::Request { .. } => {
                self.stats.unexpected += 1;
                errors.record(&ConnError::new(
                    "unexpected_chunk",
                    format!("sender got {}", describe(&c)),
                ));
            }
        }
    }

    /// Drop finished SENDs from the front of the ring.
    fn retire(&mut self) {
        while let Some(p) = self.ring.front() {
            let done = (p.delivered || p.failed) && (p.acked || !self.expect_ack || p.failed);
            if !done {
                break;
            }
            self.ring.pop_front();
            self.retired += 1;
        }
    }
}

fn describe(c: &Chunk<'_>) -> String {
    let tid = String::from_utf8_lossy(c.tid);
    match c.kind {
        Kind::Request { method } => format!("{} {tid}", String::from_utf8_lossy(method)),
        Kind::Response { status } => format!("response {status} to {tid}"),
    }
}

struct Pair {
    /// Sender and receiver connections.
    s: MsrpIo,
    r: MsrpIo,
    st: PairState,
    sending: bool,
    /// Open loop: the send schedule (`None`: closed loop, keep the window
    /// full).
    open: Option<OpenLoop>,
    max_chunk: usize,
    clock: Clock,
    sh: Rc<Shared>,
}

impl Pair {
    async fn run(
        &mut self,
        ctx: &ThreadCtx,
        mut drain: Pin<&mut impl Future<Output = PhaseState>>,
        mut close: Pin<&mut impl Future<Output = PhaseState>>,
    ) -> Result<(), ConnError> {
        let mut sleep = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        poll_fn(|cx| {
            if self.sending && drain.as_mut().poll(cx).is_ready() {
                self.sending = false;
            }
            if !self.sending && close.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            self.poll_step(cx, ctx, sleep.as_mut())
        })
        .await
    }

    fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &ThreadCtx,
        mut sleep: Pin<&mut tokio::time::Sleep>,
    ) -> Poll<Result<(), ConnError>> {
        let sh = self.sh.clone();
        let max = self.max_chunk;
        let mut rounds = 0;
        loop {
            let mut progress = false;
            let now = self.clock.now_ns();
            // 1. The receiver: deliveries.
            {
                let st = &mut self.st;
                let mut h = sh.hist.borrow_mut();
                let mut errors = sh.errors.borrow_mut();
                let mut on = |c: Chunk<'_>| {
                    st.on_receiver_chunk(c, now, &mut h, &mut errors);
                    Ok(())
                };
                match self.r.poll_read_chunks(cx, max, &mut on) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(with_role("receiver", e))),
                    Poll::Pending => {}
                }
            }
            if !self.st.reply_ends.is_empty() {
                let mut start = 0;
                for &end in &self.st.reply_ends {
                    self.r.queue(&self.st.replies[start..end]);
                    start = end;
                }
                self.st.replies.clear();
                self.st.reply_ends.clear();
            }
            // 2. The sender: the relay's responses.
            {
                let st = &mut self.st;
                let mut errors = sh.errors.borrow_mut();
                let mut on = |c: Chunk<'_>| {
                    st.on_sender_chunk(c, &mut errors);
                    Ok(())
                };
                match self.s.poll_read_chunks(cx, max, &mut on) {
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(with_role("sender", e))),
                    Poll::Pending => {}
                }
            }
            self.st.retire();
            let c = &ctx.counters;
            if self.st.batch_received > 0 {
                c.received.add(self.st.batch_received);
                c.rx_bytes.add(self.st.batch_bytes);
                self.st.batch_received = 0;
                self.st.batch_bytes = 0;
            }
            if self.st.retired > 0 {
                c.inflight.sub(self.st.retired);
                self.st.retired = 0;
            }
            // 3. New SENDs: up to the window (closed loop), or those due
            // (open loop; the window is then only a cap on what a stalled
            // relay can make pile up, and a SEND it holds back keeps its
            // intended send time).
            if self.sending {
                let before = self.st.next_seq;
                if let Some(open) = &mut self.open {
                    while self.st.ring.len() < self.st.window {
                        let Some(stamp) = open.take_due(now) else {
                            break;
                        };
                        self.st.push_send(&mut self.s, stamp);
                    }
                } else {
                    let room = self.st.window.saturating_sub(self.st.ring.len());
                    if room > 0 {
                        self.s.reserve(room * (self.st.size + 400));
                        for _ in 0..room {
                            self.st.push_send(&mut self.s, now);
                        }
                    }
                }
                let n = self.st.next_seq - before;
                if n > 0 {
                    c.sent.add(n);
                    c.tx_bytes.add(n * self.st.size as u64);
                    c.inflight.add(n);
                }
            }
            // 4. Write both ends.
            for (role, io) in [("sender", &mut self.s), ("receiver", &mut self.r)] {
                match io.poll_write_out(cx) {
                    Poll::Ready(Ok(w)) => progress |= w,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(with_role(role, e))),
                    Poll::Pending => {}
                }
            }
            // 5. Done?
            if !self.sending
                && self.st.ring.is_empty()
                && self.s.pending_write() == 0
                && self.r.pending_write() == 0
            {
                return Poll::Ready(Ok(()));
            }
            // 6. Open loop: wake up when the next SEND is due.
            if self.sending
                && let Some(open) = &mut self.open
                && open.poll_timer(cx, now, &self.clock, sleep.as_mut())
            {
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
            rounds += 1;
            if rounds >= 16 {
                // Let the thread's other pairs run.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl MsrpRelay {
    /// Merge the threads' results into the report.
    pub fn report(
        &self,
        threads: Vec<MsrpThread>,
        run: &crate::engine::RunSummary,
        config: serde_json::Value,
        nthreads: usize,
    ) -> report::Report {
        let UnitsThread {
            hist,
            seconds,
            stats,
            errors,
        } = UnitsThread::merge(&threads);
        let mut r = report::Report::base(
            "msrp-relay",
            config,
            run,
            nthreads,
            2 * self.pairs as u64,
            Some(run.measured_received()),
            errors,
        );
        // Two connections per pair (the engine counts pairs).
        r.connections.established = stats.connections_established;
        r.connections.failed = stats.connections_failed;
        if run.connect_s > 0.0 {
            r.connections.connect_rate =
                (stats.connections_established as f64 / run.connect_s * 1000.0).round() / 1000.0;
        }
        r.messages = serde_json::to_value(stats).ok();
        r.latency_us = report::Percentiles::of(&hist);
        r.latency_per_second = seconds.series();
        r.ok = r.ok
            && r.threads_lost == 0
            && stats.connections_failed == 0
            && stats.closed_by_server == 0
            && stats.lost == 0
            && stats.corrupted == 0
            && stats.duplicated == 0
            && stats.reordered == 0
            && stats.relay_errors == 0
            && stats.relay_ok_missing == 0
            && stats.reports == 0
            && stats.unexpected == 0
            && stats.received > 0;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SecondHists;

    fn state(window: usize) -> PairState {
        let mut rng = Rng::from_os(0);
        PairState {
            id: 7,
            body: Body::new(100, true, &mut rng),
            size: 100,
            byte_range: b"1-100/100".to_vec(),
            send_head:
                b"To-Path: msrp://r:1/sb;tcp msrp://b:2/b;tcp\r\nFrom-Path: msrp://a:3/a;tcp\r\n"
                    .to_vec(),
            sender_uri: b"msrp://a:3/a;tcp".to_vec(),
            receiver_uri: b"msrp://b:2/b;tcp".to_vec(),
            next_seq: 0,
            ring: VecDeque::new(),
            max_delivered: None,
            expect_ack: true,
            window,
            measure_from_ns: 0,
            stats: MsrpStats::default(),
            batch_received: 0,
            batch_bytes: 0,
            retired: 0,
            replies: Vec::new(),
            reply_ends: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The SEND for `seq` as the relay forwards it to the receiver.
    fn relayed(st: &PairState, seq: u64, tweak: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = Vec::new();
        payload::append(&mut body, true, st.id, seq, &st.body);
        tweak(&mut body);
        let mut f = format!(
            "MSRP rly{seq:04} SEND\r\nTo-Path: msrp://b:2/b;tcp\r\n\
             From-Path: msrp://r:1/sb;tcp msrp://a:3/a;tcp\r\nMessage-ID: m{seq:012x}\r\n\
             Byte-Range: 1-{0}/{0}\r\nContent-Type: text/plain\r\n\r\n",
            body.len()
        )
        .into_bytes();
        f.extend_from_slice(&body);
        f.extend_from_slice(format!("\r\n-------rly{seq:04}$\r\n").as_bytes());
        f
    }

    fn hists() -> Hists {
        Hists {
            measured: report::new_histogram(),
            seconds: SecondHists::default(),
        }
    }

    #[tokio::test]
    async fn send_chunks_parse_back() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut b, _) = l.accept().await.unwrap();
        let mut io = MsrpIo::Stream(StreamIo::new(crate::net::Stream::Plain(a)));
        let mut st = state(4);
        for _ in 0..3 {
            st.push_send(&mut io, 0);
        }
        poll_fn(|cx| io.poll_write_out(cx)).await.unwrap();
        let mut buf = Vec::new();
        let mut pos = 0;
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let mut tmp = [0u8; 4096];
            let n = b.read(&mut tmp).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&tmp[..n]);
            while let Some((c, n)) = chunk::parse(&buf[pos..], 1 << 20).unwrap() {
                assert!(c.is_request("SEND"));
                let seq = get_id(c.tid, b's').unwrap();
                assert_eq!(
                    c.header("Message-ID").and_then(|v| get_id(v, b'm')),
                    Some(seq)
                );
                assert_eq!(c.header("Byte-Range"), Some(&b"1-100/100"[..]));
                assert_eq!(c.body.map(<[u8]>::len), Some(100));
                assert_eq!(
                    payload::verify(c.body.unwrap(), true),
                    Verdict::Ok { conn: 7, seq }
                );
                seqs.push(seq);
                pos += n;
            }
        }
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!(pos, buf.len());
        assert_eq!(st.ring.len(), 3);
        assert_eq!(get_id(b"s00000000002a", b's'), Some(42));
        assert_eq!(get_id(b"m00000000002a", b's'), None);
        assert_eq!(get_id(b"s2a", b's'), None);
        assert!(chunk::is_ident(b"s00000000002a"));
    }

    #[test]
    fn integrity_accounting() {
        let mut st = state(8);
        let mut h = hists();
        let mut errors = ErrorLog::default();
        for _ in 0..6 {
            st.ring.push_back(InFlight {
                sent_ns: 1_000,
                delivered: false,
                acked: false,
                failed: false,
            });
            st.next_seq += 1;
        }
        let feed = |st: &mut PairState, f: &[u8], h: &mut Hists, e: &mut ErrorLog| {
            let (c, n) = chunk::parse(f, 1 << 20).unwrap().unwrap();
            assert_eq!(n, f.len());
            st.on_receiver_chunk(c, 5_000_000, h, e);
        };
        let f = relayed(&st, 0, |_| {});
        feed(&mut st, &f, &mut h, &mut errors);
        let f = relayed(&st, 2, |_| {});
        feed(&mut st, &f, &mut h, &mut errors);
        let f = relayed(&st, 1, |_| {});
        feed(&mut st, &f, &mut h, &mut errors); // reordered
        let f = relayed(&st, 0, |_| {});
        feed(&mut st, &f, &mut h, &mut errors); // duplicate
        let f = relayed(&st, 3, |b| b[60] ^= 1);
        feed(&mut st, &f, &mut h, &mut errors); // corrupted
        let f = relayed(&st, 99, |_| {});
        feed(&mut st, &f, &mut h, &mut errors); // never sent
        assert_eq!(st.stats.received, 6);
        assert_eq!(st.stats.reordered, 1);
        assert_eq!(st.stats.duplicated, 1);
        assert_eq!(st.stats.corrupted, 2);
        assert_eq!(h.measured.len(), 3);
        assert_eq!(h.measured.max(), 4999);
        // Every SEND got a 200 to the previous hop only (RFC 4975 §7.2).
        assert_eq!(st.reply_ends.len(), 6);
        let (r, _) = chunk::parse(&st.replies[..st.reply_ends[0]], 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.tid, b"rly0000");
        assert_eq!(r.header("To-Path"), Some(&b"msrp://r:1/sb;tcp"[..]));
        assert_eq!(r.header("From-Path"), Some(&b"msrp://b:2/b;tcp"[..]));
        // Nothing retires before the relay's 200s.
        st.retire();
        assert_eq!(st.ring.len(), 6);
        for seq in 0..4u64 {
            let mut f = Vec::new();
            let mut tid = Vec::new();
            put_id(&mut tid, b's', seq);
            chunk::write_response(
                &mut f,
                &tid,
                "200 OK",
                b"msrp://a:3/a;tcp",
                b"msrp://r:1/sa;tcp",
            );
            let (c, _) = chunk::parse(&f, 1 << 20).unwrap().unwrap();
            st.on_sender_chunk(c, &mut errors);
        }
        st.retire();
        assert_eq!(st.ring.len(), 2);
        assert_eq!(st.retired, 4);
        assert_eq!(st.stats.relay_ok, 4);
        // A rejected SEND counts as lost at once and then retires.
        let mut f = Vec::new();
        let mut tid = Vec::new();
        put_id(&mut tid, b's', 4);
        chunk::write_response(&mut f, &tid, "481 No session", b"x:", b"y:");
        let (c, _) = chunk::parse(&f, 1 << 20).unwrap().unwrap();
        st.on_sender_chunk(c, &mut errors);
        st.retire();
        assert_eq!(
            (st.stats.lost, st.stats.relay_errors, st.ring.len()),
            (1, 1, 1)
        );
        assert!(errors.0.contains_key("send_rejected"));
    }

    #[test]
    fn wrong_path_or_byte_range_is_corrupted() {
        let mut st = state(8);
        let mut h = hists();
        let mut errors = ErrorLog::default();
        st.ring.push_back(InFlight {
            sent_ns: 0,
            delivered: false,
            acked: false,
            failed: false,
        });
        st.next_seq = 1;
        let f = String::from_utf8(relayed(&st, 0, |_| {}))
            .unwrap()
            .replace("To-Path: msrp://b:2/b;tcp", "To-Path: msrp://c:2/c;tcp");
        let (c, _) = chunk::parse(f.as_bytes(), 1 << 20).unwrap().unwrap();
        st.on_receiver_chunk(c, 10, &mut h, &mut errors);
        assert_eq!(st.stats.corrupted, 1);
        assert!(st.ring[0].delivered, "a damaged copy is not also lost");
        // A REPORT for it is counted and logged.
        let rep = "MSRP rep1 REPORT\r\nTo-Path: msrp://a:3/a;tcp\r\nFrom-Path: msrp://r:1/x;tcp\r\n\
                   Message-ID: m000000000000\r\nStatus: 000 408 Timeout\r\n-------rep1$\r\n";
        let (c, _) = chunk::parse(rep.as_bytes(), 1 << 20).unwrap().unwrap();
        st.on_sender_chunk(c, &mut errors);
        assert_eq!(st.stats.reports, 1);
        assert!(errors.0.contains_key("report"));
    }
}
