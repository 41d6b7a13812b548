//! Rateless coding of messages (section 4.5 of the paper): a message becomes one RaptorQ
//! source block (RFC 6330) of k source symbols, each sized to fill one packet; the sender
//! sends n >= k encoding symbols, n the least for which the symbols that arrive (each
//! with probability q) decode with probability P_succ (by default 0.999), RaptorQ's own
//! decoding failures included. Repair symbols never repeat: a later attempt continues where the last
//! stopped, so every symbol the recipient already holds still counts.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockEncoder};

/// Symbols are aligned to this many bytes (RaptorQ's Al).
pub const ALIGNMENT: usize = 8;
/// The most source symbols of one block (RFC 6330's K'_max).
pub const MAX_SOURCE_SYMBOLS: usize = 56_403;
/// The largest encoding symbol ID (24 bits).
pub const MAX_ESI: u32 = (1 << 24) - 1;

/// Why a coded object could not be made or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    /// The symbol size is zero or not a multiple of the alignment.
    #[error("symbol size {0} is not a positive multiple of {ALIGNMENT}")]
    SymbolSize(usize),
    /// The object needs more source symbols than one block holds, or is empty.
    #[error("object of {0} bytes does not fit one source block")]
    ObjectSize(usize),
}

/// The number of source symbols k of an object of `len` bytes.
pub fn source_symbols(len: usize, symbol_size: usize) -> usize {
    len.div_ceil(symbol_size.max(1))
}

/// The transmission parameters of an object: one source block, one sub-block.
pub fn transmission(
    len: usize,
    symbol_size: usize,
) -> Result<ObjectTransmissionInformation, CodingError> {
    if symbol_size == 0
        || !symbol_size.is_multiple_of(ALIGNMENT)
        || symbol_size > usize::from(u16::MAX)
    {
        return Err(CodingError::SymbolSize(symbol_size));
    }
    let k = source_symbols(len, symbol_size);
    if len == 0 || k > MAX_SOURCE_SYMBOLS {
        return Err(CodingError::ObjectSize(len));
    }
    // checked above: the constructor's assertions hold
    Ok(ObjectTransmissionInformation::new(
        len as u64,
        symbol_size as u16,
        1,
        1,
        ALIGNMENT as u8,
    ))
}

/// The encoder of one object.
pub struct ObjectEncoder {
    block: SourceBlockEncoder,
    source: Vec<u8>,
    symbol_size: usize,
    k: u32,
}

impl core::fmt::Debug for ObjectEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ObjectEncoder")
            .field("k", &self.k)
            .field("symbol_size", &self.symbol_size)
            .finish_non_exhaustive()
    }
}

impl ObjectEncoder {
    /// An encoder for `object` in symbols of `symbol_size` bytes.
    pub fn new(object: &[u8], symbol_size: usize) -> Result<Self, CodingError> {
        let config = transmission(object.len(), symbol_size)?;
        let k = source_symbols(object.len(), symbol_size);
        let mut source = object.to_vec();
        source.resize(k * symbol_size, 0);
        let block = SourceBlockEncoder::new(0, &config, &source);
        Ok(ObjectEncoder {
            block,
            source,
            symbol_size,
            k: k as u32,
        })
    }

    /// k, the source symbols.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// The symbol size in bytes.
    pub fn symbol_size(&self) -> usize {
        self.symbol_size
    }

    /// Writes encoding symbol `esi` into `out` (the symbol size): a source symbol below k,
    /// a repair symbol from k on.
    pub fn symbol(&self, esi: u32, out: &mut [u8]) {
        let t = self.symbol_size;
        if esi < self.k {
            let at = esi as usize * t;
            out[..t].copy_from_slice(&self.source[at..at + t]);
        } else {
            let repair = self.block.repair_packets(esi - self.k, 1);
            if let Some(p) = repair.first() {
                out[..t].copy_from_slice(&p.data()[..t]);
            }
        }
    }
}

/// The decoder of one object.
pub struct ObjectDecoder {
    decoder: raptorq::SourceBlockDecoder,
    len: usize,
    symbol_size: usize,
    result: Option<Vec<u8>>,
}

