//! Byte layout of the region: the fixed header encoding and the section
//! geometry computed from `(cores, slots_per_core, ring_capacity)`.
//!
//! The geometry is a pure function of those three numbers and of this build's
//! constants, so an attacher recomputes it and requires the header to agree
//! exactly; nothing read from the shared file is used as an offset unchecked.

use super::events;
use super::metrics::CORE_WORDS;
use super::sessions::{MSRP_SESSION_SLOTS, SESSION_SLOT_SIZE};

/// File magic: `b"RTEDGE\0\x01"`.
pub const MAGIC: [u8; 8] = *b"RTEDGE\0\x01";
/// Layout version. Bump whenever anything in the layout changes (including
/// appending a counter or histogram).
pub const LAYOUT_VERSION: u32 = 7;

/// Bytes reserved for the fixed part of the header (fields below + spare).
pub(crate) const FIXED_HEADER: usize = 256;
/// Each core's heartbeat word sits on its own cache line.
pub(crate) const HEARTBEAT_STRIDE: usize = 64;
/// Alignment of every section and of every per-core block (two cache lines,
/// so the adjacent-line prefetcher does not couple neighbouring cores).
pub(crate) const BLOCK_ALIGN: usize = 128;
/// Bytes of the control section.
pub(crate) const CONTROL_SIZE: usize = 128;

/// Words (u64) of one connection slot.
pub(crate) const SLOT_WORDS: usize = 24;
/// Bytes of one connection slot.
pub const SLOT_SIZE: usize = SLOT_WORDS * 8;

/// Words of one command-ring cell.
pub(crate) const CELL_WORDS: usize = 24;
/// Bytes of one command-ring cell.
pub const CELL_SIZE: usize = CELL_WORDS * 8;
/// Words before the first cell of a ring: tail (producers) on the first
/// 128-byte block, head (consumer) on the second.
pub(crate) const RING_HEAD_WORDS: usize = 32;
/// Word index of the ring tail (enqueue position).
pub(crate) const RING_TAIL: usize = 0;
/// Word index of the ring head (dequeue position).
pub(crate) const RING_HEAD: usize = 16;

/// Command ring capacity used by [`super::Region::create`].
pub const DEFAULT_RING_CAPACITY: u32 = 256;
/// Largest accepted number of cores (connection ids keep the core in 16 bits).
pub const MAX_CORES: u32 = 4096;
/// Largest accepted number of slots per core.
pub const MAX_SLOTS_PER_CORE: u32 = 1 << 24;
/// Largest accepted ring capacity.
pub const MAX_RING_CAPACITY: u32 = 1 << 16;

const PAGE: usize = 4096;

