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

use super::{BATCH, BUF_SIZE, Sent, sockaddr_from};

/// Provided receive buffers (a power of two).
const RING_BUFFERS: u16 = 512;
/// The buffer group of the receive buffers.
const BUFFER_GROUP: u16 = 7;
/// user_data of the multishot receive, and the low byte of the sends' (whose upper bits
/// are the batch's generation).
const RECV_TAG: u64 = 1;
const SEND_TAG: u64 = 2;
const TAG_MASK: u64 = 0xff;

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
    /// The transmit buffers: BATCH of BUF_SIZE.
    tx: Box<[u8]>,
    /// Send entries queued or submitted and not yet completed.
    in_flight: usize,
    /// The current batch's generation, and how many of its sends succeeded.
    generation: u32,
    batch_sent: usize,
    /// Which sends of the current batch failed (bit per index), and the last error.
    batch_failed: u64,
    batch_error: Option<i32>,
    /// An IPv6 socket: IPv4 destinations are written v4-mapped.
    v6: bool,
    /// The kernel flags pending completion work in the ring (`IORING_SQ_TASKRUN`).
    taskrun_flag: bool,
    /// Tests: fail the submission after this many succeed.
    fail_submits: Option<usize>,
}

// SAFETY: the raw pointers point into memory owned by this value; it is moved to its core's
// thread once and used there only.
unsafe impl Send for UringIo {}

