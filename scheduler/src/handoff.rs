//! Hand-off from other threads to a core's scheduler without locks.
//!
//! Each core owns its timer wheel and emitter outright; nothing else touches them. Work for
//! a core from other threads (an app's submission, the control plane's epoch change) goes
//! through a bounded lock-free queue ([`crossbeam_queue::ArrayQueue`]): any thread holding
//! a [`Sender`] pushes, and the core drains its [`Inbox`] at one documented point of its
//! loop, before it polls its timers and emitter. A full queue is an error the sender sees at
//! once ([`Full`]), never a block and never an allocation.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// A core's inbox: the receiving end, owned by the core.
#[derive(Debug)]
pub struct Inbox<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// A sending end; clone it for every thread that submits.
#[derive(Debug)]
pub struct Sender<T> {
    queue: Arc<ArrayQueue<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            queue: Arc::clone(&self.queue),
        }
    }
}

/// The inbox is full; the item comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the core's inbox is full")]
pub struct Full<T>(pub T);

/// An inbox holding up to `capacity` items (at least 1), and its first sender.
pub fn inbox<T>(capacity: usize) -> (Sender<T>, Inbox<T>) {
    let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
    (
        Sender {
            queue: Arc::clone(&queue),
        },
        Inbox { queue },
    )
}

impl<T> Sender<T> {
    /// Hands `item` to the core, or gives it back if the inbox is full. Lock-free.
    pub fn try_send(&self, item: T) -> Result<(), Full<T>> {
        self.queue.push(item).map_err(Full)
    }
}

impl<T> Inbox<T> {
    /// Takes up to `max` items, oldest first, into `f`; returns how many. The core calls
    /// this once per turn of its loop, before polling its timers, with `max` bounding the
    /// turn's work.
    pub fn drain(&self, max: usize, mut f: impl FnMut(T)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.queue.pop() else { break };
            f(item);
            n += 1;
        }
        n
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Most items it holds.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_inbox_gives_the_item_back() {
        let (tx, inbox) = inbox::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let Err(Full(back)) = tx.try_send(3) else {
            panic!("a third item fit in an inbox of two");
        };
        assert_eq!(back, 3);
        assert_eq!(inbox.len(), 2);
    }

    #[test]
    fn bounded_fifo_across_threads() {
        let (tx, inbox) = inbox::<u32>(1000);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        tx.try_send(t * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(tx.try_send(7), Err(Full(7)));
        let mut got = vec![];
        assert_eq!(inbox.drain(600, |x| got.push(x)), 600);
        assert_eq!(inbox.drain(usize::MAX, |x| got.push(x)), 400);
        got.sort_unstable();
        let mut want: Vec<u32> = (0..4)
            .flat_map(|t| (0..250).map(move |i| t * 1000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
