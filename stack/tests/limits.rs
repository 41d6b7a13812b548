//! Queues filled to their limits: a clear error or a counted drop, never an unbounded queue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use engine::SendError;
use stack::sim::{LinkModel, Sim, params};

#[test]
fn a_full_own_data_queue_is_a_clear_error_and_drains_at_the_own_rate() {
    let mut sim = Sim::new(5, 3, params(3), 200.0, LinkModel::PERFECT);
    let dest = sim.node_id(4);
    let cap = sim.nodes[0].engine().config().own_queue;
    let mut queued = 0;
    let err = loop {
        match sim.nodes[0].stack.engine_mut().send_message(dest, b"x") {
            Ok(_) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued <= cap, "more queued than the limit of {cap}");
    };
    assert_eq!(queued, cap);
    assert_eq!(err, SendError::QueueFull);
    // the queue empties at rho * B / h = 100 a second, and takes messages again
    sim.run_until(scheduler::Timestamp::from_nanos(4_000_000_000));
    assert!(sim.nodes[0].engine().own_queued() < cap);
    assert!(
        sim.nodes[0]
            .stack
            .engine_mut()
            .send_message(dest, b"x")
            .is_ok()
    );
}
