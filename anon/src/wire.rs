//! What the messaging layer puts in a packet's plaintext (docs/messaging.md has the
//! tables). Every integer is big-endian. Parsing never panics: a short or malformed
//! plaintext is an error the messenger counts.

use crypto_simd::sphinx::Surb;

/// A message ID: 128 random bits (section 4.2.2).
pub type MessageId = [u8; 16];

/// Kind byte: one encoding symbol of a message.
pub const KIND_SYMBOL: u8 = 1;
/// Kind byte: the SURBs a recipient may NACK through, for one attempt.
pub const KIND_NACK_SURBS: u8 = 2;
/// Kind byte: an acknowledgement, through a SURB.
pub const KIND_ACK: u8 = 3;
/// Kind byte: a negative acknowledgement, through a SURB.
pub const KIND_NACK: u8 = 4;

/// Bytes before the symbol in a symbol packet: kind, ID, attempt, object length, ESI.
pub const SYMBOL_HEADER: usize = 1 + 16 + 1 + 4 + 4;
/// Bytes before the SURBs in a NACK-SURB packet.
pub const NACK_SURBS_HEADER: usize = 1 + 16 + 1 + 4 + 4 + 1;

/// Why a plaintext was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its kind needs.
    #[error("truncated")]
    Truncated,
    /// An unknown kind byte.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// A SURB that does not parse.
    #[error("malformed SURB")]
    Surb,
    /// A field out of range.
    #[error("field out of range")]
    Range,
}

/// A parsed plaintext.
#[derive(Debug)]
pub enum Plain<'a> {
    /// One encoding symbol.
    Symbol {
        /// The message.
        id: MessageId,
        /// The sender's attempt, from 1.
        attempt: u8,
        /// The coded object's length in bytes.
        object_len: u32,
        /// The encoding symbol ID.
        esi: u32,
        /// The symbol.
        symbol: &'a [u8],
    },
    /// SURBs to NACK through.
    NackSurbs {
        /// The message.
        id: MessageId,
        /// The attempt they belong to.
        attempt: u8,
        /// The coded object's length.
        object_len: u32,
        /// How long after the last symbol the recipient waits before it NACKs.
        quiet_ms: u32,
        /// The SURBs.
        surbs: Vec<Surb>,
    },
    /// The message was recovered.
    Ack {
        /// The message.
        id: MessageId,
    },
    /// Decoding is short.
    Nack {
        /// The message.
        id: MessageId,
        /// The attempt the NACK answers.
        attempt: u8,
        /// Distinct symbols the recipient holds.
        have: u32,
        /// Symbols it still needs, by its count (k - have, at least 1).
        need: u32,
    },
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(WireError::Truncated)?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn id(&mut self) -> Result<MessageId, WireError> {
        let mut id = [0u8; 16];
        id.copy_from_slice(self.take(16)?);
        Ok(id)
    }
}

/// Parses a plaintext.
pub fn parse(bytes: &[u8]) -> Result<Plain<'_>, WireError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        KIND_SYMBOL => {
            let id = r.id()?;
            let attempt = r.u8()?;
            let object_len = r.u32()?;
            let esi = r.u32()?;
            if esi > crate::coding::MAX_ESI {
                return Err(WireError::Range);
            }
            Ok(Plain::Symbol {
                id,
                attempt,
                object_len,
                esi,
                symbol: r.0,
            })
        }
        KIND_NACK_SURBS => {
            let id = r.id()?;
            let attempt = r.u8()?;
            let object_len = r.u32()?;
            let quiet_ms = r.u32()?;
            let count = r.u8()?;
            let mut surbs = Vec::with_capacity(usize::from(count).min(4));
            for _ in 0..count {
                let len = r.u16()?;
                let bytes = r.take(usize::from(len))?;
                surbs.push(Surb::from_bytes(bytes).map_err(|_| WireError::Surb)?);
            }
            Ok(Plain::NackSurbs {
                id,
                attempt,
                object_len,
                quiet_ms,
                surbs,
            })
        }
        KIND_ACK => Ok(Plain::Ack { id: r.id()? }),
        KIND_NACK => Ok(Plain::Nack {
            id: r.id()?,
            attempt: r.u8()?,
            have: r.u32()?,
            need: r.u32()?,
        }),
        other => Err(WireError::Kind(other)),
    }
}

/// Writes a symbol packet's header into `out`, returns the rest for the symbol.
pub fn write_symbol_header(
    out: &mut Vec<u8>,
    id: &MessageId,
    attempt: u8,
    object_len: u32,
    esi: u32,
) {
    out.clear();
    out.push(KIND_SYMBOL);
    out.extend_from_slice(id);
    out.push(attempt);
    out.extend_from_slice(&object_len.to_be_bytes());
    out.extend_from_slice(&esi.to_be_bytes());
}

