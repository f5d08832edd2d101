//! Concurrent scrapes and dumps while the data plane runs under echo load:
//! every counter (and histogram bucket, count and sum) only ever grows from
//! one scrape to the next, and the final figures match the traffic.

mod common;
mod mgmt_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use mgmt_common::*;
use tokio_tungstenite::tungstenite::Message;

/// Series that must never decrease: counters and histogram parts.
fn monotonic_series(m: &Metrics) -> HashMap<String, f64> {
    let kinds: HashMap<&str, &str> = m
        .types
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    m.samples
        .iter()
        .filter(|s| {
            let family = s
                .name
                .strip_suffix("_bucket")
                .or_else(|| s.name.strip_suffix("_sum"))
                .or_else(|| s.name.strip_suffix("_count"))
                .filter(|f| kinds.get(f) == Some(&"histogram"))
                .unwrap_or(&s.name);
            matches!(kinds.get(family), Some(&"counter") | Some(&"histogram"))
        })
        .map(|s| (format!("{}{{{}}}", s.name, s.labels), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_under_load_are_monotonic() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    http.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));

    let mut clients = Vec::new();
    for i in 0..6 {
        let (addr, stop, echoed) = (srv.ws, stop.clone(), echoed.clone());
        clients.push(tokio::spawn(async move {
            let mut ws = ws_echo_client(addr).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let m = if n.is_multiple_of(2) {
                    Message::text(format!("client {i} message {n}"))
                } else {
                    Message::binary(vec![i as u8; 64 + (n % 512) as usize])
                };
                ws_echo(&mut ws, m).await;
                n += 1;
                echoed.fetch_add(1, Ordering::Relaxed);
            }
            within("close", ws.close(None)).await.expect("close");
            n
        }));
    }

    let mut scrapers = Vec::new();
    for s in 0..3 {
        let http = http.clone();
        scrapers.push(tokio::spawn(async move {
            let mut prev: HashMap<String, f64> = HashMap::new();
            let mut checks = 0u64;
            for round in 0..40 {
                let m = http.metrics().await;
                let cur = monotonic_series(&m);
                assert!(cur.len() > 100, "too few counters: {}", cur.len());
                for (k, v) in &cur {
                    if let Some(p) = prev.get(k) {
                        assert!(
                            v >= p,
                            "scraper {s} round {round}: {k} went from {p} to {v}"
                        );
                        checks += 1;
                    }
                }
                prev = cur;
                let order = ["used_desc", "used_asc", "id_hash"][round % 3];
                let d = http
                    .get_json(&format!("/api/ws/connections?order={order}&limit=3"))
                    .await;
                assert!(d["returned"].as_u64() <= Some(3));
            }
            checks
        }));
    }
    let mut checks = 0;
    for s in scrapers {
        checks += within("scraper", s).await.expect("scraper panicked");
    }
    assert!(checks > 1000, "{checks}");
    // The load really ran while scraping.
    assert!(echoed.load(Ordering::Relaxed) > 0);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    for c in clients {
        total += within("client", c).await.expect("client panicked");
    }

    // Final figures match the traffic (every message echoed once).
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let m = http.metrics().await;
        let got = m.value("rtedge_frames_received_total", "opcode=\"text\"")
            + m.value("rtedge_frames_received_total", "opcode=\"binary\"");
        let active = m.value("rtedge_connections_active", "transport=\"ws\"");
        if got == total as f64 && active == 0.0 {
            assert_eq!(
                m.value("rtedge_messages_received_total", "subprotocol=\"echo\""),
                total as f64
            );
            assert_eq!(
                m.value("rtedge_messages_sent_total", "subprotocol=\"echo\""),
                total as f64
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frames {got} vs {total}, active {active}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
