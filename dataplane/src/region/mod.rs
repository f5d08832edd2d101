//! Shared stats region: a VPP-stats-segment-style fixed binary layout in
//! a memory-mapped file (default `/dev/shm/rtedge.region`), written by the
//! reactor threads and read by the management service, in this process or in
//! another one that [`Region::attach`]es to the file. Readers never block
//! writers; writers never wait for readers.
//!
//! This module depends on nothing else in the data plane (the management
//! crate depends on it alone), so it defines its own label enums.
//!
//! # Layout (all offsets in the header; sections 128-byte aligned)
//!
//! 1. **Header** ([`HeaderInfo`] documents the byte layout): magic
//!    `b"RTEDGE\0\x01"`, [`LAYOUT_VERSION`], geometry, section offsets, epoch
//!    (random, fresh on every [`Region::create`]), creation time, pid, then
//!    one 64-byte line per core whose first word is the core's heartbeat.
//! 2. **Control words** ([`Control`]): `ws/msrp/sip/xmpp_enabled`
//!    (1 = enabled, the default) and `shutdown_requested`.
//! 3. **Counters**: per core [`CORE_WORDS`] `u64` words (a multiple of 128 B,
//!    so cores never share a cache line): every [`Counter`] series in
//!    descriptor order, then each [`Histogram`] (buckets + sum), then the
//!    core's connection-id sequence. Each core's block has exactly one writer,
//!    which uses a relaxed load + store (no locked RMW); readers sum relaxed
//!    loads with wrapping arithmetic. Gauges are wrapping `u64` read as `i64`
//!    (a connection is opened and closed on the same core, so per-core values
//!    are exact).
//! 4. **Connection slots**: per core `slots_per_core` seqlock-guarded slots of
//!    [`SLOT_SIZE`] bytes (see `slots.rs` for the ordering argument).
//! 5. **Command rings**: per core a bounded lock-free MPSC ring of [`Command`]s
//!    (Vyukov, sequence number per cell; see `ring.rs`).
//! 6. **Event rings**: per core an overwrite-oldest ring of connection
//!    [`Event`]s (opened, closed, handshake rejected) with one writer (the
//!    reactor) and any number of readers, each with its own cursor (see
//!    `events.rs`).
//! 7. **MSRP session table**: per core
//!    [`MSRP_SESSION_SLOTS`] seqlock-guarded slots listing the relay sessions
//!    of the core's session map (see `sessions.rs`).
//!
//! Every word after the header is an atomic; the header's plain fields are
//! written with `pwrite` before the file is published (created under a
//! temporary name, then renamed into place) and never change afterwards, so
//! an attacher never sees a half-initialised region, and a re-created region
//! is a new inode: an old attacher keeps a valid (stale) mapping and can
//! notice the restart with [`Region::is_stale`] / [`Region::probe`].
//!
//! Connection ids are `core << 48 | sequence` ([`make_conn_id`]), the
//! sequence starting at 1 per core: unique for the process lifetime.

mod events;
mod labels;
mod layout;
mod metrics;
mod ring;
mod sessions;
mod slots;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

pub use events::{EVENT_CAPACITY, EVENT_TEXT_CAP, Event, EventKind, EventRecord};
pub use labels::{
    AuthResult, CloseCode, ConnState, HandshakeReason, Label, MsrpMethod, MsrpStatus, Opcode,
    Protocol, RejectReason, ReloadResult, SubProtocol, TlsResult, Transport,
};
pub use layout::{
    CELL_SIZE, DEFAULT_RING_CAPACITY, HeaderInfo, LAYOUT_VERSION, MAGIC, MAX_CORES,
    MAX_RING_CAPACITY, MAX_SLOTS_PER_CORE, SLOT_SIZE,
};
pub use metrics::{
    CORE_WORDS, COUNTER_COUNT, Counter, CounterSnapshot, HIST_BOUNDS_US, HIST_BUCKETS, Histogram,
    HistogramDesc, HistogramSnapshot, MetricDesc, MetricKind, Series, bucket_of, descriptors,
    histogram_descriptors,
};
pub use ring::{COMMAND_DATA_MAX, Command, CommandKind, RingFull};
pub use sessions::{
    MSRP_SESSION_SLOTS, MsrpSessionInfo, MsrpSessionSnapshot, SESSION_ID_CAP, SESSION_PEER_CAP,
    SESSION_SLOT_SIZE, SESSION_USER_CAP,
};
pub use slots::{
    ConnInfo, ConnSnapshot, INFO_CAP, InfoText, SlotWriter, conn_id_core, make_conn_id,
};

