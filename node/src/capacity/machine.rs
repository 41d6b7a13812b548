//! What a capacity measurement needs to know of the machine: the work of each kind of
//! slot, how late its timer wakes a sleeper, the loopback round trip, free ports.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use crypto_simd::sphinx::{self, Delay, Destination, Hop, MixSecretKey, NodeId, PacketRequest};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::{PACKET_SIZE, Result};

/// The work of each kind of slot, measured in this process on the bench's geometry (one
/// core, the selected X25519 backend, batches as the engine builds them): seconds a packet.
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    /// Unwrapping a 2-hop packet at its first hop, 64 a batch: what a forward costs in
    /// cryptography.
    pub unwrap: f64,
    /// Building a drop-cover packet (one hop, a random body), as the engine does.
    pub cover: f64,
    /// Building a loop of h hops (at most 4 mixes and back), as the engine does.
    pub loop_: f64,
    /// Building a 2-hop load packet.
    pub create: f64,
}

/// Measures [`Costs`] over `n` packets of each kind.
pub fn costs(hops: u8, n: usize) -> Costs {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let keys: Vec<MixSecretKey> = (0..6).map(|_| MixSecretKey::generate(&mut rng)).collect();
    let hop = |i: usize| Hop {
        id: NodeId([i as u8 + 1; 32]),
        key: keys[i].public_key(),
    };
    let time_build = |route: &[Hop], message: &[u8], rng: &mut ChaCha20Rng, cover: bool| {
        let delays = vec![Delay::from_nanos(0); route.len().saturating_sub(1)];
        let destination = Destination {
            address: route[route.len() - 1].id.0,
            identifier: [1; 16],
        };
        let requests = vec![
            PacketRequest {
                route,
                delays: &delays,
                destination: &destination,
                message,
            };
            n
        ];
        let mut packets = vec![vec![0u8; PACKET_SIZE]; n];
        let mut results = vec![Ok(()); n];
        let start = Instant::now();
        // the engine builds cover and loops 8 at a time (its BUILD_CHUNK)
        let build = if cover {
            sphinx::build_cover_packets
        } else {
            sphinx::build_packets
        };
        for ((r, p), o) in requests
            .chunks(8)
            .zip(packets.chunks_mut(8))
            .zip(results.chunks_mut(8))
        {
            let _ = build(r, rng, p, o);
        }
        (start.elapsed().as_secs_f64() / n as f64, packets)
    };
    let two = [hop(0), hop(1)];
    let (create, mut packets) = time_build(&two, b"capacity", &mut rng, false);
    let cover = time_build(&two[..1], &[], &mut rng, true).0;
    let h = usize::from(hops).clamp(1, 4);
    let route: Vec<Hop> = (0..=h).map(hop).collect();
    let loop_ = time_build(&route, &[], &mut rng, false).0;
    let mut out = vec![Err(sphinx::ProcessError::TooShort); 64];
    let start = Instant::now();
    for chunk in packets.chunks_mut(64) {
        let k = chunk.len();
        let _ = sphinx::process_batch_in_place(&keys[0], chunk, &mut out[..k]);
    }
    let unwrap = start.elapsed().as_secs_f64() / n as f64;
    Costs {
        unwrap,
        cover,
        loop_,
        create,
    }
}

/// The p99 overshoot of `n` sleeps of 200 us on this thread, seconds.
pub fn timer_overshoot_p99(n: usize) -> f64 {
    let asked = Duration::from_micros(200);
    let mut over: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            std::thread::sleep(asked);
            t.elapsed().saturating_sub(asked).as_secs_f64()
        })
        .collect();
    over.sort_by(f64::total_cmp);
    over[(over.len() * 99 / 100).min(over.len() - 1)]
}

/// A free UDP port on loopback (for a node under test restarted on the same address).
pub fn free_port() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A free TCP port on loopback (for a node's metrics).
pub fn free_tcp_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The median round trip of one packet-sized datagram over loopback, between two sockets of
/// this process, over `n` round trips.
pub fn loopback_round_trip(n: usize) -> Result<Duration> {
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    a.set_read_timeout(Some(Duration::from_secs(1)))?;
    b.set_read_timeout(Some(Duration::from_secs(1)))?;
    let to_b = b.local_addr()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let Ok((len, from)) = b.recv_from(&mut buf) else {
                return;
            };
            let _ = b.send_to(&buf[..len], from);
        }
    });
    let packet = [0u8; PACKET_SIZE];
    let mut buf = [0u8; 2048];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.send_to(&packet, to_b)?;
        a.recv_from(&mut buf)?;
        times.push(t.elapsed());
    }
    let _ = echo.join();
    times.sort();
    Ok(times[times.len() / 2])
}
