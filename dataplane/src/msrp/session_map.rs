//! The relay's session map (Kamailio's `cmap`): relay session id → owning
//! core, connection (id with generation), authenticated user, peer, expiry.
//!
//! Thread-per-core: each reactor core owns one map for the sessions AUTHed
//! on its connections, with no lock. The owning core is encoded in the
//! session id itself ([`SessionId::owner_core`]), so any core can tell where
//! to hand a frame without a shared table; the owner core then resolves the
//! full id in its map. Ids carry 120 bits of caller-supplied randomness
//! (RFC 4975 §14.1 asks for at least 80 bits in a session-id that must not
//! be guessable).
//!
//! Entries expire (swept by [`SessionMap::sweep`] every `timer_interval`,
//! and treated as absent on lookup once expired) and die with their
//! connection ([`SessionMap::remove_connection`]) — unlike Kamailio, which
//! keeps stale entries and loses messages with a 200.

use super::id_hash::IdBuildHasher;
use base64::Engine as _;
use std::collections::HashMap;
use std::fmt;

/// Random bytes in a session id.
pub const SESSION_RANDOM: usize = 15;
/// Session id length: 2 hex digits of core + 20 base64url characters.
pub const SESSION_ID_LEN: usize = 22;

/// A relay session id (the session-id part of the Use-Path URI).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; SESSION_ID_LEN]);

impl SessionId {
    /// A new id owned by `core` from `random` (from the caller's CSPRNG).
    pub fn generate(core: u8, random: &[u8; SESSION_RANDOM]) -> SessionId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; SESSION_ID_LEN];
        id[0] = HEX[usize::from(core >> 4)];
        id[1] = HEX[usize::from(core & 15)];
        // 15 bytes → exactly 20 base64 characters, URL-safe alphabet (all
        // RFC 3986 unreserved, so valid in an MSRP session-id).
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(random, &mut id[2..]);
        SessionId(id)
    }

    /// Parses a session-id; `None` if it cannot be one of ours.
    pub fn parse(s: &[u8]) -> Option<SessionId> {
        // One table lookup per character (every relayed frame parses one).
        const B64URL: [bool; 256] = {
            let mut t = [false; 256];
            let mut i = 0;
            while i < 256 {
                let b = i as u8;
                t[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
                i += 1;
            }
            t
        };
        let arr: [u8; SESSION_ID_LEN] = s.try_into().ok()?;
        let hex_ok = matches!(arr[0], b'0'..=b'9' | b'a'..=b'f')
            && matches!(arr[1], b'0'..=b'9' | b'a'..=b'f');
        let b64_ok = arr[2..]
            .iter()
            .fold(true, |ok, &b| ok & B64URL[usize::from(b)]);
        (hex_ok && b64_ok).then_some(SessionId(arr))
    }

    pub fn owner_core(&self) -> u8 {
        let d = |b: u8| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => 0,
        };
        d(self.0[0]) << 4 | d(self.0[1])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.as_str())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One AUTHed relay session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    pub id: SessionId,
    /// Connection id (core, slot and generation) of the client.
    pub conn: u64,
    pub user: String,
    /// The client's own URI (last From-Path URI of its AUTH).
    pub peer_uri: super::uri::PeerUri,
    /// The client's transport address, for listings.
    pub peer_addr: String,
    /// Absolute expiry, monotonic milliseconds.
    pub expires_ms: u64,
    /// The connection traffic toward the client comes from, once bound
    /// (RFC 4975 §5.4: a session uses one connection; another gets 506).
    pub bound: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("session map full")]
    Full,
    #[error("session id already in use")]
    Duplicate,
}

/// Why a lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Not ours (another core) — hand the frame to `core`.
    OtherCore(u8),
    /// Unknown or expired: 481.
    NoSession,
}

/// One core's sessions.
#[derive(Debug)]
pub struct SessionMap {
    core: u8,
    capacity: usize,
    map: HashMap<SessionId, SessionEntry, IdBuildHasher>,
    by_conn: HashMap<u64, Vec<SessionId>>,
    /// Ids created, refreshed or removed since the last
    /// [`SessionMap::drain_changes`], when tracked (the reactor publishes
    /// them to the stats region).
    changes: Option<Vec<SessionId>>,
    /// Bumped by every change a routing decision depends on (an entry
    /// added, removed, its expiry or binding changed): a decision made at
    /// one generation holds while the generation is the same.
    generation: u64,
}

impl SessionMap {
    /// `capacity` sessions at most (the reactor divides `2^cmap_size`
    /// between its cores).
    pub fn new(core: u8, capacity: usize) -> SessionMap {
        SessionMap {
            core,
            capacity: capacity.max(1),
            map: HashMap::default(),
            by_conn: HashMap::new(),
            changes: None,
            generation: 0,
        }
    }

