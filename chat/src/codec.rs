//! Byte encodings of the messenger's records and messages: big-endian integers, lengths
//! before variable fields, every read checked (a short or trailing input is an error, never
//! a panic), and a Crockford base32 for the codes people copy by hand.

/// A malformed encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

/// Appends fields.
#[derive(Debug, Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A length (u8) and the bytes; at most 255.
    pub(crate) fn short(&mut self, v: &[u8]) -> &mut Self {
        let v = &v[..v.len().min(255)];
        self.u8(v.len() as u8).bytes(v)
    }
    /// A length (u32) and the bytes.
    pub(crate) fn long(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32).bytes(v)
    }
}

/// Reads fields, each checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8], what: &'static str) -> Self {
        Reader { b, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.b.len() < n {
            return Err(Malformed(self.what));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    pub(crate) fn arr<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn short(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    /// A length (u32) and the bytes, at most `max`.
    pub(crate) fn long(&mut self, max: usize) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Malformed(self.what));
        }
        self.take(n)
    }
    pub(crate) fn string(&mut self) -> Result<String, Malformed> {
        let what = self.what;
        String::from_utf8(self.short()?.to_vec()).map_err(|_| Malformed(what))
    }
    /// What is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }

    /// Nothing may follow.
    pub(crate) fn end(&self) -> Result<(), Malformed> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Malformed(self.what))
        }
    }
}

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford base32 (no padding): what people copy and read aloud.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Reads [`base32`], forgiving case, `O` for 0, `I`/`L` for 1, and spaces, dashes and line
/// breaks; `None` for any other character or stray bits.
pub fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.chars() {
        let c = match c.to_ascii_uppercase() {
            ' ' | '-' | '\n' | '\r' | '\t' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        let v = ALPHABET.iter().position(|&a| char::from(a) == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    (bits < 5 && acc == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn base32_round_trips_and_forgives_what_people_mistype() {
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let text = base32(&bytes);
            assert_eq!(unbase32(&text).unwrap(), bytes);
            assert_eq!(unbase32(&text.to_lowercase()).unwrap(), bytes);
        }
        assert_eq!(base32(&[0xff, 0x00]), "ZW00");
        assert_eq!(unbase32("zwoo").unwrap(), vec![0xff, 0x00]);
        assert_eq!(unbase32("ZW-0 0").unwrap(), vec![0xff, 0x00]);
        assert!(unbase32("ZW0U").is_none());
        // stray bits are refused, not dropped
        assert!(unbase32("ZW01").is_none());
    }

    #[test]
    fn reads_are_checked() {
        let mut w = Writer::default();
        w.u8(1).u64(7).short(b"abc").long(b"xyz");
        let mut r = Reader::new(&w.0, "test");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.short().unwrap(), b"abc");
        assert!(Reader::new(&w.0[9..], "test").long(2).is_err());
        assert_eq!(r.long(3).unwrap(), b"xyz");
        r.end().unwrap();
        assert_eq!(Reader::new(&[5, 1], "x").short(), Err(Malformed("x")));
    }
}
