//! The canonical binary encoding of the directory's documents: what gets signed.
//!
//! Big-endian integers, byte strings and lists prefixed with their length, nothing optional
//! left implicit. The reader is strict: every length is checked against the bytes left and
//! against a named maximum, and a document with bytes after its end is refused, so one
//! document has exactly one encoding and two authorities that agree on the content produce
//! the same bytes to sign.

/// Why bytes could not be read as a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a field.
    #[error("truncated: a field runs past the end at byte {at}")]
    Truncated {
        /// Offset of the field.
        at: usize,
    },
    /// The document does not start with the expected magic and version.
    #[error("not a {expected} document (bad magic or version)")]
    BadMagic {
        /// The document type expected.
        expected: &'static str,
    },
    /// A count or length exceeds its maximum.
    #[error("{what} too long or too many at byte {at}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// A value is not one the format allows.
    #[error("invalid {what} at byte {at}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// Bytes follow the end of the document.
    #[error("{extra} bytes after the end of the document")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    /// A byte string with a u32 length (callers bound the length).
    pub(crate) fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
}

/// Reads fields from a byte slice, each read checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated { at: self.at })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A u32-length byte string of at most `max` bytes.
    pub(crate) fn blob(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let at = self.at;
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, at });
        }
        self.take(len)
    }

    /// A count of at most `max`.
    pub(crate) fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(DecodeError::TooLong { what, at });
        }
        Ok(n)
    }

    pub(crate) fn expect_magic(
        &mut self,
        magic: &[u8; 5],
        expected: &'static str,
    ) -> Result<(), DecodeError> {
        if self.take(magic.len()).ok() != Some(&magic[..]) {
            return Err(DecodeError::BadMagic { expected });
        }
        Ok(())
    }

    pub(crate) fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid { what, at: self.at }
    }

    /// The end: no bytes may be left.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { extra }),
        }
    }
}
