//! UDP I/O for a core: io_uring when the kernel allows it, recvmmsg/sendmmsg otherwise.
//! Every core binds the node's address with SO_REUSEPORT; the kernel spreads datagrams over
//! the cores by their 4-tuple.

#![allow(unsafe_code)]

mod portable;
mod uring;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams handled per batch.
pub(crate) const BATCH: usize = 64;
/// Receive buffer size: any datagram up to this fits (larger ones are truncated and dropped
/// for their size).
pub(crate) const BUF_SIZE: usize = 2048;

/// Which I/O backend a node uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum IoChoice {
    /// io_uring if the kernel allows it, else portable.
    Auto,
    /// io_uring, or fail.
    IoUring,
    /// recvmmsg/sendmmsg.
    Portable,
}

/// The backend a core ended up with.
pub(crate) enum Io {
    Uring(Box<uring::UringIo>),
    Portable(Box<portable::PortableIo>),
}

impl Io {
    /// Opens the backend for a socket; `Auto` falls back to portable when io_uring cannot be
    /// set up, and says why.
    pub(crate) fn open(socket: UdpSocket, choice: IoChoice) -> io::Result<(Io, Option<String>)> {
        match choice {
            IoChoice::Portable => Ok((
                Io::Portable(Box::new(portable::PortableIo::new(socket)?)),
                None,
            )),
            IoChoice::IoUring => Ok((Io::Uring(Box::new(uring::UringIo::new(socket)?)), None)),
            IoChoice::Auto => {
                let fallback = socket.try_clone()?;
                match uring::UringIo::new(socket) {
                    Ok(u) => Ok((Io::Uring(Box::new(u)), None)),
                    Err(e) => Ok((
                        Io::Portable(Box::new(portable::PortableIo::new(fallback)?)),
                        Some(format!(
                            "io_uring unavailable ({e}); using recvmmsg/sendmmsg"
                        )),
                    )),
                }
            }
        }
    }

    /// The backend's name, for logs and metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Io::Uring(_) => "io_uring",
            Io::Portable(_) => "portable",
        }
    }

    /// Waits up to `timeout`, then hands the datagrams received to `handle`.
    pub(crate) fn recv(
        &mut self,
        timeout: Duration,
        handle: impl FnOnce(&mut [&mut [u8]]),
    ) -> io::Result<usize> {
        match self {
            Io::Uring(u) => u.recv(timeout, handle),
            Io::Portable(p) => p.recv(timeout, handle),
        }
    }

    /// Fills up to [`BATCH`] of the backend's own transmit buffers through `fill` (one
    /// datagram each: its destination and length, `None` when there is no more), then sends
    /// them in one submission. The datagrams are written once, where the kernel reads them.
    pub(crate) fn send_batch(
        &mut self,
        fill: impl FnMut(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> io::Result<Sent> {
        match self {
            Io::Uring(u) => u.send_batch(fill),
            Io::Portable(p) => p.send_batch(fill),
        }
    }
}

/// What one [`Io::send_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams written into the transmit buffers.
    pub(crate) filled: usize,
    /// Datagrams the kernel took.
    pub(crate) sent: usize,
}

/// A UDP socket on `addr` with SO_REUSEPORT, so every core can bind the same address.
pub(crate) fn reuseport_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_send_buffer_size(4 << 20)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
    Ok(socket.into())
}

/// Writes `addr` as a C socket address; returns its length.
pub(crate) fn sockaddr_from(
    addr: &SocketAddr,
    out: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    let sa: socket2::SockAddr = (*addr).into();
    let len = (sa.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `len` bytes of a valid socket address into storage that holds any
    // socket address; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (out as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    len as libc::socklen_t
}
