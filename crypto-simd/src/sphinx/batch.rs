//! Batches: unwrap many packets under one node key, and build many packets, with the X25519
//! ladders of the whole batch run side by side across vector lanes
//! ([`crate::x25519::x25519_batch`]).
//!
//! Results are identical, packet by packet, to the single-packet path ([`super::process_in_place`],
//! [`super::build_packet`]): the batch only changes how the ladders are scheduled. A packet
//! that fails never changes the result of its neighbours. Nothing here allocates: batches are
//! cut into chunks held on the stack.

use rand_core::CryptoRng;
use zeroize::Zeroize;

use super::error::{BuildError, ProcessError};
use super::geometry::{MAX_HOPS, payload_size_ok};
use super::header::{
    HeaderRandomness, Processed, RouteKeys, build_header, check_alpha, check_route, header_mut,
    set_alpha,
};
use super::keys::HopKeys;
use super::packet::{encrypt_payload, split_packet, unwrap_header_layer};
use super::payload::encode_plaintext;
use super::primitives::{LIONESS_GROUP, LIONESS_KEY_LEN, is_zero, lioness_decrypt_group};
use super::route::{Delay, Destination, Hop, MixSecretKey, Version};
use crate::x25519::{Backend, LengthMismatch, selected, x25519_batch_on};

/// Packets unwrapped per pass: bounds the stack a batch takes (about 8 KiB).
const UNWRAP_CHUNK: usize = 64;

/// Packets built per pass. Each takes up to six ladders in its first round.
const BUILD_CHUNK: usize = 16;

const GENERATOR: [u8; 32] = {
    let mut g = [0u8; 32];
    g[0] = 9;
    g
};

/// Unwraps a batch of packets under one node key, in place, each exactly as
/// [`super::process_in_place`] would: `results[i]` is packet `i`'s outcome, and a packet that
/// fails is left unchanged. Any batch length works; lanes left over in the last group of
/// ladders are padded. Fails only when `results` and `packets` differ in length.
pub fn process_batch_in_place<B: AsMut<[u8]>>(
    secret: &MixSecretKey,
    packets: &mut [B],
    results: &mut [Result<Processed, ProcessError>],
) -> Result<(), LengthMismatch> {
    process_batch_in_place_on(selected(), secret, packets, results)
}

/// [`process_batch_in_place`] with the ladders on a given X25519 backend (for comparing
/// backends; an unsupported one falls back to the portable backend).
pub fn process_batch_in_place_on<B: AsMut<[u8]>>(
    backend: Backend,
    secret: &MixSecretKey,
    packets: &mut [B],
    results: &mut [Result<Processed, ProcessError>],
) -> Result<(), LengthMismatch> {
    if packets.len() != results.len() {
        return Err(LengthMismatch);
    }
    for (packets, results) in packets
        .chunks_mut(UNWRAP_CHUNK)
        .zip(results.chunks_mut(UNWRAP_CHUNK))
    {
        unwrap_chunk(backend, secret, packets, results);
    }
    Ok(())
}

