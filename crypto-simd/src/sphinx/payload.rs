//! The payload: 16 zero bytes, the plaintext, a `0x01` terminator and zero padding, wrapped in
//! one Lioness layer per hop.

use super::error::{BuildError, PayloadError};
use super::geometry::{PAYLOAD_OVERHEAD, SECURITY_PARAMETER, payload_size_ok};
use super::keys::PayloadKey;
use super::primitives::Lioness;

/// Writes `16 zero bytes || message || 0x01 || zero bytes` over all of `payload`.
pub(crate) fn encode_plaintext(message: &[u8], payload: &mut [u8]) -> Result<(), BuildError> {
    if !payload_size_ok(payload.len()) {
        return Err(BuildError::PayloadSize);
    }
    if message.len() > payload.len() - PAYLOAD_OVERHEAD {
        return Err(BuildError::MessageTooLong);
    }
    payload.fill(0);
    let end = SECURITY_PARAMETER + message.len();
    payload[SECURITY_PARAMETER..end].copy_from_slice(message);
    payload[end] = 1;
    Ok(())
}

/// Adds one layer of encryption (what the sender does once per hop, last hop first).
pub(crate) fn add_layer(key: &PayloadKey, payload: &mut [u8]) {
    // payload sizes are checked before any layer is added, so the block is long enough
    let done = Lioness::new(key).encrypt(payload);
    debug_assert!(done);
}

/// Removes one layer of encryption (what each hop does).
pub(crate) fn remove_layer(key: &PayloadKey, payload: &mut [u8]) {
    let done = Lioness::new(key).decrypt(payload);
    debug_assert!(done);
}

/// The plaintext inside a fully decrypted payload: what a final hop hands to the layer above.
///
/// Fails with [`PayloadError::Corrupt`] when the 16 leading bytes are not zero, which is how
/// tampering anywhere in the payload shows (Lioness spreads one flipped bit over the whole
/// block), and with [`PayloadError::BadPadding`] when the last non-zero byte is not the
/// `0x01` terminator.
pub fn recover_plaintext(payload: &[u8]) -> Result<&[u8], PayloadError> {
    if payload.len() < PAYLOAD_OVERHEAD {
        return Err(PayloadError::TooShort);
    }
    let (zeros, padded) = payload.split_at(SECURITY_PARAMETER);
    if zeros.iter().any(|&b| b != 0) {
        return Err(PayloadError::Corrupt);
    }
    match padded.iter().rposition(|&b| b != 0) {
        Some(end) if padded[end] == 1 => Ok(&padded[..end]),
        _ => Err(PayloadError::BadPadding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sphinx::geometry::MIN_PAYLOAD_SIZE;

    #[test]
    fn plaintext_round_trips_at_every_length() {
        let mut payload = [0u8; MIN_PAYLOAD_SIZE];
        for len in 0..=MIN_PAYLOAD_SIZE - PAYLOAD_OVERHEAD {
            let message: Vec<u8> = (1..=len as u8).collect();
            encode_plaintext(&message, &mut payload).unwrap();
            assert_eq!(recover_plaintext(&payload).unwrap(), &message[..]);
        }
        let too_long = [7u8; MIN_PAYLOAD_SIZE - PAYLOAD_OVERHEAD + 1];
        assert_eq!(
            encode_plaintext(&too_long, &mut payload),
            Err(BuildError::MessageTooLong)
        );
        assert_eq!(
            encode_plaintext(&[], &mut payload[..MIN_PAYLOAD_SIZE - 1]),
            Err(BuildError::PayloadSize)
        );
    }

    #[test]
    fn recovery_rejects_bad_layouts() {
        assert_eq!(recover_plaintext(&[0u8; 16]), Err(PayloadError::TooShort));
        let mut payload = [0u8; 40];
        assert_eq!(recover_plaintext(&payload), Err(PayloadError::BadPadding));
        payload[20] = 1;
        assert_eq!(recover_plaintext(&payload).unwrap(), &[0u8; 4]);
        payload[30] = 5;
        assert_eq!(recover_plaintext(&payload), Err(PayloadError::BadPadding));
        payload[3] = 1;
        assert_eq!(recover_plaintext(&payload), Err(PayloadError::Corrupt));
    }
}
