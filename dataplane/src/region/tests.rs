use super::*;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;

/// A unique temporary path, removed on drop.
struct TmpPath(PathBuf);

impl TmpPath {
    fn new(tag: &str) -> TmpPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TmpPath(std::env::temp_dir().join(format!(
            "rtedge-region-test-{}-{tag}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

fn info<'a>(peer: SocketAddr, text: &'a str) -> ConnInfo<'a> {
    ConnInfo {
        peer,
        local: v4([127, 0, 0, 1], 8080),
        transport: Transport::Ws,
        sub_protocol: SubProtocol::Sip,
        state: ConnState::Open,
        created_ms: 1_700_000_000_000,
        info: text,
    }
}

#[test]
fn region_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Region>();
    assert_send_sync::<Arc<Region>>();
    fn assert_send<T: Send>() {}
    assert_send::<CounterSnapshot>();
    assert_send::<ConnSnapshot>();
}

#[test]
fn layout_geometry_is_aligned_and_small() {
    let l = Layout::compute(2, 65536, DEFAULT_RING_CAPACITY).unwrap();
    assert!(l.total_size < 64 << 20, "size {}", l.total_size);
    for off in [
        l.header_size,
        l.control_offset,
        l.counters_offset,
        l.counters_stride,
        l.slots_offset,
        l.slots_stride,
        l.rings_offset,
        l.ring_stride,
        l.events_offset,
        l.events_stride,
    ] {
        assert_eq!(off % 128, 0, "{l:?}");
    }
    assert_eq!(l.total_size % 4096, 0);
    assert_eq!(SLOT_SIZE % 64, 0);
    assert_eq!(CORE_WORDS % 16, 0);
    // Header round trip.
    let h = l.header(42, 7, 9);
    assert_eq!(HeaderInfo::decode(&h.encode()), h);
    assert_eq!(h.mismatch(&h), None);
}

#[test]
fn bad_geometry_is_rejected() {
    for (cores, slots, ring) in [(0, 1, 256), (MAX_CORES + 1, 1, 256), (1, 1, 100), (1, 1, 0)] {
        let e = Region::create_with(None, cores, slots, ring).unwrap_err();
        assert!(matches!(e, RegionError::Geometry(_)), "{e}");
    }
    Region::create_with(None, 1, 0, 1).expect("zero slots, ring of one");
}

#[test]
fn descriptors_are_consistent() {
    let mut next = 0;
    let mut names = HashSet::new();
    for d in descriptors() {
        assert_eq!(d.base, next, "{} not contiguous", d.name);
        assert!(names.insert(d.name), "duplicate {}", d.name);
        assert!(!d.help.is_empty());
        assert!(!d.series.is_empty());
        for s in d.series {
            assert_eq!(s.len(), d.label_names.len(), "{}", d.name);
        }
        if d.kind == MetricKind::Counter && d.name != "handshakes_total" {
            assert!(d.name.ends_with("_total"), "{}", d.name);
        }
        next += d.series.len();
    }
    assert_eq!(next, COUNTER_COUNT);
    for t in Transport::ALL {
        let c = Counter::ConnectionsAccepted(*t);
        assert_eq!(c.descriptor().name, "connections_accepted_total");
        assert_eq!(c.index(), c.descriptor().base + *t as usize);
        let lv: Vec<_> = c.descriptor().labels(*t as usize).collect();
        assert_eq!(lv, vec![("transport", t.as_str())]);
    }
    let c = Counter::InboxMessages;
    assert_eq!(c.index(), c.descriptor().base);
    let c = Counter::Users;
    assert_eq!(c.index(), COUNTER_COUNT - 1);
    assert_eq!(
        Counter::MsrpResponses(MsrpStatus::NoSession)
            .descriptor()
            .labels(MsrpStatus::NoSession as usize)
            .collect::<Vec<_>>(),
        vec![("code", "481")]
    );
    assert_eq!(
        Counter::Handshakes(HandshakeReason::Origin)
            .descriptor()
            .label_names,
        &["result", "reason"]
    );
    let mut hist_names = HashSet::new();
    for h in histogram_descriptors() {
        assert!(hist_names.insert(h.name));
        assert_eq!(h.id.descriptor().name, h.name);
        assert!(h.bounds_us.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn label_enums() {
    for (i, r) in HandshakeReason::ALL.iter().enumerate() {
        assert_eq!(HandshakeReason::SERIES[i], &[r.result(), r.as_str()]);
    }
    assert_eq!(HandshakeReason::SERIES.len(), HandshakeReason::ALL.len());
    assert_eq!(HandshakeReason::Accepted.result(), "accepted");
    assert_eq!(HandshakeReason::Timeout.result(), "rejected");
    assert_eq!(CloseCode::from_u16(1000), CloseCode::Normal);
    assert_eq!(CloseCode::from_u16(1005), CloseCode::NoStatus);
    assert_eq!(CloseCode::from_u16(1011), CloseCode::InternalError);
    assert_eq!(CloseCode::from_u16(1004), CloseCode::Other);
    assert_eq!(CloseCode::from_u16(4000), CloseCode::Other);
    for c in CloseCode::ALL {
        if *c != CloseCode::Other {
            assert_eq!(CloseCode::from_u16(c.as_str().parse().unwrap()), *c);
        }
    }
    assert_eq!(Opcode::from_wire(0x1), Some(Opcode::Text));
    assert_eq!(Opcode::from_wire(0xA), Some(Opcode::Pong));
    assert_eq!(Opcode::from_wire(0x3), None);
    assert_eq!(Transport::from_label("sip_udp"), Some(Transport::SipUdp));
    assert_eq!(Transport::from_u8(6), None);
    assert_eq!(SubProtocol::from_u8(4), Some(SubProtocol::Echo));
    assert_eq!(Protocol::from_label("xmpp"), Some(Protocol::Xmpp));
    assert_eq!(TlsResult::Failed.to_string(), "failed");
}

#[test]
fn counters_sum_across_cores() {
    let r = Region::create_anonymous(3, 4).unwrap();
    let (c0, c1, c2) = (r.core(0), r.core(1), r.core(2));
    c0.inc(Counter::ConnectionsAccepted(Transport::Ws));
    c1.add(Counter::ConnectionsAccepted(Transport::Ws), 10);
    c2.inc(Counter::ConnectionsAccepted(Transport::Wss));
    c0.inc(Counter::ConnectionsActive(Transport::Ws));
    c0.inc(Counter::ConnectionsActive(Transport::Ws));
    c1.dec(Counter::ConnectionsActive(Transport::Ws));
    c2.add(Counter::BytesSent(Transport::SipTcp), 1000);
    c2.sub(Counter::BytesSent(Transport::SipTcp), 1);
    c1.set(Counter::ReactorLoops, 77);
    c0.inc(Counter::Handshakes(HandshakeReason::Accepted));
    c1.inc(Counter::Handshakes(HandshakeReason::AuthFailed));
    assert_eq!(c1.get(Counter::ReactorLoops), 77);

    let s = r.snapshot_counters();
    assert_eq!(s.cores(), 3);
    assert_eq!(s.get(Counter::ConnectionsAccepted(Transport::Ws)), 11);
    assert_eq!(s.get(Counter::ConnectionsAccepted(Transport::Wss)), 1);
    assert_eq!(s.get(Counter::ConnectionsAccepted(Transport::Msrp)), 0);
    assert_eq!(
        s.core_get(1, Counter::ConnectionsAccepted(Transport::Ws)),
        10
    );
    assert_eq!(s.gauge(Counter::ConnectionsActive(Transport::Ws)), 1);
    assert_eq!(
        s.core_gauge(1, Counter::ConnectionsActive(Transport::Ws)),
        -1
    );
    assert_eq!(s.get(Counter::BytesSent(Transport::SipTcp)), 999);
    assert_eq!(s.get(Counter::ReactorLoops), 77);
    assert_eq!(s.get(Counter::Handshakes(HandshakeReason::AuthFailed)), 1);

    // Generic exporter path.
    let mut seen = 0;
    for d in descriptors() {
        for series in d.series() {
            let v = series.value(&s);
            if d.name == "connections_active" && series.label_values == ["ws"] {
                assert_eq!(v, 1.0);
                assert_eq!(series.core_value(&s, 1), -1.0);
                seen += 1;
            }
            if d.name == "handshakes_total" && series.label_values == ["rejected", "auth_failed"] {
                assert_eq!(v, 1.0);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 2);
}

#[test]
fn histogram_buckets() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(25), 0);
    assert_eq!(bucket_of(26), 1);
    assert_eq!(bucket_of(1_000), 5);
    assert_eq!(bucket_of(10_000_000), HIST_BUCKETS - 2);
    assert_eq!(bucket_of(10_000_001), HIST_BUCKETS - 1);
    assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
    for (i, &b) in HIST_BOUNDS_US.iter().enumerate() {
        assert_eq!(
            (bucket_of(b - 1), bucket_of(b), bucket_of(b + 1)),
            (i, i, i + 1)
        );
    }

    let r = Region::create_anonymous(2, 0).unwrap();
    let h = Histogram::HandshakeDuration;
    r.core(0).observe(h, 10);
    r.core(0).observe(h, 30);
    r.core(1).observe(h, 30);
    r.core(1).observe(h, 20_000_000);
    r.core(1).observe(Histogram::RelayLatency, 5);
    let s = r.snapshot_counters();
    let hs = s.histogram(h);
    assert_eq!(hs.count, 4);
    assert_eq!(hs.sum_us, 20_000_070);
    assert_eq!(hs.buckets[0], 1);
    assert_eq!(hs.buckets[1], 2);
    assert_eq!(hs.buckets[HIST_BUCKETS - 1], 1);
    assert_eq!(hs.buckets.iter().sum::<u64>(), 4);
    let cum = hs.cumulative();
    assert_eq!(cum[0], 1);
    assert_eq!(cum[1], 3);
    assert_eq!(cum[HIST_BUCKETS - 2], 3);
    assert_eq!(cum[HIST_BUCKETS - 1], 4);
    assert_eq!(s.core_histogram(0, h).count, 2);
    assert_eq!(s.core_histogram(1, h).sum_us, 20_000_030);
    let rl = s.histogram(Histogram::RelayLatency);
    assert_eq!((rl.count, rl.sum_us, rl.buckets[0]), (1, 5, 1));
    // Histograms do not leak into counters.
    assert!((0..COUNTER_COUNT).all(|i| s.raw(i) == 0));
}

#[test]
fn create_then_attach_shares_everything() {
    let tmp = TmpPath::new("share");
    let a = Region::create(&tmp.0, 2, 8).unwrap();
    let b = Region::attach(&tmp.0).unwrap();
    assert_eq!(a.header(), b.header());
    assert_eq!(b.epoch(), a.epoch());
    assert_ne!(a.epoch(), 0);
    assert_eq!(b.header().pid, std::process::id());
    assert_eq!((b.cores(), b.slots_per_core()), (2, 8));
    assert!(!b.is_stale());

    a.core(1).add(Counter::BytesReceived(Transport::Msrps), 5);
    a.core(0).inc(Counter::ReactorLoops);
    a.core(0).observe(Histogram::HandshakeDuration, 300);
    a.heartbeat(1, 1234);
    let s = b.snapshot_counters();
    assert_eq!(s.get(Counter::BytesReceived(Transport::Msrps)), 5);
    assert_eq!(s.get(Counter::ReactorLoops), 1);
    assert_eq!(s.histogram(Histogram::HandshakeDuration).count, 1);
    assert_eq!(b.heartbeats(), vec![0, 1234]);

    // Control words: default enabled, set from the attacher.
    assert!(a.control().is_enabled(Protocol::Ws));
    assert!(a.control().is_enabled(Protocol::Xmpp));
    b.control().set_enabled(Protocol::Msrp, false);
    assert!(!a.control().is_enabled(Protocol::Msrp));
    assert!(a.control().is_enabled(Protocol::Sip));
    assert!(!a.control().shutdown_requested());
    b.control().request_shutdown();
    assert!(a.control().shutdown_requested());

    // Slots written by the creator, read by the attacher.
    let id = a
        .core(1)
        .slot_open(3, &info(v4([10, 0, 0, 1], 5000), "/ws alice"));
    let (core, c) = b.find_connection(id).unwrap();
    assert_eq!((core, c.slot, c.info.as_str()), (1, 3, "/ws alice"));

    // Commands posted by the attacher, drained by the creator.
    b.post_command(1, Command::close(id, 1001, b"bye")).unwrap();
    let mut got = Vec::new();
    assert_eq!(a.core(0).drain_commands(|c| got.push(c)), 0);
    assert_eq!(a.core(1).drain_commands(|c| got.push(c)), 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, CommandKind::Close);
    assert_eq!(
        (got[0].conn_id, got[0].status, got[0].payload()),
        (id, 1001, &b"bye"[..])
    );

    // Probe sees the same header; the file mode is private.
    assert_eq!(&Region::probe(&tmp.0).unwrap(), a.header());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&tmp.0).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn recreate_gives_fresh_epoch_and_old_attacher_notices() {
    let tmp = TmpPath::new("restart");
    let first = Region::create(&tmp.0, 1, 2).unwrap();
    first.core(0).inc(Counter::InboxMessages);
    let old = Region::attach(&tmp.0).unwrap();
    drop(first);
    let second = Region::create(&tmp.0, 2, 2).unwrap();
    assert_ne!(second.epoch(), old.epoch());
    assert!(old.is_stale());
    // The old mapping stays valid and keeps its numbers.
    assert_eq!(old.snapshot_counters().get(Counter::InboxMessages), 1);
    let new = Region::attach(&tmp.0).unwrap();
    assert_eq!(new.epoch(), second.epoch());
    assert_eq!(new.cores(), 2);
    assert_eq!(new.snapshot_counters().get(Counter::InboxMessages), 0);
    assert!(!new.is_stale());
    std::fs::remove_file(&tmp.0).unwrap();
    assert!(new.is_stale());
    assert!(!Region::create_anonymous(1, 1).unwrap().is_stale());
}

#[test]
fn attach_rejects_bad_files() {
    let tmp = TmpPath::new("bad");

    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::Io { op: "open", .. }), "{e}");

    std::fs::write(&tmp.0, b"").unwrap();
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(e.to_string().contains("not an rtedge region"), "{e}");

    std::fs::write(&tmp.0, vec![0xAB; 8192]).unwrap();
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::BadMagic { .. }), "{e}");

