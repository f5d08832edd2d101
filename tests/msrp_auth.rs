//! End-to-end AUTH tests (RFC 4976 §5.1, §6.3; RFC 2617 digest) against
//! the real binary: every outcome of an AUTH addressed to the relay — 401
//! challenge, stale nonce, 403 and the per-connection failure cap, 423 with
//! Min-Expires / Max-Expires, 200 with Use-Path, Expires and
//! Authentication-Info, and the default Expires — and the users file read
//! again while running. The client is the independent text client of
//! `tests/common/msrp.rs`.

mod common;
mod mgmt_common;

use common::msrp::{
    Client, QUIET, REALM, USERS, auth_frame, authorization, md5_hex, param, relay_config,
    send_frame,
};
use common::{users_file, write_users};
use dataplane::region::{AuthResult, Counter, MsrpStatus, ReloadResult};
use std::time::Duration;

/// AUTH without credentials: 401 whose `WWW-Authenticate` is a Digest
/// challenge with our realm, a nonce and `qop="auth"` (RFC 4976 §6.3, RFC
/// 2617 §3.2.1), addressed back along the From-Path with the request's
/// transaction id; no Use-Path is granted.
#[tokio::test]
async fn auth_without_credentials_is_challenged() {
    let srv = relay_config(1).start();
    let mut c = Client::connect(srv.addrs[0], "alice").await;
    let (relay, me) = (c.auth_uri.clone(), c.uri.clone());
    c.send(&auth_frame("ch01", &relay, &me, None, None)).await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP ch01 401 Unauthorized", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(me.as_str()));
    assert_eq!(r.header("From-Path"), Some(relay.as_str()));
    let ch = r.header("WWW-Authenticate").expect("WWW-Authenticate");
    assert!(ch.starts_with("Digest "), "{ch}");
    assert_eq!(param(ch, "realm"), REALM, "{ch}");
    assert_eq!(param(ch, "qop"), "auth", "{ch}");
    assert!(!param(ch, "nonce").is_empty(), "{ch}");
    assert!(
        !ch.contains("stale"),
        "a first challenge is not stale: {ch}"
    );
    assert_eq!(r.header("Use-Path"), None);
    // Two challenges carry different nonces.
    c.send(&auth_frame("ch02", &relay, &me, None, None)).await;
    let r2 = c.read().await;
    assert_eq!(r2.status(), Some(401));
    assert_ne!(
        param(r2.header("WWW-Authenticate").unwrap(), "nonce"),
        param(ch, "nonce")
    );
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Challenged), 2)
        .await;
    assert_eq!(srv.gauge(Counter::MsrpSessionsActive), 0);
}

/// A nonce older than `[msrp] nonce_lifetime` is stale: the relay answers
/// a fresh 401 with `stale=true` (RFC 2617 §3.2.1) instead of 403, and the
/// new nonce works.
#[tokio::test]
async fn expired_nonce_gets_stale_challenge() {
    let srv = relay_config(1).msrp("nonce_lifetime = 1").start();
    let mut c = Client::connect(srv.addrs[0], "alice").await;
    let (relay, me) = (c.auth_uri.clone(), c.uri.clone());
    c.send(&auth_frame("st01", &relay, &me, None, None)).await;
    let r = c.read().await;
    assert_eq!(r.status(), Some(401));
    let old = param(r.header("WWW-Authenticate").unwrap(), "nonce");
    // Nonce timestamps have one-second resolution: 2.2 s makes the age at
    // least 2 s, over the 1 s lifetime.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let authz = authorization("alice", "wonderland", &old, &relay, 1);
    c.send(&auth_frame("st02", &relay, &me, Some(&authz), None))
        .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP st02 401 Unauthorized", "{r:?}");
    let ch = r.header("WWW-Authenticate").expect("WWW-Authenticate");
    assert!(ch.contains("stale=true"), "{ch}");
    let fresh = param(ch, "nonce");
    assert_ne!(fresh, old);
    let authz = authorization("alice", "wonderland", &fresh, &relay, 1);
    c.send(&auth_frame("st03", &relay, &me, Some(&authz), None))
        .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP st03 200 OK", "{r:?}");
    // A stale nonce is not a failed AUTH.
    assert_eq!(srv.counter(Counter::MsrpAuth(AuthResult::Failed)), 0);
}

