//! Three directory authorities on loopback: registration, votes, a consensus signed by all,
//! the loss of one authority, bad submissions, a restart mid-epoch, withdrawal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use common::{EPOCH_SECONDS, Net};
use pki_client::{
    IdentitySecret, SignedDescriptor, UnverifiedConsensus, VerifyError, Which, Withdrawal,
};

#[test]
fn twenty_nodes_register_and_three_authorities_serve_one_consensus_signed_by_all() {
    let mut net = Net::start(3, 1);
    let nodes: Vec<(IdentitySecret, SignedDescriptor)> = (0..20).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    let epoch = net.next_voted_epoch();
    let client = net.client();
    let checked = net.wait_for(&client, epoch);
    // every authority serves the same bytes, carrying all three signatures
    let first = net.raw(0, epoch);
    for i in 1..3 {
        assert_eq!(net.raw(i, epoch), first, "authority {i} serves other bytes");
    }
    let signed = pki_client::SignedConsensus::from_bytes(&first).unwrap();
    assert_eq!(signed.signatures().len(), 3);
    let now = common::unix_now() as u64;
    let (after, _) = checked.validity();
    let verified = checked.check_valid_at(after.max(now), 5).unwrap();
    assert_eq!(verified.signed_by().len(), 3);
    assert_eq!(verified.epoch(), epoch);
    assert_eq!(verified.nodes().len(), 20);
    for (_, d) in &nodes {
        let node = verified
            .node(&d.descriptor().identity.node_id())
            .expect("registered node");
        assert_eq!(node.bandwidth, d.descriptor().bandwidth);
        assert_eq!(Some(node.mix_key), d.descriptor().mix_keys.for_epoch(epoch));
    }
    assert!(verified.consensus().to_json().contains("\"node_id\""));
}

#[test]
fn two_of_three_authorities_still_produce_a_consensus_clients_accept() {
    let mut net = Net::start(3, 2);
    let nodes: Vec<_> = (0..6).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    net.stop(2);
    let epoch = net.next_voted_epoch();
    let client = net.client();
    let checked = net.wait_for(&client, epoch);
    let signed = pki_client::SignedConsensus::from_bytes(&net.raw(0, epoch)).unwrap();
    assert_eq!(
        signed.signatures().len(),
        2,
        "two signatures, from the live authorities"
    );
    assert_eq!(net.raw(1, epoch), net.raw(0, epoch));
    let (after, _) = checked.validity();
    let verified = checked.check_valid_at(after, 0).unwrap();
    assert_eq!(verified.nodes().len(), 6);
}

#[test]
fn forged_malformed_oversized_and_replayed_descriptors_are_refused_and_change_nothing() {
    let mut net = Net::start(3, 3);
    let (_, good) = net.node(1, 5);
    assert_eq!(net.post(0, "/v1/descriptors", &good.to_bytes()).0, 201);
    let before = net.status(0);

    // forged: a descriptor naming one key, signed by another
    let (_, other) = net.node(2, 1);
    let mut forged = good.to_bytes();
    let n = forged.len();
    forged[n - 64..].copy_from_slice(&other.to_bytes()[other.to_bytes().len() - 64..]);
    let (status, reason) = net.post(0, "/v1/descriptors", &forged);
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("bad signature"), "{reason}");

    // altered after signing
    let mut altered = good.to_bytes();
    altered[40] ^= 1;
    let (status, reason) = net.post(0, "/v1/descriptors", &altered);
    assert!(status == 403 || status == 400, "{status} {reason}");

    // malformed
    let (status, reason) = net.post(0, "/v1/descriptors", b"not a descriptor at all, clearly");
    assert_eq!(status, 400, "{reason}");
    assert!(reason.contains("malformed"), "{reason}");

    // oversized: beyond the body limit
    let (status, _) = net.post(0, "/v1/descriptors", &vec![7u8; 8192]);
    assert_eq!(status, 413);

    // replayed: the same descriptor again, and an older one
    let (status, reason) = net.post(0, "/v1/descriptors", &good.to_bytes());
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("replayed"), "{reason}");

    // a withdrawal with a stale sequence is a replay too
    let (status, _) = net.post(0, "/v1/withdrawals", &[1u8; 100]);
    assert_eq!(status, 400);

    assert_eq!(net.status(0)["descriptors"], before["descriptors"]);
    assert_eq!(net.status(0)["withdrawals"], before["withdrawals"]);
}

