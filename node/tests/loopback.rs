//! Nodes on loopback with the real runtime: real sockets, both I/O backends, replays across
//! cores and source ports, garbage datagrams, bad configuration and key files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crypto_simd::sphinx::{self, Destination, Hop, MixPublicKey, NodeId};
use engine::{DropReason, Event};
use node::demo::{LocalNetwork, LocalOptions};
use node::{IoChoice, NodeConfig};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

fn options(nodes: usize, io: IoChoice, cores: usize) -> LocalOptions {
    LocalOptions {
        nodes,
        epoch_seconds: 4,
        bandwidth: 40.0,
        cores,
        io,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    }
}

/// Sends `count` messages around the network and waits until all arrive.
fn deliver(net: &LocalNetwork, count: usize) {
    let n = net.nodes.len();
    let taps: Vec<_> = net.nodes.iter().map(|node| node.tap()).collect();
    let mut want = std::collections::HashMap::new();
    for k in 0..count {
        let (from, to) = (k % n, (k * 3 + 1) % n);
        let to = if to == from { (to + 1) % n } else { to };
        let payload = format!("loopback {k}").into_bytes();
        let id = loop {
            match net.nodes[from].send(net.nodes[to].node_id(), payload.clone()) {
                Ok(id) => break id,
                Err(node::NodeError::Send(engine::SendError::QueueFull)) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("send: {e}"),
            }
        };
        want.insert(id, (to, payload));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_empty() && Instant::now() < deadline {
        for (i, tap) in taps.iter().enumerate() {
            while let Ok(e) = tap.try_recv() {
                if let Event::Message {
                    identifier,
                    payload,
                } = e.event
                    && let Some((to, p)) = want.get(&identifier)
                {
                    assert_eq!(
                        (*to, p),
                        (i, &payload),
                        "delivered to the wrong node or altered"
                    );
                    want.remove(&identifier);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        want.is_empty(),
        "{} of {count} messages did not arrive",
        want.len()
    );
}

#[test]
fn ten_nodes_deliver_messages_with_recvmmsg() {
    let net = LocalNetwork::start(&options(10, IoChoice::Portable, 1)).unwrap();
    assert!(net.nodes.iter().all(|n| n.io_backends() == ["portable"]));
    deliver(&net, 30);
}

#[test]
fn ten_nodes_deliver_messages_with_io_uring() {
    let net = LocalNetwork::start(&options(10, IoChoice::IoUring, 1)).unwrap();
    assert!(net.nodes.iter().all(|n| n.io_backends() == ["io_uring"]));
    deliver(&net, 30);
}

/// A valid one-hop packet for node `target` of the network, built from its consensus.
fn packet_for(net: &LocalNetwork, target: usize) -> Vec<u8> {
    let client =
        pki_client::PkiClient::new(net.endpoints.clone(), Duration::from_secs(2), None).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let epoch = net.nodes[target].epoch().unwrap();
    let consensus = client
        .fetch(pki_client::Which::Epoch(epoch), &mut rng)
        .unwrap()
        .check_valid_at(net.params.epoch_start(epoch), 0)
        .unwrap();
    let id = net.nodes[target].node_id();
    let node = consensus.node(&id).unwrap();
    let mut packet = vec![0u8; net.params.packet_size as usize];
    sphinx::build_packet(
        &[Hop {
            id: NodeId(id),
            key: MixPublicKey(node.mix_key),
        }],
        &[],
        &Destination {
            address: id,
            identifier: [7; 16],
        },
        b"replayed",
        &mut rng,
        &mut packet,
    )
    .unwrap();
    packet
}

#[test]
fn a_replay_is_dropped_whichever_core_and_source_port_it_comes_from() {
    let net = LocalNetwork::start(&options(5, IoChoice::Auto, 2)).unwrap();
    let target = &net.nodes[2];
    let tap = target.tap();
    // the cores take the tap at their next turn (at most 20 ms away)
    std::thread::sleep(Duration::from_millis(100));
    let packet = packet_for(&net, 2);
    // the original, then the same bytes from sixteen other source ports (the node's
    // reuseport program picks a core by the payload, so a copy may meet any core's view)
    let sockets: Vec<UdpSocket> = (0..17)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets[0].send_to(&packet, target.addr()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for s in &sockets[1..] {
        s.send_to(&packet, target.addr()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delivered = 0;
    while Instant::now() < deadline {
        while let Ok(e) = tap.try_recv() {
            if let Event::Message { payload, .. } = e.event
                && payload == b"replayed"
            {
                delivered += 1;
            }
        }
        if target.counters().drops(DropReason::Replay) >= 16 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(e) = tap.try_recv() {
        if let Event::Message { payload, .. } = e.event
            && payload == b"replayed"
        {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 1, "the packet was delivered {delivered} times");
    assert_eq!(target.counters().drops(DropReason::Replay), 16);
    let per_core = target.metrics().received_per_core();
    assert!(
        per_core.iter().all(|&n| n > 0),
        "a core received nothing: {per_core:?}"
    );
}

#[test]
fn garbage_datagrams_are_counted_and_the_node_keeps_working() {
    let net = LocalNetwork::start(&options(5, IoChoice::Auto, 1)).unwrap();
    let target = &net.nodes[1];
    // counted from here (what came before the node installed its first epoch aside)
    std::thread::sleep(Duration::from_millis(200));
    let base = target.counters();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 100, 348, 1451, 1453, 2000, 4000] {
        socket.send_to(&vec![0x5a; len], target.addr()).unwrap();
    }
    for fill in [0u8, 0xff, 0x33] {
        socket.send_to(&[fill; 1452], target.addr()).unwrap();
    }
    let since = |c: &engine::Counters, r: DropReason| c.drops(r) - base.drops(r);
    let bad = |c: &engine::Counters| {
        since(c, DropReason::WrongSize)
            + since(c, DropReason::HeaderMac)
            + since(c, DropReason::LowOrderAlpha)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    // a zero-length datagram may not reach the engine at all (io_uring): 10 or 11
    while bad(&target.counters()) < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let c = target.counters();
    assert!((7..=8).contains(&since(&c, DropReason::WrongSize)), "{c:?}");
    assert_eq!(
        since(&c, DropReason::HeaderMac) + since(&c, DropReason::LowOrderAlpha),
        3,
        "{c:?}"
    );
    deliver(&net, 5);
}

#[test]
fn bad_configuration_and_key_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("mixed-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, "this is not = [ toml").unwrap();
    let err = NodeConfig::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("invalid configuration") && err.contains("node.toml"),
        "{err}"
    );
    std::fs::write(
        &path,
        "key_dir = \"k\"\nlisten = \"127.0.0.1:0\"\nbandwidth = 10\n[[authorities]]\nidentity = \"00\"\nurl = \"http://x\"\n",
    )
    .unwrap();
    let err = NodeConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("64 hex digits"), "{err}");
    std::fs::write(
        &path,
        format!(
            "key_dir = \"k\"\nlisten = \"127.0.0.1:0\"\nbandwidth = 0\n[[authorities]]\nidentity = \"{}\"\nurl = \"http://127.0.0.1:9\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let err = NodeConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("bandwidth"), "{err}");
    // [storage]: out of range, unknown keys, a passive provider, a store that cannot open
    let base = format!(
        "key_dir = \"k\"\nlisten = \"127.0.0.1:0\"\nbandwidth = 10\n{{}}\n[[authorities]]\nidentity = \"{}\"\nurl = \"http://127.0.0.1:9\"\n",
        "ab".repeat(32)
    );
    for (storage, want) in [
        ("[storage]\nmax_blocks = 0", "max_blocks"),
        ("[storage]\nretention_epochs = 0", "retention_epochs"),
        ("[storage]\nmax_block = 5", "unknown field"),
        ("passive = true\n[storage]", "cannot be passive"),
        ("[offline]\nstore_rate = 0", "store_rate must be"),
        ("[offline]\nfetch_rate = 1000", "fetch_rate must be"),
        ("[offline]\nfetch = 1", "unknown field"),
        ("[offline]\nidle_poll = 0", "idle_poll must be"),
    ] {
        std::fs::write(&path, base.replace("{}", storage)).unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{storage}: {err}");
    }
    std::fs::write(&path, base.replace("{}", "[storage]\ndir = \"blocks\"")).unwrap();
    let st = NodeConfig::load(&path).unwrap().storage.unwrap();
    assert_eq!(st.dir, dir.join("blocks"));
    assert_eq!(st.limits, storage::Limits::default());
    std::fs::write(&path, base.replace("{}", "[offline]\nfetch_rate = 2")).unwrap();
    let rates = NodeConfig::load(&path).unwrap().offline;
    assert_eq!((rates.store_rate, rates.fetch_rate), (1.0, 2.0));
    let err = NodeConfig::load(&dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");

    // a key file that is not a key, and one that cannot be read
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("identity.key"), "garbage").unwrap();
    let config = |key_dir| NodeConfig {
        key_dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: vec![],
        bandwidth: 10.0,
        cores: 1,
        io: IoChoice::Portable,
        metrics: None,
        passive: true,
        on_loop_collapse: engine::AlertPolicy::Withdraw,
        api_socket: None,
        storage: None,
        offline: Default::default(),
        authorities: vec![pki_client::AuthorityEndpoint {
            identity: pki_client::IdentityKey([1; 32]),
            url: "http://127.0.0.1:9".into(),
        }],
    };
    let err = node::Node::start(config(keys.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("identity.key") && err.contains("64 hex digits"),
        "{err}"
    );
    std::fs::remove_file(keys.join("identity.key")).unwrap();
    std::fs::create_dir(keys.join("identity.key")).unwrap();
    let err = node::Node::start(config(keys.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("identity.key") && err.contains("unreadable"),
        "{err}"
    );
    // a block store that cannot be opened stops the start, naming the store
    std::fs::remove_dir(keys.join("identity.key")).unwrap();
    std::fs::write(dir.join("not-a-dir"), "x").unwrap();
    let mut with_storage = config(keys.clone());
    with_storage.passive = false;
    with_storage.storage = Some(node::config::StorageConfig {
        dir: dir.join("not-a-dir"),
        limits: storage::Limits::default(),
    });
    let err = node::Node::start(with_storage).unwrap_err().to_string();
    assert!(
        err.contains("storage") && err.contains("not-a-dir"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fault_free_network_drops_nothing_for_keys_across_five_epoch_boundaries() {
    // packets built under the next epoch's key reach nodes a little before they install
    // it (their clocks and polls differ): they must be accepted, not counted as damage.
    // Counted from the first epoch every node has installed (the network's very first
    // install races by a poll: see docs/node.md)
    let net = LocalNetwork::start(&options(5, IoChoice::Auto, 1)).unwrap();
    let mut first = net.nodes.iter().filter_map(|n| n.epoch()).max().unwrap();
    while net.nodes.iter().any(|n| n.epoch() != Some(first)) {
        std::thread::sleep(Duration::from_millis(20));
        first = net.nodes.iter().filter_map(|n| n.epoch()).max().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let base: Vec<engine::Counters> = net.nodes.iter().map(|n| n.counters()).collect();
    let deadline = Instant::now() + Duration::from_secs(6 * net.params.epoch_seconds + 10);
    while net
        .nodes
        .iter()
        .any(|n| n.epoch().is_none_or(|e| e < first + 5))
    {
        assert!(Instant::now() < deadline, "the epochs did not advance");
        std::thread::sleep(Duration::from_millis(100));
    }
    deliver(&net, 5);
    for (i, node) in net.nodes.iter().enumerate() {
        let c = node.counters();
        let since = |r| c.drops(r) - base[i].drops(r);
        assert!(c.received > 500, "node {i} received too little: {c:?}");
        assert_eq!(
            (
                since(DropReason::HeaderMac),
                since(DropReason::NoKey),
                since(DropReason::WrongSize)
            ),
            (0, 0, 0),
            "node {i}: {c:?}"
        );
    }
}

#[test]
fn ipv4_ipv6_and_dual_stack_nodes_make_one_network() {
    // node i: IPv4 only, IPv6 only, or dual-stack ([::], publishing both loopbacks)
    let v4 = SocketAddr::from(([127, 0, 0, 1], 0));
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let net = LocalNetwork::start_on(&options(6, IoChoice::Auto, 1), |i| match i % 3 {
        0 => (v4, vec![]),
        1 => (v6, vec![]),
        _ => (any6, vec![v4, v6]),
    })
    .unwrap();
    assert_eq!(net.nodes[2].addrs().len(), 2);
    // every pair, IPv4 to IPv6 included, through mixes that can reach each other
    deliver(&net, 30);
    // at a loop rate of 1/s, with shaping replacing up to 3 loop slots in 4 while messages
    // arrive, a node's first loop may leave seconds after the deliveries: wait for it
    let deadline = Instant::now() + Duration::from_secs(20);
    while net.nodes.iter().any(|n| n.counters().loops_returned == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, node) in net.nodes.iter().enumerate() {
        let c = node.counters();
        assert!(
            c.received > 30,
            "node {i} ({}) hears little: {c:?}",
            node.addr()
        );
        assert!(c.loops_returned > 0, "node {i}: no loop came back: {c:?}");
        assert_eq!(node.metrics().send_failed(), 0, "node {i}: sends refused");
        assert_eq!(
            c.drops(DropReason::UnreachableNextHop),
            0,
            "node {i}: asked to forward where it cannot: {c:?}"
        );
        let unreachable = if i % 3 == 2 { 0 } else { 2 };
        assert_eq!(node.metrics().unreachable_nodes(), unreachable, "node {i}");
    }
}

#[test]
fn a_nodes_port_is_its_own() {
    let net = LocalNetwork::start(&options(4, IoChoice::Auto, 1)).unwrap();
    let taken = net.nodes[0].addr();
    // a second node on the address fails at start, saying why
    let d = std::env::temp_dir().join(format!("mixed-port-{}", std::process::id()));
    let mut config = NodeConfig {
        key_dir: d.join("keys"),
        listen: taken,
        advertise: vec![],
        bandwidth: 20.0,
        cores: 2,
        io: IoChoice::Auto,
        metrics: None,
        passive: true,
        on_loop_collapse: engine::AlertPolicy::Withdraw,
        api_socket: None,
        storage: None,
        offline: Default::default(),
        authorities: net.endpoints.clone(),
    };
    let err = node::Node::start(config.clone()).unwrap_err().to_string();
    assert!(err.contains("in use by another mixed node"), "{err}");
    // so does any other program's socket, SO_REUSEPORT or not (a one-core node does not
    // share its port)
    for reuse in [false, true] {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_port(reuse).unwrap();
        assert!(s.bind(&taken.into()).is_err(), "bound with reuse {reuse}");
    }
    // a two-core node shares its port between its cores only: a socket that joins the group
    // later gets no datagram, the node gets them all, spread over both cores
    config.listen = "127.0.0.1:0".parse().unwrap();
    let two = node::Node::start(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while two.epoch().is_none() {
        assert!(Instant::now() < deadline, "no consensus");
        std::thread::sleep(Duration::from_millis(50));
    }
    let intruder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    intruder.set_reuse_port(true).unwrap();
    intruder.bind(&two.addr().into()).unwrap();
    let intruder: UdpSocket = intruder.into();
    intruder
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    for _ in 0..64 {
        let mut d = [0u8; 1452];
        rand_chacha::rand_core::Rng::fill_bytes(&mut rng, &mut d);
        sender.send_to(&d, two.addr()).unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(
        intruder.recv_from(&mut buf).is_err(),
        "the intruder got a datagram"
    );
    let refused =
        |c: &engine::Counters| c.drops(DropReason::HeaderMac) + c.drops(DropReason::LowOrderAlpha);
    let deadline = Instant::now() + Duration::from_secs(3);
    while refused(&two.counters()) < 64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(refused(&two.counters()), 64, "{:?}", two.counters());
    let per_core = two.metrics().received_per_core();
    assert!(per_core.iter().all(|&n| n > 10), "{per_core:?}");
    drop(two);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn with_the_authorities_down_nodes_carry_the_consensus_forward_and_keep_delivering() {
    let mut net = LocalNetwork::start(&options(5, IoChoice::Auto, 1)).unwrap();
    // two of three down: no consensus gets a majority of signatures
    // counted from here (a brand-new network's first install may race by a poll)
    std::thread::sleep(Duration::from_millis(500));
    let base: Vec<engine::Counters> = net.nodes.iter().map(|n| n.counters()).collect();
    net.authorities.pop().unwrap().stop();
    net.authorities.pop().unwrap().stop();
    let before = net.nodes.iter().filter_map(|n| n.epoch()).max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(4 * net.params.epoch_seconds);
    while !net.nodes.iter().all(|n| n.metrics().carried()) {
        assert!(
            Instant::now() < deadline,
            "no node carried the consensus forward"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let carried = net.nodes[0].epoch().unwrap();
    assert!(carried > before);
    assert!(net.nodes.iter().all(|n| n.epoch() == Some(carried)));
    // the keys rotated with it: messages still go around, nothing fails the MAC
    deliver(&net, 10);
    for (i, node) in net.nodes.iter().enumerate() {
        let c = node.counters();
        let since = |r| c.drops(r) - base[i].drops(r);
        assert_eq!(
            (since(DropReason::HeaderMac), since(DropReason::NoKey)),
            (0, 0),
            "node {i}: {c:?}"
        );
    }
}