impl UringIo {
    /// Sets up the ring, registers the buffer ring and arms the multishot receive; any
    /// failure (io_uring refused, an old kernel) is returned so the caller can fall back.
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        Self::with_entries(socket, 1024)
    }

    /// [`Self::new`] with a submission queue of `entries` (tests use a small one, so a
    /// batch needs several submissions).
    pub(crate) fn with_entries(socket: UdpSocket, entries: u32) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let socket_v6 = socket.local_addr()?.is_ipv6();
        // cooperative task running (Linux 5.19): a datagram arriving while the core computes
        // does not interrupt it (an inter-processor interrupt, a VM exit on a virtual
        // machine) to post its completion; the completion is posted at the core's next
        // entry into the kernel (which the task-run flag below asks for). Older kernels
        // refuse the flag: the ring is set up without it.
        //
        // With the task-run flag (also 5.19) the kernel marks the ring's shared memory when
        // it holds completions to post, so a core with a slot due at once polls for
        // datagrams with one load instead of a system call (see `recv`).
        let (ring, taskrun_flag) = match IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Ok(r) => (r, true),
            Err(_) => match IoUring::builder().setup_coop_taskrun().build(entries) {
                Ok(r) => (r, false),
                Err(_) => (IoUring::builder().build(entries)?, false),
            },
        };
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
            tx: vec![0u8; BATCH * BUF_SIZE].into_boxed_slice(),
            in_flight: 0,
            generation: 0,
            batch_sent: 0,
            batch_failed: 0,
            batch_error: None,
            v6: socket_v6,
            taskrun_flag,
            fail_submits: None,
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
        let nothing_reaped = self.stash.is_empty() && self.ring.completion().is_empty();
        if nothing_reaped && timeout.is_zero() {
            // a poll: a slot is due now. With the task-run flag, a datagram that arrived
            // shows as that flag, and a core that spins between slots does not pay a system
            // call per turn; without it, an enter that runs the pending work and returns.
            // (A zero timeout through `submit_with_args` would arm and fire a timer: a VM
            // exit on a virtual machine, for nothing.)
            let kernel_has_work = {
                let sq = self.ring.submission();
                sq.taskrun() || sq.cq_overflow() || !sq.is_empty()
            };
            if !self.taskrun_flag || kernel_has_work {
                self.submit(0)?;
            }
        } else if nothing_reaped {
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

    /// Moves every receive completion into the stash (and accounts for sends).
    fn reap(&mut self) {
        self.reap_all();
    }

    /// Fills up to [`BATCH`] of this backend's transmit buffers through `fill`, then sends
    /// them as one submission of `sendmsg` entries and waits for their completions. Returns
    /// how many were filled and how many the kernel sent.
    ///
    /// The entries point at the transmit buffers, headers and addresses owned by `self`,
    /// never at the caller's memory. They are written only when no send is in flight: a
    /// batch whose submission or wait failed part way (an error, a signal) stays in flight,
    /// and the next call first waits for it; a completion of an earlier batch (its
    /// generation in the user data) is never counted as this one's.
    pub(crate) fn send_batch(
        &mut self,
        mut fill: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> io::Result<Sent> {
        // the buffers may be written only once the kernel is done with them
        self.drain_sends()?;
        let mut filled = 0;
        while filled < BATCH {
            let buf = &mut self.tx[filled * BUF_SIZE..(filled + 1) * BUF_SIZE];
            let Some((to, len)) = fill(buf) else {
                break;
            };
            let len = len.min(BUF_SIZE);
            let namelen = sockaddr_from(&to, &mut self.send_addrs[filled], self.v6);
            self.send_iovs[filled].iov_base = buf.as_mut_ptr().cast();
            self.send_iovs[filled].iov_len = len;
            let hdr = &mut self.send_hdrs[filled];
            hdr.msg_name = (&mut self.send_addrs[filled] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = namelen;
            hdr.msg_iov = &mut self.send_iovs[filled];
            hdr.msg_iovlen = 1;
            filled += 1;
        }
        if filled == 0 {
            return Ok(Sent::default());
        }
        self.generation = self.generation.wrapping_add(1);
        self.batch_sent = 0;
        self.batch_failed = 0;
        self.batch_error = None;
        for i in 0..filled {
            let user_data = send_tag(self.generation, i);
            let entry = opcode::SendMsg::new(
                types::Fd(self.socket.as_raw_fd()),
                &self.send_hdrs[i] as *const libc::msghdr,
            )
            .build()
            .user_data(user_data);
            // SAFETY: the header, its address and iovec, and the buffer it points at are
            // owned by self and not written again until every entry of this generation has
            // completed (`drain_sends` at the next call, and on drop).
            while unsafe { self.ring.submission().push(&entry) }.is_err() {
                // the queue is full: hand the kernel what is queued (and make room for its
                // completions), then go on
                self.submit(0)?;
                self.reap_all();
            }
            self.in_flight += 1;
        }
        self.drain_sends()?;
        Ok(Sent {
            filled,
            sent: self.batch_sent,
            failed: self.batch_failed,
            error: self.batch_error,
        })
    }

    /// Submits what is queued and waits for `want` completions, retrying on a signal. With
    /// fault injection armed (tests), fails as told instead.
    fn submit(&mut self, want: usize) -> io::Result<()> {
        if let Some(n) = self.fail_submits.as_mut() {
            if *n == 0 {
                self.fail_submits = None;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            *n -= 1;
        }
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // completions to reap first
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until no send is in flight, reaping send completions (counting those of the
    /// current generation) and stashing receive completions for the next receive.
    fn drain_sends(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            self.reap_all();
            if self.in_flight == 0 {
                break;
            }
            self.submit(1)?;
        }
        Ok(())
    }

    /// Takes every completion: sends are matched to their generation, receives stashed.
    fn reap_all(&mut self) {
        let current = send_tag(self.generation, 0) >> 16;
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            if data == RECV_TAG {
                if !cqueue::more(cqe.flags()) {
                    self.armed = false;
                }
                self.stash.push_back((cqe.result(), cqe.flags()));
            } else if data & TAG_MASK == SEND_TAG {
                self.in_flight = self.in_flight.saturating_sub(1);
                if data >> 16 == current {
                    if cqe.result() >= 0 {
                        self.batch_sent += 1;
                    } else {
                        self.batch_failed |= 1 << ((data >> 8) & 0xff);
                        self.batch_error = Some(-cqe.result());
                    }
                }
            }
        }
    }

    /// The socket's descriptor.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends in flight (submitted or queued, not completed).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// The user data of a send of `generation`.
/// A send's user data: its batch's generation, its index in the batch, the tag.
fn send_tag(generation: u32, index: usize) -> u64 {
    (u64::from(generation) << 16) | (((index & 0xff) as u64) << 8) | SEND_TAG
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // the kernel must be done with our buffers before they are freed; a ring that
        // cannot even wait is torn down by the kernel on close, cancelling what is left
        self.fail_submits = None;
        let _ = self.drain_sends();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Batch `tag`'s packet `i`: 100 bytes of `tag + i`.
    fn packet(tag: u8, i: usize) -> Vec<u8> {
        vec![tag + i as u8; 100]
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a deadline for the test itself
    fn a_core_polling_without_a_wait_sees_every_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut io = UringIo::new(rx).expect("io_uring must be available for this test");
        if !io.taskrun_flag {
            eprintln!("IORING_SETUP_TASKRUN_FLAG refused (Linux < 5.19): every poll enters");
        }
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // nothing sent: a poll returns at once with nothing
        assert_eq!(io.recv(Duration::ZERO, |_| {}).unwrap(), 0);
        // sent by another thread while this one only polls
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            for i in 0..5u8 {
                tx.send_to(&[i; 100], to).unwrap();
            }
        });
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 5 && std::time::Instant::now() < deadline {
            io.recv(Duration::ZERO, |batch| {
                got.extend(batch.iter().map(|d| (d.len(), d[0])));
            })
            .unwrap();
        }
        sender.join().unwrap();
        got.sort();
        assert_eq!(got, (0..5u8).map(|i| (100, i)).collect::<Vec<_>>());
    }

    #[test]
    fn a_submission_failing_part_way_reuses_no_buffer_in_flight() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // a queue of 4 entries: a batch of 10 needs three submissions
        let mut io = UringIo::with_entries(tx, 4)
            .expect("io_uring must be available on this machine for this test");
        // batch A: the second submission fails, with four entries submitted and four queued
        io.fail_submits = Some(1);
        let mut next = 0;
        let a = io.send_batch(|buf| {
            (next < 10).then(|| {
                let p = packet(0xa0, next);
                buf[..p.len()].copy_from_slice(&p);
                next += 1;
                (to, p.len())
            })
        });
        assert!(a.is_err(), "the injected failure is reported");
        // the four entries queued when the submission failed are still the kernel's (those
        // submitted before may have completed)
        assert!(io.in_flight() >= 4, "{} in flight", io.in_flight());
        // batch B: must not touch A's buffers until A's sends completed, nor count them
        let mut next = 0;
        let b = io
            .send_batch(|buf| {
                (next < 10).then(|| {
                    let p = packet(0xb0, next);
                    buf[..p.len()].copy_from_slice(&p);
                    next += 1;
                    (to, p.len())
                })
            })
            .unwrap();
        assert_eq!(
            b,
            Sent {
                filled: 10,
                sent: 10,
                failed: 0,
                error: None,
            },
            "only B's completions count"
        );
        assert_eq!(io.in_flight(), 0);
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = rx.recv(&mut buf) {
            assert_eq!(n, 100);
            assert!(
                buf[..n].iter().all(|&b| b == buf[0]),
                "a datagram of mixed bytes"
            );
            got.push(buf[0]);
        }
        got.sort();
        let mut want: Vec<u8> = (0..8).map(|i| packet(0xa0, i)[0]).collect();
        want.extend((0..10).map(|i| packet(0xb0, i)[0]));
        assert_eq!(
            got, want,
            "A's eight entries went out with A's bytes, then B's ten, each once"
        );
    }
}
