//! End-to-end tests of the relay's refusals and failure REPORTs (RFC 4975
//! §7.1.2, §10; RFC 4976 §6.2, §6.4.1) against the real binary: 481 for an
//! unknown or expired session, 403 for a sender using a relay URI it did
//! not AUTH, 506 for a session used from a second connection, and a
//! failure REPORT (`Status: 000 code`, back along the From-Path, only when
//! Failure-Report is `yes` or `partial`, never for `no`) for each cause: an
//! unknown session on another core, an unreachable next hop, an error
//! response downstream, a transaction timeout and a lost destination (on
//! the sender's core or another one).
//!
//! "Never for `no`" is checked without a wall-clock window where possible:
//! the `no` SEND goes first, so a REPORT for it would arrive before the one
//! for the `yes`/`partial` SEND that follows.

mod common;

use common::msrp::{
    Client, Frame, QUIET, assert_failure_report, authed, client_not_on, relay, relay_config,
    response_to, send_frame, send_frame_with,
};
use dataplane::region::{Counter, MsrpStatus};
use std::time::Duration;

/// The SEND `a` sends toward `to` with `Failure-Report: fr`.
fn send_fr(a: &Client, tid: &str, to: &[&str], msg_id: &str, fr: &str) -> Vec<u8> {
    send_frame_with(
        tid,
        to,
        &a.uri,
        msg_id,
        &[("Failure-Report", fr)],
        b"payload",
    )
}

/// Reads frames until the REPORT for `msg_id`; returns it and whether a
/// 200 for `tid` came first. Anything else fails.
async fn report_after_ok(a: &mut Client, tid: &str, msg_id: &str) -> (Frame, bool) {
    let mut ok = false;
    loop {
        let f = a.read().await;
        if f.status() == Some(200) && f.tid == tid && !ok {
            ok = true;
            continue;
        }
        assert_eq!(f.method(), Some("REPORT"), "{f:?}");
        assert_eq!(
            f.header("Message-ID"),
            Some(msg_id),
            "a REPORT for another message: {f:?}"
        );
        return (f, ok);
    }
}

/// What the receiver does with each SEND that reaches it.
enum Receiver<'a> {
    /// The SEND never reaches a client of ours.
    None,
    /// It reads the SEND and answers `code`.
    Answers(&'a mut Client, u16),
}

impl Receiver<'_> {
    async fn on_send(&mut self, fr: &str) {
        let (b, code) = match self {
            Receiver::None => return,
            Receiver::Answers(b, code) => (b, *code),
        };
        let got = b.read().await;
        assert_eq!(got.method(), Some("SEND"), "{got:?}");
        assert_eq!(got.header("Failure-Report"), Some(fr), "{got:?}");
        let me = b.uri.clone();
        b.send(&response_to(&got, code, "Unsupported Media Type", &me))
            .await;
    }
}

/// For each Failure-Report value, a SEND `a` makes toward `to` fails with
/// `code`: `yes` gets the hop-by-hop 200 then a REPORT, `partial` only the
/// REPORT, `no` nothing (RFC 4975 §7.1.2, RFC 4976 §6.4.1).
async fn three_failure_reports(
    a: &mut Client,
    to: &[&str],
    code: u16,
    n: &str,
    mut b: Receiver<'_>,
) {
    // `no` first: a REPORT for it would arrive before the next one.
    a.send(&send_fr(
        a,
        &format!("{n}no01"),
        to,
        &format!("{n}-no"),
        "no",
    ))
    .await;
    b.on_send("no").await;
    for fr in ["yes", "partial"] {
        let tid = format!("{n}{fr}1");
        let mid = format!("{n}-{fr}");
        a.send(&send_fr(a, &tid, to, &mid, fr)).await;
        b.on_send(fr).await;
        let (rep, ok) = report_after_ok(a, &tid, &mid).await;
        assert_eq!(ok, fr == "yes", "hop-by-hop 200 only for yes ({fr})");
        assert_failure_report(&rep, &a.uri, to[0], &mid, code);
        assert_eq!(rep.header("Byte-Range"), Some("1-7/7"), "{rep:?}");
        assert_ne!(rep.tid, tid, "a REPORT is a new transaction");
    }
    a.quiet(QUIET).await;
}

