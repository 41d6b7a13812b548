//! The packet path of a node's loop allocates nothing on the heap once the node is running:
//! datagrams in (staged, unwrapped as a batch, held for their delays), the slots decided
//! (forwards, loops, drop cover built in chunks), datagrams out. A counting global allocator
//! watches a relay's stack, the object each core of `mixed node` runs, through many turns
//! of that loop. (The crypto alone: `crypto-simd/tests/no_alloc.rs`; the I/O backends:
//! `node::io`'s tests.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand_chacha::rand_core::SeedableRng;
use scheduler::Timestamp;
use stack::sim::{LinkModel, Sim, params};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// One test in this file: the harness's other threads would count too.
#[test]
fn a_relays_loop_allocates_nothing_per_packet() {
    // three nodes at B = 4,000 with loops (params(3): L loops of its rate), the runtime's
    // configuration: datagrams staged for a group of lanes, queues fitted to the delay
    let mut sim = Sim::with_engines(3, 21, params(3), 4000.0, LinkModel::PERFECT, &|c| {
        c.ingress_hold = engine::DEFAULT_INGRESS_HOLD;
        c.fit_to_delay = true;
    });
    let relay = sim.node_id(1);
    let dest = sim.node_id(2);
    // two-hop packets from node 0 whose first hop is node 1, built beforehand (the
    // senders' work, not the relay's)
    let paths = sim.nodes[0].engine().paths().unwrap();
    let size = paths.packet_size();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
    let mut load: Vec<Vec<u8>> = Vec::new();
    let mut i = 0u32;
    while load.len() < 1_200 {
        i += 1;
        let mut out = vec![0u8; size];
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        let first = paths
            .forward(&dest, 2, id, &i.to_le_bytes(), &mut rng, &mut out)
            .unwrap();
        if first == relay {
            load.push(out);
        }
    }
    // the relay's receive buffers, as a backend's: written in place, never reallocated
    let mut batch: Vec<Vec<u8>> = (0..24).map(|_| vec![0u8; size]).collect();
    let mut out = vec![0u8; 2048];
    let mut now = sim.now();
    let node = &mut sim.nodes[1].stack;
    // warm up: three seconds of cover and loops alone, longer than a loop may take to
    // return, so the tracker of loops in flight has grown to its working size (its tables
    // grow by doubling up to their bounds, then only churn), then ten turns of forwards
    for _ in 0..300 {
        turn(node, &mut batch, &mut out, &mut now, &[]);
    }
    for chunk in load[..240].chunks(24) {
        turn(node, &mut batch, &mut out, &mut now, chunk);
    }
    let forwards_before = node.engine().counters().sent_forward;
    let before = count();
    let (mut received, mut sent) = (0, 0);
    for chunk in load[240..].chunks(24) {
        let (r, s) = turn(node, &mut batch, &mut out, &mut now, chunk);
        received += r;
        sent += s;
    }
    let allocations = count() - before;
    let forwarded = node.engine().counters().sent_forward - forwards_before;
    eprintln!(
        "{received} datagrams in, {sent} out ({forwarded} forwards) over {} ms: {allocations} allocations",
        (load.len() - 240) / 24 * 10
    );
    assert!(
        forwarded > 500,
        "only {forwarded} forwards: the loop did not run the path"
    );
    assert_eq!(allocations, 0, "the packet path allocated");
}

/// One turn of a core's loop: `packets` received, then 10 ms of the node's life, every
/// deadline in it met in order and everything due sent. Returns (received, sent).
fn turn(
    node: &mut stack::Stack<stack::Raw>,
    batch: &mut [Vec<u8>],
    out: &mut [u8],
    now: &mut Timestamp,
    packets: &[Vec<u8>],
) -> (usize, usize) {
    for (b, p) in batch.iter_mut().zip(packets) {
        b.copy_from_slice(p);
    }
    node.handle_datagrams(*now, &mut batch[..packets.len()]);
    let end = now.saturating_add(Duration::from_millis(10));
    let mut sent = 0;
    while let Some(t) = node.poll_timeout().filter(|t| *t <= end) {
        *now = (*now).max(t);
        node.handle_timeout(*now);
        while node.poll_transmit(out).is_some() {
            sent += 1;
        }
    }
    *now = end;
    (packets.len(), sent)
}
