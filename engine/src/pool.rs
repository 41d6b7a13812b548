//! A fixed pool of packet buffers, handed out by index: what the timer wheel, the ready
//! queue and the transmit queue hold. All memory is allocated up front; taking and giving
//! back a buffer allocates nothing.

/// A pool of `count` buffers of `size` bytes.
#[derive(Debug)]
pub struct PacketPool {
    size: usize,
    bytes: Vec<u8>,
    free: Vec<u32>,
}

impl PacketPool {
    /// `count` buffers of `size` bytes each.
    pub fn new(count: usize, size: usize) -> Self {
        let count = count.clamp(1, u32::MAX as usize);
        PacketPool {
            size,
            bytes: vec![0; count * size],
            free: (0..count as u32).rev().collect(),
        }
    }

    /// A free buffer, or `None` when all are taken.
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Gives a buffer back.
    pub fn give_back(&mut self, index: u32) {
        debug_assert!(
            !self.free.contains(&index),
            "buffer {index} given back twice"
        );
        self.free.push(index);
    }

    /// The buffer's bytes.
    pub fn get(&self, index: u32) -> &[u8] {
        let start = index as usize * self.size;
        &self.bytes[start..start + self.size]
    }

    /// The buffer's bytes, to write.
    pub fn get_mut(&mut self, index: u32) -> &mut [u8] {
        let start = index as usize * self.size;
        &mut self.bytes[start..start + self.size]
    }

    /// Several buffers at once, to write (up to 16, each index once), in the order of
    /// `indices`; empty slices stand for the positions past `indices` (and for an index
    /// repeated or out of range). O(k log k) in the k indices, whatever the pool's size.
    pub fn many_mut(&mut self, indices: &[u32]) -> [&mut [u8]; 16] {
        let mut out: [&mut [u8]; 16] = core::array::from_fn(|_| &mut [][..]);
        if self.size == 0 {
            return out;
        }
        let k = indices.len().min(16);
        // (buffer, position asked), by buffer: then one pass of splits hands each out
        let mut order = [(0u32, 0usize); 16];
        for (pos, &index) in indices[..k].iter().enumerate() {
            order[pos] = (index, pos);
        }
        order[..k].sort_unstable();
        let mut rest: &mut [u8] = &mut self.bytes;
        let mut at = 0usize; // the buffer `rest` starts at
        for &(index, pos) in &order[..k] {
            let index = index as usize;
            if index < at {
                continue; // repeated
            }
            let Some(skip) = (index - at).checked_mul(self.size) else {
                break;
            };
            if rest.len() < skip + self.size {
                break; // out of range, as is every later one
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (one, tail) = tail.split_at_mut(self.size);
            out[pos] = one;
            rest = tail;
            at = index + 1;
        }
        out
    }

    /// Buffers free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_mut_hands_out_each_buffer_asked_in_the_order_asked() {
        let mut pool = PacketPool::new(64, 8);
        for i in 0..64u32 {
            pool.get_mut(i).fill(i as u8);
        }
        let asked = [40u32, 3, 63, 17, 3, 99];
        let out = pool.many_mut(&asked);
        assert_eq!(out[0], &[40u8; 8]);
        assert_eq!(out[1], &[3u8; 8]);
        assert_eq!(out[2], &[63u8; 8]);
        assert_eq!(out[3], &[17u8; 8]);
        assert!(out[4].is_empty(), "a repeated index gets nothing");
        assert!(out[5].is_empty(), "an index out of range gets nothing");
        assert!(out[6..].iter().all(|b| b.is_empty()));
    }
}
