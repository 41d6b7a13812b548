//! Nodes as separate `mixed node` processes on loopback, killed and restarted as an
//! operator's machine would see them: what must survive a SIGKILL does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crypto_simd::sphinx::{self, Destination, Hop, MixPublicKey, NodeId};
use node::IoChoice;
use node::demo::{LocalNetwork, LocalOptions};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// A `mixed node` process with its configuration file and log.
struct NodeProcess {
    dir: PathBuf,
    child: Option<Child>,
    metrics: SocketAddr,
    listen: SocketAddr,
}

fn free_port() -> u16 {
    // a UDP and a TCP port both free: the node binds UDP, its metrics TCP
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl NodeProcess {
    fn configure(dir: &Path, net: &LocalNetwork, bandwidth: f64) -> NodeProcess {
        std::fs::create_dir_all(dir).unwrap();
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut toml = format!(
            "key_dir = \"keys\"\nlisten = \"{listen}\"\nbandwidth = {bandwidth}\n\
             metrics = \"{metrics}\"\napi_socket = \"off\"\n"
        );
        for a in &net.endpoints {
            toml += &format!(
                "[[authorities]]\nidentity = \"{}\"\nurl = \"{}\"\n",
                pki_client::descriptor::hex(&a.identity.0),
                a.url
            );
        }
        std::fs::write(dir.join("node.toml"), toml).unwrap();
        NodeProcess {
            dir: dir.to_path_buf(),
            child: None,
            metrics,
            listen,
        }
    }

    fn node_id(&self) -> [u8; 32] {
        node::keys::KeyDir::open(&self.dir.join("keys"))
            .unwrap()
            .identity()
            .unwrap()
            .public()
            .node_id()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mixed"))
            .args(["node", "--leave-seconds", "0", "--config"])
            .arg(self.dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: nothing is flushed, nothing is withdrawn.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// Every sample of the node's metrics, or none while it does not answer.
    fn scrape(&self) -> HashMap<String, f64> {
        common::scrape(self.metrics)
    }

    fn metric(&self, name: &str) -> f64 {
        self.scrape().get(name).copied().unwrap_or(0.0)
    }

    /// Waits until `metric` reaches `at_least`.
    fn wait_for(&self, name: &str, at_least: f64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.metric(name) < at_least {
            assert!(
                Instant::now() < deadline,
                "{name} stayed below {at_least}: {}\n{}",
                self.metric(name),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One-hop packets for `target` under its key in the consensus of `epoch`.
fn packets_for(net: &LocalNetwork, target: [u8; 32], epoch: u64, n: usize) -> Vec<Vec<u8>> {
    let client =
        pki_client::PkiClient::new(net.endpoints.clone(), Duration::from_secs(2), None).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(epoch);
    let consensus = client
        .fetch(pki_client::Which::Epoch(epoch), &mut rng)
        .unwrap()
        .check_valid_at(net.params.epoch_start(epoch), 0)
        .unwrap();
    let key = consensus.node(&target).expect("the node is listed").mix_key;
    (0..n)
        .map(|i| {
            let mut packet = vec![0u8; net.params.packet_size as usize];
            sphinx::build_packet(
                &[Hop {
                    id: NodeId(target),
                    key: MixPublicKey(key),
                }],
                &[],
                &Destination {
                    address: target,
                    identifier: [7; 16],
                },
                format!("captured {i}").as_bytes(),
                &mut rng,
                &mut packet,
            )
            .unwrap();
            packet
        })
        .collect()
}

/// Whether `node` is listed in the consensus of `epoch`.
fn listed(net: &LocalNetwork, node: [u8; 32], epoch: u64) -> bool {
    let Some(client) =
        pki_client::PkiClient::new(net.endpoints.clone(), Duration::from_secs(2), None)
    else {
        return false;
    };
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    client
        .fetch(pki_client::Which::Epoch(epoch), &mut rng)
        .ok()
        .and_then(|c| c.check_valid_at(net.params.epoch_start(epoch), 0).ok())
        .is_some_and(|c| c.node(&node).is_some())
}

#[test]
fn packets_seen_before_a_sigkill_are_replays_after_the_restart() {
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 4,
        epoch_seconds: 10,
        bandwidth: 30.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mixed-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut node = NodeProcess::configure(&dir, &net, 30.0);
    let id = node.node_id();
    node.start();
    // wait for the start of an epoch whose consensus lists the node, with the node on it
    let params = net.params;
    let now = || node::runtime::unix_now();
    let deadline = Instant::now() + Duration::from_secs(6 * params.epoch_seconds);
    let epoch = loop {
        assert!(Instant::now() < deadline, "never listed:\n{}", node.log());
        let e = params.epoch_at(now());
        if now() - params.epoch_start(e) <= 1
            && listed(&net, id, e)
            && node.metric("mixed_epoch") == e as f64
        {
            break e;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let captured = packets_for(&net, id, epoch, 100);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &captured {
        sender.send_to(p, node.listen).unwrap();
    }
    node.wait_for(
        "mixed_messages_delivered_total",
        100.0,
        Duration::from_secs(3),
    );
    // past the journal's window (50 ms), then a crash
    std::thread::sleep(Duration::from_millis(200));
    node.kill();
    node.start();
    node.wait_for("mixed_epoch", epoch as f64, Duration::from_secs(5));
    for p in &captured {
        sender.send_to(p, node.listen).unwrap();
    }
    node.wait_for(
        "mixed_drops_total{reason=\"replay\"}",
        100.0,
        Duration::from_secs(3),
    );
    // every one of them a replay, so none delivered (a count of deliveries would also see
    // the node's own loops from before the crash coming back, unknown to the new process)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.metric("mixed_drops_total{reason=\"replay\"}"), 100.0);
    assert_eq!(
        params.epoch_at(now()),
        epoch,
        "the test outran its epoch: inconclusive"
    );
}
