//! The anonymity API on a local network: the Rust API (socketanon ... closeanon), the local
//! API socket with its framing, and bad input at every door.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use local_client::{Client, Code, Frame};
use node::api::{App, MessengerEvent, PkParams, SendOptions, SocketParams, socketanon};
use node::demo::{LocalNetwork, LocalOptions};
use node::{IoChoice, NodeConfig};

fn network() -> LocalNetwork {
    LocalNetwork::start(&LocalOptions {
        nodes: 6,
        epoch_seconds: 4,
        bandwidth: 200.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap()
}

/// Waits for a frame matching `want` on `client`.
fn wait_frame(client: &mut Client, want: impl Fn(&Frame) -> bool, what: &str) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match client.recv(Duration::from_millis(200)) {
            Ok(f) if want(&f) => return f,
            Ok(_) => {}
            Err(e) if e.code == Code::Timeout => {}
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: nothing in 30 s")
}

#[test]
fn the_local_socket_carries_messages_replies_and_refuses_bad_input() {
    let net = network();
    let a_path = net.nodes[1].api_socket().unwrap().to_path_buf();
    let b_path = net.nodes[2].api_socket().unwrap().to_path_buf();
    // owner only
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&a_path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    let mut a = Client::connect(&a_path, Some(3)).unwrap();
    let mut b = Client::connect(&b_path, Some(5)).unwrap();
    assert_eq!(b.node_id(), net.nodes[2].node_id());
    // a contact for offline delivery: an identity key, or a clear refusal
    a.add_contact(net.nodes[2].identity_key().0).unwrap();
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2; // y = 2 is on no Edwards point of curve25519
    let err = a.add_contact(not_a_point).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");

    // a 20 KiB message with the sender revealed and reply SURBs
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
    let options = SendOptions {
        reply_surbs: 6,
        reveal_identity: true,
        port: 5,
        ..SendOptions::default()
    };
    let id = a.send(b.node_id(), &data, options).unwrap();
    let got = wait_frame(
        &mut b,
        |f| matches!(f, Frame::Message { .. }),
        "message at b",
    );
    let Frame::Message {
        id: got_id,
        port,
        sender,
        handle,
        data: got_data,
        ..
    } = got
    else {
        unreachable!()
    };
    assert_eq!((got_id, port), (id, 5));
    assert_eq!(got_data, data);
    let sender = pki_client::IdentityKey(sender.expect("revealed sender"));
    assert_eq!(sender.node_id(), net.nodes[1].node_id());
    wait_frame(
        &mut a,
        |f| matches!(f, Frame::Acknowledged { id: i, .. } if *i == id),
        "ACK at a",
    );
    // the reply travels through the SURBs back to a's port 3
    let reply_id = b.reply(&handle, 3, b"roger").unwrap();
    let r = wait_frame(&mut a, |f| matches!(f, Frame::Message { .. }), "reply at a");
    assert!(
        matches!(&r, Frame::Message { in_reply_to: Some(i), data, .. } if *i == id && data == b"roger"),
        "{r:?} (reply {reply_id:?})"
    );

    // bad requests: clear errors, the session goes on
    let err = a.send([7; 32], b"x", SendOptions::default()).unwrap_err();
    assert_eq!(err.code, Code::UnknownDestination, "{err}");
    let hops = SendOptions {
        hops: Some(9),
        ..SendOptions::default()
    };
    assert_eq!(
        a.send(b.node_id(), b"x", hops).unwrap_err().code,
        Code::InvalidArgument
    );
    let big = vec![0u8; a.max_message() + 1];
    assert_eq!(
        a.send(b.node_id(), &big, SendOptions::default())
            .unwrap_err()
            .code,
        Code::TooLarge
    );
    assert_eq!(
        a.reply(b"not a handle", 0, b"x").unwrap_err().code,
        Code::InvalidArgument
    );
    // the same oversized message sent raw: the node refuses it, not only the client
    let mut raw = UnixStream::connect(&a_path).unwrap();
    raw.write_all(&Frame::Hello { port: None }.encode())
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let welcome = anon::local::read_frame(&mut raw).unwrap();
    assert!(matches!(welcome, Frame::Welcome { .. }), "{welcome:?}");
    let send = Frame::Send {
        request: 9,
        destination: b.node_id(),
        options: SendOptions::default(),
        data: vec![1u8; (1 << 20) + 1],
    };
    raw.write_all(&send.encode()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let f = anon::local::read_frame(&mut raw).unwrap();
    assert!(
        matches!(
            f,
            Frame::Error {
                request: 9,
                code: Code::TooLarge,
                ..
            }
        ),
        "{f:?}"
    );
    // a second application on a taken port
    let err = Client::connect(&b_path, Some(5)).unwrap_err();
    assert_eq!(err.code, Code::PortInUse);

    // garbage: an error frame, the connection closed, the node serving the next client
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff, 0xff, 0xff, 0xff, 1][..],
        &[0, 0, 0, 3, 0x01, b'M', b'I'][..],
    ] {
        let mut s = UnixStream::connect(&a_path).unwrap();
        s.write_all(junk).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let f = anon::local::read_frame(&mut &answer[..]);
        assert!(
            matches!(f, Ok(Frame::Error { request: 0, .. })),
            "junk {junk:?}: {f:?}"
        );
    }
    // a client that vanishes mid-frame
    let mut s = UnixStream::connect(&a_path).unwrap();
    s.write_all(&[0, 0, 1, 0, 0x02, 1, 2]).unwrap();
    drop(s);
    let id2 = a.send(b.node_id(), b"still serving", options).unwrap();
    wait_frame(
        &mut b,
        |f| matches!(f, Frame::Message { id, .. } if *id == id2),
        "after garbage",
    );
}

#[test]
fn socketanon_binds_unbinds_and_closeanon_erases_the_mix_keys() {
    let net = network();
    let port1 = SendOptions {
        port: 1,
        ..SendOptions::default()
    };
    let dir = std::env::temp_dir().join(format!("mixed-api-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = NodeConfig {
        key_dir: dir.join("keys"),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: vec![],
        bandwidth: 200.0,
        cores: 1,
        io: IoChoice::Auto,
        metrics: None,
        passive: true,
        on_loop_collapse: engine::AlertPolicy::Withdraw,
        api_socket: None,
        storage: None,
        offline: Default::default(),
        authorities: net.endpoints.clone(),
    };
    let socket = socketanon(SocketParams { config, port: 1 }).unwrap();
    let node = socket.node().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.epoch().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.epoch().is_some(), "no consensus");
    let listed = node.metrics().nodes();
    assert!(!node.is_bound());

    // passive: sends, and hears the ACK through a SURB that ends at its own address
    let peer = App::open(&net.nodes[3], Some(1)).unwrap();
    let id = socket
        .sendanon(net.nodes[3].node_id(), b"from a passive node", port1)
        .unwrap();
    let mut acked = false;
    socket
        .recvanon(
            |e| {
                acked |= matches!(e, MessengerEvent::Acknowledged { id: i, .. } if i == id);
                !acked
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(acked, "no ACK for the passive node");
    let got = peer.recv(Duration::from_secs(5)).unwrap();
    assert!(matches!(got, MessengerEvent::Received(r) if r.data == b"from a passive node"));
    // nobody can write to a passive node: it is not in the consensus
    let other = App::open(&net.nodes[4], None).unwrap();
    let err = other
        .send(socket.node_id().unwrap(), b"x", SendOptions::default())
        .unwrap_err();
    assert_eq!(err.code, Code::UnknownDestination);

    // bindanon: in the consensus within two epochs; too much bandwidth is refused
    assert_eq!(
        socket.bindanon(1e9, &PkParams::default()).unwrap_err().code,
        Code::InvalidArgument
    );
    socket.bindanon(100.0, &PkParams::default()).unwrap();
    assert!(node.is_bound());
    let deadline = Instant::now() + Duration::from_secs(14);
    while node.metrics().nodes() <= listed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        node.metrics().nodes(),
        listed + 1,
        "not in the consensus after bindanon"
    );
    // now others can write to it, once their own control thread installed that epoch too
    let deadline = Instant::now() + Duration::from_secs(5);
    let to_me = loop {
        match other.send(socket.node_id().unwrap(), b"hello, bound node", port1) {
            Ok(id) => break id,
            Err(e) if e.code == Code::UnknownDestination && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("send to the bound node: {e}"),
        }
    };
    let mut got = false;
    socket
        .recvanon(
            |e| {
                got |= matches!(&e, MessengerEvent::Received(r) if r.id == to_me);
                !got
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert!(got, "bound node did not receive");
    // unbindanon: out of the consensus again
    socket.unbindanon().unwrap();
    let deadline = Instant::now() + Duration::from_secs(14);
    while node.metrics().nodes() > listed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        node.metrics().nodes(),
        listed,
        "still in the consensus after unbindanon"
    );

    // closeanon: the node stops, its mix keys are erased, the identity stays
    let keys = dir.join("keys");
    socket.closeanon().unwrap();
    let names: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("mix-")), "{names:?}");
    assert!(names.iter().any(|n| n == "identity.key"), "{names:?}");
    // a session with a stopped node: a clear error
    drop(peer);
    let lone = {
        let n = net.nodes.len();
        App::open(&net.nodes[n - 1], None).unwrap()
    };
    drop(net);
    let err = lone
        .send([1; 32], b"x", SendOptions::default())
        .unwrap_err();
    assert_eq!(err.code, Code::Closed, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_application_with_too_many_messages_in_flight_gets_busy() {
    let net = network();
    let app = App::open(&net.nodes[0], None).unwrap();
    let dest = net.nodes[1].node_id();
    let mut sent = 0;
    let err = loop {
        match app.send(dest, b"one of many", SendOptions::default()) {
            Ok(_) => sent += 1,
            Err(e) if e.code == Code::NoConsensus => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => break e,
        }
        assert!(sent < 2000, "no limit on messages in flight");
    };
    assert_eq!(err.code, Code::Busy, "{err}");
    assert!(err.text.contains("256 messages in flight"), "{err}");
    assert!(sent >= 256, "refused after {sent}");
    // another application of the same node is not held up by this one
    let other = App::open(&net.nodes[0], None).unwrap();
    other
        .send(dest, b"mine goes", SendOptions::default())
        .unwrap();
}

#[test]
fn the_local_socket_serves_at_most_64_applications_and_says_so() {
    let net = network();
    let path = net.nodes[1].api_socket().unwrap().to_path_buf();
    let clients: Vec<Client> = (0..64)
        .map(|_| Client::connect(&path, None).unwrap())
        .collect();
    let err = Client::connect(&path, None).unwrap_err();
    assert_eq!(err.code, Code::Busy, "{err}");
    assert!(err.text.contains("at most 64"), "{err}");
    drop(clients);
    // the sessions are released as their clients go
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&path, None) {
            Ok(_) => break,
            Err(e) if e.code == Code::Busy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("after the 64 left: {e}"),
        }
    }
}

#[test]
fn a_leaving_node_withdraws_keeps_forwarding_and_stops_once_out_of_the_consensus() {
    let mut net = network();
    let listed = net.nodes[0].metrics().nodes();
    let leaving = net.nodes.remove(3);
    assert!(
        leaving.is_listed(),
        "a bound node of the demo is in the consensus"
    );
    let start = Instant::now();
    assert!(
        leaving.leave(Duration::from_secs(60)),
        "still listed after 60 s"
    );
    // out within the next consensus or the one after (4 s epochs), then the previous key's
    // grace (30 s) forwarding what was built under the consensus that listed it
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(14 + 31),
        "{took:?}"
    );
    assert!(!leaving.is_listed());
    // it forwarded all along: nothing routed through it was refused while it was listed
    assert_eq!(
        leaving.counters().drops(engine::DropReason::NotForwarding),
        0
    );
    leaving.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.nodes[0].metrics().nodes() >= listed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        net.nodes[0].metrics().nodes(),
        listed - 1,
        "the others see it gone"
    );
}
