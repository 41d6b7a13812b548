//! The io_uring backend: one multishot `recvmsg` over a ring of provided buffers receives
//! every datagram without a system call per packet, and batched `sendmsg` entries send a
//! slot's worth of packets in one submission. Needs Linux 6.0 (multishot recvmsg) and a
//! kernel that lets the process set up io_uring; otherwise the runtime falls back to the
//! portable backend.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::types::{BufRingEntry, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, types};

use super::{BATCH, BUF_SIZE, sockaddr_from};

/// Provided receive buffers (a power of two).
const RING_BUFFERS: u16 = 512;
/// The buffer group of the receive buffers.
const BUFFER_GROUP: u16 = 7;
/// user_data of the multishot receive and of the sends.
const RECV_TAG: u64 = 1;
const SEND_TAG: u64 = 2;

/// The space the kernel writes before each datagram (`io_uring_recvmsg_out`).
const RECVMSG_OUT: usize = 16;

/// A page-aligned, zeroed, anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping; no file, no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub(crate) struct UringIo {
    // the ring is dropped first (field order), before the memory it points into
    ring: IoUring,
    socket: UdpSocket,
    ring_mem: Mapping,
    buffers: Mapping,
    tail: u16,
    recv_hdr: Box<libc::msghdr>,
    armed: bool,
    /// Receive completions (result, flags) reaped but not handled yet: more than a batch,
    /// or seen while waiting for sends.
    stash: std::collections::VecDeque<(i32, u32)>,
    // datagrams of the current batch: (buffer id, payload offset, payload length)
    received: Vec<(u16, usize, usize)>,
    send_hdrs: Box<[libc::msghdr; BATCH]>,
    send_iovs: Box<[libc::iovec; BATCH]>,
    send_addrs: Box<[libc::sockaddr_storage; BATCH]>,
}

// SAFETY: the raw pointers point into memory owned by this value; it is moved to its core's
// thread once and used there only.
unsafe impl Send for UringIo {}

