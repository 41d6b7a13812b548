//! Processing a packet (forward and final hop) and building one allocate nothing on the heap:
//! a counting global allocator watches.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Case, rng};
use crypto_simd::sphinx::{
    DEFAULT_PAYLOAD_SIZE, HEADER_LEN, PacketRequest, ProcessError, Routing, build_packet,
    build_packets, process, process_batch_in_place, process_in_place, recover_plaintext,
};

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

/// Runs `f` and returns how many allocations it made. The test harness runs other tests on
/// other threads, so this file holds one test only.
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn building_and_processing_allocate_nothing() {
    let mut r = rng(40);
    let case = Case::random(&mut r, 3, DEFAULT_PAYLOAD_SIZE);
    let route = case.route();
    let mut packet = vec![0u8; case.packet_len()];
    let mut out = vec![0u8; case.packet_len()];

    let n = allocations_in(|| {
        build_packet(
            &route,
            &case.delays,
            &case.destination,
            &case.message,
            &mut r,
            &mut packet,
        )
        .expect("build");
    });
    assert_eq!(n, 0, "building allocated");

    // forward hops, in place and into a second buffer
    let n = allocations_in(|| {
        let first = process_in_place(&case.nodes[0].secret, &mut packet).expect("hop 0");
        assert!(matches!(first.routing, Routing::Forward { .. }));
        let second = process(&case.nodes[1].secret, &packet, &mut out).expect("hop 1");
        assert!(matches!(second.routing, Routing::Forward { .. }));
    });
    assert_eq!(n, 0, "a forward hop allocated");

    // the final hop and the plaintext
    let n = allocations_in(|| {
        let last = process_in_place(&case.nodes[2].secret, &mut out).expect("hop 2");
        assert!(matches!(last.routing, Routing::Final { .. }));
        assert_eq!(
            recover_plaintext(&out[HEADER_LEN..]).expect("plaintext"),
            &case.message[..]
        );
    });
    assert_eq!(n, 0, "the final hop allocated");

    // the batched paths, on the backend selected at run time (chosen before: reading the
    // environment once allocates)
    let _ = crypto_simd::x25519::selected();
    const N: usize = 20;
    let request = PacketRequest {
        route: &route,
        delays: &case.delays,
        destination: &case.destination,
        message: &case.message,
    };
    let requests = [request; N];
    let mut batch = [[0u8; HEADER_LEN + DEFAULT_PAYLOAD_SIZE]; N];
    let mut built = [Ok(()); N];
    let mut processed = [Err(ProcessError::TooShort); N];
    let n = allocations_in(|| {
        build_packets(&requests, &mut r, &mut batch, &mut built).expect("lengths");
        process_batch_in_place(&case.nodes[0].secret, &mut batch, &mut processed).expect("lengths");
    });
    assert_eq!(n, 0, "a batch allocated");
    assert!(built.iter().all(|b| b.is_ok()));
    assert!(
        processed
            .iter()
            .all(|p| matches!(p, Ok(p) if matches!(p.routing, Routing::Forward { .. })))
    );

    // and the counter does count
    assert!(allocations_in(|| drop(std::hint::black_box(vec![0u8; 16]))) > 0);
}
