//! `rtedge mgmt --attach`: a separate management process over a running
//! data plane's region file. It sees what the in-process service sees, its
//! commands reach the reactors, killing it never disturbs the data plane,
//! it follows a restarted data plane, and it refuses foreign regions.

mod common;
mod mgmt_common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use dataplane::region::LAYOUT_VERSION;
use mgmt_common::*;
use tokio_tungstenite::tungstenite::Message;

/// Families whose value changes while the data plane idles (reactor loop
/// counters, heartbeats, process figures) or that describe the serving
/// process rather than the data plane.
fn volatile(name: &str) -> bool {
    name.starts_with("process_")
        || name.contains("reactor_loops")
        || name.contains("reactor_completions")
        || name.contains("heartbeat")
        || name.contains("inbox_messages")
        || name == "rtedge_build_info"
        || name == "rtedge_connections_limit"
}

#[tokio::test]
async fn attached_service_sees_what_the_in_process_one_sees() {
    let srv = MgmtServer::start(Opts::default());
    let inproc = srv.http();
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = ws_echo_client(srv.ws).await;
        ws_echo(&mut c, Message::text(format!("hello {i}"))).await;
        clients.push(c);
    }
    let att = Attached::start(&srv.region_path, &[]);
    let attached = att.http();
    attached.wait_ready().await;

    // Same counters: every stable series of the in-process exposition has
    // the same value in the attached one, and the same families exist.
    let a1 = inproc.metrics().await;
    let b = attached.metrics().await;
    let a2 = inproc.metrics().await;
    let names = |m: &Metrics| -> BTreeSet<String> {
        m.samples
            .iter()
            .filter(|s| s.name != "rtedge_connections_limit")
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(names(&a1), names(&b));
    let mut compared = 0;
    for s in &b.samples {
        if volatile(&s.name) {
            continue;
        }
        let (Some(x1), Some(x2)) = (a1.get(&s.name, &s.labels), a2.get(&s.name, &s.labels)) else {
            panic!("{}{{{}}} only in the attached exposition", s.name, s.labels);
        };
        if x1 == x2 {
            assert_eq!(s.value, x1, "{}{{{}}}", s.name, s.labels);
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} stable series compared");
    assert_eq!(
        b.value("rtedge_connections_active", "transport=\"ws\""),
        4.0
    );
    assert_eq!(
        b.value("rtedge_build_info", "version=\"0.1.0\",mode=\"attached\""),
        1.0
    );
    // The attached service reports the data plane's process, not its own.
    let pid_start = |m: &Metrics| m.value("process_start_time_seconds", "");
    assert_eq!(pid_start(&b), pid_start(&a1));

    // Same dump.
    let ids = |v: serde_json::Value| -> Vec<u64> {
        v["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["id"].as_u64().expect("id"))
            .collect()
    };
    let d1 = ids(inproc.get_json("/api/ws/connections").await);
    assert_eq!(d1.len(), 4);
    assert_eq!(ids(attached.get_json("/api/ws/connections").await), d1);

    // Status names the data plane.
    let st = attached.get_json("/api/status").await;
    assert_eq!(st["mode"], "attached");
    assert_eq!(st["pid"], srv.proc.pid());
    assert_eq!(st["workers"], 2);
    assert_eq!(
        st["region"]["path"].as_str(),
        Some(srv.region_path.display().to_string().as_str())
    );
    assert_eq!(
        st["region"]["epoch"],
        inproc.get_json("/api/status").await["region"]["epoch"]
    );

    // With --config it knows the listeners and protocols too.
    let cfg = srv.config_path.display().to_string();
    let att2 = Attached::start(&srv.region_path, &["--config", &cfg]);
    let st = att2.http().get_json("/api/status").await;
    assert_eq!(st["sub_protocols"], serde_json::json!(["echo"]));
    assert_eq!(st["listeners"][0]["transport"], "ws");
    assert_eq!(st["config_path"].as_str(), Some(cfg.as_str()));
    for c in &mut clients {
        within("close", c.close(None)).await.expect("close");
    }
}

#[tokio::test]
async fn attached_commands_reach_the_reactors() {
    let srv = MgmtServer::start(Opts {
        mgmt_enabled: false,
        ..Opts::default()
    });
    let att = Attached::start(&srv.region_path, &["--token", "tok"]);
    let anon = att.http();
    let http = anon.with_token(Some("tok"));
    anon.get("/metrics").await.expect_error(401, "bearer token");
    assert_eq!(anon.get("/healthz").await.status, 200);

    let mut ws = ws_echo_client(srv.ws).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");
    let r = http
        .post(
            &format!("/api/ws/connections/{id}/ping"),
            r#"{"data":"from afar"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    match ws_next(&mut ws).await {
        Message::Ping(p) => assert_eq!(&p[..], b"from afar"),
        other => panic!("expected Ping, got {other:?}"),
    }
    assert_eq!(http.post("/api/ws/disable", "").await.status, 200);
    let mut raw = Raw::connect(srv.ws).await;
    raw.send(request("GET", "/", srv.ws, &[]).as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 503);
    assert_eq!(http.post("/api/ws/enable", "").await.status, 200);
    let r = http
        .post(
            &format!("/api/ws/connections/{id}/close"),
            r#"{"status":1001,"reason":"attached close"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 1001);
            assert_eq!(cf.reason.as_str(), "attached close");
        }
        other => panic!("expected Close, got {other:?}"),
    }
    // The token can come from a file too.
    let tf = srv.dir.path().join("token");
    std::fs::write(&tf, "file-token\n").expect("write token");
    let att2 = Attached::start(
        &srv.region_path,
        &["--token-file", &tf.display().to_string()],
    );
    let h2 = att2.http();
    h2.get("/api/status")
        .await
        .expect_error(401, "bearer token");
    assert_eq!(
        h2.with_token(Some("file-token"))
            .get("/api/status")
            .await
            .status,
        200
    );
}

/// An attached service asks the data plane to reload its users file
/// through the region's control word (the data plane's main thread reads
/// the file) and reports the outcome: 200 with the users in force, 422 for
/// a file that does not load.
#[tokio::test]
async fn attached_service_reloads_the_users_file() {
    let users = TempDir::new("users");
    let file = users_file(users.path());
    write_users(&file, &[("alice", "one")]);
    let srv = MgmtServer::start(Opts {
        mgmt_enabled: false,
        users_file: Some(file.clone()),
        ..Opts::default()
    });
    let att = Attached::start(&srv.region_path, &[]);
    let http = att.http();
    http.wait_ready().await;
    write_users(&file, &[("alice", "two"), ("bob", "three")]);
    let r = http.post("/api/auth/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["users"], 2, "{}", r.body);
    std::fs::write(&file, "[[user]]\nname = \"carol\"\n").expect("write");
    http.post("/api/auth/reload", "")
        .await
        .expect_error(422, "did not load");
}

/// Echo clients run continuously while an attached service is scraped,
/// streamed from and then killed with SIGKILL (twice); no client notices.
#[tokio::test]
async fn killing_the_attached_service_leaves_traffic_untouched() {
    let srv = MgmtServer::start(Opts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let addr = srv.ws;
        let stop = stop.clone();
        let echoed = echoed.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_echo_client(addr).await;
            let mut n = 0u64;
            // Bounded: at most 100k round trips per client.
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                ws_echo(&mut ws, Message::text(format!("c{i} m{n}"))).await;
                n += 1;
                echoed.fetch_add(1, Ordering::Relaxed);
            }
            within("close", ws.close(None)).await.expect("close");
            n
        }));
    }
    let wait_progress = |from: u64| {
        let echoed = echoed.clone();
        async move {
            within("echo progress", async {
                while echoed.load(Ordering::Relaxed) < from + 50 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
        }
    };
    for round in 0..2 {
        let mut att = Attached::start(&srv.region_path, &[]);
        let http = att.http();
        let events = EventStream::open(&http, "?from=oldest").await;
        for _ in 0..5 {
            assert_eq!(http.get("/metrics").await.status, 200);
            assert_eq!(
                http.get("/api/ws/connections?order=used_desc").await.status,
                200
            );
        }
        // Kill it while a scrape is in flight.
        let scrape = tokio::spawn({
            let http = http.clone();
            async move {
                let _ = http.request(reqwest::Method::GET, "/metrics").send().await;
            }
        });
        att.proc.kill();
        let _ = scrape.await;
        drop(events);
        wait_progress(echoed.load(Ordering::Relaxed)).await;
        assert!(
            srv.http().get("/readyz").await.status == 200,
            "data plane not ready after kill {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += within("client task", t)
            .await
            .expect("client task panicked");
    }
    assert!(total >= 100);
    // The clients are done once their close handshakes complete; the data
    // plane closes its side (and lowers the gauge) right after.
    let mut m = srv.http().metrics().await;
    for _ in 0..100 {
        if m.value("rtedge_connections_active", "transport=\"ws\"") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        m = srv.http().metrics().await;
    }
    assert_eq!(
        m.value("rtedge_connections_active", "transport=\"ws\""),
        0.0
    );
    assert!(m.value("rtedge_frames_received_total", "opcode=\"text\"") >= total as f64);
    // The data plane logged no trouble.
    let log = srv.proc.log();
    assert!(!log.contains("ERROR") && !log.contains("panicked"), "{log}");

    // SIGTERM stops an attached service cleanly.
    let mut att = Attached::start(&srv.region_path, &[]);
    att.proc.signal(libc::SIGTERM);
    assert!(att.proc.wait_exit().success(), "{}", att.proc.log());
}

#[tokio::test]
async fn attached_service_follows_a_restarted_data_plane() {
    let mut srv = MgmtServer::start(Opts {
        mgmt_enabled: false,
        ..Opts::default()
    });
    let att = Attached::start(&srv.region_path, &[]);
    let http = att.http();
    let first = http.get_json("/api/status").await;
    assert_eq!(first["pid"], srv.proc.pid());
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("before")).await;
    drop(ws);

    srv.restart();
    let new_pid = srv.proc.pid();
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let st = http.get_json("/api/status").await;
        if st["pid"] == new_pid && st["region"]["epoch"] != first["region"]["epoch"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never re-attached: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    http.wait_ready().await;
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("after")).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");
    let r = http
        .post(&format!("/api/ws/connections/{id}/ping"), "")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    match ws_next(&mut ws).await {
        Message::Ping(_) => {}
        other => panic!("expected Ping, got {other:?}"),
    }
    let m = http.metrics().await;
    assert_eq!(
        m.value("rtedge_connections_accepted_total", "transport=\"ws\""),
        1.0
    );
    assert!(att.proc.log().contains("re-attached"), "{}", att.proc.log());
}

#[tokio::test]
async fn foreign_regions_are_refused_clearly() {
    let dir = TempDir::new("mgmt-bad-region");
    // Missing file.
    let missing = dir.path().join("missing.region");
    let (code, log) = rtedge_to_exit(&["mgmt", "--attach", &missing.display().to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot attach to the stats region") && log.contains("open"),
        "{log}"
    );

    // Not a region at all.
    let junk = dir.path().join("junk.region");
    std::fs::write(&junk, vec![0x5Au8; 8192]).expect("write");
    let (code, log) = rtedge_to_exit(&["mgmt", "--attach", &junk.display().to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("not an rtedge region (bad magic)"), "{log}");

    // A real region of another layout version.
    let srv = MgmtServer::start(Opts {
        mgmt_enabled: false,
        ..Opts::default()
    });
    let copy = dir.path().join("other-version.region");
    std::fs::copy(&srv.region_path, &copy).expect("copy region");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .expect("open copy");
    f.write_all_at(&(LAYOUT_VERSION + 1).to_ne_bytes(), 8)
        .expect("patch version");
    drop(f);
    let (code, log) = rtedge_to_exit(&["mgmt", "--attach", &copy.display().to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "layout version {}, this build reads {LAYOUT_VERSION}",
            LAYOUT_VERSION + 1
        )),
        "{log}"
    );
    // The running data plane was not disturbed.
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("fine")).await;
}
