//! io_uring `user_data` encoding: which operation completed, and for which
//! connection slot and generation. A completion for a slot whose generation
//! has moved on belongs to a connection that no longer exists.

/// What an operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Multishot accept on listener `index`.
    Accept = 1,
    /// Multishot recv on connection `index`.
    Recv = 2,
    /// A send/writev of connection `index`.
    Send = 3,
    /// The worker's tick timeout.
    Tick = 4,
    /// Read of the inbox eventfd.
    Inbox = 5,
    /// Outbound connect of connection `index`.
    Connect = 6,
    /// An async cancel; its completion is ignored.
    Cancel = 7,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Tick,
            5 => Op::Inbox,
            6 => Op::Connect,
            7 => Op::Cancel,
            _ => return None,
        })
    }
}

/// A decoded `user_data`: op (8 bits) | generation (24 bits) | index (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub generation: u32,
    pub index: u32,
}

pub const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Token {
    pub fn new(op: Op, index: u32, generation: u32) -> Token {
        Token {
            op,
            generation: generation & GENERATION_MASK,
            index,
        }
    }

    pub fn encode(self) -> u64 {
        ((self.op as u64) << 56)
            | (((self.generation & GENERATION_MASK) as u64) << 32)
            | self.index as u64
    }

    pub fn decode(v: u64) -> Option<Token> {
        Some(Token {
            op: Op::from_u8((v >> 56) as u8)?,
            generation: ((v >> 32) as u32) & GENERATION_MASK,
            index: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Tick,
            Op::Inbox,
            Op::Connect,
            Op::Cancel,
        ] {
            for (i, g) in [
                (0, 0),
                (1, 1),
                (u32::MAX, GENERATION_MASK),
                (12345, 1 << 23),
            ] {
                let t = Token::new(op, i, g);
                assert_eq!(Token::decode(t.encode()), Some(t));
            }
        }
        assert_eq!(Token::decode(0), None);
        // Generations wrap within 24 bits.
        assert_eq!(Token::new(Op::Recv, 1, 1 << 24).generation, 0);
    }
}
