//! A multi-host test network: directory authorities and nodes as separate `mixed`
//! processes, each host a network namespace on one bridge with IPv4 and/or IPv6 addresses,
//! and a user-space relay for a lossy, delaying link (this kernel has no netem). Everything
//! it makes (namespaces, the bridge, processes, files) is removed when the [`Lab`] drops.
//!
//! Needs root (network namespaces); [`Lab::new`] says so and returns `None` without it,
//! unless `MIXED_LAB_REQUIRED` is set (CI sets it where namespaces work), when it fails.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::print_stderr
)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Labs of one test binary run one at a time: two cores do not carry two networks of
/// processes without their timing suffering.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Which address families a host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    Dual,
}

/// One host: a network namespace with its addresses on the lab's bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Host {
    /// The address its services listen on: `[::]` when dual-stack.
    pub fn listen(&self, port: u16) -> SocketAddr {
        match (self.v4, self.v6) {
            (Some(_), Some(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            (Some(v4), None) => SocketAddr::new(IpAddr::V4(v4), port),
            (None, Some(v6)) => SocketAddr::new(IpAddr::V6(v6), port),
            (None, None) => unreachable!("a host has an address"),
        }
    }

    /// The addresses it publishes.
    pub fn addrs(&self, port: u16) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if let Some(v4) = self.v4 {
            out.push(SocketAddr::new(IpAddr::V4(v4), port));
        }
        if let Some(v6) = self.v6 {
            out.push(SocketAddr::new(IpAddr::V6(v6), port));
        }
        out
    }

    /// An address the test (in the root namespace, on the bridge) reaches it at.
    pub fn reach(&self, port: u16) -> SocketAddr {
        self.addrs(port)[0]
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A process of the lab.
pub struct Proc {
    pub name: String,
    pub host: usize,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// A `mixed node` of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    pub proc: usize,
    pub host: usize,
    pub dir: PathBuf,
    pub port: u16,
    pub metrics: SocketAddr,
    pub node_id: [u8; 32],
}

impl LabNode {
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("keys").join("api.sock")
    }
}

/// The network.
pub struct Lab {
    pub id: String,
    bridge: String,
    pub hosts: Vec<Host>,
    pub dir: PathBuf,
    pub procs: Vec<Proc>,
    pub authorities: Vec<(usize, pki_client::AuthorityEndpoint)>,
    authority_hosts: Vec<usize>,
    pub nodes: Vec<LabNode>,
    pub params: pki_client::NetworkParams,
    pub epoch_seconds: u64,
    /// `--leave-seconds` of the nodes started from now on (0: a signal stops at once).
    pub leave_seconds: u64,
    relays: Vec<Arc<AtomicBool>>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

static LABS: AtomicU32 = AtomicU32::new(0);

/// The `mixed` binary: the one cargo built for the tests, or `MIXED_BIN` (the soak runs
/// a release build).
pub fn mixed_bin() -> PathBuf {
    std::env::var_os("MIXED_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_mixed").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release/mixed"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Lab {
    /// A lab of hosts of these families; `None` (having said why) where network namespaces
    /// cannot be made (not root).
    pub fn new(families: &[Family], epoch_seconds: u64) -> Option<Lab> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("mx{:04x}{n}", pid & 0xffff);
        let probe = format!("{id}p");
        let ok = Command::new("ip")
            .args(["netns", "add", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // CI sets MIXED_LAB_REQUIRED where namespaces work: there a lab must run
            assert!(
                std::env::var_os("MIXED_LAB_REQUIRED").is_none(),
                "network namespaces unavailable, and MIXED_LAB_REQUIRED is set"
            );
            eprintln!("SKIPPED: network namespaces unavailable (this test needs root)");
            return None;
        }
        ip_quiet(&["netns", "del", &probe]);
        let dir = std::env::temp_dir().join(format!("mixed-lab-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (20 + (pid % 200) as u8, n as u8);
        let bridge = format!("{id}b");
        ip_quiet(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.{a}.{b}.1/24"), "dev", &bridge]);
        ip(&[
            "addr",
            "add",
            &format!("fd77:{a:x}:{b:x}::1/64"),
            "dev",
            &bridge,
            "nodad",
        ]);
        ip(&["link", "set", &bridge, "up"]);
        let mut lab = Lab {
            id: id.clone(),
            bridge,
            hosts: Vec::new(),
            dir,
            procs: Vec::new(),
            authorities: Vec::new(),
            authority_hosts: Vec::new(),
            nodes: Vec::new(),
            params: pki_client::NetworkParams {
                packet_size: 1452,
                hops: 3,
                rho_permille: 1500,
                mean_delay_micros: 10_000,
                loops: 2,
                loop_rate_millis: 1000,
                epoch_seconds,
                genesis_unix: 0,
            },
            epoch_seconds,
            leave_seconds: 0,
            relays: Vec::new(),
            _serial: serial,
        };
        for (i, f) in families.iter().enumerate() {
            let ns = format!("{id}n{i}");
            let veth = format!("{id}v{i}");
            ip_quiet(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &lab.bridge, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            let host_part = 10 + i as u8;
            let v4 =
                matches!(f, Family::V4 | Family::Dual).then(|| Ipv4Addr::new(10, a, b, host_part));
            let v6 = matches!(f, Family::V6 | Family::Dual)
                .then(|| format!("fd77:{a:x}:{b:x}::{host_part:x}").parse().unwrap());
            if let Some(v4) = v4 {
                ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            }
            if let Some(v6) = v6 {
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
            }
            lab.hosts.push(Host { ns, v4, v6 });
        }
        Some(lab)
    }

    /// Starts a process of `mixed` in host `host`'s namespace, its output to a log file.
    pub fn spawn(&mut self, name: &str, host: usize, args: Vec<String>) -> usize {
        let log = self.dir.join(format!("{name}.log"));
        self.procs.push(Proc {
            name: name.to_string(),
            host,
            args,
            log,
            child: None,
        });
        let i = self.procs.len() - 1;
        self.start(i);
        i
    }

    /// (Re)starts process `i`.
    pub fn start(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[p.host].ns])
            .arg(mixed_bin())
            .args(&p.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        p.child = Some(child);
    }

    /// SIGKILL to process `i` (`ip netns exec` execs the program: the pid is its own).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to process `i` (a node leaves, an authority stops).
    pub fn terminate(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    /// Whether process `i` has exited, and how.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.procs[i].child.as_mut()?.try_wait().ok().flatten()
    }

    /// The pid of process `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].child.as_ref().map(Child::id)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].log).unwrap_or_default()
    }

    /// Every log of the lab and every node's non-zero drop and messaging counters, for a
    /// failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for k in 0..self.nodes.len() {
            let mut m: Vec<(String, f64)> = self
                .scrape(k)
                .into_iter()
                .filter(|(n, v)| {
                    *v != 0.0
                        && (n.contains("drops")
                            || n.contains("anon_")
                            || n.contains("failed")
                            || n.contains("loops_total")
                            || n.contains("delivered")
                            || n.contains("sent_total")
                            || n.contains("hops_total")
                            || n.contains("own_queued")
                            || n.contains("held")
                            || n.contains("epoch")
                            || n.contains("consensus"))
                })
                .collect();
            m.sort_by(|a, b| a.0.cmp(&b.0));
            out += &format!("--- node-{k} metrics: {m:?}\n");
        }
        for (i, p) in self.procs.iter().enumerate() {
            let text = self.log(i);
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("--- {} ---\n", p.name);
            for l in tail.iter().rev() {
                out += l;
                out += "\n";
            }
        }
        out
    }

    /// Three authorities (more or fewer: `hosts`), as processes, with a network whose
    /// epoch 0 starts now.
    pub fn start_authorities(&mut self, hosts: &[usize]) {
        let genesis = unix_now();
        self.params.genesis_unix = genesis;
        let mut endpoints = Vec::new();
        let mut paths = Vec::new();
        for (k, &h) in hosts.iter().enumerate() {
            let d = self.dir.join(format!("authority-{k}"));
            std::fs::create_dir_all(&d).unwrap();
            let url = format!("http://{}", self.hosts[h].reach(7001));
            let path = d.join("authority.toml");
            std::fs::write(
                &path,
                self.authority_toml(&d, h, &[(String::new(), url.clone())], genesis),
            )
            .unwrap();
            let out = Command::new(mixed_bin())
                .args(["dirauth", "--print-key", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
            endpoints.push((key, url));
            paths.push((path, d, h));
        }
        for (k, (path, d, h)) in paths.into_iter().enumerate() {
            std::fs::write(&path, self.authority_toml(&d, h, &endpoints, genesis)).unwrap();
            let p = self.spawn(
                &format!("authority-{k}"),
                h,
                vec![
                    "dirauth".into(),
                    "--config".into(),
                    path.display().to_string(),
                ],
            );
            let identity =
                pki_client::IdentityKey(pki_client::json::parse_hex32(&endpoints[k].0).unwrap());
            self.authority_hosts.push(h);
            self.authorities.push((
                p,
                pki_client::AuthorityEndpoint {
                    identity,
                    url: endpoints[k].1.clone(),
                },
            ));
        }
    }

    fn authority_toml(
        &self,
        d: &Path,
        h: usize,
        peers: &[(String, String)],
        genesis: u64,
    ) -> String {
        let p = &self.params;
        let mut t = format!(
            "identity_key_file = \"{}\"\nlisten = \"{}\"\ndata_dir = \"{}\"\n\n[network]\n\
             genesis_unix = {genesis}\nepoch_seconds = {}\npacket_size = {}\nhops = {}\n\
             rho = {}\nmean_delay_ms = {}\nloops = {}\nloop_rate = {}\n\n",
            d.join("authority.key").display(),
            self.hosts[h].listen(7001),
            d.join("data").display(),
            p.epoch_seconds,
            p.packet_size,
            p.hops,
            f64::from(p.rho_permille) / 1000.0,
            p.mean_delay_micros as f64 / 1000.0,
            p.loops,
            f64::from(p.loop_rate_millis) / 1000.0,
        );
        for (key, url) in peers {
            let key = if key.is_empty() {
                "0".repeat(64)
            } else {
                key.clone()
            };
            t += &format!("[[authorities]]\nidentity = \"{key}\"\nurl = \"{url}\"\n\n");
        }
        t += "[limits]\nmax_body_bytes = 4096\nrequests_per_second = 1000\nburst = 1000\n";
        t
    }

    /// A node on host `host` emitting `bandwidth` packets a second, advertising `advertise`
    /// (its host's addresses when `None`), as a process.
    pub fn start_node(
        &mut self,
        host: usize,
        bandwidth: f64,
        advertise: Option<Vec<SocketAddr>>,
    ) -> usize {
        let k = self.nodes.len();
        let d = self.dir.join(format!("node-{k}"));
        std::fs::create_dir_all(&d).unwrap();
        let port = 4000;
        let h = &self.hosts[host];
        let metrics = h.reach(9100);
        let advertise = advertise.unwrap_or_else(|| h.addrs(port));
        let advertise: Vec<String> = advertise.iter().map(|a| format!("\"{a}\"")).collect();
        let mut toml = format!(
            "key_dir = \"{}\"\nlisten = \"{}\"\nadvertise = [{}]\nbandwidth = {bandwidth}\n\
             metrics = \"{}\"\napi_socket = \"api.sock\"\n",
            d.join("keys").display(),
            h.listen(port),
            advertise.join(", "),
            h.reach(9100),
        );
        // each authority at an address of a family this host has
        for ((_, a), &ah) in self.authorities.iter().zip(&self.authority_hosts) {
            let at = &self.hosts[ah];
            let url = match (h.v4, at.v4, at.v6) {
                (Some(_), Some(v4), _) => format!("http://{v4}:7001"),
                (_, _, Some(v6)) => format!("http://[{v6}]:7001"),
                _ => a.url.clone(),
            };
            toml += &format!(
                "[[authorities]]\nidentity = \"{}\"\nurl = \"{url}\"\n",
                a.identity.to_hex(),
            );
        }
        let path = d.join("node.toml");
        std::fs::write(&path, toml).unwrap();
        let node_id = node::keys::KeyDir::open(&d.join("keys"))
            .unwrap()
            .identity()
            .unwrap()
            .public()
            .node_id();
        let p = self.spawn(
            &format!("node-{k}"),
            host,
            vec![
                "node".into(),
                "--leave-seconds".into(),
                self.leave_seconds.to_string(),
                "--config".into(),
                path.display().to_string(),
            ],
        );
        self.nodes.push(LabNode {
            proc: p,
            host,
            dir: d,
            port,
            metrics,
            node_id,
        });
        k
    }

    /// Node `k`'s metrics (empty while it does not answer).
    pub fn scrape(&self, k: usize) -> HashMap<String, f64> {
        scrape(self.nodes[k].metrics)
    }

    pub fn metric(&self, k: usize, name: &str) -> f64 {
        self.scrape(k).get(name).copied().unwrap_or(f64::NAN)
    }

    /// Waits until every node has installed a consensus that lists all of them.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let n = self.nodes.len() as f64;
        loop {
            let ready = (0..self.nodes.len()).all(|k| {
                let m = self.scrape(k);
                m.get("mixed_consensus_nodes") == Some(&n) && m.contains_key("mixed_epoch")
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the lab did not come up:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The current epoch by the network's schedule.
    pub fn epoch_now(&self) -> u64 {
        self.params.epoch_at(unix_now())
    }

    /// Sleeps until `into` seconds into the next epoch.
    pub fn wait_next_epoch(&self, into: f64) -> u64 {
        let e = self.epoch_now() + 1;
        let at = self.params.epoch_start(e) as f64 + into;
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            if now >= at {
                return e;
            }
            std::thread::sleep(Duration::from_secs_f64((at - now).min(0.2)));
        }
    }

    /// A one-way UDP relay on the bridge: what it receives it forwards to `to`, losing
    /// `loss` of it and delaying the rest by `delay`. Returns its address (advertise it in
    /// place of the node's own to put the lossy link in front of that node).
    pub fn relay(&mut self, to: SocketAddr, loss: f64, delay: Duration) -> SocketAddr {
        let bind: SocketAddr = match to {
            SocketAddr::V4(_) => format!("{}:0", self.bridge_v4()).parse().unwrap(),
            SocketAddr::V6(_) => format!("[{}]:0", self.bridge_v6()).parse().unwrap(),
        };
        let socket = UdpSocket::bind(bind).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let out = socket.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        self.relays.push(Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
            let mut buf = [0u8; 2048];
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = socket.recv_from(&mut buf) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // bounded: a relay holds at most 100,000 datagrams
                    if (seed >> 11) as f64 / (1u64 << 53) as f64 >= loss && held.len() < 100_000 {
                        held.push_back((Instant::now() + delay, buf[..n].to_vec()));
                    }
                }
                while held.front().is_some_and(|(t, _)| *t <= Instant::now()) {
                    let (_, d) = held.pop_front().unwrap();
                    let _ = out.send_to(&d, to);
                }
            }
        });
        addr
    }

    fn bridge_v4(&self) -> Ipv4Addr {
        let h = self.hosts.iter().find_map(|h| h.v4).unwrap();
        let o = h.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    fn bridge_v6(&self) -> Ipv6Addr {
        let h = self.hosts.iter().find_map(|h| h.v6).unwrap();
        let mut s = h.segments();
        s[7] = 1;
        Ipv6Addr::from(s)
    }

    /// Resident memory of process `i`, KiB.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i)?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Open file descriptors of process `i`.
    pub fn fds(&self, i: usize) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid(i)?))
                .ok()?
                .count(),
        )
    }

    /// A client of the lab's authorities (from the test, on the bridge).
    pub fn pki(&self) -> pki_client::PkiClient {
        pki_client::PkiClient::new(
            self.authorities.iter().map(|(_, a)| a.clone()).collect(),
            Duration::from_secs(2),
            None,
        )
        .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for r in &self.relays {
            r.store(true, Ordering::Relaxed);
        }
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        for h in &self.hosts {
            ip_quiet(&["netns", "del", &h.ns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
        if std::env::var_os("MIXED_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Every sample of a metrics endpoint, or none while it does not answer.
pub fn scrape(at: SocketAddr) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Ok(mut s) = TcpStream::connect_timeout(&at, Duration::from_millis(500)) else {
        return out;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    for line in text.lines().filter(|l| l.starts_with("mixed_")) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse()
        {
            out.insert(name.to_string(), v);
        }
    }
    out
}
