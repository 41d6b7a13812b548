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
    /// `indices`; empty slices stand for the positions past `indices`.
    pub fn many_mut(&mut self, indices: &[u32]) -> [&mut [u8]; 16] {
        let mut out: [&mut [u8]; 16] = core::array::from_fn(|_| &mut [][..]);
        if self.size == 0 {
            return out;
        }
        for (i, chunk) in self.bytes.chunks_mut(self.size).enumerate() {
            if let Some(pos) = indices.iter().take(16).position(|&x| x as usize == i) {
                out[pos] = chunk;
            }
        }
        out
    }

    /// Buffers free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}