#[test]
fn an_authority_restarted_mid_epoch_still_holds_every_registration() {
    let mut net = Net::start(3, 4);
    let nodes: Vec<_> = (0..20).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    assert_eq!(net.status(0)["descriptors"], 20);
    net.restart(0);
    assert_eq!(
        net.status(0)["descriptors"],
        20,
        "registrations lost in a restart"
    );
    // and it still takes part: the next consensus carries its signature and every node
    let epoch = net.next_voted_epoch();
    let client = net.client_of(0);
    let checked = net.wait_for(&client, epoch);
    let (after, _) = checked.validity();
    let verified = checked.check_valid_at(after, 0).unwrap();
    assert_eq!(verified.nodes().len(), 20);
    assert!(verified.signed_by().contains(&net.endpoints[0].identity));
}

#[test]
fn a_withdrawn_node_is_absent_from_the_next_consensus() {
    let mut net = Net::start(3, 5);
    let nodes: Vec<_> = (0..5).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    let epoch = net.next_voted_epoch();
    let client = net.client();
    let first = net.wait_for(&client, epoch);
    let (after, _) = first.validity();
    assert_eq!(first.check_valid_at(after, 0).unwrap().nodes().len(), 5);

    // withdraw node 0 from the next epoch that is still to be voted on
    let (secret, d) = &nodes[0];
    let from = net.next_voted_epoch();
    let withdrawal = Withdrawal {
        identity: d.descriptor().identity,
        sequence: d.descriptor().sequence + 1,
        from_epoch: from,
    }
    .sign(secret)
    .unwrap();
    for (url, r) in client.withdraw(&withdrawal) {
        r.unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    // the same withdrawal again is a replay
    assert_eq!(
        net.post(0, "/v1/withdrawals", &withdrawal.to_bytes()).0,
        409
    );

    let later = net.wait_for(&client, from);
    let (after, _) = later.validity();
    let verified = later.check_valid_at(after, 0).unwrap();
    assert_eq!(verified.nodes().len(), 4);
    assert!(verified.node(&d.descriptor().identity.node_id()).is_none());
}

#[test]
fn too_many_requests_from_one_address_are_rate_limited() {
    let mut net = Net::start(1, 6);
    net.limits.requests_per_second = 1.0;
    net.limits.burst = 3.0;
    net.restart(0);
    let statuses: Vec<u16> = (0..6)
        .map(|_| net.post(0, "/v1/descriptors", b"x").0)
        .collect();
    assert_eq!(&statuses[..3], &[400, 400, 400]);
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
}

#[test]
fn the_status_endpoint_is_rate_limited_too() {
    let mut net = Net::start(1, 16);
    net.limits.requests_per_second = 1.0;
    net.limits.burst = 3.0;
    net.restart(0);
    let statuses: Vec<u16> = (0..6).map(|_| net.get(0, "/v1/status")).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
}

#[test]
fn a_consensus_altered_in_transit_is_refused_with_the_reason() {
    let mut net = Net::start(3, 7);
    let (_, d) = net.node(1, 1);
    net.register(&d);
    let epoch = net.next_voted_epoch();
    let client = net.client();
    net.wait_for(&client, epoch);
    let mut bytes = net.raw(0, epoch);
    // a byte of the body (past the magic and the length) changed
    bytes[40] ^= 0x01;
    let err = UnverifiedConsensus::from_bytes(&bytes)
        .and_then(|u| u.check_signatures(client.authorities()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::NotEnoughSignatures {
                valid: 0,
                invalid: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("altered"), "{err}");
    // "current" serves the consensus of the current epoch once there is one
    std::thread::sleep(std::time::Duration::from_secs(
        (net.params.epoch_start(epoch) as f64 - common::unix_now()).max(0.0) as u64 + 1,
    ));
    let current = client.fetch(Which::Current, &mut net.rng).unwrap();
    assert_eq!(current.epoch(), epoch);
    let _ = EPOCH_SECONDS;
}

#[test]
fn a_client_caches_the_consensus_and_fetches_the_next_one_ahead() {
    let mut net = Net::start(3, 8);
    let (_, d) = net.node(1, 1);
    net.register(&d);
    let cache = common::TempDir::new("client-cache");
    let client = pki_client::PkiClient::new(
        net.endpoints.clone(),
        std::time::Duration::from_secs(2),
        Some(cache.0.clone()),
    )
    .unwrap();
    let epoch = net.next_voted_epoch();
    let checked = net.wait_for(&client, epoch);
    assert!(cache.0.join(format!("consensus-{epoch}.bin")).exists());
    // the JSON rendering for people
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let json = agent
        .get(&format!(
            "{}/v1/consensus/{epoch}?format=json",
            net.endpoints[0].url
        ))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(json.contains(&d.descriptor().identity.to_hex()), "{json}");
    // the next epoch's consensus, fetched ahead of time, before its epoch starts
    let (after, _) = checked.validity();
    let first_bytes = checked.to_bytes();
    let current = checked.check_valid_at(after, 0).unwrap();
    let ahead = loop {
        let now = common::unix_now() as u64;
        match client.fetch_next(&current, now.max(after), &mut net.rng) {
            Ok(c) => break c,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    assert_eq!(ahead.epoch(), epoch + 1);
    // with every authority gone, the cache still answers
    for i in 0..3 {
        net.stop(i);
    }
    let cached = client.fetch(Which::Epoch(epoch), &mut net.rng).unwrap();
    assert_eq!(cached.to_bytes(), first_bytes);
    assert!(client.fetch(Which::Epoch(epoch + 5), &mut net.rng).is_err());
}

#[test]
fn authorities_back_from_an_outage_adopt_the_registrations_they_missed() {
    // two of three authorities are down while every node registers; they come back in the
    // middle of an epoch, before its vote, with none of those registrations: the consensus
    // must still list every node (before: they voted with nothing and it listed none)
    let mut net = Net::start(3, 11);
    // a network that has run: every authority holds votes and a consensus
    let client = net.client();
    net.wait_for(&client, 1);
    net.stop(1);
    net.stop(2);
    let nodes: Vec<_> = (0..12).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    assert_eq!(net.status(0)["descriptors"], 12);
    // back at a tenth to a quarter into an epoch: before its vote, past its start
    let p = net.params;
    loop {
        let now = common::unix_now();
        let e = p.epoch_at(now as u64);
        let into = (now - p.epoch_start(e) as f64) / p.epoch_seconds as f64;
        if (0.1..0.25).contains(&into) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let epoch = net.epoch_now() + 1;
    net.restart(1);
    net.restart(2);
    for i in [1, 2] {
        let checked = net.wait_for(&net.client_of(i), epoch);
        let (after, _) = checked.validity();
        let verified = checked.check_valid_at(after, 0).unwrap();
        assert_eq!(
            verified.nodes().len(),
            12,
            "authority {i}'s consensus shrank"
        );
        assert!(verified.signed_by().len() >= 2);
        assert_eq!(
            net.status(i)["descriptors"],
            12,
            "authority {i} did not adopt"
        );
    }
}

#[test]
fn a_node_that_stops_registering_leaves_the_consensus_two_epochs_later() {
    // a crash: no withdrawal, only no new registration
    let mut net = Net::start(3, 13);
    let client = net.client();
    net.wait_for(&client, 1);
    // registered in epoch `made`, before its vote: counted up to made + 2
    let made = loop {
        let e = net.next_voted_epoch() - 1;
        if e == net.epoch_now() {
            break e;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut nodes: Vec<_> = (0..5).map(|i| net.node(i, 1)).collect();
    for (_, d) in &nodes {
        net.register(d);
    }
    let crashed = nodes[0].1.descriptor().identity.node_id();
    // the others register every epoch, as nodes do
    let listed = |net: &mut Net, epoch: u64| {
        let c = net.wait_for(&client, epoch);
        let (after, _) = c.validity();
        c.check_valid_at(after, 0).unwrap()
    };
    for epoch in made + 1..=made + 3 {
        while net.epoch_now() < epoch {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        for (i, n) in nodes.iter_mut().enumerate().skip(1) {
            // same keys, a new registration (a newer sequence)
            let mut d = n.1.descriptor().clone();
            d.sequence = (common::unix_now() * 1000.0) as u64 + i as u64;
            n.1 = d.sign(&n.0).unwrap();
            net.register(&n.1);
        }
    }
    let c = listed(&mut net, made + 2);
    assert_eq!(
        c.nodes().len(),
        5,
        "a missed registration must cost nothing"
    );
    assert!(c.node(&crashed).is_some());
    let c = listed(&mut net, made + 3);
    assert_eq!(c.nodes().len(), 4, "the crashed node is still listed");
    assert!(c.node(&crashed).is_none());
}

#[test]
fn slow_and_idle_connections_are_closed_and_do_not_block_others() {
    use std::io::{Read, Write};
    let net = Net::start(3, 17);
    let addr = net.addr(0);
    // fifty clients that start a request and never finish it, fifty that send nothing
    let mut held: Vec<std::net::TcpStream> = (0..100)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    // meanwhile the authority answers everyone else
    assert_eq!(net.get(0, "/v1/status"), 200);
    let start = std::time::Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(dirauth::timed::CONNECTION_LIFETIME * 2))
            .unwrap();
        let mut buf = [0u8; 256];
        // closed by the server (0 bytes or a reset), not left open
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    !text.contains("200 OK"),
                    "an unfinished request was answered: {text}"
                );
            }
        }
    }
    let took = start.elapsed();
    assert!(
        took < dirauth::timed::CONNECTION_LIFETIME * 2,
        "slow connections held for {took:?}"
    );
    assert_eq!(net.get(0, "/v1/status"), 200);
}