/// An expired session is unknown (RFC 4976 §5.1 / §6.2): 481, both for the
/// client that AUTHed it and for traffic toward it.
#[tokio::test]
async fn expired_session_gets_481() {
    let srv = relay_config(1).msrp("auth_min_expires = 1").start();
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = Client::connect(addr, "b").await;
    let r = b.auth_with("bob", "builder", Some(1)).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.header("Expires"), Some("1"));
    b.relay_uri = r.header("Use-Path").unwrap().to_string();
    // Alive at first.
    a.send(&send_frame(
        "ex01",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m1",
        b"live",
    ))
    .await;
    assert_eq!(b.read().await.body, b"live");
    assert_eq!(a.read().await.status(), Some(200));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.send(&send_frame(
        "ex02",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m2",
        b"too late",
    ))
    .await;
    let r = a.read().await;
    assert_eq!(r.first, "MSRP ex02 481 Session Does Not Exist", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(a.uri.as_str()));
    b.send(&send_frame(
        "ex03",
        &[&b.relay_uri, &a.relay_uri, &a.uri],
        &b.uri,
        "m3",
        b"mine expired",
    ))
    .await;
    let r = b.read().await;
    assert_eq!(r.first, "MSRP ex03 481 Session Does Not Exist", "{r:?}");
    a.quiet(QUIET).await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::NoSession), 2)
        .await;
}

/// A client using a relay URI it did not AUTH, toward beyond that
/// session's client, is refused with 403 (RFC 4976 §6.2: the relay
/// forwards to the next hop only for the session's own client).
#[tokio::test]
async fn foreign_sender_gets_403() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let mut c = authed(addr, "c", "alice", "wonderland").await;
    // C borrows A's relay URI to reach B.
    c.send(&send_frame(
        "fo01",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &c.uri,
        "m1",
        b"not yours",
    ))
    .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP fo01 403 Forbidden", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(c.uri.as_str()));
    assert_eq!(r.header("From-Path"), Some(a.relay_uri.as_str()));
    b.quiet(QUIET).await;
    a.quiet(QUIET).await;
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::Forbidden), 1)
        .await;
}

/// A client using another client's relay URI with a To-Path that does not
/// end at that session's client (its URI from the AUTH) goes beyond the
/// session's client: 403 (RFC 4976 §6.2 — a relay URI may carry traffic
/// only from its client or toward it), and the session's client receives
/// nothing.
///
/// The relay compares the authority (scheme, host, port) of that URI with
/// the one of the client's AUTH From-Path, so a client may run several
/// sessions (paths) over one AUTH.
#[tokio::test]
async fn foreign_sender_toward_another_endpoint_gets_403() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut c = authed(addr, "c", "bob", "builder").await;
    c.send(&send_frame(
        "fo03",
        &[&a.relay_uri, "msrp://192.0.2.7:9/elsewhere;tcp"],
        &c.uri,
        "m3",
        b"not for a",
    ))
    .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP fo03 403 Forbidden", "{r:?}");
    a.quiet(QUIET).await;
}

/// A session's far side is bound to the first connection that sends
/// toward it; the same session used from a second connection gets 506
/// (RFC 4975 §5.4, §10).
#[tokio::test]
async fn session_used_from_a_second_connection_gets_506() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let mut c = authed(addr, "c", "alice", "wonderland").await;
    a.send(&send_frame(
        "bd01",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m1",
        b"first",
    ))
    .await;
    assert_eq!(b.read().await.body, b"first");
    assert_eq!(a.read().await.status(), Some(200));
    // C through its own relay URI to B's session: B's session is A's now.
    c.send(&send_frame(
        "bd02",
        &[&c.relay_uri, &b.relay_uri, &b.uri],
        &c.uri,
        "m2",
        b"second",
    ))
    .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP bd02 506 Session Already In Use", "{r:?}");
    // C straight to B's session.
    c.send(&send_frame(
        "bd03",
        &[&b.relay_uri, &b.uri],
        &c.uri,
        "m3",
        b"third",
    ))
    .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP bd03 506 Session Already In Use", "{r:?}");
    b.quiet(QUIET).await;
    // A keeps using it.
    a.send(&send_frame(
        "bd04",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m4",
        b"again",
    ))
    .await;
    assert_eq!(b.read().await.body, b"again");
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::WrongConnection), 2)
        .await;
}

