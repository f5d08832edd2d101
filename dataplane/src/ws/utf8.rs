//! UTF-8 validation of text messages (RFC 6455 §8.1).
//!
//! Whole messages are checked with `simdutf8::basic`. A fragmented text
//! message is checked fragment by fragment with [`Utf8Validator`]: a code
//! point may straddle two fragments, so an incomplete sequence at the end of
//! one fragment is carried to the next, but any sequence that can no longer
//! become valid fails at once instead of at the end of the message (§8.1:
//! "fail the WebSocket connection" as soon as invalid data is seen).

/// Incremental validator for the fragments of one text message.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// Leading bytes of a code point cut by the end of the last fragment.
    partial: [u8; 4],
    partial_len: usize,
}

/// The data is not (and cannot become) valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Whole-buffer check.
pub fn is_valid(data: &[u8]) -> bool {
    simdutf8::basic::from_utf8(data).is_ok()
}

impl Utf8Validator {
    pub const fn new() -> Self {
        Self {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Forget any carried bytes (start of a new message).
    pub fn reset(&mut self) {
        self.partial_len = 0;
    }

    /// Validate the next fragment; `Ok` when it is valid so far, possibly
    /// ending inside a code point.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        // First finish the code point carried from the last fragment, one
        // byte at a time (at most 3 more bytes).
        while self.partial_len > 0 {
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            let slot = self.partial.get_mut(self.partial_len).ok_or(InvalidUtf8)?;
            *slot = b;
            self.partial_len += 1;
            data = rest;
            let pending = self.partial.get(..self.partial_len).ok_or(InvalidUtf8)?;
            match simdutf8::compat::from_utf8(pending) {
                Ok(_) => self.partial_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {}
            }
        }
        // Most pieces are whole code points: the faster check first, the
        // one that finds where an incomplete tail starts only if it fails.
        if simdutf8::basic::from_utf8(data).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // error_len() == None: the data ends inside a code point.
                let tail = data.get(e.valid_up_to()..).ok_or(InvalidUtf8)?;
                let dst = self.partial.get_mut(..tail.len()).ok_or(InvalidUtf8)?;
                dst.copy_from_slice(tail);
                self.partial_len = tail.len();
                Ok(())
            }
        }
    }

    /// End of message: a code point left incomplete is an error.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.partial_len == 0;
        self.partial_len = 0;
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_split(data: &[u8], cuts: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.clamp(start, data.len());
            v.feed(&data[start..c])?;
            start = c;
        }
        v.feed(&data[start..])?;
        v.finish()
    }

    #[test]
    fn code_point_split_across_fragments() {
        let s = "a€😀b".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(validate_split(s, &[i, j]), Ok(()), "{i} {j}");
            }
        }
    }

    #[test]
    fn incomplete_at_end_fails_on_finish() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xe2, 0x82]), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    #[test]
    fn fails_fast_in_the_fragment_with_the_bad_byte() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"ok"), Ok(()));
        // 0xc0 is never valid; the fragment fails before the message ends.
        assert_eq!(v.feed(&[b'x', 0xc0, 0x80]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xf0, 0x9f]), Ok(()));
        // A carried sequence that is broken by the next fragment.
        assert_eq!(v.feed(b"a"), Err(InvalidUtf8));
        // Surrogates (ED A0..BF) are invalid even when split.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed]), Ok(()));
        assert_eq!(v.feed(&[0xa0, 0x80]), Err(InvalidUtf8));
    }

    proptest! {
        #[test]
        fn split_validation_agrees_with_std(
            data in prop_oneof![
                any::<String>().prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..40),
            ],
            cuts in prop::collection::vec(0usize..64, 0..5),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = std::str::from_utf8(&data).is_ok();
            prop_assert_eq!(validate_split(&data, &cuts).is_ok(), whole);
            prop_assert_eq!(is_valid(&data), whole);
        }
    }
}