/// The validated header of a region (a copy; the mapping's header bytes are
/// never written after the region is published).
///
/// Header byte layout (native endian, offsets in bytes):
///
/// | off | field             | type    |
/// |-----|-------------------|---------|
/// | 0   | magic             | [u8; 8] |
/// | 8   | layout_version    | u32     |
/// | 12  | header_size       | u32     |
/// | 16  | cores             | u32     |
/// | 20  | slots_per_core    | u32     |
/// | 24  | ring_capacity     | u32     |
/// | 28  | counter_words     | u32     |
/// | 32  | slot_size         | u32     |
/// | 36  | cell_size         | u32     |
/// | 40  | pid               | u32     |
/// | 44  | (reserved, 0)     | u32     |
/// | 48  | epoch             | u64     |
/// | 56  | created_unix_ms   | u64     |
/// | 64  | control_offset    | u64     |
/// | 72  | heartbeats_offset | u64     |
/// | 80  | counters_offset   | u64     |
/// | 88  | counters_stride   | u64     |
/// | 96  | slots_offset      | u64     |
/// | 104 | slots_stride      | u64     |
/// | 112 | rings_offset      | u64     |
/// | 120 | ring_stride       | u64     |
/// | 128 | total_size        | u64     |
/// | 136 | events_offset     | u64     |
/// | 144 | events_stride     | u64     |
/// | 152 | event_capacity    | u32     |
/// | 156 | session_slots     | u32     |
/// | 160 | sessions_offset   | u64     |
/// | 168 | sessions_stride   | u64     |
/// | 256 | heartbeats: `cores` × 64 B, an atomic u64 (unix ms) at the start of each |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    pub magic: [u8; 8],
    pub layout_version: u32,
    /// Bytes of the header including the heartbeat lines.
    pub header_size: u32,
    pub cores: u32,
    pub slots_per_core: u32,
    pub ring_capacity: u32,
    /// u64 words per core in the counter section.
    pub counter_words: u32,
    pub slot_size: u32,
    pub cell_size: u32,
    /// Pid of the data plane that created the region.
    pub pid: u32,
    /// Random, nonzero, fresh each time a data plane creates the region.
    pub epoch: u64,
    pub created_unix_ms: u64,
    pub control_offset: u64,
    pub heartbeats_offset: u64,
    pub counters_offset: u64,
    pub counters_stride: u64,
    pub slots_offset: u64,
    pub slots_stride: u64,
    pub rings_offset: u64,
    pub ring_stride: u64,
    /// Bytes of the whole mapping.
    pub total_size: u64,
    pub events_offset: u64,
    pub events_stride: u64,
    /// Events kept per core.
    pub event_capacity: u32,
    /// MSRP session slots per core.
    pub session_slots: u32,
    pub sessions_offset: u64,
    pub sessions_stride: u64,
}

/// Section geometry (byte offsets from the start of the mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub cores: u32,
    pub slots_per_core: u32,
    pub ring_capacity: u32,
    pub header_size: usize,
    pub heartbeats_offset: usize,
    pub control_offset: usize,
    pub counters_offset: usize,
    pub counters_stride: usize,
    pub slots_offset: usize,
    pub slots_stride: usize,
    pub rings_offset: usize,
    pub ring_stride: usize,
    pub events_offset: usize,
    pub events_stride: usize,
    pub sessions_offset: usize,
    pub sessions_stride: usize,
    pub total_size: usize,
}

