//! Whole packets: a checked view over bytes, processing at a hop, and building.

use rand_core::CryptoRng;
use zeroize::Zeroize;

use super::error::{BuildError, ProcessError};
use super::geometry::{
    GROUP_ELEMENT_LEN, HEADER_LEN, MAX_PAYLOAD_SIZE, MIN_PAYLOAD_SIZE, payload_size_ok,
};
use super::header::{
    HeaderRandomness, Processed, RouteKeys, Routing, alpha_of, build_header, check_alpha,
    check_route, derive_route_keys, header_mut, set_alpha, unwrap_header,
};
use super::keys::PayloadKey;
use super::payload::{add_layer, encode_plaintext, remove_layer};
use super::primitives::x25519;
use super::route::{Delay, Destination, Hop, MixSecretKey, Version};

/// A packet whose length has been checked: a 348-byte header and a payload of
/// [`MIN_PAYLOAD_SIZE`] to [`MAX_PAYLOAD_SIZE`] bytes. No accessor can fail after
/// [`Packet::parse`] succeeds.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    header: &'a [u8; HEADER_LEN],
    payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Checks the length of `bytes` and views them as a packet.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProcessError> {
        let (header, payload) = bytes
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ProcessError::TooShort)?;
        check_payload_len(payload.len())?;
        Ok(Self { header, payload })
    }

    /// The 348-byte header.
    pub fn header(&self) -> &'a [u8; HEADER_LEN] {
        self.header
    }

    /// The group element alpha (the first 32 bytes of the header).
    pub fn alpha(&self) -> [u8; GROUP_ELEMENT_LEN] {
        alpha_of(self.header)
    }

    /// The encrypted payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The length of the whole packet.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Always false: a packet has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

fn check_payload_len(len: usize) -> Result<(), ProcessError> {
    if len < MIN_PAYLOAD_SIZE {
        Err(ProcessError::TooShort)
    } else if len > MAX_PAYLOAD_SIZE {
        Err(ProcessError::TooLong)
    } else {
        Ok(())
    }
}

/// Splits a packet buffer into header and payload, checking the lengths.
pub(crate) fn split_packet(
    packet: &mut [u8],
) -> Result<(&mut [u8; HEADER_LEN], &mut [u8]), ProcessError> {
    let (header, payload) = header_mut(packet).ok_or(ProcessError::TooShort)?;
    check_payload_len(payload.len())?;
    Ok((header, payload))
}

/// Processes one packet at a hop, in place: checks the header's MAC before reading anything
/// else of it, then writes the next hop's packet (forward hop) or the decrypted payload
/// (final hop, at `packet[HEADER_LEN..]`; see [`super::recover_plaintext`]) over `packet`.
///
/// The order of checks: length, alpha canonical, shared secret non-zero, MAC, flag, version.
/// On any error the buffer is left unchanged. Allocates nothing.
pub fn process_in_place(
    secret: &MixSecretKey,
    packet: &mut [u8],
) -> Result<Processed, ProcessError> {
    let (header, payload) = split_packet(packet)?;
    let alpha = check_alpha(header)?;
    let mut shared = x25519(secret.as_bytes(), &alpha);
    let result = unwrap_packet(&shared, header, payload);
    shared.zeroize();
    let (processed, blinding) = result?;
    if let Some(mut blinding) = blinding {
        set_alpha(header, &x25519(&blinding, &alpha));
        blinding.zeroize();
    }
    Ok(processed)
}

/// Like [`process_in_place`], reading `packet` and writing into `out`, which must have the
/// same length. On error `out` holds zeroes.
pub fn process(
    secret: &MixSecretKey,
    packet: &[u8],
    out: &mut [u8],
) -> Result<Processed, ProcessError> {
    let view = Packet::parse(packet)?;
    if out.len() != view.len() {
        return Err(ProcessError::OutputLength);
    }
    let alpha = check_alpha(view.header())?;
    let mut shared = x25519(secret.as_bytes(), &alpha);
    out.copy_from_slice(packet);
    let (header, payload) = split_packet(out)?;
    let result = unwrap_packet(&shared, header, payload);
    shared.zeroize();
    match result {
        Ok((processed, blinding)) => {
            if let Some(mut blinding) = blinding {
                set_alpha(header, &x25519(&blinding, &alpha));
                blinding.zeroize();
            }
            Ok(processed)
        }
        Err(e) => {
            out.fill(0);
            Err(e)
        }
    }
}