/// A SEND toward a session id of ours that does not exist on the core it
/// names: the frame is handed to that core, which cannot deliver it, so the
/// answer is a failure REPORT `000 481` (the hop-by-hop 200 was already
/// sent for `yes`).
#[tokio::test]
async fn unknown_session_on_another_core_is_a_481_report() {
    let srv = relay(2);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let core = &a.session()[..2];
    let other = if core == "00" { "01" } else { "00" };
    let bogus = format!("msrp://{addr}/{other}AAAAAAAAAAAAAAAAAAAA;tcp");
    let ar = a.relay_uri.clone();
    let to = [ar.as_str(), bogus.as_str(), "msrp://127.0.0.1:9/x;tcp"];
    three_failure_reports(&mut a, &to, 481, "us", Receiver::None).await;
    srv.wait_counter(Counter::MsrpFailureReports, 2).await;
}

/// The next hop refuses the connection: failure REPORT `000 408` (the
/// relay's code for an undeliverable request, RFC 4975 §7.1.1 — 408 is
/// carried only in REPORTs).
#[tokio::test]
async fn unreachable_next_hop_is_a_408_report() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let hop = format!("msrp://127.0.0.1:{}/far1;tcp", common::free_port());
    let ar = a.relay_uri.clone();
    let to = [ar.as_str(), hop.as_str()];
    three_failure_reports(&mut a, &to, 408, "nh", Receiver::None).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 2);
}

/// The receiver answers the SEND with an error: the relay absorbs the
/// response (hop by hop) and reports it in a failure REPORT with that code
/// (RFC 4976 §6.4.1).
#[tokio::test]
async fn downstream_error_response_is_reported() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let (ar, br, bu) = (a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone());
    let to = [ar.as_str(), br.as_str(), bu.as_str()];
    three_failure_reports(&mut a, &to, 415, "de", Receiver::Answers(&mut b, 415)).await;
    b.quiet(QUIET).await;
}

/// The receiver never answers: after `[msrp] transaction_timeout` the
/// relay sends a failure REPORT `000 408` (RFC 4975 §7.1.1). The default
/// (30 s) exceeds the test's read bound, so the key must take effect.
#[tokio::test]
async fn transaction_timeout_is_a_408_report() {
    let srv = relay_config(1).msrp("transaction_timeout = 1").start();
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    let mut b = authed(addr, "b", "bob", "builder").await;
    let (ar, br, bu) = (a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone());
    let to = [ar.as_str(), br.as_str(), bu.as_str()];
    // `partial` and `no`: no response from the receiver is success
    // (RFC 4975 §7.1.1), so the timeout reports nothing — not even later.
    for fr in ["partial", "no"] {
        a.send(&send_fr(
            &a,
            &format!("to{fr}1"),
            &to,
            &format!("to-{fr}"),
            fr,
        ))
        .await;
        assert_eq!(b.read().await.method(), Some("SEND"));
    }
    a.quiet(std::time::Duration::from_millis(2500)).await;
    // `yes`: the hop-by-hop 200, then REPORT 408 once the timeout passes.
    a.send(&send_fr(&a, "toyes1", &to, "to-yes", "yes")).await;
    assert_eq!(b.read().await.method(), Some("SEND"));
    let (rep, ok) = report_after_ok(&mut a, "toyes1", "to-yes").await;
    assert!(ok, "hop-by-hop 200 for yes");
    assert_failure_report(&rep, &a.uri, to[0], "to-yes", 408);
    a.quiet(QUIET).await;
    b.quiet(QUIET).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 1);
}

