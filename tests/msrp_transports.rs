//! End-to-end relay tests across transports (RFC 4975 over TCP and TLS,
//! RFC 7977 over WebSocket) against the real binary: A → B and back for
//! TCP→TCP, WS→TCP, TCP→WSS and TLS (msrps)→WS; the two clients on
//! different cores; and a chain of two rtedge relays (A → relay1 → relay2
//! → B, relay1 reaching relay2 over its own outbound TCP connection).

mod common;

use common::msrp::{
    Client, QUIET, REALM, USERS, assert_failure_report, client_not_on, exchange, relay_config,
    response_to, send_frame,
};
use common::{Server, ServerConfig, free_port};
use dataplane::region::{Counter, MsrpMethod};

/// One relay with every MSRP transport: `msrp`, `msrps`, `ws`, `wss`
/// (addresses in that order).
fn all_transports(workers: u32) -> Server {
    ServerConfig::new()
        .workers(workers)
        .listen_msrp()
        .listen_msrps()
        .listen_ws()
        .listen_wss()
        .sub_protocols(&["msrp"])
        .msrp_users(REALM, USERS)
        .start()
}

#[tokio::test]
async fn tcp_to_tcp() {
    let srv = all_transports(1);
    let mut a = Client::connect(srv.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect(srv.addrs[0], "b").await;
    b.authed_as("bob", "builder").await;
    exchange(&mut a, &mut b).await;
    assert_eq!(
        srv.counter(Counter::MsrpRequestsRelayed(MsrpMethod::Send)),
        2
    );
}

/// A browser-like client on a plain WebSocket (RFC 7977: `;ws` URIs with
/// an `.invalid` host, reachable only through its relay session) and a
/// TCP client.
#[tokio::test]
async fn ws_to_tcp() {
    let srv = all_transports(1);
    let mut a = Client::connect_ws(srv.addrs[2], "a").await;
    a.authed_as("alice", "wonderland").await;
    assert!(a.relay_uri.ends_with(";ws"), "{}", a.relay_uri);
    let mut b = Client::connect(srv.addrs[0], "b").await;
    b.authed_as("bob", "builder").await;
    exchange(&mut a, &mut b).await;
}

/// A TCP client to a client on a secure WebSocket: the WSS client's relay
/// URI is `msrps` (RFC 7977 §5: security is the scheme, the transport
/// stays `ws`).
#[tokio::test]
async fn tcp_to_wss() {
    let srv = all_transports(1);
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let mut a = Client::connect(srv.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect_wss(srv.addrs[3], "b", &der).await;
    b.authed_as("bob", "builder").await;
    assert!(
        b.relay_uri
            .starts_with(&format!("msrps://{}/", srv.addrs[3]))
            && b.relay_uri.ends_with(";ws"),
        "{}",
        b.relay_uri
    );
    exchange(&mut a, &mut b).await;
}

/// A TLS (`msrps`) client to a plain WebSocket client.
#[tokio::test]
async fn tls_to_ws() {
    let srv = all_transports(1);
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let mut a = Client::connect_tls(srv.addrs[1], "a", &der).await;
    a.authed_as("alice", "wonderland").await;
    assert!(
        a.relay_uri
            .starts_with(&format!("msrps://{}/", srv.addrs[1]))
            && a.relay_uri.ends_with(";tcp"),
        "{}",
        a.relay_uri
    );
    let mut b = Client::connect_ws(srv.addrs[2], "b").await;
    b.authed_as("bob", "builder").await;
    exchange(&mut a, &mut b).await;
}

/// Both ends on different cores (workers = 2): the frame crosses cores
/// through the owning core's inbox, in both directions.
#[tokio::test]
async fn ends_on_different_cores() {
    let srv = relay_config(2).start();
    let addr = srv.addrs[0];
    let mut a = Client::connect(addr, "a").await;
    a.authed_as("alice", "wonderland").await;
    let a_core = a.session()[..2].to_string();
    let mut b = client_not_on(addr, "b", "bob", "builder", &a_core).await;
    assert_ne!(&b.session()[..2], a_core);
    let before = srv.counter(Counter::InboxMessages);
    exchange(&mut a, &mut b).await;
    assert!(
        srv.counter(Counter::InboxMessages) > before,
        "no cross-core hand-off happened"
    );
}

/// A chain of two relays: A AUTHs to relay1, B to relay2; A's To-Path is
/// relay1's URI, relay2's URI, B (RFC 4976 §3 / §6.4). relay1 forwards
/// over its own outbound TCP connection to relay2, which delivers to B;
/// each relay appears in From-Path, and each hop's 200 is its own. Then B
/// answers through the chain the other way.
#[tokio::test]
async fn chain_of_two_relays() {
    let relay1 = relay_config(1).start();
    let relay2 = relay_config(1).start();
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect(relay2.addrs[0], "b").await;
    b.authed_as("bob", "builder").await;
    // `one_way` expects exactly [to's relay, from's relay, from] in
    // From-Path: with two relays, that is relay2, relay1, A.
    exchange(&mut a, &mut b).await;
    for srv in [&relay1, &relay2] {
        assert_eq!(
            srv.counter(Counter::MsrpRequestsRelayed(MsrpMethod::Send)),
            2
        );
    }
    // relay1 saw B's reply to its own SEND (the 200 from relay2 over the
    // outbound connection) and absorbed it; no REPORT reached A.
    a.quiet(QUIET).await;
    b.quiet(QUIET).await;
    assert_eq!(relay1.counter(Counter::MsrpFailureReports), 0);
    assert_eq!(relay2.counter(Counter::MsrpFailureReports), 0);
    // The connection slots (the management API's connection dump) show
    // each MSRP connection's role: relay1's client with its user and
    // session, and its outbound connection to relay2 as the next hop.
    let infos = relay1.connection_infos();
    let client = format!("msrp client alice {}", a.session());
    assert!(infos.contains(&client), "{client} not in {infos:?}");
    let hop = format!("msrp next-hop msrp://{}", relay2.addrs[0]);
    assert!(infos.contains(&hop), "{hop} not in {infos:?}");
}

/// Both ways at once with bodies of mixed sizes, B on a TLS transport:
/// the relay seals each large frame for B into records as it queues it
/// and keeps small ones (its own 200s to B, small SENDs) as plaintext
/// until the flush. Every frame arrives intact and in the order the relay
/// wrote it: A's SENDs in order, B's 200s in order.
async fn mixed_sizes_both_ways(a: &mut Client, b: &mut Client) {
    const SIZES: [usize; 6] = [100, 1500, 4096, 300, 9000, 2048];
    let n = 60;
    let body = |tag: &str, i: usize| -> Vec<u8> {
        let seed = tag.len() * 13 + i * 7;
        (0..SIZES[i % SIZES.len()])
            .map(|k| b'a' + ((seed + k) % 26) as u8)
            .collect()
    };
    let burst = |from: &Client, to: &Client, tag: &str| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                send_frame(
                    &format!("{tag}{i:04}"),
                    &[&from.relay_uri, &to.relay_uri, &to.uri],
                    &from.uri,
                    &format!("m-{tag}{i}"),
                    &body(tag, i),
                )
            })
            .collect()
    };
    let (a_burst, b_burst) = (burst(a, b, "mxa"), burst(b, a, "mxb"));
    send_burst(b, &b_burst).await;
    send_burst(a, &a_burst).await;
    for (me, tag, peer_tag) in [(&mut *b, "mxb", "mxa"), (&mut *a, "mxa", "mxb")] {
        let (mut sends, mut oks) = (0, 0);
        let mut answers = Vec::new();
        while sends < n || oks < n {
            let f = me.read().await;
            if f.method() == Some("SEND") {
                assert_eq!(
                    f.header("Message-ID"),
                    Some(format!("m-{peer_tag}{sends}").as_str()),
                    "SENDs out of order"
                );
                assert!(
                    f.body == body(peer_tag, sends),
                    "SEND {sends}: body altered"
                );
                let uri = me.uri.clone();
                answers.push(response_to(&f, 200, "OK", &uri));
                sends += 1;
            } else {
                assert_eq!(f.first, format!("MSRP {tag}{oks:04} 200 OK"), "{f:?}");
                oks += 1;
            }
        }
        send_burst(me, &answers).await;
    }
    a.quiet(QUIET).await;
    b.quiet(QUIET).await;
}