impl UringIo {
    /// Sets up the ring, registers the buffer ring and arms the multishot receive; any
    /// failure (io_uring refused, an old kernel) is returned so the caller can fall back.
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let ring = IoUring::builder().build(1024)?;
        let ring_mem = Mapping::new(RING_BUFFERS as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(RING_BUFFERS as usize * BUF_SIZE)?;
        // SAFETY: `ring_mem` is page aligned, holds RING_BUFFERS entries and lives as long as
        // the ring (dropped after it).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                ring_mem.ptr as u64,
                RING_BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        // SAFETY: msghdr is plain C data; zero means no name, no control data.
        let recv_hdr: Box<libc::msghdr> = Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        let mut io = UringIo {
            ring,
            socket,
            ring_mem,
            buffers,
            tail: 0,
            recv_hdr,
            armed: false,
            stash: std::collections::VecDeque::with_capacity(RING_BUFFERS as usize),
            received: Vec::with_capacity(BATCH),
            // SAFETY: plain C data, zero is valid.
            send_hdrs: Box::new(unsafe { MaybeUninit::zeroed().assume_init() }),
            send_iovs: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; BATCH],
            ),
            // SAFETY: plain C data, zero is valid.
            send_addrs: Box::new(unsafe { MaybeUninit::zeroed().assume_init() }),
        };
        for bid in 0..RING_BUFFERS {
            io.provide(bid);
        }
        io.publish_tail();
        io.arm()?;
        // one round trip proves the kernel takes what was submitted
        io.ring.submit()?;
        Ok(io)
    }

    /// Puts buffer `bid` in the ring (visible to the kernel at the next `publish_tail`).
    fn provide(&mut self, bid: u16) {
        let mask = RING_BUFFERS - 1;
        let index = (self.tail & mask) as usize;
        // SAFETY: `index` < RING_BUFFERS entries of the ring mapping; the buffer `bid` lies
        // within the buffers mapping.
        unsafe {
            let entry = &mut *(self.ring_mem.ptr as *mut BufRingEntry).add(index);
            entry.set_addr(self.buffers.ptr.add(bid as usize * BUF_SIZE) as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish_tail(&mut self) {
        // SAFETY: the tail field of the first ring entry, written with release ordering as
        // the kernel's protocol requires.
        unsafe {
            let tail = BufRingEntry::tail(self.ring_mem.ptr as *const BufRingEntry)
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &*self.recv_hdr as *const libc::msghdr,
            BUFFER_GROUP,
        )
        .build()
        .user_data(RECV_TAG);
        // SAFETY: the msghdr lives in a Box owned by self, as long as the ring.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        self.armed = true;
        Ok(())
    }

    /// Waits up to `timeout` for datagrams, hands the ones received (at most 64 a call)
    /// to `handle` as mutable slices of the provided buffers, then gives the buffers back.
    pub(crate) fn recv(
        &mut self,
        timeout: Duration,
        handle: impl FnOnce(&mut [&mut [u8]]),
    ) -> io::Result<usize> {
        if !self.armed {
            self.arm()?;
        }
        if self.stash.is_empty() && self.ring.completion().is_empty() {
            let ts = Timespec::new()
                .sec(timeout.as_secs())
                .nsec(timeout.subsec_nanos());
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.reap();
        self.received.clear();
        while self.received.len() < BATCH {
            let Some((result, flags)) = self.stash.pop_front() else {
                break;
            };
            let Some(bid) = cqueue::buffer_select(flags) else {
                continue; // an error without a buffer
            };
            if result < 0 {
                self.received.push((bid, 0, 0));
                continue;
            }
            // SAFETY: the kernel filled buffer `bid` (inside the buffers mapping).
            let buf = unsafe {
                std::slice::from_raw_parts(self.buffers.ptr.add(bid as usize * BUF_SIZE), BUF_SIZE)
            };
            match types::RecvMsgOut::parse(buf, &self.recv_hdr) {
                Ok(out) => {
                    let len = if out.is_payload_truncated() {
                        BUF_SIZE - RECVMSG_OUT
                    } else {
                        out.payload_data().len()
                    };
                    self.received
                        .push((bid, RECVMSG_OUT, len.min(BUF_SIZE - RECVMSG_OUT)));
                }
                Err(()) => self.received.push((bid, 0, 0)),
            }
        }
        let n = self.received.len();
        {
            let base = self.buffers.ptr;
            let mut slices: [&mut [u8]; BATCH] = core::array::from_fn(|_| &mut [][..]);
            for (slot, &(bid, offset, len)) in slices.iter_mut().zip(&self.received) {
                // SAFETY: each buffer id appears once in a batch; the slices are disjoint and
                // within the buffers mapping, and the kernel does not write a buffer until it
                // is provided again below.
                *slot = unsafe {
                    std::slice::from_raw_parts_mut(base.add(bid as usize * BUF_SIZE + offset), len)
                };
            }
            let datagrams = self.received.iter().filter(|&&(_, _, len)| len > 0).count();
            if datagrams == n {
                handle(&mut slices[..n]);
            } else {
                // errors and unparsable completions carry no datagram
                let mut k = 0;
                for j in 0..n {
                    if self.received[j].2 > 0 {
                        slices.swap(k, j);
                        k += 1;
                    }
                }
                handle(&mut slices[..k]);
            }
        }
        for j in 0..n {
            let bid = self.received[j].0;
            self.provide(bid);
        }
        if n > 0 {
            self.publish_tail();
        }
        Ok(n)
    }

    /// Moves every receive completion into the stash (sends are reaped in `send`).
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            if cqe.user_data() == RECV_TAG {
                if !cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
                self.stash.push_back((cqe.result(), cqe.flags()));
            }
        }
    }

    /// Sends datagrams as one batch of `sendmsg` entries; returns how many completed.
    pub(crate) fn send(&mut self, packets: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        let mut sent = 0;
        for chunk in packets.chunks(BATCH) {
            for (i, (to, bytes)) in chunk.iter().enumerate() {
                let len = sockaddr_from(to, &mut self.send_addrs[i]);
                self.send_iovs[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
                self.send_iovs[i].iov_len = bytes.len();
                let hdr = &mut self.send_hdrs[i];
                hdr.msg_name = (&mut self.send_addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = len;
                hdr.msg_iov = &mut self.send_iovs[i];
                hdr.msg_iovlen = 1;
                let entry = opcode::SendMsg::new(
                    types::Fd(self.socket.as_raw_fd()),
                    &self.send_hdrs[i] as *const libc::msghdr,
                )
                .build()
                .user_data(SEND_TAG);
                // SAFETY: the header, address and iovec live in self until the completions
                // are reaped below; the caller's bytes are borrowed for this call.
                unsafe {
                    while self.ring.submission().push(&entry).is_err() {
                        self.ring.submit()?;
                    }
                }
            }
            // wait for this chunk's completions: the headers are reused by the next chunk
            let mut pending = chunk.len();
            while pending > 0 {
                self.ring.submit_and_wait(1)?;
                for cqe in self.ring.completion() {
                    if cqe.user_data() == SEND_TAG {
                        pending -= 1;
                        if cqe.result() >= 0 {
                            sent += 1;
                        }
                    } else {
                        // a datagram arrived meanwhile: keep it for the next receive
                        if !cqueue::more(cqe.flags()) {
                            self.armed = false;
                        }
                        self.stash.push_back((cqe.result(), cqe.flags()));
                    }
                }
            }
        }
        Ok(sent)
    }
}