use layout::{FIXED_HEADER, Layout};
use slots::SlotWords;

/// Default region file.
pub const DEFAULT_PATH: &str = "/dev/shm/rtedge.region";

/// Why a region could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{}: not an rtedge region (bad magic)", path.display())]
    BadMagic { path: PathBuf },
    #[error("{}: layout version {found}, this build reads {expected}", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: truncated region: {len} bytes, expected at least {expected}", path.display())]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("{}: corrupt region header: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid region geometry: {0}")]
    Geometry(String),
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> RegionError {
    move |source| RegionError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Current unix time in milliseconds.
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fresh_epoch() -> u64 {
    let e = getrandom::u64().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (u64::from(std::process::id()) << 32)
    });
    e.max(1)
}

/// The mapping. Only ever accessed through atomics.
struct Mem {
    map: MmapRaw,
}

impl Mem {
    /// `n` atomic words at byte offset `off`. Panics if out of bounds or
    /// misaligned (offsets come from a validated [`Layout`], so that would be
    /// a bug here).
    #[inline]
    fn u64s(&self, off: usize, n: usize) -> &[AtomicU64] {
        let end = n.checked_mul(8).and_then(|b| b.checked_add(off));
        assert!(
            end.is_some_and(|e| e <= self.map.len()),
            "region access out of bounds"
        );
        let ptr = self.map.as_ptr().wrapping_add(off).cast::<AtomicU64>();
        assert!(ptr.is_aligned(), "misaligned region access");
        // SAFETY: `ptr..ptr + n*8` lies inside the live mapping (checked just
        // above; `self.map` stays mapped for the lifetime of `&self`) and is
        // aligned for `AtomicU64`. The mapping is read/write shared memory, and
        // every byte of it after the header — and the heartbeat words inside
        // it — is only ever accessed through atomics, by this process and by
        // any other (no `&[u8]`/`&mut` view of it exists anywhere), so a shared
        // reference to atomics is sound; any bit pattern is a valid `u64`.
        unsafe { std::slice::from_raw_parts(ptr, n) }
    }

    #[inline]
    fn control(&self, off: usize) -> &Control {
        assert!(
            off.checked_add(size_of::<Control>())
                .is_some_and(|e| e <= self.map.len()),
            "region access out of bounds"
        );
        let ptr = self.map.as_ptr().wrapping_add(off).cast::<Control>();
        assert!(ptr.is_aligned(), "misaligned region access");
        // SAFETY: in bounds and aligned (checked above); `Control` is
        // `#[repr(C)]` made only of `AtomicU32`s, valid for any bit pattern,
        // and that memory is only ever accessed atomically (see `u64s`).
        unsafe { &*ptr }
    }
}

/// Control words (management → data plane). All relaxed: they are polled.
#[repr(C)]
pub struct Control {
    ws_enabled: AtomicU32,
    msrp_enabled: AtomicU32,
    sip_enabled: AtomicU32,
    xmpp_enabled: AtomicU32,
    shutdown_requested: AtomicU32,
    /// Reloads of the users file asked for (a count: the process reloads
    /// when it changes).
    users_reload_requests: AtomicU32,
}

const _: () = assert!(size_of::<Control>() <= layout::CONTROL_SIZE);

