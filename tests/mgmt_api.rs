//! The management service's REST API against the real binary: health,
//! status, metrics, dumps (orders, limits), close/ping/pong observed by real
//! WebSocket clients, enable/disable observed on real handshakes, the token,
//! and every error answer.

mod common;
mod mgmt_common;

use std::time::Duration;

use common::*;
use mgmt_common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn health_status_and_metrics() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    assert_eq!(http.get_json("/healthz").await, json!({"status": "ok"}));
    http.wait_ready().await;
    let r = http.get_json("/readyz").await;
    assert_eq!(r["ready"], true);
    assert_eq!(r["cores"].as_array().map(Vec::len), Some(2));

    let st = http.get_json("/api/status").await;
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["mode"], "in-process");
    assert_eq!(st["workers"], 2);
    assert_eq!(st["sub_protocols"], json!(["echo"]));
    assert_eq!(
        st["listeners"],
        json!([{"transport": "ws", "address": srv.ws.to_string()}])
    );
    assert_eq!(
        st["config_path"].as_str(),
        Some(srv.config_path.display().to_string().as_str())
    );
    assert_eq!(st["ws_enabled"], true);
    assert_eq!(st["protocols_enabled"]["ws"], true);
    assert_eq!(st["pid"], srv.proc.pid());
    assert!(st["uptime_seconds"].is_u64());
    assert_eq!(st["region"]["cores"], 2);

    // Exposition format and naming.
    let r = http.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        r.content_type
    );
    let m = Metrics::parse(&r.body);
    for s in &m.samples {
        assert!(
            s.name.starts_with("rtedge_") || s.name.starts_with("process_"),
            "unprefixed metric {}",
            s.name
        );
    }
    for (name, ty) in &m.types {
        if ty == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
    }
    for name in [
        "rtedge_connections_accepted_total",
        "rtedge_connections_active",
        "rtedge_connections_closed_total",
        "rtedge_ws_sessions_total",
        "rtedge_ws_sessions_active",
        "rtedge_ws_sessions_closed_total",
        "rtedge_handshakes_total",
        "rtedge_frames_received_total",
        "rtedge_frames_sent_total",
        "rtedge_bytes_received_total",
        "rtedge_bytes_sent_total",
        "rtedge_close_codes_sent_total",
        "rtedge_close_codes_received_total",
        "rtedge_keepalives_sent_total",
        "rtedge_keepalive_failures_total",
        "rtedge_tls_handshakes_total",
        "rtedge_msrp_requests_received_total",
        "rtedge_msrp_responses_total",
        "rtedge_msrp_auth_total",
        "rtedge_msrp_sessions_active",
        "rtedge_msrp_failure_reports_total",
        "rtedge_handshake_duration_seconds_bucket",
        "rtedge_handshake_duration_seconds_sum",
        "rtedge_handshake_duration_seconds_count",
        "rtedge_relay_latency_seconds_bucket",
        "rtedge_core_connections_active",
        "rtedge_reactor_heartbeat_age_seconds",
        "rtedge_protocol_enabled",
        "rtedge_build_info",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(m.has(name), "{name} missing from:\n{}", m.text);
    }
    assert_eq!(
        m.type_of("rtedge_handshake_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(m.value("rtedge_protocol_enabled", "protocol=\"ws\""), 1.0);
    assert_eq!(m.value("rtedge_ready", ""), 1.0);
    assert!(m.value("process_resident_memory_bytes", "") > 0.0);
    assert!(m.value("process_open_fds", "") > 0.0);

    // Traffic shows up, summed over cores.
    let before = m.value("rtedge_connections_accepted_total", "transport=\"ws\"");
    let mut a = ws_echo_client(srv.ws).await;
    let mut b = ws_echo_client(srv.ws).await;
    ws_echo(&mut a, Message::text("one")).await;
    ws_echo(&mut b, Message::binary(vec![7u8; 100])).await;
    let m = http.metrics().await;
    assert!(m.value("rtedge_connections_accepted_total", "transport=\"ws\"") >= before + 2.0);
    assert_eq!(
        m.value("rtedge_connections_active", "transport=\"ws\""),
        2.0
    );
    assert_eq!(
        m.value("rtedge_ws_sessions_active", "subprotocol=\"echo\""),
        2.0
    );
    assert!(m.value("rtedge_frames_received_total", "opcode=\"text\"") >= 1.0);
    assert!(m.value("rtedge_frames_received_total", "opcode=\"binary\"") >= 1.0);
    assert!(m.value("rtedge_bytes_received_total", "transport=\"ws\"") > 100.0);
    assert!(
        m.value(
            "rtedge_handshakes_total",
            "result=\"accepted\",reason=\"none\""
        ) >= 2.0
    );
    assert!(m.value("rtedge_handshake_duration_seconds_count", "") >= 2.0);
    assert_eq!(
        m.value("rtedge_handshake_duration_seconds_bucket", "le=\"+Inf\""),
        m.value("rtedge_handshake_duration_seconds_count", "")
    );
    assert_eq!(m.sum("rtedge_core_connections_active"), 2.0);
    within("close", a.close(None)).await.expect("close");
    within("close", b.close(None)).await.expect("close");
}

