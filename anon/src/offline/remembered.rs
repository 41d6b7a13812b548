//! A bounded memory of message IDs.

use std::collections::{HashSet, VecDeque};

use crate::wire::MessageId;

/// The last message IDs inserted, at most a number of them: a set with a memory limit.
#[derive(Debug)]
pub(super) struct Remembered {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    cap: usize,
}

impl Remembered {
    pub(super) fn new(cap: usize) -> Remembered {
        Remembered {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Remembers `id` (the oldest is forgotten past the limit); `false` when it was known.
    pub(super) fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(super) fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }
}