impl Control {
    fn word(&self, p: Protocol) -> &AtomicU32 {
        match p {
            Protocol::Ws => &self.ws_enabled,
            Protocol::Msrp => &self.msrp_enabled,
            Protocol::Sip => &self.sip_enabled,
            Protocol::Xmpp => &self.xmpp_enabled,
        }
    }
    /// Whether new work for `p` is accepted (`*_enabled == 1`).
    #[inline]
    pub fn is_enabled(&self, p: Protocol) -> bool {
        self.word(p).load(Ordering::Relaxed) == 1
    }
    /// `is_enabled(Protocol::Ws)`.
    #[inline]
    pub fn ws_enabled(&self) -> bool {
        self.is_enabled(Protocol::Ws)
    }
    /// `is_enabled(Protocol::Msrp)`.
    #[inline]
    pub fn msrp_enabled(&self) -> bool {
        self.is_enabled(Protocol::Msrp)
    }
    /// `is_enabled(Protocol::Sip)`.
    #[inline]
    pub fn sip_enabled(&self) -> bool {
        self.is_enabled(Protocol::Sip)
    }
    /// `is_enabled(Protocol::Xmpp)`.
    #[inline]
    pub fn xmpp_enabled(&self) -> bool {
        self.is_enabled(Protocol::Xmpp)
    }
    /// Enable or disable `p`.
    pub fn set_enabled(&self, p: Protocol, on: bool) {
        self.word(p).store(u32::from(on), Ordering::Relaxed);
    }
    /// Whether a shutdown was requested.
    #[inline]
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::Acquire) != 0
    }
    /// Ask the data plane to shut down.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(1, Ordering::Release);
    }
    /// Ask the process to reload the users file.
    pub fn request_users_reload(&self) {
        self.users_reload_requests.fetch_add(1, Ordering::Release);
    }
    /// Reloads asked for so far.
    pub fn users_reload_requests(&self) -> u32 {
        self.users_reload_requests.load(Ordering::Acquire)
    }
    fn init(&self) {
        for p in Protocol::ALL {
            self.set_enabled(*p, true);
        }
        self.shutdown_requested.store(0, Ordering::Relaxed);
        self.users_reload_requests.store(0, Ordering::Relaxed);
    }
}

/// The shared region (a mapping of the region file, or anonymous memory).
/// `Send + Sync`: share it with `Arc`.
pub struct Region {
    mem: Mem,
    layout: Layout,
    header: HeaderInfo,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("path", &self.path)
            .field("cores", &self.layout.cores)
            .field("slots_per_core", &self.layout.slots_per_core)
            .field("epoch", &format_args!("{:#x}", self.header.epoch))
            .finish()
    }
}

