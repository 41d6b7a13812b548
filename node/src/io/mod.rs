//! UDP I/O for a core: io_uring when the kernel allows it, recvmmsg/sendmmsg otherwise.
//! Every core binds the node's address with SO_REUSEPORT, and a reuseport program spreads
//! datagrams over the cores by their first payload bytes (the packet's random group
//! element), so even one busy neighbour's traffic is shared out. The port is the node's
//! alone: see [`bind_node`].

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

    /// Datagrams the kernel dropped at this core's socket since it was opened (the receive
    /// queue full), from `SO_MEMINFO`; 0 where the kernel does not say.
    pub(crate) fn socket_drops(&self) -> u64 {
        let fd = match self {
            Io::Uring(u) => u.fd(),
            Io::Portable(p) => p.fd(),
        };
        socket_drops(fd)
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
    /// Which of the datagrams the kernel did not take (bit i: datagram i of the batch).
    pub(crate) failed: u64,
    /// The last error the kernel gave for one, if any (an errno).
    pub(crate) error: Option<i32>,
}

/// How long a node waits for its port to be released by a previous instance that crashed.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The node's sockets, one per core, on one address, and what holds the port.
pub(crate) struct Bound {
    /// One socket per core.
    pub(crate) sockets: Vec<UdpSocket>,
    /// The address bound (the port chosen when the configuration said 0).
    pub(crate) addr: SocketAddr,
    /// The families the sockets send on: IPv4 for an IPv4 address, IPv6 for an IPv6 one,
    /// both for the IPv6 wildcard `[::]` (a dual-stack socket).
    pub(crate) families: engine::Families,
    /// Held while the node runs: a second node on the address fails to start.
    pub(crate) _lock: std::os::unix::net::UnixDatagram,
}

/// Binds `cores` sockets on `listen`, the port the node's alone:
///
/// - one core binds without SO_REUSEPORT, so any other bind of the port fails;
/// - several cores bind with it (each its own socket), then attach a reuseport program
///   that picks among the node's sockets only: a process that joins the group later gets
///   no datagram;
/// - either way the node holds an abstract Unix socket named after the address, so a second
///   `mixed node` on it fails at start with an error that says so (and a crash frees it).
pub(crate) fn bind_node(listen: SocketAddr, cores: usize) -> io::Result<Bound> {
    let taken = |addr: SocketAddr| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "UDP {addr} is in use by another mixed node (each node needs its own port; \
                 stop the other one or choose another `listen`)"
            ),
        )
    };
    let reuse = cores > 1;
    let lock_for = |addr: SocketAddr| {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mixed-node-udp-{addr}");
        let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        std::os::unix::net::UnixDatagram::bind_addr(&at).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                taken(addr)
            } else {
                e
            }
        })
    };
    // a fixed port is claimed before binding; port 0 once the kernel chose one
    let early = if listen.port() != 0 {
        Some(lock_for(listen)?)
    } else {
        None
    };
    // with the lock held no other node has the port; a node that just crashed may still
    // hold it while the kernel tears its io_uring down (asynchronously, after the exit):
    // wait for that a few seconds
    let mut tries = PORT_RELEASE_WAIT.as_millis() / 100;
    let first = loop {
        match node_socket(listen, reuse) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && early.is_some() && tries > 0 => {
                tries -= 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => break other?,
        }
    };
    let addr = first.local_addr()?;
    let lock = match early {
        Some(l) => l,
        None => lock_for(addr)?,
    };
    let mut sockets = vec![first];
    for _ in 1..cores {
        sockets.push(node_socket(addr, true)?);
    }
    if reuse {
        steer_by_payload(&sockets[0], cores)?;
    }
    let families = match addr {
        SocketAddr::V4(_) => engine::Families::V4,
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => engine::Families::BOTH,
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => engine::Families::V4,
        SocketAddr::V6(_) => engine::Families::V6,
    };
    Ok(Bound {
        sockets,
        addr,
        families,
        _lock: lock,
    })
}