/// A wrong password gets 403 (RFC 4976 §6.3); the connection survives the
/// first failures, and the third failure on one connection closes it (AG
/// msrprelay's `max_auth_attempts` = 3). Every failure is counted; another
/// connection is not affected.
#[tokio::test]
async fn wrong_password_is_403_and_the_failure_cap_closes() {
    let srv = relay_config(1).start();
    let addr = srv.addrs[0];
    let mut c = Client::connect(addr, "mallory").await;
    for i in 1..=2 {
        let r = c.auth_with("alice", "not-it", None).await;
        assert_eq!(r.first, "MSRP a2x9 403 Forbidden", "attempt {i}: {r:?}");
        assert_eq!(r.header("To-Path"), Some(c.uri.as_str()));
        assert_eq!(r.header("Use-Path"), None);
    }
    // Unknown users fail the same way.
    let r = c.auth_with("nobody", "x", None).await;
    assert_eq!(r.status(), Some(403), "{r:?}");
    let rest = c.expect_closed().await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Failed), 3)
        .await;
    assert_eq!(srv.counter(Counter::MsrpAuth(AuthResult::Failed)), 3);
    assert_eq!(srv.counter(Counter::MsrpAuth(AuthResult::Ok)), 0);
    // A new connection starts with a clean slate.
    let mut d = Client::connect(addr, "alice").await;
    d.authed_as("alice", "wonderland").await;
    assert_eq!(srv.gauge(Counter::MsrpSessionsActive), 1);
}

/// `[msrp] auth_max_failures` sets the cap: 1 closes the connection at the
/// first 403; 0 never closes it for failures.
#[tokio::test]
async fn the_failure_cap_is_configurable() {
    let srv = relay_config(1).msrp("auth_max_failures = 1").start();
    let mut c = Client::connect(srv.addrs[0], "mallory").await;
    assert_eq!(c.auth_with("alice", "no", None).await.status(), Some(403));
    assert!(c.expect_closed().await.is_empty());

    let srv = relay_config(1).msrp("auth_max_failures = 0").start();
    let mut c = Client::connect(srv.addrs[0], "patient").await;
    for i in 0..5 {
        let r = c.auth_with("alice", "no", None).await;
        assert_eq!(r.status(), Some(403), "attempt {i}: {r:?}");
    }
    c.authed_as("alice", "wonderland").await;
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Failed), 5)
        .await;
}

/// `Expires` outside `[auth_min_expires, auth_max_expires]`: 423 with
/// `Min-Expires` or `Max-Expires` naming the bound (RFC 4976 §6.3); the
/// bounds themselves are granted as asked.
#[tokio::test]
async fn expires_out_of_bounds_is_423() {
    let srv = relay_config(1)
        .msrp("auth_min_expires = 10")
        .msrp("auth_max_expires = 100")
        .start();
    let mut c = Client::connect(srv.addrs[0], "alice").await;
    let r = c.auth_with("alice", "wonderland", Some(9)).await;
    assert_eq!(r.status(), Some(423), "{r:?}");
    assert_eq!(r.header("Min-Expires"), Some("10"));
    assert_eq!(r.header("Max-Expires"), None);
    assert_eq!(r.header("Use-Path"), None);
    let r = c.auth_with("alice", "wonderland", Some(101)).await;
    assert_eq!(r.status(), Some(423), "{r:?}");
    assert_eq!(r.header("Max-Expires"), Some("100"));
    assert_eq!(r.header("Min-Expires"), None);
    let r = c.auth_with("alice", "wonderland", Some(10)).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.header("Expires"), Some("10"));
    let r = c.auth_with("alice", "wonderland", Some(100)).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.header("Expires"), Some("100"));
    srv.wait_counter(Counter::MsrpResponses(MsrpStatus::IntervalOutOfBounds), 2)
        .await;
    // 423 is neither a success nor a failed credential check.
    assert_eq!(srv.counter(Counter::MsrpAuth(AuthResult::Failed)), 0);
}