    /// See the field: compare two readings to know whether anything a
    /// route was decided on has changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Start recording changed ids for [`SessionMap::drain_changes`].
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    fn changed(&mut self, id: SessionId) {
        self.generation += 1;
        if let Some(c) = self.changes.as_mut() {
            c.push(id);
        }
    }

    /// Calls `f` for each id changed since the last call, with its live
    /// entry, or `None` once it is gone.
    pub fn drain_changes(&mut self, mut f: impl FnMut(&SessionId, Option<&SessionEntry>)) {
        let Some(changes) = self.changes.as_mut() else {
            return;
        };
        for id in changes.drain(..) {
            f(&id, self.map.get(&id));
        }
    }

    /// Capacity for one of `workers` cores from `cmap_size`.
    pub fn per_core_capacity(cmap_size: u32, workers: usize) -> usize {
        let total = 1usize << cmap_size.min(30);
        total.div_ceil(workers.max(1))
    }

    pub fn core(&self) -> u8 {
        self.core
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn insert(&mut self, e: SessionEntry) -> Result<(), InsertError> {
        if self.map.contains_key(&e.id) {
            return Err(InsertError::Duplicate);
        }
        if self.map.len() >= self.capacity {
            return Err(InsertError::Full);
        }
        self.by_conn.entry(e.conn).or_default().push(e.id);
        self.changed(e.id);
        self.map.insert(e.id, e);
        Ok(())
    }

    /// The live entry for `id`.
    pub fn lookup(&self, id: &SessionId, now_ms: u64) -> Result<&SessionEntry, Miss> {
        if id.owner_core() != self.core {
            return Err(Miss::OtherCore(id.owner_core()));
        }
        match self.map.get(id) {
            Some(e) if e.expires_ms > now_ms => Ok(e),
            _ => Err(Miss::NoSession),
        }
    }

    /// Extends a session (a refreshing AUTH from the same connection).
    pub fn refresh(&mut self, id: &SessionId, expires_ms: u64) -> bool {
        match self.map.get_mut(id) {
            Some(e) => {
                e.expires_ms = expires_ms;
                self.changed(*id);
                true
            }
            None => false,
        }
    }

    /// Binds the session's far side to `conn` (first use wins); `false`
    /// when it is bound to another connection (answer 506).
    pub fn bind(&mut self, id: &SessionId, conn: u64) -> bool {
        match self.map.get_mut(id) {
            Some(e) => match e.bound {
                Some(b) => b == conn,
                None => {
                    e.bound = Some(conn);
                    self.generation += 1;
                    true
                }
            },
            None => false,
        }
    }

    /// Forgets far-side bindings to a closed connection.
    pub fn unbind_connection(&mut self, conn: u64) {
        for e in self.map.values_mut() {
            if e.bound == Some(conn) {
                e.bound = None;
                self.generation += 1;
            }
        }
    }

    pub fn remove(&mut self, id: &SessionId) -> Option<SessionEntry> {
        let e = self.map.remove(id)?;
        self.changed(*id);
        if let Some(v) = self.by_conn.get_mut(&e.conn) {
            v.retain(|s| s != id);
            if v.is_empty() {
                self.by_conn.remove(&e.conn);
            }
        }
        Some(e)
    }

    /// Drops every session of a closed connection; returns how many.
    pub fn remove_connection(&mut self, conn: u64) -> usize {
        let Some(ids) = self.by_conn.remove(&conn) else {
            return 0;
        };
        let mut n = 0;
        for id in ids {
            if self.map.remove(&id).is_some() {
                self.changed(id);
                n += 1;
            }
        }
        n
    }

    /// Sessions of a connection.
    pub fn sessions_of(&self, conn: u64) -> &[SessionId] {
        self.by_conn.get(&conn).map_or(&[], |v| v.as_slice())
    }

    /// Removes expired entries (the `timer_interval` sweep); returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let dead: Vec<SessionId> = self
            .map
            .values()
            .filter(|e| e.expires_ms <= now_ms)
            .map(|e| e.id)
            .collect();
        for id in &dead {
            self.remove(id);
        }
        dead.len()
    }