/// The receiver's connection is lost while the SEND awaits its response:
/// failure REPORT `000 408` at once (AG msrprelay: "Session got
/// disconnected"), long before the 30 s transaction timeout.
#[tokio::test]
async fn lost_destination_is_a_408_report() {
    let srv = relay(1);
    let addr = srv.addrs[0];
    let mut a = authed(addr, "a", "alice", "wonderland").await;
    for (n, fr) in ["no", "yes", "partial"].into_iter().enumerate() {
        let mut b = authed(addr, &format!("b{n}"), "bob", "builder").await;
        let tid = format!("lost{fr}");
        let mid = format!("ld-{fr}");
        let to = [a.relay_uri.as_str(), b.relay_uri.as_str(), b.uri.as_str()];
        a.send(&send_fr(&a, &tid, &to, &mid, fr)).await;
        let got = b.read().await;
        assert_eq!(got.method(), Some("SEND"), "{got:?}");
        drop(b);
        if fr == "no" {
            a.quiet(QUIET).await;
            continue;
        }
        let (rep, ok) = report_after_ok(&mut a, &tid, &mid).await;
        assert_eq!(ok, fr == "yes");
        assert_failure_report(&rep, &a.uri, &a.relay_uri, &mid, 408);
    }
    a.quiet(QUIET).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 2);
}

/// A relay with two workers (transaction timeout 300 s, so only a lost
/// connection can explain a REPORT), alice and bob AUTHed on different
/// cores, and the To-Path from alice to bob through both relay URIs.
async fn cross_core_pair() -> (common::Server, Client, Client, [String; 3]) {
    let srv = relay_config(2).msrp("transaction_timeout = 300").start();
    let addr = srv.addrs[0];
    let a = authed(addr, "a", "alice", "wonderland").await;
    let a_core = a.session()[..2].to_string();
    let b = client_not_on(addr, "b", "bob", "builder", &a_core).await;
    let to = [a.relay_uri.clone(), b.relay_uri.clone(), b.uri.clone()];
    (srv, a, b, to)
}

/// The receiver is on another core than the sender (the SENDs cross cores
/// through its core's inbox) and its connection is lost while the SENDs it
/// read await their responses: the receiver's core tells the sender's core
/// at once, which sends failure REPORTs `000 408` for `yes` and `partial`
/// (RFC 4976 §6.4.1 ¶3), none for `no` — long before the transaction
/// timeout (300 s here, so only the loss can explain a REPORT).
#[tokio::test]
async fn lost_destination_on_another_core_is_a_408_report_at_once() {
    let (srv, mut a, mut b, to) = cross_core_pair().await;
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let handoffs = srv.counter(Counter::MsrpHandoffs);
    // `no` first: a REPORT for it would come before the others.
    let sends = [
        ("cno1", "no"),
        ("cyes1", "yes"),
        ("cpart1", "partial"),
        ("cyes2", "yes"),
    ];
    for (tid, fr) in sends {
        a.send(&send_fr(&a, tid, &to, &format!("m-{tid}"), fr))
            .await;
    }
    // B reads every SEND and answers none.
    for (_, fr) in sends {
        let got = b.read().await;
        assert_eq!(got.method(), Some("SEND"), "{got:?}");
        assert_eq!(got.header("Failure-Report"), Some(fr), "{got:?}");
    }
    assert!(
        srv.counter(Counter::MsrpHandoffs) >= handoffs + 4,
        "no hand-off"
    );
    // The hop-by-hop 200s for the `yes` SENDs come before the loss.
    let mut oks = Vec::new();
    while oks.len() < 2 {
        let f = a.read().await;
        assert_eq!(f.status(), Some(200), "{f:?}");
        oks.push(f.tid);
    }
    oks.sort();
    assert_eq!(oks, ["cyes1", "cyes2"]);
    a.quiet(QUIET).await;
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut reported = Vec::new();
    while reported.len() < 3 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(rep) = a.read_within(left).await else {
            panic!("no failure REPORT within 10 s of the loss (got {reported:?})");
        };
        assert_eq!(rep.method(), Some("REPORT"), "{rep:?}");
        let mid = rep.header("Message-ID").unwrap_or_default().to_string();
        assert_failure_report(&rep, &a.uri, &a.relay_uri, &mid, 408);
        reported.push(mid);
    }
    reported.sort();
    assert_eq!(reported, ["m-cpart1", "m-cyes1", "m-cyes2"]);
    a.quiet(QUIET).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 3);
}