/// Correct credentials: 200 with `Use-Path` (a relay URI of ours with a
/// fresh, hard-to-guess session id: RFC 4975 §14.1 asks for ≥ 80 bits),
/// `Expires` as asked, and `Authentication-Info` whose `rspauth` is the
/// RFC 2617 §3.2.3 value (computed here independently). The 200 goes back
/// along the whole From-Path (AUTH responses are end to end, RFC 4976
/// §6.4.3).
#[tokio::test]
async fn granted_auth_has_use_path_expires_and_authentication_info() {
    let srv = relay_config(1).start();
    let addr = srv.addrs[0];
    let mut c = Client::connect(addr, "alice").await;
    let (relay, me) = (c.auth_uri.clone(), c.uri.clone());
    c.send(&auth_frame("ok01", &relay, &me, None, None)).await;
    let r = c.read().await;
    let nonce = param(r.header("WWW-Authenticate").unwrap(), "nonce");
    let authz = authorization("alice", "wonderland", &nonce, &relay, 1);
    c.send(&auth_frame("ok02", &relay, &me, Some(&authz), Some(600)))
        .await;
    let r = c.read().await;
    assert_eq!(r.first, "MSRP ok02 200 OK", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(me.as_str()));
    assert_eq!(r.header("From-Path"), Some(relay.as_str()));
    assert_eq!(r.header("Expires"), Some("600"));
    let up = r.header("Use-Path").expect("Use-Path");
    let prefix = format!("msrp://{addr}/");
    assert!(up.starts_with(&prefix) && up.ends_with(";tcp"), "{up}");
    let sid = &up[prefix.len()..up.len() - 4];
    // 2 hex digits of core + 20 base64url characters (120 random bits).
    assert_eq!(sid.len(), 22, "{sid}");
    assert!(
        sid.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{sid}"
    );
    let info = r
        .header("Authentication-Info")
        .expect("Authentication-Info");
    let ha1 = md5_hex(&format!("alice:{REALM}:wonderland"));
    let ha2 = md5_hex(&format!(":{relay}"));
    let want = md5_hex(&format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    assert_eq!(param(info, "rspauth"), want, "{info}");
    assert_eq!(param(info, "cnonce"), "0a4f113b", "{info}");
    assert!(info.contains("qop=auth"), "{info}");
    assert!(info.contains("nc=00000001"), "{info}");

    // The same nonce with the next nonce count grants a second session
    // with a different id.
    let authz = authorization("alice", "wonderland", &nonce, &relay, 2);
    c.send(&auth_frame("ok03", &relay, &me, Some(&authz), None))
        .await;
    let r2 = c.read().await;
    assert_eq!(r2.status(), Some(200), "{r2:?}");
    assert_ne!(r2.header("Use-Path"), Some(up));
    // Replaying a nonce count is refused as stale (RFC 2617 §3.2.2).
    c.send(&auth_frame("ok04", &relay, &me, Some(&authz), None))
        .await;
    let r3 = c.read().await;
    assert_eq!(r3.status(), Some(401), "{r3:?}");
    assert!(
        r3.header("WWW-Authenticate")
            .is_some_and(|w| w.contains("stale=true")),
        "{r3:?}"
    );
    srv.wait_counter(Counter::MsrpAuth(AuthResult::Ok), 2).await;
    assert_eq!(srv.gauge(Counter::MsrpSessionsActive), 2);
}

/// AUTH without `Expires`: the relay grants its maximum,
/// `auth_max_expires` (RFC 4976 §6.3 leaves the default to the relay;
/// Kamailio uses the maximum).
#[tokio::test]
async fn absent_expires_grants_the_maximum() {
    let srv = relay_config(1).msrp("auth_max_expires = 1234").start();
    let mut c = Client::connect(srv.addrs[0], "bob").await;
    let r = c.auth_with("bob", "builder", None).await;
    assert_eq!(r.status(), Some(200), "{r:?}");
    assert_eq!(r.header("Expires"), Some("1234"));
}

/// An AUTH whose To-Path has more than our URI is not for us: it is
/// relayed like any non-SEND request (RFC 4976 §6.3: only the last relay
/// answers). Here the next URI is a session of ours, so the AUTH reaches
/// the client owning that session, and its answer comes back end to end.
#[tokio::test]
async fn auth_for_a_further_hop_is_forwarded() {
    let srv = relay_config(1).start();
    let addr = srv.addrs[0];
    let mut a = Client::connect(addr, "a").await;
    a.authed_as("alice", "wonderland").await;
    let mut b = Client::connect(addr, "b").await;
    b.authed_as("bob", "builder").await;
    let to = [a.relay_uri.as_str(), b.relay_uri.as_str(), b.uri.as_str()];
    a.send(&auth_frame("fw01", &to.join(" "), &a.uri, None, None))
        .await;
    let got = b.read().await;
    assert_eq!(got.method(), Some("AUTH"), "{got:?}");
    assert_eq!(got.header("To-Path"), Some(b.uri.as_str()));
    b.send(
        format!(
            "MSRP {} 401 Unauthorized\r\nTo-Path: {}\r\nFrom-Path: {}\r\nWWW-Authenticate: Digest realm=\"far\", nonce=\"n1\", qop=\"auth\"\r\n-------{}$\r\n",
            got.tid,
            got.header("From-Path").unwrap(),
            b.uri,
            got.tid
        )
        .as_bytes(),
    )
    .await;
    let r = a.read().await;
    assert_eq!(r.first, "MSRP fw01 401 Unauthorized", "{r:?}");
    assert_eq!(r.header("To-Path"), Some(a.uri.as_str()));
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Digest realm=\"far\", nonce=\"n1\", qop=\"auth\"")
    );
    // The relay neither challenged nor counted it as its own AUTH.
    assert_eq!(srv.counter(Counter::MsrpAuth(AuthResult::Challenged)), 2);
    // And a SEND still works afterwards.
    a.send(&send_frame(
        "fw02",
        &[&a.relay_uri, &b.relay_uri, &b.uri],
        &a.uri,
        "m1",
        b"after",
    ))
    .await;
    assert_eq!(b.read().await.body, b"after");
    assert_eq!(a.read().await.status(), Some(200));
    a.quiet(QUIET).await;
}

