//! Loops: packets a node sends around a random path back to itself (paper, section 4.4).
//! Their returns measure each node's reliability, which biases path selection, and a
//! collapse of returns is the sign of an n-1 attack around this node (section 5.0.2).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use scheduler::Timestamp;

/// Weight of one loop's outcome in a node's reliability.
const RELIABILITY_ALPHA: f64 = 0.05;
/// The least reliability a node keeps, so that it is still tested now and then.
const RELIABILITY_FLOOR: f64 = 0.05;
/// Loop outcomes in the recent window.
const WINDOW: usize = 64;
/// Weight of one outcome in the usual return rate.
const USUAL_ALPHA: f64 = 0.01;
/// The recent return rate below this fraction of the usual one raises the alarm.
pub const COLLAPSE_RATIO: f64 = 0.5;
/// The recent return rate back at this fraction of the usual one clears it (above the
/// collapse ratio, so that a rate near the threshold does not raise and clear by turns).
pub const RECOVER_RATIO: f64 = 0.8;
/// Loop outcomes in the recent window the alarm looks at.
pub const ALARM_WINDOW: usize = WINDOW;
/// Nodes whose reliability is tracked, at most: a consensus lists far fewer, and the table
/// is pruned to the consensus at each epoch. Past it a new node is not tracked (counted)
/// and weighs 1, as a node never tested.
pub const MAX_TRACKED_NODES: usize = 16_384;

#[derive(Clone, Debug)]
struct Pending {
    sent: Timestamp,
    hops: [[u8; 32]; 4],
    hop_count: usize,
}

/// A change of the (n-1) alarm: the fraction of the last 64 loops that returned, and the
/// fraction that usually does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alarm {
    /// Loops stopped returning.
    Raised {
        /// Recent return rate.
        recent: f64,
        /// Usual return rate.
        usual: f64,
    },
    /// Loops return again.
    Cleared {
        /// Recent return rate.
        recent: f64,
        /// Usual return rate.
        usual: f64,
    },
}

/// What became of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopOutcome {
    /// It came back after this long.
    Returned(Duration),
    /// It did not come back in time.
    Lost,
}

/// The loops in flight and what their returns taught.
#[derive(Debug)]
pub struct LoopTracker {
    max: usize,
    pending: HashMap<[u8; 16], Pending>,
    order: VecDeque<([u8; 16], Timestamp)>,
    reliability: HashMap<[u8; 32], f64>,
    /// Outcomes not recorded for a node because [`MAX_TRACKED_NODES`] were tracked.
    untracked: u64,
    window: VecDeque<bool>,
    usual: f64,
    outcomes: u64,
    alarmed: bool,
}

impl LoopTracker {
    /// A tracker of up to `max` loops in flight.
    pub fn new(max: usize) -> Self {
        LoopTracker {
            max: max.max(1),
            pending: HashMap::new(),
            order: VecDeque::new(),
            reliability: HashMap::new(),
            untracked: 0,
            window: VecDeque::with_capacity(WINDOW),
            usual: 1.0,
            outcomes: 0,
            alarmed: false,
        }
    }

    /// Loops in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Records a loop sent at `now` through `hops`, lost unless back by `now + timeout`.
    /// With `max` loops in flight, the oldest counts as lost to make room.
    pub fn sent(
        &mut self,
        id: [u8; 16],
        hops: [[u8; 32]; 4],
        hop_count: usize,
        now: Timestamp,
        timeout: Duration,
    ) -> Option<LoopOutcome> {
        let mut evicted = None;
        if self.pending.len() >= self.max
            && let Some((old, _)) = self.order.pop_front()
            && self.pending.contains_key(&old)
        {
            self.finish(&old, false);
            evicted = Some(LoopOutcome::Lost);
        }
        let deadline = now.saturating_add(timeout);
        self.pending.insert(
            id,
            Pending {
                sent: now,
                hops,
                hop_count: hop_count.min(4),
            },
        );
        self.order.push_back((id, deadline));
        // loops that returned leave stale entries behind the oldest in flight: keep the
        // order at most twice the loops in flight (amortized O(1))
        if self.order.len() > 2 * self.max {
            let pending = &self.pending;
            self.order.retain(|(id, _)| pending.contains_key(id));
        }
        self.prune_front();
        evicted
    }

    /// A loop came back: its latency, or `None` if `id` is not a loop in flight.
    pub fn returned(&mut self, id: &[u8; 16], now: Timestamp) -> Option<Duration> {
        let sent = self.pending.get(id)?.sent;
        self.finish(id, true);
        self.prune_front();
        Some(now.saturating_since(sent))
    }

