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
        Self::configure_with(dir, net, bandwidth, "")
    }

    /// [`Self::configure`] with more TOML (tables such as `[storage]`) before the
    /// authorities.
    fn configure_with(dir: &Path, net: &LocalNetwork, bandwidth: f64, extra: &str) -> NodeProcess {
        std::fs::create_dir_all(dir).unwrap();
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut toml = format!(
            "key_dir = \"keys\"\nlisten = \"{listen}\"\nbandwidth = {bandwidth}\n\
             metrics = \"{metrics}\"\napi_socket = \"off\"\n{extra}"
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

/// Waits for the start of an epoch whose consensus lists `node`, with the process on it and
/// the in-process nodes of `net` too; returns the epoch.
fn wait_listed(net: &LocalNetwork, node: &NodeProcess) -> u64 {
    let id = node.node_id();
    let params = net.params;
    let now = || node::runtime::unix_now();
    let deadline = Instant::now() + Duration::from_secs(6 * params.epoch_seconds);
    loop {
        assert!(Instant::now() < deadline, "never listed:\n{}", node.log());
        let e = params.epoch_at(now());
        if now() - params.epoch_start(e) <= 1
            && listed(net, id, e)
            && node.metric("mixed_epoch") == e as f64
            && net.nodes.iter().all(|n| n.epoch() == Some(e))
        {
            return e;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Responses to storage requests that came to `app`, by the request they answer.
fn storage_responses(
    app: &node::api::App,
    wait: Duration,
    into: &mut HashMap<[u8; 16], storage::Response>,
) {
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match app.recv(left.max(Duration::from_millis(1))) {
            Ok(node::api::MessengerEvent::Received(r))
                if r.port == storage::protocol::SERVICE_PORT =>
            {
                let response = storage::Response::decode(&r.data).expect("a protocol response");
                into.insert(r.in_reply_to.expect("through our SURBs"), response);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[test]
fn a_storage_provider_killed_during_puts_keeps_every_block_it_acknowledged() {
    use storage::bacap::{Position, WriteCap};
    use storage::protocol::{self, SERVICE_PORT, Status};

    let net = LocalNetwork::start(&LocalOptions {
        nodes: 4,
        epoch_seconds: 10,
        bandwidth: 80.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mixed-sp-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sp = NodeProcess::configure_with(
        &dir,
        &net,
        80.0,
        "[storage]\ndir = \"storage\"\nreserve_mib = 0\n",
    );
    let sp_id = sp.node_id();
    sp.start();
    wait_listed(&net, &sp);
    let app = node::api::App::open(&net.nodes[0], Some(SERVICE_PORT)).unwrap();
    let options = node::api::SendOptions {
        reply_surbs: 4,
        port: SERVICE_PORT,
        ..Default::default()
    };
    let cap = WriteCap::new([3; 32], Position::new(9, [4; 32]));
    let text = |k: u64| format!("stored block {k}").into_bytes();
    // a stream of PUTs, five a second, until 15 are acknowledged: then SIGKILL
    let mut puts: HashMap<[u8; 16], u64> = HashMap::new();
    let mut responses = HashMap::new();
    let mut p = cap.start().clone();
    let mut positions = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked = |responses: &HashMap<[u8; 16], storage::Response>,
                 puts: &HashMap<[u8; 16], u64>| {
        responses
            .iter()
            .filter(|(id, r)| puts.contains_key(*id) && r.status == Status::Stored)
            .count()
    };
    for k in 0u64.. {
        assert!(Instant::now() < deadline, "PUTs unanswered:\n{}", sp.log());
        let s = cap.box_at(&p).unwrap().seal(&text(k)).unwrap();
        let req = protocol::encode_put(&k.to_be_bytes(), &s.box_id, &s.signature, &s.block);
        puts.insert(app.send(sp_id, &req, options).unwrap(), k);
        positions.push(p.clone());
        p = p.next().unwrap();
        storage_responses(&app, Duration::from_millis(200), &mut responses);
        if acked(&responses, &puts) >= 15 {
            break;
        }
    }
    sp.kill();
    // answers already on their way still come: each was committed before it left
    storage_responses(&app, Duration::from_secs(2), &mut responses);
    let stored: Vec<u64> = puts
        .iter()
        .filter(|(id, _)| {
            responses
                .get(*id)
                .is_some_and(|r| r.status == Status::Stored)
        })
        .map(|(_, k)| *k)
        .collect();
    assert!(
        responses
            .iter()
            .filter(|(id, _)| puts.contains_key(*id))
            .all(|(_, r)| r.status == Status::Stored),
        "a PUT refused"
    );
    sp.start();
    sp.wait_for("mixed_epoch", 1.0, Duration::from_secs(30));
    // every acknowledged block reads back and opens (GETs resent until answered)
    let read = cap.read_cap();
    let mut pending: Vec<u64> = stored.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "GETs unanswered: {pending:?}\n{}",
            sp.log()
        );
        let mut gets = HashMap::new();
        for &k in &pending {
            let id = read.box_at(&positions[k as usize]).unwrap().id;
            let req = protocol::encode_get(&k.to_be_bytes(), &id);
            gets.insert(app.send(sp_id, &req, options).unwrap(), k);
        }
        let mut got = HashMap::new();
        storage_responses(&app, Duration::from_secs(5), &mut got);
        for (id, r) in got {
            let Some(&k) = gets.get(&id) else { continue };
            assert_eq!(r.status, Status::Found, "block {k} acknowledged, then lost");
            let b = read.box_at(&positions[k as usize]).unwrap();
            assert_eq!(b.open(&r.sealed().unwrap()).unwrap(), text(k));
            pending.retain(|&x| x != k);
        }
    }
    // each block once: what the store holds is what was PUT and committed (those sent
    // last may have been committed with their answers lost in the kill)
    let blocks = sp.metric("mixed_storage_blocks");
    eprintln!(
        "{} PUTs sent, {} acknowledged before the kill, {blocks} blocks after the restart",
        puts.len(),
        stored.len()
    );
    assert!(
        (stored.len() as f64..=puts.len() as f64).contains(&blocks),
        "{blocks} blocks for {} acknowledged of {} sent",
        stored.len(),
        puts.len()
    );
}