/// Three clients used in a known order; the dump lists them in each order.
#[tokio::test]
async fn dump_orders_limits_and_fields() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(ws_echo_client(srv.ws).await);
    }
    let peers: Vec<String> = clients
        .iter()
        .map(|c| c.get_ref().local_addr().expect("addr").to_string())
        .collect();
    // Use them in the order 2, 0, 1, waiting until each use is recorded
    // with a later last-used time than the previous one.
    let mut last = 0u64;
    for &i in &[2usize, 0, 1] {
        loop {
            ws_echo(&mut clients[i], Message::text(format!("use {i}"))).await;
            let c = http.conn_of(peers[i].parse().expect("addr")).await;
            let lu = c["last_used_ms"].as_u64().expect("last_used_ms");
            if lu > last && c["frames_in"].as_u64() > Some(0) {
                last = lu;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let peers_of = |v: &Value| -> Vec<String> {
        v["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["peer"].as_str().expect("peer").to_string())
            .collect()
    };
    let desc = http.get_json("/api/ws/connections?order=used_desc").await;
    assert_eq!(
        peers_of(&desc),
        vec![peers[1].clone(), peers[0].clone(), peers[2].clone()]
    );
    assert_eq!(desc["order"], "used_desc");
    let asc = http.get_json("/api/ws/connections?order=used_asc").await;
    assert_eq!(
        peers_of(&asc),
        vec![peers[2].clone(), peers[0].clone(), peers[1].clone()]
    );
    let by_id = http.get_json("/api/ws/connections?order=id_hash").await;
    let ids: Vec<u64> = by_id["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["id"].as_u64().expect("id"))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    assert_eq!(ids.len(), 3);
    // The default is id_hash, limit 50.
    let d = http.get_json("/api/ws/connections").await;
    assert_eq!(
        (d["order"].clone(), d["limit"].clone()),
        (json!("id_hash"), json!(50))
    );
    assert_eq!(peers_of(&d), peers_of(&by_id));

    // Limit and totals.
    let two = http
        .get_json("/api/ws/connections?order=used_desc&limit=2")
        .await;
    assert_eq!(peers_of(&two), vec![peers[1].clone(), peers[0].clone()]);
    assert_eq!(two["returned"], 2);
    assert_eq!(two["truncated"], true);
    assert_eq!(two["totals"]["connections"], 3);
    assert_eq!(two["totals"]["open"], 3);
    assert!(two["totals"]["frames_in"].as_u64() >= Some(3));

    // Fields of one entry, and the single-connection endpoint.
    let c = &desc["connections"][0];
    assert_eq!(c["local"], srv.ws.to_string());
    assert_eq!(c["transport"], "ws");
    assert_eq!(c["sub_protocol"], "echo");
    assert_eq!(c["state"], "open");
    for k in [
        "created_ms",
        "last_used_ms",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "core",
        "idle_ms",
    ] {
        assert!(c[k].is_u64(), "{k} in {c}");
    }
    assert!(c["created"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(c["bytes_out"].as_u64() > Some(0));
    let id = c["id"].as_u64().expect("id");
    let one = http.get_json(&format!("/api/ws/connections/{id}")).await;
    assert_eq!(one["peer"], c["peer"]);
    let hex = http.get_json(&format!("/api/ws/connections/{id:#x}")).await;
    assert_eq!(hex["id"], id);

    // Bad input.
    http.get("/api/ws/connections?order=newest")
        .await
        .expect_error(400, "invalid order");
    http.get("/api/ws/connections?limit=0")
        .await
        .expect_error(400, "invalid limit");
    http.get("/api/ws/connections?limit=ten")
        .await
        .expect_error(400, "invalid limit");
    http.get("/api/ws/connections?sort=id")
        .await
        .expect_error(400, "unknown query parameter");
    http.get("/api/ws/connections?limit=1&limit=2")
        .await
        .expect_error(400, "given twice");
    http.get("/api/ws/connections/nope")
        .await
        .expect_error(400, "invalid connection id");
    http.get(&format!("/api/ws/connections/{}", id + 1_000_000))
        .await
        .expect_error(404, "unknown connection id");
}

#[tokio::test]
async fn close_ping_pong_reach_the_client() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();

    // Ping and pong with data, then the connection still echoes.
    let mut ws = ws_echo_client(srv.ws).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");
    let r = http
        .post(
            &format!("/api/ws/connections/{id}/ping"),
            r#"{"data":"are you there"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["action"], "ping");
    assert_eq!(r.json()["queued"], true);
    match ws_next(&mut ws).await {
        Message::Ping(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected Ping, got {other:?}"),
    }
    let r = http
        .post(&format!("/api/ws/connections/{id}/pong"), "")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    match ws_next(&mut ws).await {
        Message::Pong(p) => assert!(p.is_empty()),
        other => panic!("expected Pong, got {other:?}"),
    }
    ws_echo(&mut ws, Message::text("still here")).await;

    // Close with the defaults: 1000 "Normal closure".
    let r = http
        .post(&format!("/api/ws/connections/{id}/close"), "")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["status"], 1000);
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 1000);
            assert_eq!(cf.reason.as_str(), "Normal closure");
        }
        other => panic!("expected Close, got {other:?}"),
    }
    // The slot goes away; then the id is unknown.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let r = http.get(&format!("/api/ws/connections/{id}")).await;
        if r.status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot kept: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for action in ["close", "ping", "pong"] {
        http.post(&format!("/api/ws/connections/{id}/{action}"), "")
            .await
            .expect_error(404, "unknown connection id");
    }

    // Close with a status and reason.
    let mut ws = ws_echo_client(srv.ws).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");
    let r = http
        .post(
            &format!("/api/ws/connections/{id}/close"),
            r#"{"status": 4001, "reason": "maintenance"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 4001);
            assert_eq!(cf.reason.as_str(), "maintenance");
        }
        other => panic!("expected Close, got {other:?}"),
    }
}

#[tokio::test]
async fn action_errors() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let mut ws = ws_echo_client(srv.ws).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");
    let close = format!("/api/ws/connections/{id}/close");
    for (body, needle) in [
        ("{", "malformed JSON"),
        ("[1,2]", "must be an object"),
        (r#"{"status": 1005}"#, "invalid close status"),
        (r#"{"status": 999}"#, "invalid close status"),
        (r#"{"status": 70000}"#, "invalid close status"),
        (r#"{"status": "1000"}"#, "non-negative integer"),
        (r#"{"reason": 5}"#, "must be a string"),
        (r#"{"code": 1000}"#, "unknown field"),
    ] {
        http.post(&close, body).await.expect_error(400, needle);
    }
    let long = json!({ "reason": "x".repeat(124) }).to_string();
    http.post(&close, &long).await.expect_error(400, "too long");
    let long = json!({ "data": "x".repeat(124) }).to_string();
    http.post(&format!("/api/ws/connections/{id}/ping"), &long)
        .await
        .expect_error(400, "too long");
    http.post("/api/ws/connections/12x/close", "")
        .await
        .expect_error(400, "invalid connection id");
    // A core that does not exist, and an id that never existed.
    http.post(&format!("/api/ws/connections/{}/close", 4000u64 << 48), "")
        .await
        .expect_error(404, "unknown connection id");
    http.post(&format!("/api/ws/connections/{}/ping", u64::MAX), "")
        .await
        .expect_error(404, "unknown connection id");
    // Wrong method and unknown endpoints.
    http.get(&close).await.expect_error(405, "not allowed");
    http.post("/api/ws/connections", "")
        .await
        .expect_error(405, "not allowed");
    http.get("/api/nothing")
        .await
        .expect_error(404, "no such endpoint");
    http.get("/RPC").await.expect_error(405, "not allowed");
    // Nothing above disturbed the connection.
    ws_echo(&mut ws, Message::text("unharmed")).await;
    within("close", ws.close(None)).await.expect("close");
}

#[tokio::test]
async fn disable_gives_503_enable_gives_101() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let mut existing = ws_echo_client(srv.ws).await;

    let r = http.post("/api/ws/disable", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ws_enabled"], false);
    let st = http.get_json("/api/status").await;
    assert_eq!(st["ws_enabled"], false);
    assert_eq!(st["protocols_enabled"]["ws"], false);
    let m = http.metrics().await;
    assert_eq!(m.value("rtedge_protocol_enabled", "protocol=\"ws\""), 0.0);

    let mut raw = Raw::connect(srv.ws).await;
    raw.send(request("GET", "/", srv.ws, &[]).as_bytes()).await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 503, "{resp:?}");
    // Existing connections carry on.
    ws_echo(&mut existing, Message::text("still served")).await;
    let m = http.metrics().await;
    assert!(
        m.value(
            "rtedge_handshakes_total",
            "result=\"rejected\",reason=\"disabled\""
        ) >= 1.0
    );

    let r = http.post("/api/ws/enable", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ws_enabled"], true);
    assert_eq!(http.get_json("/api/status").await["ws_enabled"], true);
    let mut fresh = ws_echo_client(srv.ws).await; // asserts 101
    ws_echo(&mut fresh, Message::text("welcome back")).await;
    let m = http.metrics().await;
    assert_eq!(m.value("rtedge_protocol_enabled", "protocol=\"ws\""), 1.0);
    // Idempotent.
    assert_eq!(
        http.post("/api/ws/enable", "").await.json()["changed"],
        false
    );
}

#[tokio::test]
async fn msrp_sessions_are_listed_empty() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let v = http.get_json("/api/msrp/sessions").await;
    assert_eq!(v["sessions"], json!([]));
    assert_eq!(v["total"], 0);
    http.delete("/api/msrp/sessions/abc")
        .await
        .expect_error(404, "unknown MSRP session");
    http.get("/api/msrp/sessions?x=1")
        .await
        .expect_error(400, "unknown query parameter");
}

#[tokio::test]
async fn token_guards_everything_but_health() {
    let srv = MgmtServer::start(Opts {
        token: Some("s3cret-token".into()),
        ..Opts::default()
    });
    let anon = srv.http();
    let good = anon.with_token(Some("s3cret-token"));
    let bad = anon.with_token(Some("wrong"));
    assert_eq!(anon.get("/healthz").await.status, 200);
    anon.wait_ready().await;
    for path in [
        "/metrics",
        "/api/status",
        "/api/ws/connections",
        "/api/msrp/sessions",
        "/api/events",
        "/nothing",
    ] {
        let r = anon.get(path).await;
        r.expect_error(401, "missing bearer token");
        assert_eq!(
            r.headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"rtedge\"")
        );
        bad.get(path)
            .await
            .expect_error(401, "invalid bearer token");
    }
    anon.post("/api/ws/disable", "")
        .await
        .expect_error(401, "bearer token");
    anon.rpc(&json!({"jsonrpc": "2.0", "method": "ws.disable", "id": 1}))
        .await
        .expect_error(401, "bearer token");
    // Nothing was disabled by the refused calls.
    assert_eq!(good.get_json("/api/status").await["ws_enabled"], true);
    assert_eq!(good.get("/metrics").await.status, 200);
    let v = good
        .rpc(&json!({"jsonrpc": "2.0", "method": "ws.dump", "id": 1}))
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
}

#[tokio::test]
async fn non_loopback_without_token_warns() {
    let srv = MgmtServer::start(Opts {
        mgmt_listen: "0.0.0.0:0".into(),
        ..Opts::default()
    });
    let log = srv.proc.log();
    assert!(
        log.contains("non-loopback address without a token"),
        "{log}"
    );
    // Reached over loopback only.
    let port = srv.mgmt.expect("mgmt").port();
    let http = Http::new(([127, 0, 0, 1], port).into(), None);
    assert_eq!(http.get("/healthz").await.status, 200);

    let quiet = MgmtServer::start(Opts::default());
    assert!(!quiet.proc.log().contains("without a token"));
}

#[tokio::test]
async fn disabled_service_does_not_listen() {
    let srv = MgmtServer::start(Opts {
        mgmt_enabled: false,
        ..Opts::default()
    });
    assert!(srv.mgmt.is_none());
    assert!(!srv.proc.log().contains("management listening"));
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("data plane alone")).await;
}

#[tokio::test]
async fn taken_port_fails_the_start_clearly() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("addr");
    let dir = TempDir::new("mgmt-taken");
    let cfg = dir.path().join("rtedge.toml");
    std::fs::write(
        &cfg,
        format!(
            "workers = 1\n[[listen]]\ntransport = \"ws\"\naddress = \"127.0.0.1:0\"\n\
             [reactor]\npin_workers = false\n[mgmt]\nlisten = \"{addr}\"\n\
             [region]\npath = {:?}\nslots_per_core = 16\n",
            dir.path().join("r").display().to_string()
        ),
    )
    .expect("write");
    let (code, log) = rtedge_to_exit(&["run", "--config", &cfg.display().to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("management service") && log.contains(&addr.to_string()),
        "{log}"
    );
}
