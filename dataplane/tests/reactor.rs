//! The reactor run in-process: outbound connect through the inbox, start-up
//! errors, shutdown. (The WebSocket behaviour is tested end to end against
//! the `rtedge` binary in the workspace's tests/.)

use dataplane::config::{Config, Workers};
use dataplane::reactor::{Dataplane, StartError};
use dataplane::region::{Counter, Region};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

fn config() -> Config {
    let mut cfg = Config {
        workers: Workers::Count(2),
        ..Default::default()
    };
    cfg.listen[0].address = "127.0.0.1:0".parse().unwrap();
    cfg.reactor.pin_workers = false;
    cfg.reactor.recv_buffers = 64;
    cfg.reactor.shutdown_grace = 2;
    cfg
}

#[test]
fn outbound_connect_through_the_inbox_reaches_the_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let region = Arc::new(Region::create_anonymous(2, 64).unwrap());
    let dp = Dataplane::start(config(), region.clone()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = listener.accept();
        let _ = tx.send(r.map(|(s, _)| s));
    });
    for core in 0..2 {
        assert!(dp.connect(core, addr));
    }
    let mut s = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("rtedge connected within 5 s")
        .unwrap();
    // The connection is alive: rtedge keeps it open while we write.
    s.write_all(b"hello").unwrap();
    let counters = region.snapshot_counters();
    assert!(counters.get(Counter::InboxMessages) >= 1);
    dp.request_shutdown();
    dp.join().unwrap();
    // After shutdown rtedge closed its side.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn a_taken_port_is_reported_with_its_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cfg = config();
    cfg.listen[0].address = addr;
    let region = Arc::new(Region::create_anonymous(2, 64).unwrap());
    match Dataplane::start(cfg, region) {
        Err(e @ StartError::Listen { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&addr.to_string()), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started on a taken port"),
    }
}

#[test]
fn shutdown_without_connections_is_prompt_and_clean() {
    let region = Arc::new(Region::create_anonymous(2, 64).unwrap());
    let dp = Dataplane::start(config(), region.clone()).unwrap();
    let addr = dp.listening[0].1;
    // Both workers accept on the same port.
    for _ in 0..8 {
        let _ = std::net::TcpStream::connect(addr).unwrap();
    }
    dp.request_shutdown();
    dp.join().unwrap();
    // Nobody listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