impl core::fmt::Debug for ObjectDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ObjectDecoder")
            .field("len", &self.len)
            .field("done", &self.result.is_some())
            .finish_non_exhaustive()
    }
}

impl ObjectDecoder {
    /// A decoder for an object of `len` bytes in symbols of `symbol_size` bytes.
    pub fn new(len: usize, symbol_size: usize) -> Result<Self, CodingError> {
        let config = transmission(len, symbol_size)?;
        let k = source_symbols(len, symbol_size);
        let decoder = raptorq::SourceBlockDecoder::new(0, &config, (k * symbol_size) as u64);
        Ok(ObjectDecoder {
            decoder,
            len,
            symbol_size,
            result: None,
        })
    }

    /// Adds symbol `esi` (exactly the symbol size; the caller drops duplicates); returns the
    /// object once it decodes.
    pub fn add(&mut self, esi: u32, symbol: &[u8]) -> Option<&[u8]> {
        if self.result.is_none() && symbol.len() == self.symbol_size && esi <= MAX_ESI {
            let packet = EncodingPacket::new(PayloadId::new(0, esi), symbol.to_vec());
            if let Some(mut block) = self.decoder.decode(std::iter::once(packet)) {
                block.truncate(self.len);
                self.result = Some(block);
            }
        }
        self.result.as_deref()
    }

    /// The object, once decoded.
    pub fn result(&self) -> Option<&[u8]> {
        self.result.as_deref()
    }

    /// Takes the decoded object.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        self.result.take()
    }
}

/// ln C(n, i) + i ln q + (n - i) ln(1 - q), the log of one binomial term.
fn ln_binomial_term(n: usize, i: usize, ln_q: f64, ln_1q: f64, ln_fact: &[f64]) -> f64 {
    ln_fact[n] - ln_fact[i] - ln_fact[n - i] + i as f64 * ln_q + (n - i) as f64 * ln_1q
}

/// P_succ = Pr[X >= need] for X ~ Binomial(n, q): the probability that at least `need` of
/// `n` packets arrive when each does with probability q (section 4.5.1).
pub fn p_success(n: usize, need: usize, q: f64) -> f64 {
    if need == 0 {
        return 1.0;
    }
    if need > n || q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let mut ln_fact = vec![0.0f64; n + 1];
    for i in 1..=n {
        ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
    }
    let (ln_q, ln_1q) = (q.ln(), (1.0 - q).ln());
    // sum the smaller tail for accuracy
    let below: f64 = (0..need)
        .map(|i| ln_binomial_term(n, i, ln_q, ln_1q, &ln_fact).exp())
        .sum();
    let above: f64 = (need..=n)
        .map(|i| ln_binomial_term(n, i, ln_q, ln_1q, &ln_fact).exp())
        .sum();
    if above < below {
        above.clamp(0.0, 1.0)
    } else {
        (1.0 - below).clamp(0.0, 1.0)
    }
}

/// RaptorQ's chance of failing to decode from k + j symbols, j >= 0: about 10^-2 at j = 0
/// and a hundred times less for each extra symbol (RFC 6330, section 1).
pub fn decode_failure(extra: usize) -> f64 {
    0.01f64.powi(extra as i32 + 1)
}

/// P_succ with RaptorQ's decoding failures counted: the probability that the symbols that
/// arrive out of `n`, each with probability q, decode a block of k source symbols:
/// sum over i >= k of Pr[X = i] (1 - decode_failure(i - k)).
pub fn p_decode(n: usize, k: usize, q: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || q <= 0.0 {
        return 0.0;
    }
    let q = q.min(1.0);
    if q >= 1.0 {
        return 1.0 - decode_failure(n - k);
    }
    let mut ln_fact = vec![0.0f64; n + 1];
    for i in 1..=n {
        ln_fact[i] = ln_fact[i - 1] + (i as f64).ln();
    }
    let (ln_q, ln_1q) = (q.ln(), (1.0 - q).ln());
    let mut fail = 0.0;
    for i in 0..=n {
        let p = ln_binomial_term(n, i, ln_q, ln_1q, &ln_fact).exp();
        fail += if i < k { p } else { p * decode_failure(i - k) };
    }
    (1.0 - fail).clamp(0.0, 1.0)
}

