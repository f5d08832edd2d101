//! Per-core command rings (management → reactor): a bounded lock-free queue
//! after Dmitry Vyukov's bounded MPMC queue, entirely made of atomic words in
//! the shared mapping, so producers may live in another process.
//!
//! Each cell carries a sequence number. A cell at position `pos` is free for
//! the producer when `seq == pos`, holds a command for the consumer when
//! `seq == pos + 1`, and is handed back for the next lap with
//! `seq = pos + capacity`. Producers claim a position by CAS on the tail,
//! write the payload words (`Relaxed`) and publish with a `Release` store of
//! the sequence; the consumer's `Acquire` load of the sequence makes the
//! payload visible, and its `Release` hand-back orders its payload reads
//! before the next producer's writes. The head is also advanced by CAS, so a
//! second consumer (a mistake, not a use case) cannot break the queue.
//!
//! Limitation: a producer process killed between claiming a cell and
//! publishing it stalls the ring at that cell (the consumer sees it as empty,
//! producers eventually see it as full) until the data plane re-creates the
//! region. The window is a handful of instructions.

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::{CELL_WORDS, RING_HEAD, RING_HEAD_WORDS, RING_TAIL};

/// Bytes of command payload (a close reason fits: 125 − 2 status bytes).
pub const COMMAND_DATA_MAX: usize = 123;
const DATA_WORDS: usize = COMMAND_DATA_MAX.div_ceil(8);
const C_SEQ: usize = 0;
/// kind | data_len << 8 | status << 16.
const C_HDR: usize = 1;
const C_CONN: usize = 2;
const C_DATA: usize = 3;
const _: () = assert!(C_DATA + DATA_WORDS <= CELL_WORDS);

/// Bound on CAS/reload rounds, so a corrupted ring cannot hang a caller.
const MAX_SPINS: u32 = 100_000;

/// What a command asks the owning reactor to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CommandKind {
    /// Send a close frame with `status` and `data` as reason, then close.
    Close = 1,
    /// Send a ping with `data`.
    Ping = 2,
    /// Send an unsolicited pong with `data`.
    Pong = 3,
    /// Drop a protocol session (spare; e.g. an MSRP session).
    DropSession = 4,
}

impl CommandKind {
    /// From the stored byte.
    pub const fn from_u8(v: u8) -> Option<CommandKind> {
        match v {
            1 => Some(CommandKind::Close),
            2 => Some(CommandKind::Ping),
            3 => Some(CommandKind::Pong),
            4 => Some(CommandKind::DropSession),
            _ => None,
        }
    }
}

/// A command for one connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    pub conn_id: u64,
    /// Close status code (Close only).
    pub status: u16,
    /// Valid bytes in `data` (clamped to [`COMMAND_DATA_MAX`] when read).
    pub data_len: u8,
    pub data: [u8; COMMAND_DATA_MAX],
}

impl Command {
    /// A command; `data` is truncated to [`COMMAND_DATA_MAX`] bytes.
    pub fn new(kind: CommandKind, conn_id: u64, status: u16, data: &[u8]) -> Command {
        let n = data.len().min(COMMAND_DATA_MAX);
        let mut buf = [0u8; COMMAND_DATA_MAX];
        buf[..n].copy_from_slice(&data[..n]);
        Command {
            kind,
            conn_id,
            status,
            data_len: n as u8,
            data: buf,
        }
    }
    /// Close with a status code and reason.
    pub fn close(conn_id: u64, status: u16, reason: &[u8]) -> Command {
        Command::new(CommandKind::Close, conn_id, status, reason)
    }
    /// Ping with application data.
    pub fn ping(conn_id: u64, data: &[u8]) -> Command {
        Command::new(CommandKind::Ping, conn_id, 0, data)
    }
    /// Pong with application data.
    pub fn pong(conn_id: u64, data: &[u8]) -> Command {
        Command::new(CommandKind::Pong, conn_id, 0, data)
    }
    /// Drop the connection's protocol session.
    pub fn drop_session(conn_id: u64) -> Command {
        Command::new(CommandKind::DropSession, conn_id, 0, &[])
    }
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.data[..(self.data_len as usize).min(COMMAND_DATA_MAX)]
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("kind", &self.kind)
            .field("conn_id", &format_args!("{:#x}", self.conn_id))
            .field("status", &self.status)
            .field("data", &String::from_utf8_lossy(self.payload()))
            .finish()
    }
}

/// The ring of the target core is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("command ring full")]
pub struct RingFull;