/// Writes a NACK-SURB packet.
pub fn write_nack_surbs(
    out: &mut Vec<u8>,
    id: &MessageId,
    attempt: u8,
    object_len: u32,
    quiet_ms: u32,
    surbs: &[Surb],
) {
    out.clear();
    out.push(KIND_NACK_SURBS);
    out.extend_from_slice(id);
    out.push(attempt);
    out.extend_from_slice(&object_len.to_be_bytes());
    out.extend_from_slice(&quiet_ms.to_be_bytes());
    out.push(surbs.len() as u8);
    for s in surbs {
        let bytes = s.to_bytes();
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
}

/// Writes an ACK.
pub fn write_ack(out: &mut Vec<u8>, id: &MessageId) {
    out.clear();
    out.push(KIND_ACK);
    out.extend_from_slice(id);
}

/// Writes a NACK.
pub fn write_nack(out: &mut Vec<u8>, id: &MessageId, attempt: u8, have: u32, need: u32) {
    out.clear();
    out.push(KIND_NACK);
    out.extend_from_slice(id);
    out.push(attempt);
    out.extend_from_slice(&have.to_be_bytes());
    out.extend_from_slice(&need.to_be_bytes());
}

/// The coded object: what the message's symbols carry, once decoded.
///
/// version (1) || flags (1) || port (2) || data length (4) || digest (32)
/// || [sender identity (32) || MAC (32)]  when flags & REVEAL
/// || ACK SURB count (1) || (length (2) || SURB)*
/// || reply SURB count (1) || (length (2) || SURB)*
/// || data
#[derive(Debug)]
pub struct Object<'a> {
    /// The flags.
    pub flags: u8,
    /// The recipient's port (which application).
    pub port: u16,
    /// SHA-256 over the message ID, the port and the data.
    pub digest: [u8; 32],
    /// The sender's identity key and the deniable MAC, when revealed.
    pub sender: Option<([u8; 32], [u8; 32])>,
    /// SURBs to acknowledge through.
    pub ack_surbs: Vec<Surb>,
    /// SURBs to reply through.
    pub reply_surbs: Vec<Surb>,
    /// The message.
    pub data: &'a [u8],
}

/// The object format's version.
pub const OBJECT_VERSION: u8 = 1;
/// Flag: the sender's identity and MAC follow.
pub const FLAG_REVEAL: u8 = 1;

/// Parses a decoded object.
pub fn parse_object(bytes: &[u8]) -> Result<Object<'_>, WireError> {
    let mut r = Reader(bytes);
    if r.u8()? != OBJECT_VERSION {
        return Err(WireError::Range);
    }
    let flags = r.u8()?;
    let port = r.u16()?;
    let len = r.u32()? as usize;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(r.take(32)?);
    let sender = if flags & FLAG_REVEAL != 0 {
        let mut key = [0u8; 32];
        key.copy_from_slice(r.take(32)?);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(r.take(32)?);
        Some((key, mac))
    } else {
        None
    };
    let surbs = |r: &mut Reader<'_>| -> Result<Vec<Surb>, WireError> {
        let count = r.u8()?;
        let mut out = Vec::new();
        for _ in 0..count {
            let n = r.u16()?;
            out.push(Surb::from_bytes(r.take(usize::from(n))?).map_err(|_| WireError::Surb)?);
        }
        Ok(out)
    };
    let ack_surbs = surbs(&mut r)?;
    let reply_surbs = surbs(&mut r)?;
    let data = r.take(len)?;
    if !r.0.is_empty() {
        return Err(WireError::Range);
    }
    Ok(Object {
        flags,
        port,
        digest,
        sender,
        ack_surbs,
        reply_surbs,
        data,
    })
}

/// Writes an object.
pub fn write_object(
    port: u16,
    digest: &[u8; 32],
    sender: Option<([u8; 32], [u8; 32])>,
    ack_surbs: &[Surb],
    reply_surbs: &[Surb],
    data: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(data.len() + 128 + 400 * (ack_surbs.len() + reply_surbs.len()));
    out.push(OBJECT_VERSION);
    out.push(if sender.is_some() { FLAG_REVEAL } else { 0 });
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(digest);
    if let Some((key, mac)) = sender {
        out.extend_from_slice(&key);
        out.extend_from_slice(&mac);
    }
    for set in [ack_surbs, reply_surbs] {
        out.push(set.len() as u8);
        for s in set {
            let b = s.to_bytes();
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(&b);
        }
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse(&bytes);
            let _ = parse_object(&bytes);
        }
    }

    #[test]
    fn fields_round_trip() {
        let id = [7u8; 16];
        let mut out = Vec::new();
        write_nack(&mut out, &id, 2, 10, 3);
        match parse(&out) {
            Ok(Plain::Nack {
                id: i,
                attempt: 2,
                have: 10,
                need: 3,
            }) => assert_eq!(i, id),
            other => unreachable_case(&format!("{other:?}")),
        }
        write_ack(&mut out, &id);
        assert!(matches!(parse(&out), Ok(Plain::Ack { id: i }) if i == id));
        write_symbol_header(&mut out, &id, 1, 5000, 9);
        out.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            parse(&out),
            Ok(Plain::Symbol {
                attempt: 1,
                object_len: 5000,
                esi: 9,
                symbol: [1, 2, 3],
                ..
            })
        ));
        let object = write_object(9, &[3; 32], Some(([1; 32], [2; 32])), &[], &[], b"hi");
        let o = parse_object(&object);
        assert!(matches!(
            o,
            Ok(Object {
                port: 9,
                data: b"hi",
                sender: Some(_),
                ..
            })
        ));
        assert!(parse_object(&object[..object.len() - 1]).is_err());
    }

    #[allow(clippy::panic)]
    fn unreachable_case(s: &str) -> ! {
        panic!("{s}")
    }
}
