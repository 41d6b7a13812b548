//! Emission: packets whose delay expired go to Algorithm 2's emitter, which fills each
//! Poisson slot with a forward, an own packet, a loop or drop cover; loops that did not
//! return in time are counted lost.

use scheduler::{Emission, ForwardDrop, Timestamp};

use super::{
    AlertPolicy, BUILD_CHUNK, COVER_STOCK, Engine, Event, LOOP_STOCK, MAX_EVENTS, Queued,
    SLOTS_PER_TURN,
};
use crate::counters::{DropReason, OutCategory};
use crate::loops::Alarm;

impl Engine {
    /// Handles the timers due at `now`: delays that expired go to the emitter, the emission
    /// slots that are due are filled, loops that did not return in time are lost. Call it at
    /// [`Self::poll_timeout`] (or later), then drain [`Self::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.stage_deadline().is_some_and(|t| t <= now) {
            self.flush_staged(now);
        }
        let tick = self.clock.now_tick(now);
        while let Some(buf) = self.wheel.pop_expired(tick) {
            let Some(emitter) = &mut self.emitter else {
                self.pool.give_back(buf);
                continue;
            };
            if let Err((buf, why)) = emitter.push_forward(buf, &mut self.rng) {
                self.pool.give_back(buf);
                self.counters.drop(match why {
                    ForwardDrop::Budget => DropReason::ForwardBudget,
                    ForwardDrop::QueueFull => DropReason::ForwardQueueFull,
                });
            }
        }
        if let Some((_, until)) = &self.previous
            && now > *until
        {
            self.previous = None;
        }

        if let Some(mut emitter) = self.emitter.take() {
            // a full transmit queue means the driver is behind: leave the slots due (late,
            // not lost) rather than build packets only to drop them. At most a turn's worth
            // of slots a call: a core that fell behind (a stall, or a B above what it can
            // do) catches up a turn at a time and reads its socket in between; deciding
            // every late slot at once filled hundreds of them with fresh cover while the
            // forwards that would have filled them overflowed the socket unread (at 1.2x
            // its capacity a core forwarded a tenth of what it could)
            let mut decided = 0;
            while decided < SLOTS_PER_TURN
                && self.tx.len() < self.config.tx_queue
                && let Some((slot, emission)) = emitter.on_slot(now, !self.own.is_empty())
            {
                decided += 1;
                self.fill_slot(now, slot, emission);
            }
            self.emitter = Some(emitter);
        }
        // stock for the next slots, one chunk of each at most per call: a chunk costs a few
        // hundred microseconds of ladders, and the slots due meanwhile wait for it
        if self.stock.len() + BUILD_CHUNK <= LOOP_STOCK {
            self.build_loops(now, BUILD_CHUNK);
        }
        if self.cover.len() + BUILD_CHUNK <= COVER_STOCK {
            self.build_cover(BUILD_CHUNK);
        }
        let lost = self.loops.expire(now);
        self.counters.loops_lost += lost as u64;
        if let Some(alarm) = self.loops.alarm() {
            let withdraw = self.config.alert == AlertPolicy::Withdraw;
            let event = match alarm {
                Alarm::Raised { recent, usual } => {
                    self.alert = withdraw;
                    Event::LoopCollapse { recent, usual }
                }
                Alarm::Cleared { recent, usual } => {
                    self.alert = false;
                    Event::LoopsRecovered { recent, usual }
                }
            };
            // the alert state holds whether or not the layer above hears of it
            if self.events.len() < MAX_EVENTS {
                self.events.push_back(event);
            }
        }
    }

    pub(super) fn fill_slot(&mut self, now: Timestamp, slot: Timestamp, emission: Emission<u32>) {
        if let Emission::ScheduledLoop = emission {
            self.loop_slots += 1;
        }
        let queued = match emission {
            Emission::Own => self.own.pop_front(),
            Emission::Forward(buf) => self.next_hop[buf as usize].take().map(|to| Queued {
                buf,
                to,
                category: OutCategory::Forward,
                due: slot,
            }),
            Emission::Cover => {
                if self.cover.is_empty() {
                    self.build_cover(BUILD_CHUNK);
                }
                self.cover.pop_front()
            }
            // a delivery came back in this loop's place: drop cover instead (the same first
            // hop law), so the node's incoming volume does not rise with what it receives
            Emission::ScheduledLoop
                if self.shaping_credit > 0
                    && !self.cover.is_empty()
                    && !self.loop_slots.is_multiple_of(super::KEEP_LOOP_EVERY) =>
            {
                self.shaping_credit -= 1;
                self.counters.loops_shaped += 1;
                self.cover.pop_front()
            }
            Emission::ScheduledLoop => {
                if self.stock.is_empty() {
                    self.build_loops(now, BUILD_CHUNK);
                }
                self.stock.pop_front().map(|l| {
                    let timeout = self.config.loop_timeout;
                    if self
                        .loops
                        .sent(l.id, l.hops, l.hop_count, now, timeout)
                        .is_some()
                    {
                        self.counters.loops_lost += 1;
                    }
                    Queued {
                        buf: l.buf,
                        to: l.to,
                        category: OutCategory::Loop,
                        due: slot,
                    }
                })
            }
        };
        let Some(mut q) = queued else {
            return;
        };
        q.due = slot;
        if self.tx.len() >= self.config.tx_queue {
            self.pool.give_back(q.buf);
            self.counters.drop(DropReason::TxQueueFull);
            return;
        }
        self.tx.push_back(q);
    }
}