    // A real region, then damaged in various ways.
    let good = Region::create(&tmp.0, 2, 4).unwrap();
    let h = *good.header();
    drop(good);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp.0)
        .unwrap();
    let write_header = |h: &HeaderInfo| file.write_all_at(&h.encode(), 0).unwrap();

    let mut v = h;
    v.layout_version = LAYOUT_VERSION + 1;
    write_header(&v);
    let e = Region::attach(&tmp.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: layout version {}, this build reads {}",
            tmp.0.display(),
            LAYOUT_VERSION + 1,
            LAYOUT_VERSION
        )
    );
    assert!(matches!(
        Region::probe(&tmp.0),
        Err(RegionError::Version { .. })
    ));

    let mut v = h;
    v.cores = 0;
    write_header(&v);
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::Corrupt { .. }), "{e}");

    let mut v = h;
    v.slots_offset += 128;
    write_header(&v);
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(e.to_string().contains("slots_offset does not match"), "{e}");

    let mut v = h;
    v.slots_per_core = 1 << 20; // consistent header, file far too short
    let l = Layout::compute(v.cores, v.slots_per_core, v.ring_capacity).unwrap();
    let v = l.header(v.epoch, v.created_unix_ms, v.pid);
    write_header(&v);
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");

    write_header(&h);
    Region::attach(&tmp.0).expect("restored header attaches");
    file.set_len(h.total_size - 4096).unwrap();
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::Truncated { .. }), "{e}");
    file.set_len(100).unwrap();
    let e = Region::attach(&tmp.0).unwrap_err();
    assert!(matches!(e, RegionError::Truncated { .. }), "{e}");
}