fn unwrap_chunk<B: AsMut<[u8]>>(
    backend: Backend,
    secret: &MixSecretKey,
    packets: &mut [B],
    results: &mut [Result<Processed, ProcessError>],
) {
    // first ladders: s_i = X25519(node secret, alpha_i) for every packet whose length and
    // alpha pass; `index[j]` is the packet the j-th ladder belongs to
    let mut alphas = [[0u8; 32]; UNWRAP_CHUNK];
    let mut scalars = [[0u8; 32]; UNWRAP_CHUNK];
    let mut outputs = [[0u8; 32]; UNWRAP_CHUNK];
    let mut index = [0usize; UNWRAP_CHUNK];
    let mut n = 0;
    for (i, (packet, result)) in packets.iter_mut().zip(results.iter_mut()).enumerate() {
        let checked = split_packet(packet.as_mut()).and_then(|(header, _)| check_alpha(header));
        match checked {
            Ok(alpha) => {
                alphas[n] = alpha;
                scalars[n] = *secret.as_bytes();
                index[n] = i;
                n += 1;
            }
            Err(e) => *result = Err(e),
        }
    }
    run_ladders(backend, &scalars[..n], &alphas[..n], &mut outputs[..n]);

    // the header layers, packet by packet; keep the blinding factors of the forward hops
    // for the second ladders, compacted in place, and the payload keys
    let mut payload_keys = [[0u8; LIONESS_KEY_LEN]; UNWRAP_CHUNK];
    let mut m = 0;
    for j in 0..n {
        let i = index[j];
        let outcome = split_packet(packets[i].as_mut())
            .and_then(|(header, _)| unwrap_header_layer(&outputs[j], header));
        match outcome {
            Ok((processed, blinding, key)) => {
                results[i] = Ok(processed);
                payload_keys[i] = key;
                if let Some(blinding) = blinding {
                    scalars[m] = blinding;
                    alphas[m] = alphas[j];
                    index[m] = i;
                    m += 1;
                }
            }
            Err(e) => results[i] = Err(e),
        }
    }
    outputs.zeroize();
    remove_payload_layers(packets, results, &payload_keys);
    payload_keys.zeroize();

    // second ladders: alpha'_i = X25519(blinding_i, alpha_i)
    run_ladders(backend, &scalars[..m], &alphas[..m], &mut outputs[..m]);
    for j in 0..m {
        if let Ok((header, _)) = split_packet(packets[index[j]].as_mut()) {
            set_alpha(header, &outputs[j]);
        }
    }
    scalars.zeroize();
}

/// The payload layers of every packet whose header unwrapped (`results[i]` is `Ok`, its
/// key `keys[i]`), [`LIONESS_GROUP`] at a time.
fn remove_payload_layers<B: AsMut<[u8]>>(
    packets: &mut [B],
    results: &[Result<Processed, ProcessError>],
    keys: &[[u8; LIONESS_KEY_LEN]; UNWRAP_CHUNK],
) {
    let mut group_keys: [&[u8; LIONESS_KEY_LEN]; LIONESS_GROUP] = [&keys[0]; LIONESS_GROUP];
    let mut group: [&mut [u8]; LIONESS_GROUP] = core::array::from_fn(|_| &mut [][..]);
    let mut g = 0;
    for ((packet, result), key) in packets.iter_mut().zip(results).zip(keys) {
        if result.is_err() {
            continue;
        }
        let Ok((_, payload)) = split_packet(packet.as_mut()) else {
            continue;
        };
        group[g] = payload;
        group_keys[g] = key;
        g += 1;
        if g == LIONESS_GROUP {
            lioness_decrypt_group(&group_keys, &mut group);
            g = 0;
        }
    }
    if g > 0 {
        lioness_decrypt_group(&group_keys[..g], &mut group[..g]);
    }
}

/// The batched ladder; the three slices always have the same length here.
fn run_ladders(backend: Backend, scalars: &[[u8; 32]], points: &[[u8; 32]], out: &mut [[u8; 32]]) {
    let lengths_match = x25519_batch_on(backend, scalars, points, out).is_ok();
    debug_assert!(lengths_match);
}

/// One packet to build: what [`super::build_packet`] takes.
#[derive(Clone, Copy, Debug)]
pub struct PacketRequest<'a> {
    /// The route, 1 to 5 hops.
    pub route: &'a [Hop],
    /// One delay per hop but the last.
    pub delays: &'a [Delay],
    /// Where the final hop delivers.
    pub destination: &'a Destination,
    /// The plaintext; at most the payload size less 17 bytes.
    pub message: &'a [u8],
}