/// A UDP socket on `addr`, with SO_REUSEPORT when the node has several cores. The IPv6
/// wildcard is dual-stack (it takes IPv4 too); any other IPv6 address is IPv6 only.
fn node_socket(addr: SocketAddr, reuse: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    socket.set_reuse_port(reuse)?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_send_buffer_size(4 << 20)?;
    socket.bind(&addr.into()).map_err(|e| {
        let advice = if e.kind() == io::ErrorKind::AddrInUse {
            " (another program has the port; stop it or choose another `listen`)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}{advice}"))
    })?;
    Ok(socket.into())
}

/// Attaches to the reuseport group of `socket` a classic BPF program that returns the first
/// 32 bits of the UDP payload modulo `cores`: the index of one of the node's own sockets
/// (bound first, so they hold indices 0 to cores - 1). A datagram of under four bytes reads
/// as 0 and goes to the first core.
fn steer_by_payload(socket: &UdpSocket, cores: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut program = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: cores as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_A) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: a valid sock_fprog pointing at a live three-instruction program; the kernel
    // copies it during the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot attach the reuseport program: {e}"),
        ));
    }
    Ok(())
}

/// Writes `addr` as a C socket address; returns its length. On an IPv6 socket
/// (`v6`) an IPv4 address is written v4-mapped, as a dual-stack socket needs it.
pub(crate) fn sockaddr_from(
    addr: &SocketAddr,
    out: &mut libc::sockaddr_storage,
    v6: bool,
) -> libc::socklen_t {
    let addr = match addr {
        SocketAddr::V4(a) if v6 => {
            SocketAddr::new(std::net::IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
        }
        a => *a,
    };
    let sa: socket2::SockAddr = addr.into();
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

/// `SK_MEMINFO_DROPS` of the socket `fd`, or 0 (Linux 4.1 reports it).
fn socket_drops(fd: std::os::fd::RawFd) -> u64 {
    // SK_MEMINFO_VARS is 9 on current kernels; room for more, and the kernel writes what it
    // has
    let mut meminfo = [0u32; 16];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: a valid buffer of `len` bytes and its length; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    const SK_MEMINFO_DROPS: usize = 8;
    if rc == 0 && len as usize > SK_MEMINFO_DROPS * 4 {
        u64::from(meminfo[SK_MEMINFO_DROPS])
    } else {
        0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Each backend says which datagrams of a batch the kernel refused (here: IPv6
    /// destinations on an IPv4 socket), and sends the rest.
    #[test]
    fn refused_datagrams_are_flagged_by_index_on_both_backends() {
        for choice in [IoChoice::Portable, IoChoice::IoUring] {
            let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let good = rx.local_addr().unwrap();
            let bad: SocketAddr = "[::1]:9".parse().unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (mut io, _) = Io::open(tx, choice).unwrap();
            let mut i = 0;
            let sent = io
                .send_batch(|buf| {
                    (i < 6).then(|| {
                        buf[..10].fill(i as u8);
                        i += 1;
                        (if i % 3 == 0 { bad } else { good }, 10)
                    })
                })
                .unwrap();
            assert_eq!((sent.filled, sent.sent), (6, 4), "{}", io.name());
            assert_eq!(sent.failed, 0b100100, "{}", io.name());
            assert!(sent.error.is_some(), "{}", io.name());
            let mut buf = [0u8; 64];
            let got = (0..4).filter(|_| rx.recv(&mut buf).is_ok()).count();
            assert_eq!(got, 4, "{}", io.name());
        }
    }

    /// Datagrams the kernel drops at a full receive queue are counted, on both backends.
    #[test]
    fn the_kernels_drops_at_a_full_socket_are_counted() {
        for choice in [IoChoice::Portable, IoChoice::IoUring] {
            let rx = socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            // the smallest queue the kernel allows (it doubles what it is given): a few
            // datagrams
            rx.set_recv_buffer_size(1).unwrap();
            rx.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            let rx: UdpSocket = rx.into();
            let to = rx.local_addr().unwrap();
            let (io, _) = Io::open(rx, choice).unwrap();
            assert_eq!(io.socket_drops(), 0, "{}", io.name());
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            // io_uring's receive takes some into its buffers as they come (those are not
            // dropped): send more than both hold
            for _ in 0..2_000 {
                tx.send_to(&[7u8; 1400], to).unwrap();
            }
            let drops = io.socket_drops();
            assert!(drops > 0 && drops <= 2_000, "{}: {drops}", io.name());
        }
    }

    /// Counts the heap allocations of each thread (a test's own, whatever the harness's
    /// other threads do).
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            pub(super) static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
        }

        struct Counting;

        // SAFETY: forwards every call to the system allocator unchanged; only counts.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as ours, passed through.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System.alloc` with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
                // SAFETY: same contract as ours, passed through.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static GLOBAL: Counting = Counting;
    }

    /// The I/O half of a core's loop allocates nothing: batches sent from the backend's
    /// transmit buffers and received into its own (the engine's half:
    /// `stack/tests/no_alloc.rs`).
    #[test]
    fn sending_and_receiving_allocate_nothing_on_both_backends() {
        for choice in [IoChoice::Portable, IoChoice::IoUring] {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = socket.local_addr().unwrap();
            let (mut rx, _) = Io::open(socket, choice).unwrap();
            let (mut tx, _) = Io::open(UdpSocket::bind("127.0.0.1:0").unwrap(), choice).unwrap();
            let round = |tx: &mut Io, rx: &mut Io| {
                let mut n = 0;
                let sent = tx
                    .send_batch(|buf| {
                        (n < 32).then(|| {
                            buf[..1400].fill(n as u8);
                            n += 1;
                            (to, 1400)
                        })
                    })
                    .unwrap();
                assert_eq!(sent.sent, 32);
                let mut got = 0;
                for _ in 0..1000 {
                    rx.recv(Duration::from_millis(10), |batch| {
                        got += batch.iter().filter(|d| d.len() == 1400).count();
                    })
                    .unwrap();
                    if got == 32 {
                        break;
                    }
                }
                assert_eq!(got, 32, "{}", rx.name());
            };
            // the first round may set up what the kernel interface needs once
            round(&mut tx, &mut rx);
            let before = counting::ALLOCATIONS.with(|c| c.get());
            for _ in 0..50 {
                round(&mut tx, &mut rx);
            }
            let allocations = counting::ALLOCATIONS.with(|c| c.get()) - before;
            assert_eq!(allocations, 0, "{}: 1,600 datagrams each way", rx.name());
        }
    }

    /// A dual-stack socket reaches IPv4 destinations (written v4-mapped).
    #[test]
    fn a_dual_stack_node_sends_to_ipv4_and_ipv6() {
        let bound = bind_node("[::]:0".parse().unwrap(), 1).unwrap();
        assert_eq!(bound.families, engine::Families::BOTH);
        let port = bound.addr.port();
        let (mut io, _) =
            Io::open(bound.sockets.into_iter().next().unwrap(), IoChoice::Auto).unwrap();
        let rx4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx6 = UdpSocket::bind("[::1]:0").unwrap();
        let to = [rx4.local_addr().unwrap(), rx6.local_addr().unwrap()];
        let mut i = 0;
        let sent = io
            .send_batch(|buf| {
                (i < 2).then(|| {
                    buf[..4].copy_from_slice(b"dual");
                    i += 1;
                    (to[i - 1], 4)
                })
            })
            .unwrap();
        assert_eq!((sent.sent, sent.failed), (2, 0));
        for rx in [rx4, rx6] {
            rx.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from.port()), (&b"dual"[..], port));
        }
    }
}