fn read_header(path: &Path, file: &mut File) -> Result<HeaderInfo, RegionError> {
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let mut buf = [0u8; FIXED_HEADER];
    let mut got = 0;
    while got < FIXED_HEADER {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path, "read")(e)),
        }
    }
    let path_buf = || path.to_path_buf();
    if got < MAGIC.len() || buf[..8] != MAGIC {
        return Err(RegionError::BadMagic { path: path_buf() });
    }
    let h = HeaderInfo::decode(&buf);
    if h.layout_version != LAYOUT_VERSION {
        return Err(RegionError::Version {
            path: path_buf(),
            found: h.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    if got < FIXED_HEADER {
        return Err(RegionError::Truncated {
            path: path_buf(),
            len,
            expected: FIXED_HEADER as u64,
        });
    }
    let layout = Layout::compute(h.cores, h.slots_per_core, h.ring_capacity).map_err(|reason| {
        RegionError::Corrupt {
            path: path_buf(),
            reason,
        }
    })?;
    let expected = layout.header(h.epoch, h.created_unix_ms, h.pid);
    if let Some(field) = h.mismatch(&expected) {
        return Err(RegionError::Corrupt {
            path: path_buf(),
            reason: format!("{field} does not match layout version {LAYOUT_VERSION}"),
        });
    }
    if len < h.total_size {
        return Err(RegionError::Truncated {
            path: path_buf(),
            len,
            expected: h.total_size,
        });
    }
    Ok(h)
}

impl Region {
    /// Create (or replace) the region file at `path` with a fresh epoch and
    /// [`DEFAULT_RING_CAPACITY`]-command rings.
    pub fn create(path: &Path, cores: u32, slots_per_core: u32) -> Result<Region, RegionError> {
        Region::create_with(Some(path), cores, slots_per_core, DEFAULT_RING_CAPACITY)
    }

    /// An anonymous (in-process only) region.
    pub fn create_anonymous(cores: u32, slots_per_core: u32) -> Result<Region, RegionError> {
        Region::create_with(None, cores, slots_per_core, DEFAULT_RING_CAPACITY)
    }

    /// Create a region (in a file if `path` is given, else anonymous) with a
    /// given ring capacity (a power of two). A file is built under a
    /// temporary name in the same directory (mode 0600) and renamed onto
    /// `path` once initialised.
    pub fn create_with(
        path: Option<&Path>,
        cores: u32,
        slots_per_core: u32,
        ring_capacity: u32,
    ) -> Result<Region, RegionError> {
        let layout =
            Layout::compute(cores, slots_per_core, ring_capacity).map_err(RegionError::Geometry)?;
        let header = layout.header(fresh_epoch(), unix_time_ms(), std::process::id());
        let Some(path) = path else {
            let map = MmapOptions::new()
                .len(layout.total_size)
                .map_anon()
                .map_err(io_err(Path::new("<anonymous>"), "mmap"))?;
            let region = Region {
                mem: Mem { map: map.into() },
                layout,
                header,
                path: None,
            };
            region.init();
            return Ok(region);
        };

        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| RegionError::Geometry(format!("{}: not a file path", path.display())))?;
        let tmp = dir.join(format!(
            ".{}.{}.{:x}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            header.epoch
        ));
        let result = (|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp, "create"))?;
            file.set_len(layout.total_size as u64)
                .map_err(io_err(&tmp, "set length"))?;
            file.write_all_at(&header.encode(), 0)
                .map_err(io_err(&tmp, "write header"))?;
            let map = MmapOptions::new()
                .len(layout.total_size)
                .map_raw(&file)
                .map_err(io_err(&tmp, "mmap"))?;
            let region = Region {
                mem: Mem { map },
                layout,
                header,
                path: Some(path.to_path_buf()),
            };
            region.init();
            std::fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))?;
            Ok(region)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Attach to an existing region file (read/write: commands and control
    /// words are written by the attacher). Validates magic, layout version,
    /// geometry and size.
    pub fn attach(path: &Path) -> Result<Region, RegionError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let header = read_header(path, &mut file)?;
        let layout = Layout::compute(header.cores, header.slots_per_core, header.ring_capacity)
            .map_err(RegionError::Geometry)?;
        let map = MmapOptions::new()
            .len(layout.total_size)
            .map_raw(&file)
            .map_err(io_err(path, "mmap"))?;
        Ok(Region {
            mem: Mem { map },
            layout,
            header,
            path: Some(path.to_path_buf()),
        })
    }

    /// Read and validate the header of the region file at `path` without
    /// mapping it (e.g. to compare its epoch with an attached region's).
    pub fn probe(path: &Path) -> Result<HeaderInfo, RegionError> {
        let mut file = File::open(path).map_err(io_err(path, "open"))?;
        read_header(path, &mut file)
    }

    fn init(&self) {
        self.control().init();
        for core in 0..self.layout.cores {
            ring::init(self.ring(core), self.layout.ring_capacity);
        }
    }

    /// The validated header (a copy taken at create/attach time).
    pub fn header(&self) -> &HeaderInfo {
        &self.header
    }
    /// Number of reactor cores.
    pub fn cores(&self) -> u32 {
        self.layout.cores
    }
    /// Connection slots per core.
    pub fn slots_per_core(&self) -> u32 {
        self.layout.slots_per_core
    }
    /// Command ring capacity per core.
    pub fn ring_capacity(&self) -> u32 {
        self.layout.ring_capacity
    }
    /// The epoch of this mapping.
    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }
    /// Bytes mapped.
    pub fn size(&self) -> usize {
        self.layout.total_size
    }
    /// The file, unless anonymous.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// True if the file at this region's path is now a different region (a
    /// restarted data plane) or is gone/unreadable. Always false if anonymous.
    pub fn is_stale(&self) -> bool {
        match &self.path {
            None => false,
            Some(p) => Region::probe(p).map_or(true, |h| h.epoch != self.header.epoch),
        }
    }

    /// Writer handle for core `i` (one writer thread per core). Panics if
    /// `i >= cores()`.
    #[inline]
    pub fn core(&self, i: u32) -> CoreStats<'_> {
        assert!(
            i < self.layout.cores,
            "core {i} out of range (cores = {})",
            self.layout.cores
        );
        let words = self.mem.u64s(self.layout.counters_of(i), CORE_WORDS);
        CoreStats {
            region: self,
            core: i,
            words: words.try_into().expect("CORE_WORDS words"),
        }
    }

    /// Control words.
    #[inline]
    pub fn control(&self) -> &Control {
        self.mem.control(self.layout.control_offset)
    }

    /// Set core `core`'s heartbeat (unix ms). Panics if `core >= cores()`.
    #[inline]
    pub fn heartbeat(&self, core: u32, now_ms: u64) {
        self.heartbeat_word(core).store(now_ms, Ordering::Relaxed);
    }

    /// Every core's last heartbeat (unix ms; 0 = never).
    pub fn heartbeats(&self) -> Vec<u64> {
        (0..self.layout.cores)
            .map(|c| self.heartbeat_word(c).load(Ordering::Relaxed))
            .collect()
    }

    #[inline]
    fn heartbeat_word(&self, core: u32) -> &AtomicU64 {
        assert!(core < self.layout.cores, "core {core} out of range");
        &self.mem.u64s(self.layout.heartbeat_offset(core), 1)[0]
    }

    /// Copy every core's counter words (relaxed loads) and sum them.
    pub fn snapshot_counters(&self) -> CounterSnapshot {
        let cores = self.layout.cores;
        let mut per_core = Vec::with_capacity(cores as usize * CORE_WORDS);
        for c in 0..cores {
            let words = self.mem.u64s(self.layout.counters_of(c), CORE_WORDS);
            per_core.extend(words.iter().map(|w| w.load(Ordering::Relaxed)));
        }
        CounterSnapshot::from_per_core(cores, per_core)
    }

    #[inline]
    fn slot(&self, core: u32, index: u32) -> Option<&SlotWords> {
        if core >= self.layout.cores || index >= self.layout.slots_per_core {
            return None;
        }
        let words = self
            .mem
            .u64s(self.layout.slot_offset(core, index), layout::SLOT_WORDS);
        Some(words.try_into().expect("SLOT_WORDS words"))
    }

    /// Consistent copies of the occupied slots of one core. A slot that stays
    /// mid-update through the bounded retries is skipped.
    pub fn core_connections(&self, core: u32) -> Vec<ConnSnapshot> {
        let mut out = Vec::new();
        for i in 0..self.layout.slots_per_core {
            if let Some(w) = self.slot(core, i)
                && let slots::Read::Conn(c) = slots::read(w, core, i)
            {
                out.push(c);
            }
        }
        out
    }

    /// Consistent copies of the occupied slots of all cores.
    pub fn connections(&self) -> Vec<ConnSnapshot> {
        (0..self.layout.cores)
            .flat_map(|c| self.core_connections(c))
            .collect()
    }

    /// The connection with this id (searched on the core encoded in the id).
    pub fn find_connection(&self, id: u64) -> Option<(u32, ConnSnapshot)> {
        let core = conn_id_core(id);
        if core >= self.layout.cores {
            return None;
        }
        for i in 0..self.layout.slots_per_core {
            let w = self.slot(core, i)?;
            if slots::peek_id(w) != id {
                continue;
            }
            if let slots::Read::Conn(c) = slots::read(w, core, i)
                && c.id == id
            {
                return Some((core, c));
            }
        }
        None
    }

    #[inline]
    fn session_slot(&self, core: u32, index: u32) -> Option<&sessions::SessionWords> {
        if core >= self.layout.cores || index >= MSRP_SESSION_SLOTS {
            return None;
        }
        let words = self.mem.u64s(
            self.layout.session_offset(core, index),
            sessions::SESSION_WORDS,
        );
        words.try_into().ok()
    }

    /// Consistent copies of every listed MSRP session of one core (none if
    /// `core >= cores()`).
    pub fn core_msrp_sessions(&self, core: u32) -> Vec<MsrpSessionSnapshot> {
        (0..MSRP_SESSION_SLOTS)
            .filter_map(|i| {
                self.session_slot(core, i)
                    .and_then(|w| sessions::read(w, core, i))
            })
            .collect()
    }

    /// Every listed MSRP session of every core (`msrp.cmaplist`).
    pub fn msrp_sessions(&self) -> Vec<MsrpSessionSnapshot> {
        (0..self.layout.cores)
            .flat_map(|c| self.core_msrp_sessions(c))
            .collect()
    }

    /// The listed MSRP session with this id, searched on `core`.
    pub fn find_msrp_session(&self, core: u32, id: &str) -> Option<MsrpSessionSnapshot> {
        self.core_msrp_sessions(core)
            .into_iter()
            .find(|s| s.session_id == id)
    }

    fn ring(&self, core: u32) -> &[AtomicU64] {
        assert!(core < self.layout.cores, "core {core} out of range");
        self.mem
            .u64s(self.layout.ring_of(core), self.layout.ring_words())
    }

    /// Post a command to `core`'s ring (any thread, any process). Panics if
    /// `core >= cores()` (use [`conn_id_core`] / [`Region::find_connection`]).
    pub fn post_command(&self, core: u32, cmd: Command) -> Result<(), RingFull> {
        ring::post(self.ring(core), self.layout.ring_capacity, &cmd)
    }

    fn event_ring(&self, core: u32) -> &[AtomicU64] {
        assert!(core < self.layout.cores, "core {core} out of range");
        self.mem
            .u64s(self.layout.events_of(core), events::ring_words())
    }

    /// Number of events ever recorded on `core` (the cursor of a reader that
    /// wants only events from now on). 0 if `core >= cores()`.
    pub fn event_head(&self, core: u32) -> u64 {
        if core >= self.layout.cores {
            return 0;
        }
        events::head(self.event_ring(core))
    }

    /// Read up to `max` events of `core` from `*cursor` on (appending to
    /// `out`) and advance the cursor; returns how many events were lost
    /// because the reactor overwrote them first. Nothing happens if
    /// `core >= cores()`.
    pub fn read_events(
        &self,
        core: u32,
        cursor: &mut u64,
        max: usize,
        out: &mut Vec<EventRecord>,
    ) -> u64 {
        if core >= self.layout.cores {
            return 0;
        }
        events::read(self.event_ring(core), core, cursor, max, out)
    }

    /// Pop up to one ring's worth of commands of `core`, calling `f` for each;
    /// returns how many. Cells with an unknown kind are consumed and skipped.
    pub fn drain_commands(&self, core: u32, f: impl FnMut(Command)) -> usize {
        ring::drain(self.ring(core), self.layout.ring_capacity, f)
    }
}