/// `frames` in one write on a byte stream; over WebSocket one message
/// each (RFC 7977 §5.3: one chunk per message).
async fn send_burst(c: &mut Client, frames: &[Vec<u8>]) {
    if c.relay_uri.ends_with(";ws") {
        for f in frames {
            c.send(f).await;
        }
    } else {
        c.send(&frames.concat()).await;
    }
}

#[tokio::test]
async fn mixed_sizes_both_ways_to_msrps() {
    let srv = all_transports(1);
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let mut a = Client::connect(srv.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect_tls(srv.addrs[1], "b", &der).await;
    b.authed_as("bob", "builder").await;
    mixed_sizes_both_ways(&mut a, &mut b).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 0);
    // A's large bodies came in over plain TCP: the relay encrypted them
    // for B from the buffer it received them in, and gave every buffer
    // back.
    let by_ref = srv.counter(Counter::MsrpZeroCopyChunks);
    assert!(by_ref > 0, "no body encrypted from its receive buffer");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// The same with B's TLS connection on the other core: B's core
/// encrypts A's large bodies from the receive buffer of A's core (handed
/// over with their heads), and each buffer goes back to A's core.
#[tokio::test]
async fn mixed_sizes_both_ways_to_msrps_on_another_core() {
    let srv = all_transports(2);
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let mut a = Client::connect(srv.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let a_core = a.session()[..2].to_string();
    let mut b = None;
    for _ in 0..64 {
        let mut c = Client::connect_tls(srv.addrs[1], "b", &der).await;
        c.authed_as("bob", "builder").await;
        if c.session()[..2] != a_core {
            b = Some(c);
            break;
        }
    }
    let mut b = b.expect("a TLS connection on the other core");
    let handoffs = srv.counter(Counter::MsrpHandoffs);
    mixed_sizes_both_ways(&mut a, &mut b).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 0);
    assert!(srv.counter(Counter::MsrpHandoffs) > handoffs);
    let by_ref = srv.counter(Counter::MsrpZeroCopyChunks);
    assert!(by_ref > 0, "no body encrypted from the other core's buffer");
    srv.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

#[tokio::test]
async fn mixed_sizes_both_ways_to_wss() {
    let srv = all_transports(1);
    let der = srv.config.cert.as_ref().expect("cert").der.clone();
    let mut a = Client::connect_tls(srv.addrs[1], "a", &der).await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect_wss(srv.addrs[3], "b", &der).await;
    b.authed_as("bob", "builder").await;
    mixed_sizes_both_ways(&mut a, &mut b).await;
    assert_eq!(srv.counter(Counter::MsrpFailureReports), 0);
}

/// A → relay1 → relay2 → B with 4 KiB bodies: once relay1's outbound
/// connection to relay2 is open, relay1 writes each body to it from the
/// buffer it received it in (counted), as it does toward its own
/// clients; every body arrives intact and every held buffer goes back.
#[tokio::test]
async fn chain_relays_bodies_from_the_receive_buffer() {
    let relay1 = relay_config(1).start();
    let relay2 = relay_config(1).start();
    let mut b = Client::connect(relay2.addrs[0], "b").await;
    b.authed_as("bob", "builder").await;
    chain_from_the_receive_buffer(&relay1, b).await;
}

/// The same with relay2 reached over `msrps`: relay1 encrypts each body
/// for it from the buffer it received it in.
#[tokio::test]
async fn chain_over_msrps_encrypts_bodies_from_the_receive_buffer() {
    let relay2 = relay_config(1).listen_msrps().start();
    let cert = relay2.config.cert.as_ref().expect("cert");
    let (der, ca) = (cert.der.clone(), cert.cert_pem.display().to_string());
    let relay1 = relay_config(1)
        .msrp(&format!("next_hop_ca_file = {ca:?}"))
        .start();
    let mut b = Client::connect_tls(relay2.addrs[2], "b", &der).await;
    b.authed_as("bob", "builder").await;
    chain_from_the_receive_buffer(&relay1, b).await;
}

/// A (plain TCP, on `relay1`) sends B (AUTHed on relay2) 41 SENDs of
/// 4 KiB; see [`chain_relays_bodies_from_the_receive_buffer`].
async fn chain_from_the_receive_buffer(relay1: &Server, mut b: Client) {
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let (ar, br, bu, au) = (
        a.relay_uri.clone(),
        b.relay_uri.clone(),
        b.uri.clone(),
        a.uri.clone(),
    );
    let body =
        |i: usize| -> Vec<u8> { (0..4096).map(|k| b'a' + ((i * 7 + k) % 26) as u8).collect() };
    let send = |i: usize| {
        send_frame(
            &format!("zc{i:04}x"),
            &[&ar, &br, &bu],
            &au,
            &format!("m-zc{i}"),
            &body(i),
        )
    };
    // The first SEND opens the outbound connection (it goes as a copy).
    a.send(&send(0)).await;
    let got = b.read().await;
    assert_eq!(got.body, body(0));
    b.send(&response_to(&got, 200, "OK", &bu)).await;
    let chunks0 = relay1.counter(Counter::MsrpZeroCopyChunks);
    let n = 40;
    for batch in (1..=n).collect::<Vec<_>>().chunks(4) {
        let wire: Vec<u8> = batch.iter().flat_map(|&i| send(i)).collect();
        a.send(&wire).await;
        for &i in batch {
            let got = b.read().await;
            assert_eq!(got.method(), Some("SEND"), "{got:?}");
            assert_eq!(got.header("Message-ID"), Some(format!("m-zc{i}").as_str()));
            assert!(got.body == body(i), "message {i}: the body arrived altered");
            b.send(&response_to(&got, 200, "OK", &bu)).await;
        }
    }
    for i in 0..=n {
        let ok = a.read().await;
        assert_eq!(ok.first, format!("MSRP zc{i:04}x 200 OK"), "{ok:?}");
    }
    let chunks = relay1.counter(Counter::MsrpZeroCopyChunks) - chunks0;
    eprintln!("relay1 sent {chunks} of {n} bodies to relay2 without a copy");
    assert!(
        chunks >= n as u64 / 2,
        "{chunks} of {n} chunks went to the next hop without a copy"
    );
    a.quiet(QUIET).await;
    assert_eq!(relay1.counter(Counter::MsrpFailureReports), 0);
    relay1.wait_gauge(Counter::RecvBuffersHeld, 0).await;
}

/// A → relay1 → relay2 → B where relay2 is reached over `msrps`: relay1
/// opens a TLS connection to it and checks its certificate against
/// `[msrp] next_hop_ca_file` (RFC 4976 §6.3: msrps is TLS hop by hop).
#[tokio::test]
async fn chain_of_two_relays_over_msrps() {
    let relay2 = relay_config(1).listen_msrps().start();
    let cert = relay2.config.cert.as_ref().expect("cert");
    let (der, ca) = (cert.der.clone(), cert.cert_pem.display().to_string());
    let relay1 = relay_config(1)
        .msrp(&format!("next_hop_ca_file = {ca:?}"))
        .start();
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    // B on relay2's msrps listener: its Use-Path is an msrps URI.
    let mut b = Client::connect_tls(relay2.addrs[2], "b", &der).await;
    b.authed_as("bob", "builder").await;
    assert!(b.relay_uri.starts_with("msrps://"), "{}", b.relay_uri);
    exchange(&mut a, &mut b).await;
    assert!(
        relay1.counter(Counter::TlsHandshakes(dataplane::region::TlsResult::Ok)) >= 1,
        "relay1 did not speak TLS to relay2"
    );
    assert_eq!(relay1.counter(Counter::MsrpFailureReports), 0);
}

/// An msrps next hop whose certificate relay1 cannot verify gets no
/// traffic: the SEND fails with a failure REPORT instead of going out in
/// clear or to an unverified peer.
#[tokio::test]
async fn msrps_next_hop_with_unverifiable_certificate_is_refused() {
    let relay2 = relay_config(1).listen_msrps().start();
    let der = relay2.config.cert.as_ref().expect("cert").der.clone();
    // relay1 trusts only the system roots, which do not hold relay2's
    // self-signed certificate.
    let relay1 = relay_config(1).msrp("transaction_timeout = 5").start();
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect_tls(relay2.addrs[2], "b", &der).await;
    b.authed_as("bob", "builder").await;
    let (ar, br, bu, au) = (
        a.relay_uri.clone(),
        b.relay_uri.clone(),
        b.uri.clone(),
        a.uri.clone(),
    );
    a.send(&send_frame(
        "tls1x",
        &[&ar, &br, &bu],
        &au,
        "m-tls1",
        b"secret",
    ))
    .await;
    let ok = a.read().await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let rep = a.read().await;
    assert_failure_report(&rep, &au, &ar, "m-tls1", 408);
    b.quiet(QUIET).await;
    assert_eq!(
        relay2.counter(Counter::MsrpRequestsReceived(MsrpMethod::Send)),
        0
    );
}

/// The next hop's connection is lost while a SEND waits for its response:
/// the sender gets a failure REPORT at once (408), not after the
/// transaction timeout (set far beyond the test's read timeout here). The
/// next hop is the test's own listener: it reads the SEND, never answers,
/// and hangs up.
#[tokio::test]
async fn lost_next_hop_connection_is_reported_at_once() {
    use tokio::io::AsyncReadExt;
    let relay1 = relay_config(1).msrp("transaction_timeout = 600").start();
    let hop = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hop_uri = format!("msrp://{}/hop1;tcp", hop.local_addr().expect("addr"));
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let (ar, au) = (a.relay_uri.clone(), a.uri.clone());
    a.send(&send_frame(
        "lost1x",
        &[&ar, &hop_uri],
        &au,
        "m-lost",
        b"hello",
    ))
    .await;
    assert_eq!(a.read().await.status(), Some(200));
    let (mut conn, _) = common::within("relay1 dials the next hop", hop.accept())
        .await
        .expect("accept");
    let mut got = Vec::new();
    while !got.windows(5).any(|w| w == b"hello") {
        let mut buf = [0u8; 4096];
        let n = common::within("the SEND", conn.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "closed before the SEND");
        got.extend_from_slice(&buf[..n]);
    }
    drop(conn);
    let rep = a.read().await;
    assert_failure_report(&rep, &au, &ar, "m-lost", 408);
}

/// A next hop named by a host name: relay1 resolves it off its reactor
/// (the resolver thread), dials TLS and checks relay2's certificate
/// against that name (`localhost`, RFC 4976 §6.3).
#[tokio::test]
async fn msrps_next_hop_by_name() {
    let port = free_port();
    let relay2 = relay_config(1)
        .listen_msrps_at(&format!("127.0.0.1:{port}"))
        .msrp(&format!("use_path_addr = \"localhost:{port}\""))
        .start();
    let cert = relay2.config.cert.as_ref().expect("cert");
    let (der, ca) = (cert.der.clone(), cert.cert_pem.display().to_string());
    let relay1 = relay_config(1)
        .msrp(&format!("next_hop_ca_file = {ca:?}"))
        .start();
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect_tls(relay2.addrs[2], "b", &der).await;
    b.authed_as("bob", "builder").await;
    assert!(
        b.relay_uri
            .starts_with(&format!("msrps://localhost:{port}/")),
        "{}",
        b.relay_uri
    );
    exchange(&mut a, &mut b).await;
}

/// A next hop whose name does not resolve fails at once with a 408
/// failure REPORT (not after the transaction timeout).
#[tokio::test]
async fn unresolvable_next_hop_is_reported_at_once() {
    let relay1 = relay_config(1).msrp("transaction_timeout = 600").start();
    let mut a = Client::connect(relay1.addrs[0], "a").await;
    a.authed_as("alice", "wonderland").await;
    let (ar, au) = (a.relay_uri.clone(), a.uri.clone());
    // RFC 6761 §6.2: .test names are not delegated (.invalid ones are
    // refused earlier: RFC 7977 clients' unresolvable hosts, 481).
    let hop = "msrp://no-such-relay.test:2855/x1;tcp";
    a.send(&send_frame("dns1x", &[&ar, hop], &au, "m-dns", b"hi"))
        .await;
    assert_eq!(a.read().await.status(), Some(200));
    let rep = a.read().await;
    assert_failure_report(&rep, &au, &ar, "m-dns", 408);
}