    /// Loops whose time ran out by `now`, counted as lost; how many.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let mut lost = 0;
        while let Some(&(id, deadline)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if self.pending.contains_key(&id) {
                self.finish(&id, false);
                lost += 1;
            }
        }
        self.prune_front();
        lost
    }

    /// When the oldest loop in flight times out. O(1): the front of the order is always a
    /// loop in flight.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.order.front().map(|&(_, d)| d)
    }

    /// Drops the entries of loops that returned from the front of the order.
    fn prune_front(&mut self) {
        while let Some((id, _)) = self.order.front() {
            if self.pending.contains_key(id) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Makes room, outside the packet path, for what a node sending `per_second` loops
    /// that may each take `timeout` keeps: the loops in flight and the order of their
    /// deadlines (about `per_second * timeout` of each, with room for bursts, at most the
    /// tracker's bound), and the reliability of `nodes` nodes. Recording loops then
    /// allocates nothing unless those are exceeded (the tables grow by doubling, never
    /// past their bounds).
    pub fn reserve(&mut self, per_second: f64, timeout: Duration, nodes: usize) {
        let expected = per_second.max(0.0) * timeout.as_secs_f64() * 1.5 + 64.0;
        let n = (expected.min(self.max as f64) as usize).max(1);
        self.pending.reserve(n.saturating_sub(self.pending.len()));
        self.order.reserve((n + 1).saturating_sub(self.order.len()));
        let nodes = nodes.min(MAX_TRACKED_NODES);
        self.reliability
            .reserve(nodes.saturating_sub(self.reliability.len()));
    }

    /// Forgets the reliability of nodes `keep` says no (those gone from the consensus).
    pub fn retain_nodes(&mut self, keep: impl Fn(&[u8; 32]) -> bool) {
        self.reliability.retain(|id, _| keep(id));
    }

    /// Outcomes not recorded for a node because [`MAX_TRACKED_NODES`] were tracked.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    fn finish(&mut self, id: &[u8; 16], returned: bool) {
        let Some(p) = self.pending.remove(id) else {
            return;
        };
        let outcome = if returned { 1.0 } else { 0.0 };
        for hop in &p.hops[..p.hop_count] {
            if !self.reliability.contains_key(hop) && self.reliability.len() >= MAX_TRACKED_NODES {
                self.untracked += 1;
                continue;
            }
            let r = self.reliability.entry(*hop).or_insert(1.0);
            *r = (*r * (1.0 - RELIABILITY_ALPHA) + outcome * RELIABILITY_ALPHA)
                .max(RELIABILITY_FLOOR);
        }
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(returned);
        self.outcomes += 1;
        // the usual rate learns slowly, and not from a collapse in progress
        if !self.alarmed {
            self.usual = self.usual * (1.0 - USUAL_ALPHA) + outcome * USUAL_ALPHA;
        }
    }

    /// Every tested node's reliability.
    pub fn reliabilities(&self) -> &HashMap<[u8; 32], f64> {
        &self.reliability
    }

    /// A node's reliability in [0.05, 1] (1 for a node never tested).
    pub fn reliability(&self, node: &[u8; 32]) -> f64 {
        self.reliability.get(node).copied().unwrap_or(1.0)
    }

    /// The fraction of the last 64 loops that returned, once 64 have ended.
    pub fn recent(&self) -> Option<f64> {
        (self.window.len() == WINDOW)
            .then(|| self.window.iter().filter(|&&r| r).count() as f64 / WINDOW as f64)
    }

    /// The alarm of section 5.0.2, when it changes: [`Alarm::Raised`] when loops stop
    /// returning (the recent rate below half the usual one), once per collapse;
    /// [`Alarm::Cleared`] when the recent rate is back at 80% of the usual one.
    pub fn alarm(&mut self) -> Option<Alarm> {
        let recent = self.recent()?;
        if self.outcomes < 4 * WINDOW as u64 {
            return None;
        }
        let usual = self.usual;
        if !self.alarmed && recent < COLLAPSE_RATIO * usual {
            self.alarmed = true;
            return Some(Alarm::Raised { recent, usual });
        }
        if self.alarmed && recent >= RECOVER_RATIO * usual {
            self.alarmed = false;
            return Some(Alarm::Cleared { recent, usual });
        }
        None
    }

    /// Whether the alarm is up.
    pub fn alarmed(&self) -> bool {
        self.alarmed
    }

    /// What became of loop `id`, for tests: whether it is still in flight.
    pub fn is_pending(&self, id: &[u8; 16]) -> bool {
        self.pending.contains_key(id)
    }
}

