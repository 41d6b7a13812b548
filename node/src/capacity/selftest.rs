//! `mixed node --self-test`: this machine's capacity, for an operator sizing a relay. The
//! same bench and search as `mixed-perf`: the node under test is this binary, started as
//! `mixed node` in a process of its own for every B tried (in this process it shared the
//! allocator, the caches and the scheduler's attention with the load generator and the
//! sink, and found 0.58-0.77x what `mixed-perf` found minutes before or after).

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    BenchNet, CapacityError, ChildNode, OFFERED_SHARE, Trial, costs, free_port,
    loopback_round_trip, search,
};
use crate::io::IoChoice;

/// What the self-test found.
#[derive(Debug)]
pub struct SelfTest {
    /// Seconds of cryptography per packet: unwrap, cover, loop.
    pub unwrap: f64,
    /// Building one drop-cover packet, seconds.
    pub cover: f64,
    /// The median loopback round trip of a packet-sized datagram.
    pub round_trip: Duration,
    /// The p99 overshoot of a 200 us sleep on this machine, seconds.
    pub overshoot: f64,
    /// Every trial of the search.
    pub trials: Vec<Trial>,
    /// The highest B per core on time, if any.
    pub capacity: Option<f64>,
    /// The I/O backend measured.
    pub io: IoChoice,
}

impl SelfTest {
    /// The report for the operator, with the line to put in the configuration.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cryptography, one core: unwrap {:.1} us ({:.0} packets/s), drop cover {:.1} us",
            self.unwrap * 1e6,
            1.0 / self.unwrap,
            self.cover * 1e6
        );
        let _ = writeln!(
            out,
            "loopback round trip of a {}-byte datagram: {:.0} us (median)",
            super::PACKET_SIZE,
            self.round_trip.as_secs_f64() * 1e6
        );
        let _ = writeln!(
            out,
            "timer: a sleep of 200 us overshoots by {:.0} us at p99 (departures are on time within 1 ms plus that)",
            self.overshoot * 1e6
        );
        for t in &self.trials {
            let _ = writeln!(
                out,
                "  B = {:>6.0}: forwards {:>6.0}/s of {:>6.0} offered, core {:>5.1}%, p99 lateness <= {:.0} us, later than {:.0} us {:.2}%: {}",
                t.bandwidth,
                t.forwards,
                t.offered,
                100.0 * t.core_load,
                t.lateness[1] * 1e6,
                t.bound * 1e6,
                100.0 * t.late_share,
                if t.on_time() { "on time" } else { "behind" }
            );
        }
        match self.capacity {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "capacity with {:?}: B = {b:.0} per core (departures on time at 95% of the forward budget)",
                    self.io
                );
                let _ = writeln!(
                    out,
                    "put in the configuration (cores = 1; with more cores, up to that many times it, measured again):\nbandwidth = {b:.0}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "no B tried was on time: this machine is too busy to measure, or too slow for a relay"
                );
            }
        }
        out
    }
}

/// Runs the self-test: the cryptography's rates, the loopback round trip, then `steps`
/// trials of `seconds` each searching for the capacity; `progress` hears of each trial.
pub fn run(
    io: IoChoice,
    steps: usize,
    seconds: f64,
    mut progress: impl FnMut(&Trial),
) -> Result<SelfTest, CapacityError> {
    let mut net = BenchNet::start()?;
    let c = costs(net.params().hops, 2048);
    let round_trip = loopback_round_trip(1000)?;
    let share = OFFERED_SHARE * net.forward_budget(1.0);
    let estimate = 0.8 / (share * c.unwrap + (1.0 - share) * c.cover);
    let template = net.template();
    let listen = free_port()?;
    let mixed = std::env::current_exe()?;
    let found = search(
        &mut net,
        |b| ChildNode::start(&template, &mixed, io, "self-test", listen, b),
        estimate,
        steps,
        seconds,
        &mut progress,
    )?;
    Ok(SelfTest {
        unwrap: c.unwrap,
        cover: c.cover,
        round_trip,
        overshoot: net.timer_overshoot(),
        trials: found.trials,
        capacity: found.capacity,
        io,
    })
}