/// Everything of a hop's processing after the first X25519 and before the second: the
/// header layer and the payload layer. Returns the blinding factor for a forward hop.
pub(crate) fn unwrap_packet(
    shared_secret: &[u8; 32],
    header: &mut [u8; HEADER_LEN],
    payload: &mut [u8],
) -> Result<(Processed, Option<[u8; 32]>), ProcessError> {
    let (processed, blinding, mut key) = unwrap_header_layer(shared_secret, header)?;
    remove_layer(&key, payload);
    key.zeroize();
    Ok((processed, blinding))
}

/// The header's part of [`unwrap_packet`]: the header layer removed, and the key of the
/// payload's layer returned for the caller to remove (a batch removes several together).
pub(crate) fn unwrap_header_layer(
    shared_secret: &[u8; 32],
    header: &mut [u8; HEADER_LEN],
) -> Result<(Processed, Option<[u8; 32]>, PayloadKey), ProcessError> {
    let unwrapped = unwrap_header(shared_secret, header)?;
    let key = unwrapped.keys.payload_key(unwrapped.processed.version);
    let blinding = match unwrapped.processed.routing {
        Routing::Forward { .. } => Some(unwrapped.keys.blinding_factor()),
        Routing::Final { .. } => None,
    };
    Ok((unwrapped.processed, blinding, key))
}

/// Builds a packet for `route` into `out`, whose length sets the payload size
/// (`out.len() - 348`, which must be within [`MIN_PAYLOAD_SIZE`]..=[`MAX_PAYLOAD_SIZE`]).
///
/// `delays[i]` is how long hop `i` holds the packet before sending it to hop `i + 1`, so
/// there is one delay per hop but the last. `message` must fit the payload less 17 bytes.
/// The randomness comes from `rng` only, in this order: the 32-byte ephemeral secret, then
/// the padding of the final hop's routing information; the same seed builds the same bytes.
/// Allocates nothing.
pub fn build_packet<R: CryptoRng + ?Sized>(
    route: &[Hop],
    delays: &[Delay],
    destination: &Destination,
    message: &[u8],
    rng: &mut R,
    out: &mut [u8],
) -> Result<(), BuildError> {
    build_packet_versioned(
        route,
        delays,
        destination,
        message,
        Version::CURRENT,
        rng,
        out,
    )
}

/// [`build_packet`] writing `version` into every hop's routing information.
pub(crate) fn build_packet_versioned<R: CryptoRng + ?Sized>(
    route: &[Hop],
    delays: &[Delay],
    destination: &Destination,
    message: &[u8],
    version: Version,
    rng: &mut R,
    out: &mut [u8],
) -> Result<(), BuildError> {
    check_route(route, delays)?;
    let (header, payload) = header_mut(out).ok_or(BuildError::PayloadSize)?;
    if !payload_size_ok(payload.len()) {
        return Err(BuildError::PayloadSize);
    }
    encode_plaintext(message, payload)?;
    let randomness = HeaderRandomness::draw(route.len(), rng);
    let keys = derive_route_keys(&randomness.secret, route)?;
    build_header(
        &keys,
        route,
        delays,
        destination,
        version,
        &randomness,
        header,
    );
    encrypt_payload(&keys, version, payload);
    Ok(())
}

/// Adds every hop's payload layer, last hop first.
pub(crate) fn encrypt_payload(keys: &RouteKeys, version: Version, payload: &mut [u8]) {
    for hop in keys.hops().iter().rev() {
        let mut key = hop.payload_key(version);
        add_layer(&key, payload);
        key.zeroize();
    }
}