#[test]
fn create_fails_cleanly_in_missing_directory() {
    let p = std::env::temp_dir().join("rtedge-no-such-dir-xyz/region");
    let e = Region::create(&p, 1, 1).unwrap_err();
    assert!(matches!(e, RegionError::Io { op: "create", .. }), "{e}");
}

#[test]
fn slot_roundtrip_find_and_close() {
    let r = Region::create_anonymous(2, 4).unwrap();
    let c1 = r.core(1);
    let peer6 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7), 443));
    // 70 bytes of text: 'é' is 2 bytes, so the 64-byte cut lands mid-char.
    let long = format!("/{}", "é".repeat(35));
    let id = c1.slot_open(
        2,
        &ConnInfo {
            peer: peer6,
            local: v4([192, 168, 1, 2], 9443),
            transport: Transport::Wss,
            sub_protocol: SubProtocol::Msrp,
            state: ConnState::Handshake,
            created_ms: 1000,
            info: &long,
        },
    );
    assert_eq!(conn_id_core(id), 1);
    assert_eq!(id, make_conn_id(1, 1));
    c1.slot_record_rx(2, 3, 300, 2000);
    c1.slot_record_tx(2, 1, 50, 2500);
    c1.slot_set_state(2, ConnState::Open);
    assert!(c1.slot_update(2, |s| s.set_sub_protocol(SubProtocol::Xmpp)));

    let all = r.connections();
    assert_eq!(all.len(), 1);
    let s = all[0];
    assert_eq!((s.id, s.core, s.slot), (id, 1, 2));
    assert_eq!(s.peer, peer6);
    assert_eq!(s.local, v4([192, 168, 1, 2], 9443));
    assert_eq!(
        (s.transport, s.sub_protocol, s.state),
        (Transport::Wss, SubProtocol::Xmpp, ConnState::Open)
    );
    assert_eq!((s.created_ms, s.last_used_ms), (1000, 2500));
    assert_eq!(
        (s.frames_in, s.bytes_in, s.frames_out, s.bytes_out),
        (3, 300, 1, 50)
    );
    assert_eq!(s.info.as_str().len(), 63);
    assert!(long.starts_with(s.info.as_str()));
    assert_eq!(format!("{:?}", s.info), format!("{:?}", s.info.as_str()));

    assert_eq!(
        r.find_connection(id).map(|(c, s)| (c, s.slot)),
        Some((1, 2))
    );
    assert!(r.find_connection(make_conn_id(1, 99)).is_none());
    assert!(r.find_connection(make_conn_id(7, 1)).is_none());
    assert!(r.core_connections(0).is_empty());

    // Re-using a slot: a new id, fresh traffic counters.
    c1.slot_close(2);
    assert!(r.connections().is_empty());
    assert!(r.find_connection(id).is_none());
    let id2 = c1.slot_open(2, &info(v4([1, 2, 3, 4], 1), ""));
    assert_ne!(id2, id);
    let s = r.find_connection(id2).unwrap().1;
    assert_eq!((s.frames_in, s.bytes_out, s.info.as_str()), (0, 0, ""));

    // Out-of-range slot: id still allocated, nothing stored.
    let id3 = c1.slot_open(4, &info(v4([1, 2, 3, 4], 1), "x"));
    assert_eq!(id3, make_conn_id(1, 3));
    assert!(!c1.slot_update(4, |_| panic!("not called")));
    c1.slot_close(4);
    assert_eq!(r.connections().len(), 1);
}