/// Builds a batch of packets, each exactly as [`super::build_packet`] would with the same
/// `rng` called for one request after another (a request that fails its checks draws
/// nothing): `outs[i]` receives packet `i` (its length sets the payload size) and
/// `results[i]` says whether it was built. Fails only when the three slices differ in length.
pub fn build_packets<R: CryptoRng + ?Sized, B: AsMut<[u8]>>(
    requests: &[PacketRequest<'_>],
    rng: &mut R,
    outs: &mut [B],
    results: &mut [Result<(), BuildError>],
) -> Result<(), LengthMismatch> {
    build_packets_on(selected(), requests, rng, outs, results)
}

/// [`build_packets`] with the ladders on a given X25519 backend.
pub fn build_packets_on<R: CryptoRng + ?Sized, B: AsMut<[u8]>>(
    backend: Backend,
    requests: &[PacketRequest<'_>],
    rng: &mut R,
    outs: &mut [B],
    results: &mut [Result<(), BuildError>],
) -> Result<(), LengthMismatch> {
    build_all(backend, requests, rng, outs, results, Body::Encrypted)
}

/// Builds a batch of drop-cover packets: headers exactly as [`build_packets`] makes them,
/// bodies random bytes drawn from `rng` instead of an encrypted plaintext. The final hop
/// reads the header like any other (its MAC checks, its routing says deliver here) and
/// discards the packet by its destination; no node ever decrypts a cover body to use it, and
/// Lioness's output looks as random as these bytes to anyone without the hop's key. Saves the
/// body's encryption (two ChaCha20 and two BLAKE2b passes over it), about a quarter of the
/// cost of a one-hop packet.
pub fn build_cover_packets<R: CryptoRng + ?Sized, B: AsMut<[u8]>>(
    requests: &[PacketRequest<'_>],
    rng: &mut R,
    outs: &mut [B],
    results: &mut [Result<(), BuildError>],
) -> Result<(), LengthMismatch> {
    build_all(selected(), requests, rng, outs, results, Body::Random)
}

/// Builds every request, [`BUILD_CHUNK`] at a time.
fn build_all<R: CryptoRng + ?Sized, B: AsMut<[u8]>>(
    backend: Backend,
    requests: &[PacketRequest<'_>],
    rng: &mut R,
    outs: &mut [B],
    results: &mut [Result<(), BuildError>],
    body: Body,
) -> Result<(), LengthMismatch> {
    if requests.len() != outs.len() || outs.len() != results.len() {
        return Err(LengthMismatch);
    }
    for ((requests, outs), results) in requests
        .chunks(BUILD_CHUNK)
        .zip(outs.chunks_mut(BUILD_CHUNK))
        .zip(results.chunks_mut(BUILD_CHUNK))
    {
        build_chunk(backend, requests, rng, outs, results, body);
    }
    Ok(())
}

/// What a built packet's body holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    /// The plaintext, encoded and encrypted for the route.
    Encrypted,
    /// Random bytes (drop cover).
    Random,
}

fn build_chunk<R: CryptoRng + ?Sized, B: AsMut<[u8]>>(
    backend: Backend,
    requests: &[PacketRequest<'_>],
    rng: &mut R,
    outs: &mut [B],
    results: &mut [Result<(), BuildError>],
    body: Body,
) {
    // checks and randomness, in request order, as the single path does them
    let mut randomness: [Option<HeaderRandomness>; BUILD_CHUNK] = Default::default();
    for (((request, out), result), randomness) in requests
        .iter()
        .zip(outs.iter_mut())
        .zip(results.iter_mut())
        .zip(randomness.iter_mut())
    {
        *result = check_request(request, out.as_mut());
        if result.is_ok() {
            *randomness = Some(HeaderRandomness::draw(request.route.len(), rng));
        }
    }

    let mut keys: [Option<RouteKeys>; BUILD_CHUNK] = Default::default();
    derive_chunk_keys(backend, requests, &randomness, results, &mut keys);

    for ((((request, out), result), randomness), keys) in requests
        .iter()
        .zip(outs.iter_mut())
        .zip(results.iter_mut())
        .zip(&randomness)
        .zip(&keys)
    {
        if result.is_err() {
            continue;
        }
        let (Some(randomness), Some(keys)) = (randomness, keys) else {
            continue;
        };
        let Some((header, payload)) = header_mut(out.as_mut()) else {
            continue;
        };
        build_header(
            keys,
            request.route,
            request.delays,
            request.destination,
            Version::CURRENT,
            randomness,
            header,
        );
        match body {
            Body::Encrypted => encrypt_payload(keys, Version::CURRENT, payload),
            Body::Random => rng.fill_bytes(payload),
        }
    }
}

/// The single path's checks, and the plaintext encoded into the payload.
fn check_request(request: &PacketRequest<'_>, out: &mut [u8]) -> Result<(), BuildError> {
    check_route(request.route, request.delays)?;
    let (_, payload) = header_mut(out).ok_or(BuildError::PayloadSize)?;
    if !payload_size_ok(payload.len()) {
        return Err(BuildError::PayloadSize);
    }
    encode_plaintext(request.message, payload)
}

/// Every hop's keys for every request of a chunk that passed its checks, with the ladders of
/// the whole chunk batched round by round. Round 0 computes alpha_0 = X25519(x, 9) and
/// X25519(x, pk_i) for every hop; round r > 0 applies hop r-1's blinding factor to hops r
/// and beyond; after round r, hop r's shared secret is final. The same ladders, on the same
/// values, as the single path's [`super::header::derive_route_keys`].
fn derive_chunk_keys(
    backend: Backend,
    requests: &[PacketRequest<'_>],
    randomness: &[Option<HeaderRandomness>; BUILD_CHUNK],
    results: &mut [Result<(), BuildError>],
    keys: &mut [Option<RouteKeys>; BUILD_CHUNK],
) {
    const MAX_LADDERS: usize = BUILD_CHUNK * (MAX_HOPS + 1);
    let mut acc = [[[0u8; 32]; MAX_HOPS]; BUILD_CHUNK];
    let mut blinding = [[0u8; 32]; BUILD_CHUNK];
    let mut alpha = [[0u8; 32]; BUILD_CHUNK];
    let mut scalars = [[0u8; 32]; MAX_LADDERS];
    let mut points = [[0u8; 32]; MAX_LADDERS];
    let mut outputs = [[0u8; 32]; MAX_LADDERS];
    // where each ladder's output goes: (request, hop), hop == MAX_HOPS for alpha_0
    let mut target = [(0usize, 0usize); MAX_LADDERS];
    let mut hop_keys: [[Option<HopKeys>; MAX_HOPS]; BUILD_CHUNK] = Default::default();

    for round in 0..MAX_HOPS {
        let mut n = 0;
        for (p, request) in requests.iter().enumerate() {
            let (Some(randomness), Ok(())) = (&randomness[p], &results[p]) else {
                continue;
            };
            let hops = request.route.len();
            if round >= hops {
                continue;
            }
            let scalar = if round == 0 {
                randomness.secret
            } else {
                blinding[p]
            };
            if round == 0 {
                scalars[n] = scalar;
                points[n] = GENERATOR;
                target[n] = (p, MAX_HOPS);
                n += 1;
            }
            for (i, hop) in request.route.iter().enumerate().skip(round) {
                scalars[n] = scalar;
                points[n] = if round == 0 { hop.key.0 } else { acc[p][i] };
                target[n] = (p, i);
                n += 1;
            }
        }
        if n == 0 {
            break;
        }
        run_ladders(backend, &scalars[..n], &points[..n], &mut outputs[..n]);
        for (&(p, i), output) in target[..n].iter().zip(&outputs[..n]) {
            if i == MAX_HOPS {
                alpha[p] = *output;
            } else {
                acc[p][i] = *output;
            }
        }
        // hop `round` of every request still in play is final now
        for (p, request) in requests.iter().enumerate() {
            if randomness[p].is_none() || results[p].is_err() || round >= request.route.len() {
                continue;
            }
            let shared = &acc[p][round];
            if is_zero(shared) {
                results[p] = Err(BuildError::WeakHopKey);
                continue;
            }
            let k = HopKeys::from_shared_secret(shared);
            blinding[p] = k.blinding_factor();
            hop_keys[p][round] = Some(k);
        }
    }

    for (p, request) in requests.iter().enumerate() {
        if randomness[p].is_none() || results[p].is_err() {
            continue;
        }
        let mut route_keys = RouteKeys {
            hops: core::array::from_fn(|_| HopKeys::zeroed()),
            len: request.route.len(),
            alpha: alpha[p],
        };
        for (slot, k) in route_keys.hops.iter_mut().zip(hop_keys[p].iter_mut()) {
            if let Some(k) = k.take() {
                *slot = k;
            }
        }
        keys[p] = Some(route_keys);
    }
    acc.zeroize();
    blinding.zeroize();
    scalars.zeroize();
    outputs.zeroize();
}