/// A and B relay through sessions they AUTHed; A keeps sending while the
/// users file changes under the relay.
async fn relays(a: &mut Client, b: &mut Client, n: usize) {
    common::msrp::relays_one(a, b, "rl", n).await;
}

/// The users file is read again on SIGHUP and on the management API's
/// `POST /api/auth/reload` (JSON-RPC `auth.reload`): new AUTHs are checked
/// against the new file, while the connections and sessions granted before
/// go on relaying (the issue: "reloading it does not drop connections"). A
/// file that does not load changes nothing: the API answers 422, the
/// failure is counted and logged, and the users in force stay.
#[tokio::test]
async fn reloading_the_users_file_keeps_connections_and_sessions() {
    let srv = relay_config(1).with_mgmt().start();
    let addr = srv.addrs[0];
    assert_eq!(srv.gauge(Counter::Users), USERS.len() as i64);
    let mut a = common::msrp::authed(addr, "a", "alice", "wonderland").await;
    let mut b = common::msrp::authed(addr, "b", "bob", "builder").await;
    relays(&mut a, &mut b, 1).await;
    // Each step on the heap: a debug build's poll frame of one long test
    // body overflows the test thread's stack.
    Box::pin(reload_on_sighup(&srv, &mut a, &mut b)).await;
    Box::pin(a_bad_file_keeps_the_users(&srv, &mut a, &mut b)).await;
    Box::pin(reload_over_json_rpc(&srv, &mut a, &mut b)).await;
}

/// SIGHUP: alice's password changes, bob is gone, carol arrives.
async fn reload_on_sighup(srv: &common::Server, a: &mut Client, b: &mut Client) {
    let addr = srv.addrs[0];
    write_users(
        &users_file(srv.config.dir.path()),
        &[("alice", "looking-glass"), ("carol", "cheshire")],
    );
    srv.signal(libc::SIGHUP);
    srv.wait_counter(Counter::UsersReloads(ReloadResult::Ok), 1)
        .await;
    srv.wait_gauge(Counter::Users, 2).await;
    let mut c = Client::connect(addr, "c").await;
    let r = c.auth_with("alice", "wonderland", None).await;
    assert_eq!(r.status(), Some(403), "the old password: {r:?}");
    let r = c.auth_with("bob", "builder", None).await;
    assert_eq!(r.status(), Some(403), "a removed user: {r:?}");
    let mut d = Client::connect(addr, "d").await;
    d.authed_as("carol", "cheshire").await;
    let mut e = Client::connect(addr, "e").await;
    e.authed_as("alice", "looking-glass").await;
    // Granted before the reload: still relaying, both ways round.
    relays(a, b, 2).await;
    relays(b, a, 3).await;
    assert!(srv.log().contains("users file reloaded"), "{}", srv.log());
}

/// A file that does not load (an entry without a password), through the
/// REST API: 422, counted and logged, and the users in force stay.
async fn a_bad_file_keeps_the_users(srv: &common::Server, a: &mut Client, b: &mut Client) {
    let http = mgmt_common::Http::new(srv.mgmt.expect("management service"), None);
    let file = users_file(srv.config.dir.path());
    std::fs::write(&file, "[[user]]\nname = \"carol\"\n").expect("write");
    let r = http.post("/api/auth/reload", "").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("did not load"), "{}", r.body);
    assert_eq!(srv.counter(Counter::UsersReloads(ReloadResult::Failed)), 1);
    assert!(
        srv.log().contains("users file not reloaded"),
        "{}",
        srv.log()
    );
    let mut f = Client::connect(srv.addrs[0], "f").await;
    f.authed_as("carol", "cheshire").await;
    relays(a, b, 4).await;
}

/// Fixed, through JSON-RPC `auth.reload`: the answer says how many users
/// are in force.
async fn reload_over_json_rpc(srv: &common::Server, a: &mut Client, b: &mut Client) {
    let http = mgmt_common::Http::new(srv.mgmt.expect("management service"), None);
    write_users(
        &users_file(srv.config.dir.path()),
        &[("alice", "wonderland")],
    );
    let r = http
        .post("/RPC", r#"{"jsonrpc":"2.0","method":"auth.reload","id":1}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["result"]["users"], 1, "{v}");
    assert_eq!(srv.counter(Counter::UsersReloads(ReloadResult::Ok)), 2);
    let mut g = Client::connect(srv.addrs[0], "g").await;
    g.authed_as("alice", "wonderland").await;
    assert_eq!(
        g.auth_with("carol", "cheshire", None).await.status(),
        Some(403)
    );
    relays(a, b, 5).await;
}