/// Writer handle of one core: counters, histograms, heartbeat, connection
/// slots and the command ring. Cheap to create and `Copy`; exactly one thread
/// may write through the handles of a given core (counter updates are plain
/// load + store; concurrent writers would lose updates, never corrupt memory).
#[derive(Clone, Copy)]
pub struct CoreStats<'a> {
    region: &'a Region,
    core: u32,
    words: &'a [AtomicU64; CORE_WORDS],
}

impl std::fmt::Debug for CoreStats<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreStats")
            .field("core", &self.core)
            .finish()
    }
}

impl<'a> CoreStats<'a> {
    /// This handle's core.
    pub fn core(&self) -> u32 {
        self.core
    }
    /// The region.
    pub fn region(&self) -> &'a Region {
        self.region
    }
    /// Control words.
    #[inline]
    pub fn control(&self) -> &'a Control {
        self.region.control()
    }

    #[inline]
    fn word_add(&self, i: usize, n: u64) {
        let w = &self.words[i];
        w.store(w.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Add 1.
    #[inline]
    pub fn inc(&self, c: Counter) {
        self.word_add(c.index(), 1);
    }
    /// Add `n`.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.word_add(c.index(), n);
    }
    /// Subtract 1 (gauges).
    #[inline]
    pub fn dec(&self, c: Counter) {
        self.word_add(c.index(), u64::MAX);
    }
    /// Subtract `n` (gauges).
    #[inline]
    pub fn sub(&self, c: Counter, n: u64) {
        self.word_add(c.index(), n.wrapping_neg());
    }
    /// Overwrite this core's value.
    #[inline]
    pub fn set(&self, c: Counter, v: u64) {
        self.words[c.index()].store(v, Ordering::Relaxed);
    }
    /// This core's current value.
    #[inline]
    pub fn get(&self, c: Counter) -> u64 {
        self.words[c.index()].load(Ordering::Relaxed)
    }
    /// Record one observation of `micros` microseconds.
    #[inline]
    pub fn observe(&self, h: Histogram, micros: u64) {
        let base = h.base();
        self.word_add(base + bucket_of(micros), 1);
        self.word_add(base + HIST_BUCKETS, micros);
    }
    /// Set this core's heartbeat (unix ms).
    #[inline]
    pub fn heartbeat(&self, now_ms: u64) {
        self.region.heartbeat(self.core, now_ms);
    }

    /// A fresh connection id (`core << 48 | seq`, seq from 1).
    pub fn next_conn_id(&self) -> u64 {
        let w = &self.words[metrics::NEXT_ID_WORD];
        let seq = w.load(Ordering::Relaxed).wrapping_add(1);
        w.store(seq, Ordering::Relaxed);
        make_conn_id(self.core, seq)
    }

    /// Allocate a connection id and, if `index < slots_per_core()`, fill slot
    /// `index` with `info` (else the connection is simply not dumpable).
    /// Returns the id.
    #[inline]
    pub fn slot_open(&self, index: u32, info: &ConnInfo<'_>) -> u64 {
        let id = self.next_conn_id();
        if let Some(w) = self.region.slot(self.core, index) {
            slots::open(w, id, info);
        }
        id
    }

    /// Update slot `index` inside one seqlock write section. Returns `false`
    /// (without calling `f`) if the index is out of range.
    #[inline]
    pub fn slot_update(&self, index: u32, f: impl FnOnce(&mut SlotWriter<'_>)) -> bool {
        match self.region.slot(self.core, index) {
            Some(w) => {
                slots::write(w, f);
                true
            }
            None => false,
        }
    }

    /// Set the state of slot `index`.
    #[inline]
    pub fn slot_set_state(&self, index: u32, state: ConnState) {
        self.slot_update(index, |s| s.set_state(state));
    }

    /// Count received frames/bytes on slot `index` and mark it used.
    #[inline]
    pub fn slot_record_rx(&self, index: u32, frames: u64, bytes: u64, now_ms: u64) {
        self.slot_update(index, |s| {
            s.add_rx(frames, bytes);
            s.set_last_used(now_ms);
        });
    }

    /// Count sent frames/bytes on slot `index` and mark it used.
    #[inline]
    pub fn slot_record_tx(&self, index: u32, frames: u64, bytes: u64, now_ms: u64) {
        self.slot_update(index, |s| {
            s.add_tx(frames, bytes);
            s.set_last_used(now_ms);
        });
    }

    /// Free slot `index` (readers skip it from now on).
    pub fn slot_close(&self, index: u32) {
        if let Some(w) = self.region.slot(self.core, index) {
            slots::close(w);
        }
    }

    /// Publish MSRP session slot `index` (ignored when out of range).
    pub fn msrp_session_put(&self, index: u32, info: &MsrpSessionInfo<'_>) {
        if let Some(w) = self.region.session_slot(self.core, index) {
            sessions::put(w, info);
        }
    }

    /// Mark MSRP session slot `index` free.
    pub fn msrp_session_free(&self, index: u32) {
        if let Some(w) = self.region.session_slot(self.core, index) {
            sessions::free(w);
        }
    }

    /// Record a connection event in this core's event ring (overwrites the
    /// oldest one when full; never waits).
    #[inline]
    pub fn event(&self, ev: &Event<'_>) {
        events::write(self.region.event_ring(self.core), ev);
    }

    /// Drain this core's command ring (see [`Region::drain_commands`]).
    pub fn drain_commands(&self, f: impl FnMut(Command)) -> usize {
        self.region.drain_commands(self.core, f)
    }
}