/// Set every cell's sequence to its index (a fresh, empty ring).
pub(crate) fn init(ring: &[AtomicU64], capacity: u32) {
    ring[RING_TAIL].store(0, Ordering::Relaxed);
    ring[RING_HEAD].store(0, Ordering::Relaxed);
    for i in 0..capacity as usize {
        cell(ring, i)[C_SEQ].store(i as u64, Ordering::Relaxed);
    }
}

#[inline]
fn cell(ring: &[AtomicU64], i: usize) -> &[AtomicU64] {
    let start = RING_HEAD_WORDS + i * CELL_WORDS;
    &ring[start..start + CELL_WORDS]
}

/// Enqueue (any thread or process).
pub(crate) fn post(ring: &[AtomicU64], capacity: u32, cmd: &Command) -> Result<(), RingFull> {
    let cap = u64::from(capacity);
    let tail = &ring[RING_TAIL];
    let mut pos = tail.load(Ordering::Relaxed);
    for _ in 0..MAX_SPINS {
        let c = cell(ring, (pos & (cap - 1)) as usize);
        let seq = c[C_SEQ].load(Ordering::Acquire);
        let dif = seq.wrapping_sub(pos) as i64;
        if dif == 0 {
            match tail.compare_exchange_weak(
                pos,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let hdr = u64::from(cmd.kind as u8)
                        | (u64::from(cmd.data_len.min(COMMAND_DATA_MAX as u8)) << 8)
                        | (u64::from(cmd.status) << 16);
                    c[C_HDR].store(hdr, Ordering::Relaxed);
                    c[C_CONN].store(cmd.conn_id, Ordering::Relaxed);
                    let mut buf = [0u8; DATA_WORDS * 8];
                    buf[..COMMAND_DATA_MAX].copy_from_slice(&cmd.data);
                    for (w, chunk) in c[C_DATA..C_DATA + DATA_WORDS]
                        .iter()
                        .zip(buf.chunks_exact(8))
                    {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(chunk);
                        w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
                    }
                    c[C_SEQ].store(pos.wrapping_add(1), Ordering::Release);
                    return Ok(());
                }
                Err(cur) => pos = cur,
            }
        } else if dif < 0 {
            return Err(RingFull);
        } else {
            pos = tail.load(Ordering::Relaxed);
        }
        std::hint::spin_loop();
    }
    Err(RingFull)
}

/// Dequeue one cell. `Some(None)` is a consumed cell with an invalid kind.
pub(crate) fn pop(ring: &[AtomicU64], capacity: u32) -> Option<Option<Command>> {
    let cap = u64::from(capacity);
    let head = &ring[RING_HEAD];
    let mut pos = head.load(Ordering::Relaxed);
    for _ in 0..MAX_SPINS {
        let c = cell(ring, (pos & (cap - 1)) as usize);
        let seq = c[C_SEQ].load(Ordering::Acquire);
        let dif = seq.wrapping_sub(pos.wrapping_add(1)) as i64;
        if dif == 0 {
            match head.compare_exchange_weak(
                pos,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let hdr = c[C_HDR].load(Ordering::Relaxed);
                    let conn_id = c[C_CONN].load(Ordering::Relaxed);
                    let mut buf = [0u8; DATA_WORDS * 8];
                    for (w, chunk) in c[C_DATA..C_DATA + DATA_WORDS]
                        .iter()
                        .zip(buf.chunks_exact_mut(8))
                    {
                        chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
                    }
                    c[C_SEQ].store(pos.wrapping_add(cap), Ordering::Release);
                    let cmd = CommandKind::from_u8(hdr as u8).map(|kind| {
                        let mut data = [0u8; COMMAND_DATA_MAX];
                        data.copy_from_slice(&buf[..COMMAND_DATA_MAX]);
                        Command {
                            kind,
                            conn_id,
                            status: (hdr >> 16) as u16,
                            data_len: ((hdr >> 8) as u8).min(COMMAND_DATA_MAX as u8),
                            data,
                        }
                    });
                    return Some(cmd);
                }
                Err(cur) => pos = cur,
            }
        } else if dif < 0 {
            return None;
        } else {
            pos = head.load(Ordering::Relaxed);
        }
        std::hint::spin_loop();
    }
    None
}

/// Pop up to `capacity` commands (so a busy producer cannot starve the
/// reactor), calling `f` for each valid one; returns how many were valid.
pub(crate) fn drain(ring: &[AtomicU64], capacity: u32, mut f: impl FnMut(Command)) -> usize {
    let mut n = 0;
    for _ in 0..capacity {
        match pop(ring, capacity) {
            None => break,
            Some(Some(cmd)) => {
                n += 1;
                f(cmd);
            }
            Some(None) => {}
        }
    }
    n
}
