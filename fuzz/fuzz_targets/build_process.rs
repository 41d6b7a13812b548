//! Structured: build a packet from fuzzer-chosen route, delays, destination, message and
//! payload size, optionally corrupt some of its bytes, and run it through every hop. An
//! untouched packet must arrive with its message intact; a corrupted one must fail with a
//! reason, at some hop or at recovery, and never panic.

#![no_main]

use arbitrary::Arbitrary;
use crypto_simd::sphinx::{
    Delay, Destination, HEADER_LEN, Hop, MixSecretKey, NodeId, Routing, build_packet,
    process_in_place, recover_plaintext,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    hops: u8,
    keys: [[u8; 32]; 5],
    delays: [u64; 4],
    destination: [u8; 32],
    identifier: [u8; 16],
    seed: [u8; 32],
    payload_size: u16,
    message: Vec<u8>,
    corruptions: Vec<(u16, u8)>,
}

/// A counter-mode "rng" over the fuzzer's seed: deterministic, and enough for building.
struct SeedRng([u8; 32], u64);

impl rand_core_shim::TryRng for SeedRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.1 = self.1.wrapping_add(1);
        let mut x = self.1 ^ u64::from_le_bytes(self.0[..8].try_into().unwrap_or([0; 8]));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        Ok(x)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
impl rand_core_shim::TryCryptoRng for SeedRng {}

mod rand_core_shim {
    pub use rand_core::{TryCryptoRng, TryRng};
}

fuzz_target!(|input: Input| {
    let hops = 1 + (input.hops as usize) % 5;
    let secrets: Vec<MixSecretKey> = input.keys[..hops]
        .iter()
        .map(|k| MixSecretKey::from_bytes(*k))
        .collect();
    let route: Vec<Hop> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| Hop {
            id: NodeId([i as u8; 32]),
            key: s.public_key(),
        })
        .collect();
    let delays: Vec<Delay> = input.delays[..hops - 1]
        .iter()
        .map(|&d| Delay::from_nanos(d))
        .collect();
    let destination = Destination {
        address: input.destination,
        identifier: input.identifier,
    };
    let mut packet = vec![0u8; HEADER_LEN + input.payload_size as usize % 2048];
    let mut rng = SeedRng(input.seed, 0);
    if build_packet(
        &route,
        &delays,
        &destination,
        &input.message,
        &mut rng,
        &mut packet,
    )
    .is_err()
    {
        return;
    }
    let original = packet.clone();
    for &(at, x) in &input.corruptions {
        let len = packet.len();
        packet[at as usize % len] ^= x;
    }
    let corrupted = packet != original;

    for (i, secret) in secrets.iter().enumerate() {
        match process_in_place(secret, &mut packet) {
            Err(_) => {
                assert!(corrupted, "an untouched packet failed at hop {i}");
                return;
            }
            Ok(p) => match p.routing {
                Routing::Forward { next_hop, delay } => {
                    if !corrupted {
                        assert_eq!(next_hop, route[i + 1].id);
                        assert_eq!(delay, delays[i]);
                    }
                }
                Routing::Final { destination: d } => {
                    let plaintext = recover_plaintext(&packet[HEADER_LEN..]);
                    if !corrupted {
                        assert_eq!(i + 1, hops);
                        assert_eq!(d, destination);
                        assert_eq!(plaintext, Ok(&input.message[..]));
                    }
                    return;
                }
            },
        }
    }
});