    /// All entries (for `msrp.cmaplist`).
    pub fn iter(&self) -> impl Iterator<Item = &SessionEntry> {
        self.map.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(core: u8, r: u8, conn: u64, exp: u64) -> SessionEntry {
        SessionEntry {
            id: SessionId::generate(core, &[r; SESSION_RANDOM]),
            conn,
            user: "alice".into(),
            peer_uri: "msrp://a.invalid/x;ws".into(),
            peer_addr: "127.0.0.1:5000".into(),
            expires_ms: exp,
            bound: None,
        }
    }

    #[test]
    fn ids() {
        let id = SessionId::generate(0x1f, &[0xff; SESSION_RANDOM]);
        assert_eq!(id.as_str().len(), SESSION_ID_LEN);
        assert!(id.as_str().starts_with("1f"));
        assert_eq!(id.owner_core(), 0x1f);
        assert_eq!(SessionId::parse(id.as_bytes()), Some(id));
        assert_eq!(SessionId::parse(b"short"), None);
        assert_eq!(SessionId::parse(b"zz____________________"), None);
        assert!(
            crate::msrp::uri::MsrpUri::parse(format!("msrp://h:1/{id};tcp").as_bytes()).is_ok()
        );
    }

    #[test]
    fn insert_lookup_expire_close() {
        let mut m = SessionMap::new(1, 2);
        let a = entry(1, 1, 10, 1000);
        let b = entry(1, 2, 10, 5000);
        m.insert(a.clone()).unwrap();
        assert_eq!(m.insert(a.clone()), Err(InsertError::Duplicate));
        m.insert(b.clone()).unwrap();
        assert_eq!(m.insert(entry(1, 3, 11, 1)), Err(InsertError::Full));
        assert_eq!(m.lookup(&a.id, 999).unwrap().conn, 10);
        assert_eq!(m.lookup(&a.id, 1000), Err(Miss::NoSession));
        assert_eq!(m.lookup(&entry(2, 1, 0, 0).id, 0), Err(Miss::OtherCore(2)));
        assert_eq!(m.sweep(1000), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.sessions_of(10), &[b.id]);
        assert!(m.refresh(&b.id, 9000));
        assert!(m.bind(&b.id, 77));
        assert!(m.bind(&b.id, 77));
        assert!(!m.bind(&b.id, 78));
        m.unbind_connection(77);
        assert!(m.bind(&b.id, 78));
        assert_eq!(m.remove_connection(10), 1);
        assert!(m.is_empty());
        assert_eq!(m.remove_connection(10), 0);
    }

    #[test]
    fn every_change_a_route_depends_on_moves_the_generation() {
        let mut m = SessionMap::new(1, 4);
        let a = entry(1, 1, 10, 1000);
        let mut seen = vec![m.generation()];
        let mut moved = |m: &SessionMap, what: &str| {
            let g = m.generation();
            assert!(!seen.contains(&g), "{what} did not move the generation");
            seen.push(g);
        };
        m.insert(a.clone()).unwrap();
        moved(&m, "insert");
        assert!(m.bind(&a.id, 77));
        moved(&m, "first bind");
        let g = m.generation();
        // Reads and a bind to the same connection change nothing.
        assert!(m.bind(&a.id, 77));
        assert!(!m.bind(&a.id, 78));
        let _ = m.lookup(&a.id, 0);
        assert_eq!(m.generation(), g);
        m.unbind_connection(77);
        moved(&m, "unbind");
        assert!(m.refresh(&a.id, 2000));
        moved(&m, "refresh");
        m.remove(&a.id).unwrap();
        moved(&m, "remove");
        m.insert(entry(1, 2, 11, 5)).unwrap();
        moved(&m, "second insert");
        assert_eq!(m.sweep(5), 1);
        moved(&m, "sweep");
        m.insert(entry(1, 3, 12, 50)).unwrap();
        moved(&m, "third insert");
        assert_eq!(m.remove_connection(12), 1);
        moved(&m, "connection closed");
    }

    #[test]
    fn changes_are_tracked_for_publishing() {
        let mut m = SessionMap::new(1, 8);
        let a = entry(1, 1, 10, 1000);
        m.insert(a.clone()).unwrap();
        let mut seen: Vec<(SessionId, Option<u64>)> = Vec::new();
        m.drain_changes(|id, e| seen.push((*id, e.map(|e| e.expires_ms))));
        assert!(seen.is_empty(), "untracked");
        m.track_changes();
        let b = entry(1, 2, 11, 5000);
        m.insert(b.clone()).unwrap();
        m.refresh(&a.id, 2000);
        m.drain_changes(|id, e| seen.push((*id, e.map(|e| e.expires_ms))));
        assert_eq!(seen, vec![(b.id, Some(5000)), (a.id, Some(2000))]);
        let mut seen = Vec::new();
        assert_eq!(m.sweep(3000), 1);
        assert_eq!(m.remove_connection(11), 1);
        m.drain_changes(|id, e| seen.push((*id, e.is_some())));
        assert_eq!(seen, vec![(a.id, false), (b.id, false)]);
    }

    #[test]
    fn capacity_split() {
        assert_eq!(SessionMap::per_core_capacity(16, 4), 16384);
        assert_eq!(SessionMap::per_core_capacity(8, 3), 86);
    }
}