/// The same with a deep pipeline: 300 unanswered SENDs on one receiver,
/// more than a per-connection bound of 256 would track, are all reported
/// at once when the receiver is lost (a fan-in of ten senders with 32 in
/// flight each reaches that depth in normal operation).
#[tokio::test]
async fn a_deep_pipeline_on_another_core_is_reported_whole_at_once() {
    const N: usize = 300;
    let (srv, mut a, mut b, to) = cross_core_pair().await;
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let mut batch = Vec::new();
    for i in 0..N {
        batch.extend_from_slice(&send_fr(
            &a,
            &format!("deep{i:04}"),
            &to,
            &format!("m-{i}"),
            "yes",
        ));
    }
    a.send(&batch).await;
    for _ in 0..N {
        let got = b.read().await;
        assert_eq!(got.method(), Some("SEND"), "{got:?}");
    }
    for _ in 0..N {
        let f = a.read().await;
        assert_eq!(f.status(), Some(200), "{f:?}");
    }
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut reported = std::collections::BTreeSet::new();
    while reported.len() < N {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(rep) = a.read_within(left).await else {
            panic!(
                "{} of {N} failure REPORTs within 10 s of the loss",
                reported.len()
            );
        };
        let mid = rep.header("Message-ID").unwrap_or_default().to_string();
        assert_failure_report(&rep, &a.uri, &a.relay_uri, &mid, 408);
        assert!(reported.insert(mid), "{rep:?} twice");
    }
    a.quiet(QUIET).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), N as u64);
}

/// The symmetric case: the SENDER's connection is lost while its SENDs
/// wait on another core (read by a receiver that has not answered, or
/// queued there). Its transactions go with it: nothing is reported (there
/// is nobody to report to), late responses and the receiver's own loss are
/// harmless, and the relay goes on relaying.
#[tokio::test]
async fn lost_sender_on_another_core_leaves_nothing_behind() {
    let (srv, mut a, mut b, to) = cross_core_pair().await;
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    for tid in ["slost1", "slost2", "slost3"] {
        a.send(&send_fr(&a, tid, &to, &format!("m-{tid}"), "yes"))
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = b.read().await;
        assert_eq!(f.method(), Some("SEND"), "{f:?}");
        got.push(f);
    }
    drop(a);
    // A late answer to one (its transaction died with the sender) ...
    let me = b.uri.clone();
    b.send(&response_to(&got[0], 200, "OK", &me)).await;
    b.quiet(QUIET).await;
    // ... and the receiver's loss with two still unanswered.
    drop(b);
    // The relay still relays, across cores, both ways.
    let mut c = authed(srv.addrs[0], "c", "alice", "wonderland").await;
    let c_core = c.session()[..2].to_string();
    let mut d = client_not_on(srv.addrs[0], "d", "bob", "builder", &c_core).await;
    let to = [c.relay_uri.clone(), d.relay_uri.clone(), d.uri.clone()];
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    c.send(&send_fr(&c, "after1", &to, "m-after", "yes")).await;
    let f = d.read().await;
    assert_eq!(f.body, b"payload", "{f:?}");
    let me = d.uri.clone();
    d.send(&response_to(&f, 200, "OK", &me)).await;
    let ok = c.read().await;
    assert_eq!((ok.tid.as_str(), ok.status()), ("after1", Some(200)));
    c.quiet(QUIET).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 0);
}