fn align_up(v: usize, a: usize) -> Option<usize> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl Layout {
    /// Geometry for the given dimensions, or why they are not acceptable.
    pub fn compute(cores: u32, slots_per_core: u32, ring_capacity: u32) -> Result<Layout, String> {
        if cores == 0 || cores > MAX_CORES {
            return Err(format!("cores must be 1..={MAX_CORES}, got {cores}"));
        }
        if slots_per_core > MAX_SLOTS_PER_CORE {
            return Err(format!(
                "slots_per_core must be at most {MAX_SLOTS_PER_CORE}, got {slots_per_core}"
            ));
        }
        if !ring_capacity.is_power_of_two() || ring_capacity > MAX_RING_CAPACITY {
            return Err(format!(
                "ring capacity must be a power of two up to {MAX_RING_CAPACITY}, got {ring_capacity}"
            ));
        }
        let too_big = || "region size overflows".to_string();
        let n = cores as usize;
        let heartbeats_offset = FIXED_HEADER;
        let header_size =
            align_up(FIXED_HEADER + n * HEARTBEAT_STRIDE, BLOCK_ALIGN).ok_or_else(too_big)?;
        let control_offset = header_size;
        let counters_offset = control_offset + CONTROL_SIZE;
        let counters_stride = CORE_WORDS * 8;
        let slots_offset = counters_offset + n * counters_stride;
        let slots_stride =
            align_up(slots_per_core as usize * SLOT_SIZE, BLOCK_ALIGN).ok_or_else(too_big)?;
        let rings_offset = slots_stride
            .checked_mul(n)
            .and_then(|s| s.checked_add(slots_offset))
            .ok_or_else(too_big)?;
        let ring_stride = align_up(
            RING_HEAD_WORDS * 8 + ring_capacity as usize * CELL_SIZE,
            BLOCK_ALIGN,
        )
        .ok_or_else(too_big)?;
        let events_offset = ring_stride
            .checked_mul(n)
            .and_then(|s| s.checked_add(rings_offset))
            .ok_or_else(too_big)?;
        let events_stride = align_up(events::ring_words() * 8, BLOCK_ALIGN).ok_or_else(too_big)?;
        let sessions_offset = events_stride
            .checked_mul(n)
            .and_then(|s| s.checked_add(events_offset))
            .ok_or_else(too_big)?;
        let sessions_stride =
            align_up(MSRP_SESSION_SLOTS as usize * SESSION_SLOT_SIZE, BLOCK_ALIGN)
                .ok_or_else(too_big)?;
        let total_size = sessions_stride
            .checked_mul(n)
            .and_then(|s| s.checked_add(sessions_offset))
            .and_then(|s| align_up(s, PAGE))
            .filter(|&s| s as u64 <= isize::MAX as u64)
            .ok_or_else(too_big)?;
        Ok(Layout {
            cores,
            slots_per_core,
            ring_capacity,
            header_size,
            heartbeats_offset,
            control_offset,
            counters_offset,
            counters_stride,
            slots_offset,
            slots_stride,
            rings_offset,
            ring_stride,
            events_offset,
            events_stride,
            sessions_offset,
            sessions_stride,
            total_size,
        })
    }

    /// The header describing this layout.
    pub fn header(&self, epoch: u64, created_unix_ms: u64, pid: u32) -> HeaderInfo {
        HeaderInfo {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            header_size: self.header_size as u32,
            cores: self.cores,
            slots_per_core: self.slots_per_core,
            ring_capacity: self.ring_capacity,
            counter_words: CORE_WORDS as u32,
            slot_size: SLOT_SIZE as u32,
            cell_size: CELL_SIZE as u32,
            pid,
            epoch,
            created_unix_ms,
            control_offset: self.control_offset as u64,
            heartbeats_offset: self.heartbeats_offset as u64,
            counters_offset: self.counters_offset as u64,
            counters_stride: self.counters_stride as u64,
            slots_offset: self.slots_offset as u64,
            slots_stride: self.slots_stride as u64,
            rings_offset: self.rings_offset as u64,
            ring_stride: self.ring_stride as u64,
            total_size: self.total_size as u64,
            events_offset: self.events_offset as u64,
            events_stride: self.events_stride as u64,
            event_capacity: events::EVENT_CAPACITY,
            session_slots: MSRP_SESSION_SLOTS,
            sessions_offset: self.sessions_offset as u64,
            sessions_stride: self.sessions_stride as u64,
        }
    }

    pub fn heartbeat_offset(&self, core: u32) -> usize {
        self.heartbeats_offset + core as usize * HEARTBEAT_STRIDE
    }
    pub fn counters_of(&self, core: u32) -> usize {
        self.counters_offset + core as usize * self.counters_stride
    }
    pub fn slot_offset(&self, core: u32, slot: u32) -> usize {
        self.slots_offset + core as usize * self.slots_stride + slot as usize * SLOT_SIZE
    }
    pub fn ring_of(&self, core: u32) -> usize {
        self.rings_offset + core as usize * self.ring_stride
    }
    pub fn ring_words(&self) -> usize {
        RING_HEAD_WORDS + self.ring_capacity as usize * CELL_WORDS
    }
    pub fn events_of(&self, core: u32) -> usize {
        self.events_offset + core as usize * self.events_stride
    }
    pub fn session_offset(&self, core: u32, slot: u32) -> usize {
        self.sessions_offset
            + core as usize * self.sessions_stride
            + slot as usize * SESSION_SLOT_SIZE
    }
}