/// The least n with [`p_decode`]`(n, k, q) >= target` (section 4.5.2: just enough
/// redundancy), capped at `cap` (the cap when even that falls short).
pub fn symbols_for(k: usize, q: f64, target: f64, cap: usize) -> usize {
    if k == 0 {
        return 0;
    }
    let q = q.clamp(0.01, 1.0);
    // start near the mean, k / q, less a few deviations
    let mean = k as f64 / q;
    let sd = (k as f64 * (1.0 - q)).sqrt() / q;
    let mut n = ((mean - 3.0 * sd).floor() as usize).max(k);
    while n < cap && p_decode(n, k, q) < target {
        n += 1 + n / 256;
    }
    // the coarse steps may overshoot: step back while the target still holds
    while n > k && p_decode(n - 1, k, q) >= target {
        n -= 1;
    }
    n.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_example_and_the_binomial_tail() {
        // section 4.5.1: p = 0.05 per hop, h = 3: q = 0.857
        let q = 0.95f64.powi(3);
        assert!((q - 0.857).abs() < 0.001);
        // section 4.5.3: q = 0.8, n = 4: all lost with probability 0.0016
        assert!((1.0 - p_success(4, 1, 0.8) - 0.0016).abs() < 1e-12);
        // exact small cases
        assert!((p_success(2, 2, 0.5) - 0.25).abs() < 1e-12);
        assert!((p_success(3, 2, 0.5) - 0.5).abs() < 1e-12);
        assert_eq!(p_success(3, 4, 0.9), 0.0);
        assert_eq!(p_success(3, 0, 0.1), 1.0);
    }

    #[test]
    fn redundancy_is_the_least_that_meets_the_target() {
        for (k, q) in [(3, 0.857), (6, 0.729), (100, 0.9), (995, 0.729), (1, 0.5)] {
            let n = symbols_for(k, q, 0.999, 100_000);
            assert!(p_decode(n, k, q) >= 0.999, "{k} {q} {n}");
            assert!(p_decode(n - 1, k, q) < 0.999, "{k} {q} {n}");
            // decoding failures cost a little over the bare binomial tail
            assert!(p_decode(n, k, q) <= p_success(n, k, q));
        }
        assert_eq!(symbols_for(5, 0.9, 0.999, 6), 6);
        // q = 1: one symbol beyond k makes the failure 10^-4
        assert_eq!(symbols_for(10, 1.0, 0.999, 100), 11);
    }

    #[test]
    fn objects_decode_from_any_k_plus_two_symbols() {
        let object: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let enc = ObjectEncoder::new(&object, 1056).unwrap_or_else(|e| unreachable(e));
        let k = enc.k();
        assert_eq!(k, 10);
        // every other symbol, from source and repair alike
        let mut dec = ObjectDecoder::new(object.len(), 1056).unwrap_or_else(|e| unreachable(e));
        let mut buf = vec![0u8; 1056];
        let mut got = None;
        for esi in (0..40).step_by(3) {
            enc.symbol(esi, &mut buf);
            if let Some(o) = dec.add(esi, &buf) {
                got = Some(o.to_vec());
                break;
            }
        }
        assert_eq!(got.as_deref(), Some(&object[..]));
    }

    #[test]
    fn bad_parameters_are_errors_not_panics() {
        assert!(transmission(100, 1001).is_err());
        assert!(transmission(100, 0).is_err());
        assert!(transmission(0, 8).is_err());
        assert!(transmission(8 * (MAX_SOURCE_SYMBOLS + 1), 8).is_err());
        assert!(ObjectDecoder::new(8 * MAX_SOURCE_SYMBOLS, 8).is_ok());
        let mut dec = ObjectDecoder::new(100, 8).unwrap_or_else(|e| unreachable(e));
        assert!(dec.add(0, &[0u8; 7]).is_none());
        assert!(dec.add(MAX_ESI + 1, &[0u8; 8]).is_none());
    }

    #[allow(clippy::panic)]
    fn unreachable(e: CodingError) -> ! {
        panic!("{e}")
    }
}
