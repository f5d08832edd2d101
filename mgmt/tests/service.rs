//! The service over a region this test writes itself (no data plane):
//! exact metric sums, readiness from heartbeats, and the event stream fed
//! by `CoreStats::event`, over real HTTP on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::region::{
    Counter, EVENT_CAPACITY, Event, HandshakeReason, Histogram, Region, SubProtocol, Transport,
    unix_time_ms,
};
use mgmt::{Handle, MgmtConfig, Mode, StatusInfo};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    region: Arc<Region>,
    handle: Handle,
    client: reqwest::Client,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(cores: u32) -> Fixture {
    let dir = std::env::temp_dir().join(format!(
        "rtedge-mgmt-svc-{}-{}",
        std::process::id(),
        unix_time_ms() ^ u64::from(cores) << 40 ^ rand_bits()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let region = Arc::new(Region::create(&dir.join("r"), cores, 16).expect("region"));
    let handle = mgmt::spawn(
        region.clone(),
        MgmtConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            token: None,
            status: StatusInfo::new(Mode::InProcess),
        },
    )
    .expect("spawn");
    Fixture {
        region,
        handle,
        client: reqwest::Client::builder()
            .timeout(TIMEOUT)
            .no_proxy()
            .build()
            .expect("client"),
        _dir: TempDir(dir),
    }
}

fn rand_bits() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        let a: SocketAddr = self.handle.local_addr();
        format!("http://{a}{path}")
    }
    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        let s = r.status().as_u16();
        (s, r.text().await.expect("body"))
    }
    fn heartbeat_all(&self) {
        for c in 0..self.region.cores() {
            self.region.heartbeat(c, unix_time_ms());
        }
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_are_summed_over_cores_at_scrape_time() {
    let f = start(3);
    let r = &f.region;
    r.core(0)
        .add(Counter::ConnectionsAccepted(Transport::Wss), 5);
    r.core(2)
        .add(Counter::ConnectionsAccepted(Transport::Wss), 7);
    r.core(1).inc(Counter::ConnectionsActive(Transport::Ws));
    r.core(1).inc(Counter::ConnectionsActive(Transport::Ws));
    r.core(2).inc(Counter::ConnectionsActive(Transport::Ws));
    r.core(0)
        .add(Counter::WsSessionsClosed(SubProtocol::Sip), 4);
    r.core(1)
        .add(Counter::WsSessionsClosed(SubProtocol::Sip), 2);
    r.core(1)
        .inc(Counter::Handshakes(HandshakeReason::AuthFailed));
    r.core(0).observe(Histogram::HandshakeDuration, 30); // 30 µs
    r.core(1).observe(Histogram::HandshakeDuration, 2_000_000); // 2 s
    let (s, text) = f.get("/metrics").await;
    assert_eq!(s, 200);
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(
        v("rtedge_connections_accepted_total{transport=\"wss\"}"),
        12.0
    );
    assert_eq!(v("rtedge_connections_active{transport=\"ws\"}"), 3.0);
    assert_eq!(
        v("rtedge_ws_sessions_closed_total{subprotocol=\"sip\"}"),
        6.0
    );
    assert_eq!(
        v("rtedge_handshakes_total{result=\"rejected\",reason=\"auth_failed\"}"),
        1.0
    );
    assert_eq!(v("rtedge_core_connections_active{core=\"1\"}"), 2.0);
    assert_eq!(v("rtedge_core_connections_active{core=\"2\"}"), 1.0);
    assert_eq!(v("rtedge_core_connections_accepted_total{core=\"2\"}"), 7.0);
    assert_eq!(v("rtedge_handshake_duration_seconds_count"), 2.0);
    assert_eq!(v("rtedge_handshake_duration_seconds_sum"), 2.00003);
    assert_eq!(
        v("rtedge_handshake_duration_seconds_bucket{le=\"0.00005\"}"),
        1.0
    );
    assert_eq!(
        v("rtedge_handshake_duration_seconds_bucket{le=\"2.5\"}"),
        2.0
    );
    assert_eq!(
        v("rtedge_handshake_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(v("rtedge_reactors"), 3.0);
    assert_eq!(v("rtedge_connection_slots"), 48.0);
    // Never ticked: -1 and not ready.
    assert_eq!(v("rtedge_reactor_heartbeat_age_seconds{core=\"0\"}"), -1.0);
    assert_eq!(v("rtedge_ready"), 0.0);

    // A later scrape sees later values (nothing is cached).
    r.core(1)
        .add(Counter::ConnectionsAccepted(Transport::Wss), 100);
    let (_, text) = f.get("/metrics").await;
    assert_eq!(
        sample(
            &text,
            "rtedge_connections_accepted_total{transport=\"wss\"}"
        ),
        Some(112.0)
    );
}

#[tokio::test]
async fn readiness_follows_heartbeats() {
    let f = start(2);
    let (s, body) = f.get("/readyz").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(f.get("/healthz").await.0, 200);
    f.region.heartbeat(0, unix_time_ms());
    assert_eq!(f.get("/readyz").await.0, 503, "core 1 never ticked");
    f.heartbeat_all();
    let (s, body) = f.get("/readyz").await;
    assert_eq!(s, 200, "{body}");
    // A reactor that stopped ticking makes the service unready.
    f.region.heartbeat(1, unix_time_ms() - 60_000);
    let (s, body) = f.get("/readyz").await;
    assert_eq!(s, 503);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["cores"][1]["ticking"], false);
    assert_eq!(v["cores"][0]["ticking"], true);
    // Shutting down: not ready either.
    f.heartbeat_all();
    f.region.control().request_shutdown();
    assert_eq!(f.get("/readyz").await.0, 503);
}

/// Reads SSE events from a response.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(f: &Fixture, query: &str) -> Events {
        let resp = f
            .client
            .get(f.url(&format!("/api/events{query}")))
            .send()
            .await
            .expect("open");
        assert_eq!(resp.status().as_u16(), 200);
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// (event name, data) of the next event.
    async fn next(&mut self) -> (String, Value) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for l in block.lines() {
                    if let Some(v) = l.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = l.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return (name, serde_json::from_str(&data).expect("json data"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("timed out")
                .expect("stream error")
                .expect("stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn events_are_streamed_in_order_with_losses_reported() {
    let f = start(2);
    let peer: SocketAddr = "192.0.2.7:5555".parse().expect("addr");
    // Before the stream: only seen with from=oldest.
    f.region.core(1).event(&Event::opened(
        (1 << 48) | 1,
        1_000,
        peer,
        Transport::Wss,
        SubProtocol::Sip,
        "/sip alice",
    ));
    let mut live = Events::open(&f, "").await;
    let mut replay = Events::open(&f, "?from=oldest").await;
    let (name, d) = replay.next().await;
    assert_eq!(name, "opened");
    assert_eq!(d["id"], (1u64 << 48) | 1);
    assert_eq!(d["info"], "/sip alice");
    assert_eq!(d["peer"], "192.0.2.7:5555");
    assert_eq!(d["transport"], "wss");
    assert_eq!(d["sub_protocol"], "sip");
    assert_eq!(d["time"], "1970-01-01T00:00:01.000Z");

    f.region.core(0).event(&Event::closed(
        2,
        2_000,
        peer,
        Transport::Ws,
        SubProtocol::Echo,
        Some(4000),
        "bye",
    ));
    f.region.core(1).event(&Event::closed(
        (1 << 48) | 1,
        3_000,
        peer,
        Transport::Wss,
        SubProtocol::Sip,
        None,
        "",
    ));
    f.region.core(0).event(&Event::rejected(
        3,
        4_000,
        peer,
        Transport::Ws,
        HandshakeReason::Origin,
    ));
    for ev in [&mut live, &mut replay] {
        let (n, d) = ev.next().await;
        assert_eq!(
            (n.as_str(), &d["code"], &d["reason"], &d["clean"]),
            (
                "closed",
                &Value::from(4000),
                &Value::from("bye"),
                &Value::from(true)
            )
        );
        let (n, d) = ev.next().await;
        assert_eq!(
            (n.as_str(), &d["code"], &d["clean"]),
            ("closed", &Value::from(1006), &Value::from(false))
        );
        let (n, d) = ev.next().await;
        assert_eq!(
            (n.as_str(), &d["reason"]),
            ("rejected", &Value::from("origin"))
        );
    }

    // A reader that falls more than a ring behind is told how much it lost.
    let mut filtered = Events::open(&f, "?kinds=rejected&from=oldest").await;
    let (n, _) = filtered.next().await;
    assert_eq!(n, "rejected");
    let total = u64::from(EVENT_CAPACITY) + 100;
    let c0 = f.region.core(0);
    for i in 0..total {
        c0.event(&Event::opened(
            i,
            i,
            peer,
            Transport::Ws,
            SubProtocol::Echo,
            "",
        ));
    }
    // Core 0 now holds 2 + total events; the ring keeps the last
    // EVENT_CAPACITY of them.
    let expect_lost = 2 + total - u64::from(EVENT_CAPACITY);
    let mut seen_lost = 0u64;
    let mut seen_opened = 0u64;
    let deadline = Instant::now() + TIMEOUT;
    let mut fresh = Events::open(&f, "?from=oldest&kinds=opened").await;
    while seen_opened < u64::from(EVENT_CAPACITY) {
        assert!(
            Instant::now() < deadline,
            "lost {seen_lost} opened {seen_opened}"
        );
        let (n, d) = fresh.next().await;
        match n.as_str() {
            "lost" => seen_lost += d["count"].as_u64().expect("count"),
            "opened" => seen_opened += u64::from(d["core"] == 0),
            _ => {}
        }
    }
    assert_eq!(seen_lost, expect_lost);
    assert_eq!(seen_opened, u64::from(EVENT_CAPACITY));
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let f = start(1);
    let mut ev = Events::open(&f, "").await;
    let Fixture { handle, region, .. } = f;
    let stopper = std::thread::spawn(move || handle.shutdown());
    // The stream ends (instead of keeping the shutdown waiting).
    let ended = tokio::time::timeout(TIMEOUT, async {
        loop {
            match ev.resp.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "stream did not end");
    tokio::task::spawn_blocking(move || stopper.join().expect("shutdown"))
        .await
        .expect("join");
    drop(region);
}
