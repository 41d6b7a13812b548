//! The cheap ends of a capacity measurement: a load generator that sends prebuilt packets
//! at a steady rate with sendmmsg (one thread, 64 datagrams a call), a sink that counts
//! with recvmmsg, the CPU time of a node's core threads from /proc, and the reading of the
//! node's Prometheus text.

#![allow(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::SockAddr;

/// Datagrams per sendmmsg or recvmmsg call.
const BATCH: usize = 64;

/// Sends `packets` to `to` at `rate` a second (in bursts of what is due each 100 us, 64 a
/// call), from one thread; returns the seconds it took and how many the kernel refused.
pub(crate) fn send_paced(
    socket: &UdpSocket,
    to: SocketAddr,
    packets: &[Vec<u8>],
    rate: f64,
) -> (f64, u64) {
    let addr = SockAddr::from(to);
    let start = Instant::now();
    let mut sent = 0usize;
    let mut refused = 0u64;
    while sent < packets.len() {
        let due = ((start.elapsed().as_secs_f64() * rate) as usize + 1).min(packets.len());
        while sent < due {
            let n = (due - sent).min(BATCH);
            let took = sendmmsg(socket, &addr, &packets[sent..sent + n]);
            if took < n {
                // a full socket buffer: count the rest as refused rather than spin on it
                refused += (n - took) as u64;
            }
            sent += n;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    (start.elapsed().as_secs_f64(), refused)
}

/// One sendmmsg call of up to [`BATCH`] datagrams to one address; returns how many the
/// kernel took.
fn sendmmsg(socket: &UdpSocket, to: &SockAddr, packets: &[Vec<u8>]) -> usize {
    let n = packets.len().min(BATCH);
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i].iov_base = packets[i].as_ptr() as *mut libc::c_void;
        iov[i].iov_len = packets[i].len();
        msgs[i].msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
        msgs[i].msg_hdr.msg_namelen = to.len();
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `iov`, the packets and `to`, all alive for the call
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
    if r < 0 { 0 } else { r as usize }
}

/// A thread counting the datagrams of `size` bytes that reach a socket, with recvmmsg.
pub(crate) struct Sink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts counting on `socket`.
    ///
    /// The socket is polled without blocking, with a 100 us sleep when it is empty: a
    /// sink asleep on the socket would have every datagram wake it, and the sender (the
    /// node under test) would pay for the wake-up, an inter-processor interrupt that costs
    /// microseconds in a virtual machine.
    pub(crate) fn start(socket: UdpSocket, size: usize) -> std::io::Result<Sink> {
        socket.set_nonblocking(true)?;
        // half a millisecond of the highest rates measured, and more
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(8 << 20);
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = Arc::clone(&received);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("capacity-sink".into())
                .spawn(move || {
                    let mut bufs = vec![[0u8; 2048]; BATCH];
                    while !stop.load(Ordering::Relaxed) {
                        match recvmmsg(&socket, &mut bufs, size) {
                            Some(got) => {
                                received.fetch_add(got, Ordering::Relaxed);
                            }
                            None => std::thread::sleep(Duration::from_micros(100)),
                        }
                    }
                })?
        };
        Ok(Sink {
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams of the size counted so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One recvmmsg call on a non-blocking socket: how many datagrams of `size` bytes arrived,
/// `None` when none was waiting.
fn recvmmsg(socket: &UdpSocket, bufs: &mut [[u8; 2048]], size: usize) -> Option<u64> {
    let n = bufs.len().min(BATCH);
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i].iov_base = bufs[i].as_mut_ptr() as *mut libc::c_void;
        iov[i].iov_len = bufs[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `iov` and `bufs`, alive for the call
    let r = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r <= 0 {
        return None;
    }
    Some(
        msgs[..r as usize]
            .iter()
            .filter(|m| m.msg_len as usize == size)
            .count() as u64,
    )
}

/// CPU seconds (user and system) of the threads of process `pid` whose name starts with
/// `prefix`, from /proc; the whole process when `prefix` is empty.
pub fn cpu_seconds(pid: u32, prefix: &str) -> f64 {
    // SAFETY: sysconf only reads a constant of the system
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if prefix.is_empty() {
        return stat_ticks(&format!("/proc/{pid}/stat")) / ticks_per_second;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut ticks = 0.0;
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            ticks += stat_ticks(&path.join("stat").to_string_lossy());
        }
    }
    ticks / ticks_per_second
}

/// utime + stime of a /proc stat file, in clock ticks.
fn stat_ticks(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // the fields after the command name (which may hold spaces) start at field 3
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (field(11), field(12)) {
        (Some(u), Some(s)) => u + s,
        _ => f64::NAN,
    }
}

/// The node's metrics, parsed: sample name (with labels) to value.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<(String, f64)>);

impl Samples {
    /// Parses Prometheus text.
    pub fn parse(text: &str) -> Samples {
        Samples(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// A sample's value, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0.0)
    }

    /// The samples whose name starts with `prefix`.
    pub fn starting(&self, prefix: &str) -> impl Iterator<Item = (&str, f64)> {
        self.0
            .iter()
            .filter(move |(n, _)| n.starts_with(prefix))
            .map(|(n, v)| (n.as_str(), *v))
    }
}

/// GET /metrics from a node's metrics listener (plain HTTP/1.0, read to the end).
pub fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_counts_what_the_paced_sender_sends() {
        let sink_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink_socket.local_addr().unwrap();
        let sink = Sink::start(sink_socket, 100).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut packets = vec![vec![7u8; 100]; 500];
        // a datagram of another size is not counted
        packets.push(vec![1u8; 99]);
        let (seconds, refused) = send_paced(&sender, to, &packets, 5_000.0);
        assert!(seconds >= 0.09, "paced: 501 at 5,000/s took {seconds} s");
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.received() + refused < 500 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(sink.received() + refused, 500);
    }

    #[test]
    fn samples_parse_prometheus_text() {
        let s = Samples::parse(
            "# HELP x y\nmixed_drops_total{reason=\"replay\"} 3\nmixed_epoch 7\nbad line\n",
        );
        assert_eq!(s.get("mixed_drops_total{reason=\"replay\"}"), 3.0);
        assert_eq!(s.get("mixed_epoch"), 7.0);
        assert_eq!(s.get("absent"), 0.0);
        assert_eq!(s.starting("mixed_drops_total{").count(), 1);
    }

    #[test]
    fn this_threads_cpu_time_is_read() {
        let pid = std::process::id();
        let before = cpu_seconds(pid, "");
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid, "") - before >= 0.1);
    }
}