#[test]
fn panicking_update_leaves_slot_readable() {
    let r = Region::create_anonymous(1, 1).unwrap();
    let c = r.core(0);
    let id = c.slot_open(0, &info(v4([1, 1, 1, 1], 1), "a"));
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.slot_update(0, |s| {
            s.add_rx(1, 1);
            panic!("boom");
        })
    }));
    assert!(res.is_err());
    let s = r.find_connection(id).expect("slot readable after panic").1;
    assert_eq!(s.frames_in, 1);
}

#[test]
fn concurrent_counters_are_monotonic_and_exact() {
    const N: u64 = 200_000;
    let r = Arc::new(Region::create_anonymous(2, 0).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u32)
        .map(|core| {
            let r = r.clone();
            thread::spawn(move || {
                let s = r.core(core);
                for i in 0..N {
                    s.inc(Counter::ReactorLoops);
                    s.add(Counter::BytesReceived(Transport::Ws), 3);
                    s.inc(Counter::ConnectionsActive(Transport::Ws));
                    s.dec(Counter::ConnectionsActive(Transport::Ws));
                    if i % 1024 == 0 {
                        s.heartbeat(i);
                    }
                }
            })
        })
        .collect();
    let reader = {
        let (r, done) = (r.clone(), done.clone());
        thread::spawn(move || {
            let (mut last_loops, mut last_bytes, mut reads) = (0, 0, 0u64);
            let mut last_core = [0u64; 2];
            while !done.load(Ordering::Acquire) || reads == 0 {
                let s = r.snapshot_counters();
                let loops = s.get(Counter::ReactorLoops);
                let bytes = s.get(Counter::BytesReceived(Transport::Ws));
                assert!(loops >= last_loops && bytes >= last_bytes);
                for (core, last) in last_core.iter_mut().enumerate() {
                    let v = s.core_get(core as u32, Counter::ReactorLoops);
                    assert!(v >= *last);
                    *last = v;
                }
                let active = s.gauge(Counter::ConnectionsActive(Transport::Ws));
                assert!((0..=2).contains(&active), "active {active}");
                (last_loops, last_bytes) = (loops, bytes);
                reads += 1;
            }
            reads
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    let s = r.snapshot_counters();
    assert_eq!(s.get(Counter::ReactorLoops), 2 * N);
    assert_eq!(s.get(Counter::BytesReceived(Transport::Ws)), 6 * N);
    assert_eq!(s.gauge(Counter::ConnectionsActive(Transport::Ws)), 0);
}

/// Writers keep every slot internally consistent (all fields derived from
/// one value); readers must never see a mixture.
#[test]
fn seqlock_readers_never_see_torn_slots() {
    const SLOTS: u32 = 4;
    let r = Arc::new(Region::create_anonymous(2, SLOTS).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_millis(400);
    let writers: Vec<_> = (0..2u32)
        .map(|core| {
            let (r, stop) = (r.clone(), stop.clone());
            thread::spawn(move || {
                let s = r.core(core);
                for i in 0..SLOTS {
                    s.slot_open(i, &info(v4([0, 0, 0, 0], 0), "0"));
                }
                let mut v: u64 = 1;
                let mut text = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = (v % u64::from(SLOTS)) as u32;
                    text.clear();
                    use std::fmt::Write as _;
                    write!(text, "{v:x}").unwrap();
                    let ip = (v as u32).to_be_bytes();
                    s.slot_update(i, |w| {
                        w.set_traffic(v, v.wrapping_mul(3), v.wrapping_mul(5), v.wrapping_mul(7));
                        w.set_last_used(v);
                        w.set_peer(v4(ip, v as u16));
                        w.set_info(&text);
                        w.set_state(if v.is_multiple_of(2) {
                            ConnState::Open
                        } else {
                            ConnState::Closing
                        });
                    });
                    v += 1;
                }
                v
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let r = r.clone();
            thread::spawn(move || {
                let mut checked = 0u64;
                while Instant::now() < deadline {
                    for c in r.connections() {
                        let v = c.frames_in;
                        if v == 0 {
                            continue; // as opened, before the first update
                        }
                        assert_eq!(c.frames_out, v.wrapping_mul(3), "{c:?}");
                        assert_eq!(c.bytes_in, v.wrapping_mul(5), "{c:?}");
                        assert_eq!(c.bytes_out, v.wrapping_mul(7), "{c:?}");
                        assert_eq!(c.last_used_ms, v, "{c:?}");
                        assert_eq!(c.peer, v4((v as u32).to_be_bytes(), v as u16), "{c:?}");
                        assert_eq!(c.info.as_str(), format!("{v:x}"), "{c:?}");
                        let st = if v.is_multiple_of(2) {
                            ConnState::Open
                        } else {
                            ConnState::Closing
                        };
                        assert_eq!(c.state, st);
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();
    let mut checked = 0;
    for rd in readers {
        checked += rd.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let updates: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(checked > 100, "only {checked} consistent reads");
    assert!(updates > 100, "only {updates} updates");
}

#[test]
fn ring_full_wraps_and_round_trips() {
    let r = Region::create_with(None, 2, 1, 8).unwrap();
    assert_eq!(r.ring_capacity(), 8);
    let long = [b'x'; 200];
    for lap in 0..5u64 {
        for i in 0..8 {
            r.post_command(1, Command::ping(lap * 100 + i, &long))
                .unwrap();
        }
        assert_eq!(r.post_command(1, Command::pong(0, b"")), Err(RingFull));
        let mut got = Vec::new();
        assert_eq!(r.drain_commands(1, |c| got.push(c)), 8);
        let ids: Vec<u64> = got.iter().map(|c| c.conn_id).collect();
        assert_eq!(ids, (0..8).map(|i| lap * 100 + i).collect::<Vec<_>>());
        assert!(
            got.iter()
                .all(|c| c.kind == CommandKind::Ping && c.payload() == &long[..COMMAND_DATA_MAX])
        );
        assert_eq!(r.drain_commands(1, |_| panic!("empty")), 0);
    }
    // Rings are per core.
    r.post_command(0, Command::drop_session(5)).unwrap();
    assert_eq!(r.drain_commands(1, |_| {}), 0);
    let mut got = None;
    assert_eq!(r.drain_commands(0, |c| got = Some(c)), 1);
    let c = got.unwrap();
    assert_eq!(
        (c.kind, c.conn_id, c.payload()),
        (CommandKind::DropSession, 5, &b""[..])
    );
    assert!(format!("{c:?}").contains("DropSession"));

    // A cell with an unknown kind is consumed and skipped.
    r.post_command(0, Command::close(9, 1000, b"")).unwrap();
    r.post_command(0, Command::close(10, 1000, b"ok")).unwrap();
    let ring = r.ring(0);
    // First cell of lap 0 after one consumed command: position 1.
    let hdr = &ring[layout::RING_HEAD_WORDS + layout::CELL_WORDS + 1];
    hdr.store(hdr.load(Ordering::Relaxed) & !0xFF, Ordering::Relaxed);
    let mut got = Vec::new();
    assert_eq!(r.drain_commands(0, |c| got.push(c)), 1);
    assert_eq!(
        (got[0].conn_id, got[0].status, got[0].payload()),
        (10, 1000, &b"ok"[..])
    );
}

#[test]
fn ring_mpsc_delivers_every_command_exactly_once() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 5_000;
    let r = Arc::new(Region::create_with(None, 1, 0, 64).unwrap());
    let full_seen = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (r, full_seen) = (r.clone(), full_seen.clone());
            thread::spawn(move || {
                for i in 0..PER {
                    let id = (p << 32) | i;
                    let cmd = Command::close(id, (i % 5000) as u16, &id.to_le_bytes());
                    while r.post_command(0, cmd) == Err(RingFull) {
                        full_seen.fetch_add(1, Ordering::Relaxed);
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut next = [0u64; PRODUCERS as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    while (seen.len() as u64) < PRODUCERS * PER {
        assert!(Instant::now() < deadline, "stalled at {}", seen.len());
        let n = r.drain_commands(0, |c| {
            let (p, i) = (c.conn_id >> 32, c.conn_id & 0xFFFF_FFFF);
            assert_eq!(c.payload(), &c.conn_id.to_le_bytes());
            assert_eq!(c.status, (i % 5000) as u16);
            assert_eq!(next[p as usize], i, "per-producer FIFO order");
            next[p as usize] += 1;
            assert!(seen.insert(c.conn_id), "duplicate {:#x}", c.conn_id);
        });
        if n == 0 {
            thread::yield_now();
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(r.drain_commands(0, |_| panic!("extra command")), 0);
    assert_eq!(seen.len() as u64, PRODUCERS * PER);
}

#[test]
fn conn_ids_are_unique_and_encode_the_core() {
    let r = Region::create_anonymous(3, 0).unwrap();
    let mut ids = HashSet::new();
    for core in 0..3 {
        for _ in 0..1000 {
            let id = r.core(core).next_conn_id();
            assert_eq!(conn_id_core(id), core);
            assert_ne!(id & ((1 << 48) - 1), 0);
            assert!(ids.insert(id));
        }
    }
}

#[test]
#[should_panic(expected = "out of range")]
fn core_out_of_range_panics() {
    let r = Region::create_anonymous(2, 0).unwrap();
    let _ = r.core(2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn bucket_of_matches_le_definition(v in prop_oneof![0u64..20_000_000, any::<u64>()]) {
        let b = bucket_of(v);
        prop_assert_eq!(b, HIST_BOUNDS_US.partition_point(|&x| x < v));
        if b < HIST_BOUNDS_US.len() {
            prop_assert!(v <= HIST_BOUNDS_US[b]);
        }
        if b > 0 {
            prop_assert!(v > HIST_BOUNDS_US[b - 1]);
        }
    }

    #[test]
    fn counter_ops_match_a_model(ops in proptest::collection::vec((0u32..3, 0usize..COUNTER_COUNT, 0u8..4, 0u64..1000), 0..200)) {
        let r = Region::create_anonymous(3, 0).unwrap();
        let mut model = vec![[0u64; 3]; COUNTER_COUNT];
        // Map raw indices back to typed counters through a lookup of all
        // labelled families we can construct.
        let counters = all_counters();
        prop_assert_eq!(counters.len(), COUNTER_COUNT);
        for (core, idx, op, n) in ops {
            let c = counters[idx];
            prop_assert_eq!(c.index(), idx);
            let s = r.core(core);
            let m = &mut model[idx][core as usize];
            match op {
                0 => { s.inc(c); *m = m.wrapping_add(1) }
                1 => { s.add(c, n); *m = m.wrapping_add(n) }
                2 => { s.dec(c); *m = m.wrapping_sub(1) }
                _ => { s.set(c, n); *m = n }
            }
        }
        let snap = r.snapshot_counters();
        for (idx, per) in model.iter().enumerate() {
            let total = per.iter().fold(0u64, |a, b| a.wrapping_add(*b));
            prop_assert_eq!(snap.raw(idx), total);
            for core in 0..3 {
                prop_assert_eq!(snap.core_raw(core, idx), per[core as usize]);
            }
        }
    }
}

/// Every counter series as a typed value, in index order.
fn all_counters() -> Vec<Counter> {
    let mut v = Vec::new();
    v.extend(
        Transport::ALL
            .iter()
            .map(|&t| Counter::ConnectionsAccepted(t)),
    );
    v.extend(
        Transport::ALL
            .iter()
            .map(|&t| Counter::ConnectionsActive(t)),
    );
    v.extend(
        Transport::ALL
            .iter()
            .map(|&t| Counter::ConnectionsClosed(t)),
    );
    v.extend(
        RejectReason::ALL
            .iter()
            .map(|&t| Counter::ConnectionsRejected(t)),
    );
    v.extend(
        SubProtocol::ALL
            .iter()
            .map(|&t| Counter::WsSessionsActive(t)),
    );
    v.extend(
        SubProtocol::ALL
            .iter()
            .map(|&t| Counter::WsSessionsTotal(t)),
    );
    v.extend(HandshakeReason::ALL.iter().map(|&t| Counter::Handshakes(t)));
    v.extend(Opcode::ALL.iter().map(|&t| Counter::FramesReceived(t)));
    v.extend(Opcode::ALL.iter().map(|&t| Counter::FramesSent(t)));
    v.extend(Transport::ALL.iter().map(|&t| Counter::BytesReceived(t)));
    v.extend(Transport::ALL.iter().map(|&t| Counter::BytesSent(t)));
    v.extend(
        SubProtocol::ALL
            .iter()
            .map(|&t| Counter::MessagesReceived(t)),
    );
    v.extend(SubProtocol::ALL.iter().map(|&t| Counter::MessagesSent(t)));
    v.extend(
        SubProtocol::ALL
            .iter()
            .map(|&t| Counter::MessagesDropped(t)),
    );
    v.extend(CloseCode::ALL.iter().map(|&t| Counter::CloseCodesSent(t)));
    v.extend(
        CloseCode::ALL
            .iter()
            .map(|&t| Counter::CloseCodesReceived(t)),
    );
    v.push(Counter::KeepalivesSent);
    v.push(Counter::KeepaliveFailures);
    v.push(Counter::IdleTimeouts);
    v.push(Counter::CloseTimeouts);
    v.push(Counter::HandshakeTimeouts);
    v.extend(CloseCode::ALL.iter().map(|&t| Counter::ProtocolErrors(t)));
    v.extend(TlsResult::ALL.iter().map(|&t| Counter::TlsHandshakes(t)));
    v.push(Counter::ReactorLoops);
    v.push(Counter::ReactorCompletions);
    v.push(Counter::InboxMessages);
    v.push(Counter::BackpressurePauses);
    v.extend(
        MsrpMethod::ALL
            .iter()
            .map(|&t| Counter::MsrpRequestsReceived(t)),
    );
    v.extend(
        MsrpMethod::ALL
            .iter()
            .map(|&t| Counter::MsrpRequestsRelayed(t)),
    );
    v.extend(MsrpStatus::ALL.iter().map(|&t| Counter::MsrpResponses(t)));
    v.extend(AuthResult::ALL.iter().map(|&t| Counter::MsrpAuth(t)));
    v.push(Counter::MsrpSessionsActive);
    v.push(Counter::MsrpFailureReports);
    v.push(Counter::MsrpRelayedBytes);
    v.push(Counter::MsrpRechunked);
    v.push(Counter::MsrpMalformed);
    v.push(Counter::MsrpHandoffs);
    v.push(Counter::SipRefused);
    v.push(Counter::MsrpSenderPauses);
    v.extend(
        SubProtocol::ALL
            .iter()
            .map(|&t| Counter::WsSessionsClosed(t)),
    );
    v.push(Counter::MsrpZeroCopyChunks);
    v.push(Counter::MsrpZeroCopyBytes);
    v.push(Counter::RecvBuffersHeld);
    v.extend(ReloadResult::ALL.iter().map(|&t| Counter::UsersReloads(t)));
    v.push(Counter::Users);
    v
}

// ------------------------------------------------------------------ events

fn read_all(r: &Region, core: u32, cursor: &mut u64) -> (Vec<EventRecord>, u64) {
    let mut out = Vec::new();
    let lost = r.read_events(core, cursor, usize::MAX, &mut out);
    (out, lost)
}

#[test]
fn events_round_trip_in_order() {
    let r = Region::create_anonymous(2, 4).unwrap();
    let peer = v4([10, 1, 2, 3], 40000);
    let peer6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 5060));
    let c1 = r.core(1);
    assert_eq!(r.event_head(1), 0);
    let id = make_conn_id(1, 7);
    c1.event(&Event::opened(
        id,
        1000,
        peer,
        Transport::Wss,
        SubProtocol::Sip,
        "/ws alice",
    ));
    c1.event(&Event::closed(
        id,
        2000,
        peer,
        Transport::Wss,
        SubProtocol::Sip,
        Some(4000),
        "bye",
    ));
    c1.event(&Event::closed(
        id + 1,
        2500,
        peer6,
        Transport::Ws,
        SubProtocol::Echo,
        None,
        "",
    ));
    c1.event(&Event::rejected(
        id + 2,
        3000,
        peer6,
        Transport::Ws,
        HandshakeReason::Disabled,
    ));
    assert_eq!(r.event_head(1), 4);
    assert_eq!(r.event_head(0), 0);
    assert_eq!(r.event_head(99), 0, "out-of-range core is harmless");

    let mut cursor = 0;
    let (evs, lost) = read_all(&r, 1, &mut cursor);
    assert_eq!((evs.len(), lost, cursor), (4, 0, 4));
    let e = &evs[0];
    assert_eq!(
        (e.core, e.seq, e.kind, e.conn_id, e.time_ms),
        (1, 0, EventKind::Opened, id, 1000)
    );
    assert_eq!(
        (e.peer, e.transport, e.sub_protocol),
        (peer, Transport::Wss, SubProtocol::Sip)
    );
    assert_eq!(
        (e.code, e.reason, e.text.as_str()),
        (None, None, "/ws alice")
    );
    let e = &evs[1];
    assert_eq!(
        (e.kind, e.code, e.text.as_str()),
        (EventKind::Closed, Some(4000), "bye")
    );
    let e = &evs[2];
    assert_eq!((e.kind, e.code, e.peer), (EventKind::Closed, None, peer6));
    let e = &evs[3];
    assert_eq!(
        (e.kind, e.reason, e.sub_protocol, e.seq),
        (
            EventKind::Rejected,
            Some(HandshakeReason::Disabled),
            SubProtocol::None,
            3
        )
    );
    // Nothing new.
    let (evs, lost) = read_all(&r, 1, &mut cursor);
    assert_eq!((evs.len(), lost), (0, 0));
    // `max` is honoured and the cursor stops there.
    let mut cursor = 1;
    let mut out = Vec::new();
    assert_eq!(r.read_events(1, &mut cursor, 2, &mut out), 0);
    assert_eq!((out.len(), cursor, out[0].seq), (2, 3, 1));
    // A cursor from the future (an old region's reader) is pulled back.
    let mut cursor = 1_000_000;
    let (evs, lost) = read_all(&r, 1, &mut cursor);
    assert_eq!((evs.len(), lost, cursor), (0, 0, 4));
    // Out-of-range core reads nothing.
    let mut cursor = 0;
    assert_eq!(read_all(&r, 7, &mut cursor), (vec![], 0));
}

#[test]
fn event_text_is_truncated_at_a_char_boundary() {
    let r = Region::create_anonymous(1, 0).unwrap();
    let long = "é".repeat(40); // 80 bytes
    r.core(0).event(&Event::closed(
        1,
        1,
        v4([127, 0, 0, 1], 1),
        Transport::Ws,
        SubProtocol::None,
        Some(1000),
        &long,
    ));
    let mut cursor = 0;
    let (evs, _) = read_all(&r, 0, &mut cursor);
    assert_eq!(evs[0].text.as_str(), "é".repeat(EVENT_TEXT_CAP / 2));
}

#[test]
fn events_overwrite_oldest_and_report_losses() {
    let r = Region::create_anonymous(1, 0).unwrap();
    let c = r.core(0);
    let cap = u64::from(EVENT_CAPACITY);
    let total = cap * 2 + 10;
    for i in 0..total {
        c.event(&Event::opened(
            i,
            i,
            v4([127, 0, 0, 1], 1),
            Transport::Ws,
            SubProtocol::Echo,
            "",
        ));
    }
    let mut cursor = 0;
    let (evs, lost) = read_all(&r, 0, &mut cursor);
    assert_eq!(lost, total - cap);
    assert_eq!(evs.len() as u64, cap);
    assert_eq!(evs[0].seq, total - cap);
    assert!(evs.iter().all(|e| e.conn_id == e.seq));
    assert_eq!(cursor, total);
}

#[test]
fn events_survive_attach() {
    let tmp = TmpPath::new("events");
    let w = Region::create(&tmp.0, 2, 1).unwrap();
    let rd = Region::attach(&tmp.0).unwrap();
    assert_eq!(rd.header().event_capacity, EVENT_CAPACITY);
    w.core(1).event(&Event::rejected(
        5,
        9,
        v4([1, 2, 3, 4], 5),
        Transport::Ws,
        HandshakeReason::Origin,
    ));
    let mut cursor = rd.event_head(0);
    assert_eq!(read_all(&rd, 0, &mut cursor).0.len(), 0);
    let mut cursor = 0;
    let (evs, _) = read_all(&rd, 1, &mut cursor);
    assert_eq!(evs[0].reason, Some(HandshakeReason::Origin));
}

#[test]
fn concurrent_event_readers_never_see_torn_events() {
    let r = Arc::new(Region::create_anonymous(1, 0).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let r = r.clone();
        let stop = stop.clone();
        readers.push(thread::spawn(move || {
            let mut cursor = 0;
            let mut seen = 0u64;
            let mut lost = 0u64;
            let mut last = None;
            let mut out = Vec::new();
            loop {
                let done = stop.load(Ordering::Acquire);
                out.clear();
                lost += r.read_events(0, &mut cursor, 64, &mut out);
                for e in &out {
                    // Every field was written from the sequence number.
                    assert_eq!(e.conn_id, e.seq);
                    assert_eq!(e.time_ms, e.seq * 3);
                    assert_eq!(e.code, Some((e.seq % 5000) as u16));
                    assert_eq!(e.text.as_str(), format!("r{}", e.seq));
                    assert!(last.is_none_or(|l| e.seq > l), "out of order");
                    last = Some(e.seq);
                    seen += 1;
                }
                if done && out.is_empty() && cursor == r.event_head(0) {
                    return (seen, lost, cursor);
                }
            }
        }));
    }
    let total = 200_000u64;
    let c = r.core(0);
    for i in 0..total {
        let text = format!("r{i}");
        c.event(&Event::closed(
            i,
            i * 3,
            v4([127, 0, 0, 1], (i % 60000) as u16),
            Transport::Ws,
            SubProtocol::Echo,
            Some((i % 5000) as u16),
            &text,
        ));
    }
    stop.store(true, Ordering::Release);
    for h in readers {
        let (seen, lost, cursor) = h.join().unwrap();
        assert_eq!(cursor, total);
        assert_eq!(
            seen + lost,
            total,
            "every event is either read or counted lost"
        );
    }
}

#[test]
fn msrp_session_table_put_free_and_bounds() {
    let r = Region::create_anonymous(2, 4).unwrap();
    assert!(r.msrp_sessions().is_empty());
    let c1 = r.core(1);
    let long_user = "ü".repeat(40); // 80 bytes: truncated at a char boundary
    c1.msrp_session_put(
        7,
        &MsrpSessionInfo {
            session_id: "01abcdefghijklmnopqrst",
            user: &long_user,
            peer: "[2001:db8::1]:65535",
            conn_id: make_conn_id(1, 9),
            expires_unix_ms: 1234,
        },
    );
    // Out of range: ignored, no panic.
    c1.msrp_session_put(
        MSRP_SESSION_SLOTS,
        &MsrpSessionInfo {
            session_id: "x",
            user: "",
            peer: "",
            conn_id: 0,
            expires_unix_ms: 0,
        },
    );
    c1.msrp_session_free(MSRP_SESSION_SLOTS);
    let all = r.msrp_sessions();
    assert_eq!(all.len(), 1);
    let s = &all[0];
    assert_eq!(s.session_id, "01abcdefghijklmnopqrst");
    assert_eq!(s.user, "ü".repeat(32));
    assert_eq!(s.peer, "[2001:db8::1]:65535");
    assert_eq!(
        (s.core, s.slot, s.conn_id, s.expires_unix_ms),
        (1, 7, make_conn_id(1, 9), 1234)
    );
    assert_eq!(
        r.find_msrp_session(1, "01abcdefghijklmnopqrst"),
        Some(s.clone())
    );
    assert_eq!(r.find_msrp_session(0, "01abcdefghijklmnopqrst"), None);
    assert!(r.core_msrp_sessions(99).is_empty());
    c1.msrp_session_free(7);
    assert!(r.msrp_sessions().is_empty());
    assert_eq!(r.header().session_slots, MSRP_SESSION_SLOTS);
}