impl HeaderInfo {
    /// Encode the fixed header (`FIXED_HEADER` bytes).
    pub(crate) fn encode(&self) -> [u8; FIXED_HEADER] {
        let mut b = [0u8; FIXED_HEADER];
        b[0..8].copy_from_slice(&self.magic);
        let u32s = [
            (8, self.layout_version),
            (12, self.header_size),
            (16, self.cores),
            (20, self.slots_per_core),
            (24, self.ring_capacity),
            (28, self.counter_words),
            (32, self.slot_size),
            (36, self.cell_size),
            (40, self.pid),
            (152, self.event_capacity),
            (156, self.session_slots),
        ];
        for (off, v) in u32s {
            b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let u64s = [
            (48, self.epoch),
            (56, self.created_unix_ms),
            (64, self.control_offset),
            (72, self.heartbeats_offset),
            (80, self.counters_offset),
            (88, self.counters_stride),
            (96, self.slots_offset),
            (104, self.slots_stride),
            (112, self.rings_offset),
            (120, self.ring_stride),
            (128, self.total_size),
            (136, self.events_offset),
            (144, self.events_stride),
            (160, self.sessions_offset),
            (168, self.sessions_stride),
        ];
        for (off, v) in u64s {
            b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// Decode the fixed header (no validation).
    pub(crate) fn decode(b: &[u8; FIXED_HEADER]) -> HeaderInfo {
        let u32_at = |off: usize| u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
        let u64_at = |off: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[off..off + 8]);
            u64::from_ne_bytes(w)
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        HeaderInfo {
            magic,
            layout_version: u32_at(8),
            header_size: u32_at(12),
            cores: u32_at(16),
            slots_per_core: u32_at(20),
            ring_capacity: u32_at(24),
            counter_words: u32_at(28),
            slot_size: u32_at(32),
            cell_size: u32_at(36),
            pid: u32_at(40),
            epoch: u64_at(48),
            created_unix_ms: u64_at(56),
            control_offset: u64_at(64),
            heartbeats_offset: u64_at(72),
            counters_offset: u64_at(80),
            counters_stride: u64_at(88),
            slots_offset: u64_at(96),
            slots_stride: u64_at(104),
            rings_offset: u64_at(112),
            ring_stride: u64_at(120),
            total_size: u64_at(128),
            events_offset: u64_at(136),
            events_stride: u64_at(144),
            event_capacity: u32_at(152),
            session_slots: u32_at(156),
            sessions_offset: u64_at(160),
            sessions_stride: u64_at(168),
        }
    }

    /// The first field that differs from what this build computes for the
    /// same dimensions, if any.
    pub(crate) fn mismatch(&self, expected: &HeaderInfo) -> Option<&'static str> {
        let checks: [(&'static str, u64, u64); 19] = [
            (
                "header_size",
                self.header_size.into(),
                expected.header_size.into(),
            ),
            (
                "counter_words",
                self.counter_words.into(),
                expected.counter_words.into(),
            ),
            (
                "slot_size",
                self.slot_size.into(),
                expected.slot_size.into(),
            ),
            (
                "cell_size",
                self.cell_size.into(),
                expected.cell_size.into(),
            ),
            (
                "control_offset",
                self.control_offset,
                expected.control_offset,
            ),
            (
                "heartbeats_offset",
                self.heartbeats_offset,
                expected.heartbeats_offset,
            ),
            (
                "counters_offset",
                self.counters_offset,
                expected.counters_offset,
            ),
            (
                "counters_stride",
                self.counters_stride,
                expected.counters_stride,
            ),
            ("slots_offset", self.slots_offset, expected.slots_offset),
            ("slots_stride", self.slots_stride, expected.slots_stride),
            ("rings_offset", self.rings_offset, expected.rings_offset),
            ("ring_stride", self.ring_stride, expected.ring_stride),
            ("total_size", self.total_size, expected.total_size),
            ("events_offset", self.events_offset, expected.events_offset),
            ("events_stride", self.events_stride, expected.events_stride),
            (
                "event_capacity",
                self.event_capacity.into(),
                expected.event_capacity.into(),
            ),
            (
                "session_slots",
                self.session_slots.into(),
                expected.session_slots.into(),
            ),
            (
                "sessions_offset",
                self.sessions_offset,
                expected.sessions_offset,
            ),
            (
                "sessions_stride",
                self.sessions_stride,
                expected.sessions_stride,
            ),
        ];
        checks
            .iter()
            .find(|(_, a, b)| a != b)
            .map(|(name, _, _)| *name)
    }
}
