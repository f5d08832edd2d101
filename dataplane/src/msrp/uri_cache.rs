//! A per-core memo of parsed MSRP URIs (RFC 4975 §9 syntax, as
//! [`MsrpUri::parse`]) and of whether each names this relay (RFC 4975
//! §6.1 against [`LocalAuthorities`]).
//!
//! A sender repeats the same To-Path and From-Path on every chunk of a
//! session, so the relay parses the same few URIs again and again (three
//! per SEND: a sixth of the engine's work per message). Both answers are
//! pure functions of the URI's bytes and of the configuration, so a URI
//! seen before is rebuilt from the spans recorded the first time, after a
//! byte comparison with the stored copy. Direct-mapped, fixed size, no
//! allocation: a collision just parses again.

use super::uri::{LocalAuthorities, MsrpUri, UriError};

/// Slots (a power of two).
const SLOTS: usize = 64;
/// URIs longer than this are parsed every time.
const MAX_LEN: usize = 120;

/// Where the parts of a URI lie within it.
#[derive(Clone, Copy, Default)]
struct Shape {
    secure: bool,
    userinfo: Option<(u8, u8)>,
    host: (u8, u8),
    port: Option<u16>,
    session_id: Option<(u8, u8)>,
    transport: (u8, u8),
    params: (u8, u8),
    local: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    len: u8,
    bytes: [u8; MAX_LEN],
    shape: Shape,
}

pub struct UriCache {
    slots: Box<[Slot; SLOTS]>,
}

impl std::fmt::Debug for UriCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.slots.iter().filter(|s| s.len > 0).count();
        write!(f, "UriCache({used}/{SLOTS} slots)")
    }
}

impl Default for UriCache {
    fn default() -> Self {
        UriCache {
            slots: Box::new(
                [Slot {
                    len: 0,
                    bytes: [0; MAX_LEN],
                    shape: Shape::default(),
                }; SLOTS],
            ),
        }
    }
}

fn span(raw: &[u8], part: &[u8]) -> (u8, u8) {
    // `part` is a subslice of `raw` (MsrpUri borrows from it).
    let start = (part.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
    (start as u8, part.len() as u8)
}

fn get(raw: &[u8], (start, len): (u8, u8)) -> &[u8] {
    let s = usize::from(start);
    raw.get(s..s + usize::from(len)).unwrap_or(&[])
}

/// FxHash-style mix of the URI's 8-byte words: the random session ids
/// spread the slots.
fn slot_of(raw: &[u8]) -> usize {
    let mut h = raw.len() as u64;
    let mut words = raw.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(a)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    (h >> 58) as usize % SLOTS
}

impl UriCache {
    /// [`MsrpUri::parse`] of `raw`, and whether `local` contains it.
    pub fn parse<'a>(
        &mut self,
        raw: &'a [u8],
        local: &LocalAuthorities,
    ) -> Result<(MsrpUri<'a>, bool), UriError> {
        if raw.len() > MAX_LEN {
            let u = MsrpUri::parse(raw)?;
            return Ok((u, local.contains(&u)));
        }
        let slot = &mut self.slots[slot_of(raw)];
        if usize::from(slot.len) == raw.len() && slot.bytes.get(..raw.len()) == Some(raw) {
            let s = slot.shape;
            let u = MsrpUri {
                raw,
                secure: s.secure,
                userinfo: s.userinfo.map(|p| get(raw, p)),
                host: get(raw, s.host),
                port: s.port,
                session_id: s.session_id.map(|p| get(raw, p)),
                transport: get(raw, s.transport),
                params: get(raw, s.params),
            };
            return Ok((u, s.local));
        }
        let u = MsrpUri::parse(raw)?;
        let is_local = local.contains(&u);
        slot.len = raw.len() as u8;
        slot.bytes[..raw.len()].copy_from_slice(raw);
        slot.shape = Shape {
            secure: u.secure,
            userinfo: u.userinfo.map(|p| span(raw, p)),
            host: span(raw, u.host),
            port: u.port,
            session_id: u.session_id.map(|p| span(raw, p)),
            transport: span(raw, u.transport),
            params: span(raw, u.params),
            local: is_local,
        };
        Ok((u, is_local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalAuthorities {
        let mut l = LocalAuthorities::default();
        l.add(None, "127.0.0.1", 2855);
        l
    }

    #[test]
    fn answers_as_parse_on_first_and_later_lookups() {
        let uris: &[&[u8]] = &[
            b"msrp://127.0.0.1:2855/abcdEFGH1234;tcp",
            b"msrps://alice@intra.example.com;tcp",
            b"msrp://[2001:db8::1]:2855/abc=+/d;ws;foo=bar",
            b"msrps://df7jal23ls0d.invalid/2s93i93idj;ws",
            b"msrp://127.0.0.1:2856/abcdEFGH1234;tcp",
            b"msrp://bad uri",
            b"http://127.0.0.1:2855/x;tcp",
        ];
        let l = local();
        let mut c = UriCache::default();
        for round in 0..3 {
            for raw in uris {
                let want = MsrpUri::parse(raw).map(|u| (u, l.contains(&u)));
                assert_eq!(c.parse(raw, &l), want, "round {round}");
            }
        }
        // The answer is about the bytes given, not the slot's copy.
        let a = b"msrp://127.0.0.1:2855/abcdEFGH1234;tcp".to_vec();
        let (u, is_local) = c.parse(&a, &l).unwrap();
        assert_eq!(u.raw.as_ptr(), a.as_ptr());
        assert_eq!(u.session_id.unwrap().as_ptr(), a[22..].as_ptr());
        assert!(is_local);
    }

    #[test]
    fn colliding_and_long_uris_are_parsed_again() {
        let l = local();
        let mut c = UriCache::default();
        // More URIs than slots: every answer stays right.
        let many: Vec<String> = (0..500)
            .map(|i| format!("msrp://127.0.0.1:{}/s{i:06};tcp", 2850 + i % 10))
            .collect();
        for _ in 0..2 {
            for m in &many {
                let want = MsrpUri::parse(m.as_bytes()).map(|u| (u, l.contains(&u)));
                assert_eq!(c.parse(m.as_bytes(), &l), want);
            }
        }
        let long = format!("msrp://127.0.0.1:2855/{};tcp", "x".repeat(200));
        let want = MsrpUri::parse(long.as_bytes()).map(|u| (u, true));
        assert_eq!(c.parse(long.as_bytes(), &l), want);
    }
}
