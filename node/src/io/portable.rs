//! The portable I/O backend: `recvmmsg` and `sendmmsg`, up to 64 datagrams a system call,
//! with `poll` for the timeout. Chosen when io_uring cannot be set up (containers often
//! refuse it) or with `--io portable`.

#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{BATCH, BUF_SIZE, Sent, sockaddr_from};

/// Receive buffers and the system-call structures that point into them.
pub(crate) struct PortableIo {
    socket: UdpSocket,
    /// An IPv6 socket: IPv4 destinations are written v4-mapped.
    v6: bool,
    bufs: Box<[[u8; BUF_SIZE]; BATCH]>,
    lens: [usize; BATCH],
    /// Transmit buffers, and where each goes and how much of it.
    tx: Box<[[u8; BUF_SIZE]; BATCH]>,
    tx_to: Box<[(SocketAddr, usize); BATCH]>,
}

impl PortableIo {
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(PortableIo {
            v6: socket.local_addr()?.is_ipv6(),
            socket,
            bufs: Box::new([[0u8; BUF_SIZE]; BATCH]),
            lens: [0; BATCH],
            tx: Box::new([[0u8; BUF_SIZE]; BATCH]),
            tx_to: Box::new([(SocketAddr::from(([0, 0, 0, 0], 0)), 0); BATCH]),
        })
    }

    /// The socket's descriptor.
    pub(crate) fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Waits up to `timeout` for datagrams, then hands every one received (at most 64) to
    /// `handle` as mutable slices. Returns how many.
    pub(crate) fn recv(
        &mut self,
        timeout: Duration,
        handle: impl FnOnce(&mut [&mut [u8]]),
    ) -> io::Result<usize> {
        let fd = self.socket.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // nanoseconds: poll's milliseconds would round every wait under one down to zero,
        // and a core whose next slot is 200 us away would spin
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: one valid pollfd, count 1, a valid timespec, no signal mask.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        if ready == 0 {
            return Ok(0);
        }
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is a plain C struct; all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for ((iov, msg), buf) in iovecs
            .iter_mut()
            .zip(msgs.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = BUF_SIZE;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec of one live buffer
        // of BUF_SIZE bytes; the kernel writes at most that much into each.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // nothing to read, or a signal
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                // an ICMP error for an earlier send (a peer that went away): the socket
                // reports it once on the next call; nothing was lost here
                Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, msg) in self.lens.iter_mut().zip(&msgs[..n]) {
            // a datagram longer than the buffer is truncated (MSG_TRUNC): its length no
            // longer matches the packet size and the engine drops it as the wrong size
            let truncated = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            *len = if truncated {
                BUF_SIZE
            } else {
                msg.msg_len as usize
            };
        }
        let mut slices: [&mut [u8]; BATCH] = core::array::from_fn(|_| &mut [][..]);
        for ((slot, buf), &len) in slices
            .iter_mut()
            .zip(self.bufs.iter_mut())
            .zip(&self.lens[..n])
        {
            *slot = &mut buf[..len];
        }
        handle(&mut slices[..n]);
        Ok(n)
    }

    /// Fills up to [`BATCH`] of this backend's transmit buffers through `fill` (which
    /// writes one datagram and says where it goes and how long it is, or `None` when there
    /// is nothing more), then sends them with one `sendmmsg`. Returns how many were filled
    /// and how many the kernel took.
    pub(crate) fn send_batch(
        &mut self,
        mut fill: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> io::Result<Sent> {
        let mut filled = 0;
        while filled < BATCH {
            let Some((to, len)) = fill(&mut self.tx[filled][..]) else {
                break;
            };
            self.tx_to[filled] = (to, len.min(BUF_SIZE));
            filled += 1;
        }
        if filled == 0 {
            return Ok(Sent::default());
        }
        let mut addrs: [libc::sockaddr_storage; BATCH] =
            // SAFETY: sockaddr_storage is plain data; zero is valid.
            unsafe { MaybeUninit::zeroed().assume_init() };
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: plain C struct, zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for i in 0..filled {
            let (to, len) = self.tx_to[i];
            let namelen = sockaddr_from(&to, &mut addrs[i], self.v6);
            iovecs[i].iov_base = self.tx[i].as_mut_ptr().cast();
            iovecs[i].iov_len = len;
            msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = namelen;
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut done = 0;
        let mut sent = 0;
        let mut failed = 0u64;
        let mut error = None;
        while done < filled {
            // SAFETY: every header points at a live address and a live iovec over one of our
            // transmit buffers; sendmmsg is synchronous, so nothing outlives the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (filled - done) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                error = e.raw_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // a full socket buffer: the rest of this batch is lost, counted
                    io::ErrorKind::WouldBlock => {
                        for i in done..filled {
                            failed |= 1 << i;
                        }
                        break;
                    }
                    // one bad destination must not stop the others
                    _ => {
                        failed |= 1 << done;
                        done += 1;
                        continue;
                    }
                }
            }
            done += n as usize;
            sent += n as usize;
        }
        Ok(Sent {
            filled,
            sent,
            failed,
            error,
        })
    }
}