impl LoopOutcome {
    /// Whether the loop came back.
    pub fn returned(self) -> bool {
        matches!(self, LoopOutcome::Returned(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_and_losses_move_reliability_and_collapse_raises_one_alarm() {
        let mut t = LoopTracker::new(1000);
        let hops = [[1u8; 32], [2u8; 32], [0; 32], [0; 32]];
        let mut now = Timestamp::ZERO;
        let timeout = Duration::from_secs(1);
        for i in 0..400u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            t.sent(id, hops, 2, now, timeout);
            now = now.saturating_add(Duration::from_millis(10));
            assert!(t.returned(&id, now).is_some());
        }
        assert_eq!(t.reliability(&[1u8; 32]), 1.0);
        assert_eq!(t.alarm(), None);
        // now nothing returns
        let mut alarms = 0;
        for i in 400..600u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            t.sent(id, hops, 2, now, timeout);
            now = now.saturating_add(Duration::from_secs(2));
            assert_eq!(t.expire(now), 1);
            if let Some(a) = t.alarm() {
                assert!(matches!(a, Alarm::Raised { .. }), "{a:?}");
                alarms += 1;
            }
        }
        assert_eq!(alarms, 1, "one alarm per collapse");
        assert!(t.alarmed());
        assert!(t.reliability(&[1u8; 32]) < 0.1);
        assert_eq!(t.reliability(&[9u8; 32]), 1.0);
        // loops return again: cleared once, when 80% of the usual rate is back
        let mut cleared = 0;
        for i in 600..700u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            t.sent(id, hops, 2, now, timeout);
            assert!(t.returned(&id, now).is_some());
            if let Some(a) = t.alarm() {
                assert!(matches!(a, Alarm::Cleared { .. }), "{a:?}");
                // the usual rate learnt a little of the collapse before the alarm: ~0.7
                assert!(i >= 600 + 30, "cleared after {} returns", i - 600);
                cleared += 1;
            }
        }
        assert_eq!(cleared, 1);
        assert!(!t.alarmed());
    }

    #[test]
    fn the_order_stays_bounded_and_its_front_is_the_oldest_in_flight() {
        let mut t = LoopTracker::new(8);
        let hops = [[1u8; 32]; 4];
        let timeout = Duration::from_secs(10);
        let mut now = Timestamp::ZERO;
        // one loop that never returns, then thousands that do at once
        t.sent([0xff; 16], hops, 1, now, timeout);
        for i in 0..5000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            now = now.saturating_add(Duration::from_micros(1));
            t.sent(id, hops, 1, now, timeout);
            assert!(t.returned(&id, now).is_some());
            assert!(
                t.order.len() <= 2 * 8 + 1,
                "order grew to {}",
                t.order.len()
            );
        }
        assert_eq!(
            t.next_expiry(),
            Some(Timestamp::ZERO.saturating_add(timeout))
        );
        assert_eq!(t.expire(Timestamp::ZERO.saturating_add(timeout)), 1);
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn past_max_loops_the_oldest_counts_lost() {
        let mut t = LoopTracker::new(8);
        let now = Timestamp::ZERO;
        let mut evicted = 0;
        for i in 0..10u8 {
            if t.sent([i; 16], [[1u8; 32]; 4], 1, now, Duration::from_secs(10))
                .is_some()
            {
                evicted += 1;
            }
        }
        assert_eq!(evicted, 2);
        assert_eq!(t.in_flight(), 8);
        assert!(!t.is_pending(&[0; 16]) && !t.is_pending(&[1; 16]) && t.is_pending(&[2; 16]));
    }

    #[test]
    fn reliability_is_tracked_for_a_bounded_number_of_nodes() {
        let mut t = LoopTracker::new(4);
        let now = Timestamp::ZERO;
        for i in 0..(MAX_TRACKED_NODES + 10) as u32 {
            let mut node = [0u8; 32];
            node[..4].copy_from_slice(&i.to_le_bytes());
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            t.sent(id, [node; 4], 1, now, Duration::from_secs(1));
            t.returned(&id, now);
        }
        assert_eq!(t.reliabilities().len(), MAX_TRACKED_NODES);
        assert_eq!(t.untracked(), 10);
        t.retain_nodes(|id| id[0] == 0);
        assert!(t.reliabilities().len() < MAX_TRACKED_NODES);
    }
}
