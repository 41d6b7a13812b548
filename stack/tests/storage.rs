//! Storage providers on the deterministic network: requests travel the mixnet as messages
//! with reply SURBs, each gets exactly one response back through them, blocks PUT are read
//! back and opened by the reader, and a provider's emitted rate does not follow its
//! request load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::collections::HashMap;

mod common;

use anon::{MessengerEvent, SendOptions};
use common::Dir;
use scheduler::Timestamp;
use stack::services::{SERVICE_PORT, Served};
use stack::sim::{LinkModel, Sim, params};
use storage::Limits;
use storage::bacap::{Position, WriteCap};
use storage::protocol::{self, Response, Status};

fn at(seconds: f64) -> Timestamp {
    Timestamp::from_nanos((seconds * 1e9) as u64)
}

const NODES: usize = 10;
const PROVIDERS: [usize; 2] = [8, 9];

fn net(seed: u64, dir: &Dir) -> Sim<Served> {
    let limits = Limits {
        reserve_bytes: 0,
        ..Limits::default()
    };
    Sim::served(
        NODES,
        seed,
        params(3),
        100.0,
        LinkModel::PERFECT,
        &PROVIDERS,
        &dir.0,
        limits,
    )
    .unwrap()
}

fn request(sim: &mut Sim<Served>, from: usize, to: usize, bytes: &[u8]) -> [u8; 16] {
    let now = sim.now();
    let dest = sim.node_id(to);
    let options = SendOptions {
        reply_surbs: 4,
        port: SERVICE_PORT,
        ..SendOptions::default()
    };
    sim.messenger(from).send(now, dest, bytes, options).unwrap()
}

/// The responses node `i` received, by the request they answer.
fn responses(sim: &Sim<Served>, i: usize) -> HashMap<[u8; 16], Vec<Response>> {
    let mut out: HashMap<[u8; 16], Vec<Response>> = HashMap::new();
    for (_, e) in &sim.nodes[i].events {
        if let MessengerEvent::Received(r) = e
            && r.port == SERVICE_PORT
        {
            let response = Response::decode(&r.data).expect("a response of the protocol");
            out.entry(r.in_reply_to.expect("through our SURBs"))
                .or_default()
                .push(response);
        }
    }
    out
}

#[test]
fn blocks_put_through_the_mixnet_are_read_back_one_response_per_request() {
    let seed = 31;
    let dir = Dir::new("sp-roundtrip");
    let mut sim = net(seed, &dir);
    sim.run_until(at(3.0)); // loops measure q first
    let cap = WriteCap::new([5; 32], Position::new(77, [6; 32]));
    let mut puts = Vec::new();
    let mut p = cap.start().clone();
    for k in 0..40u64 {
        let s = cap
            .box_at(&p)
            .unwrap()
            .seal(format!("symbol {k}").as_bytes())
            .unwrap();
        let sp = PROVIDERS[(k % 2) as usize];
        let req = protocol::encode_put(&k.to_be_bytes(), &s.box_id, &s.signature, &s.block);
        puts.push((request(&mut sim, 0, sp, &req), sp, p.clone()));
        p = p.next().unwrap();
    }
    sim.run_until(at(25.0));
    let got = responses(&sim, 0);
    for (k, (id, _, _)) in puts.iter().enumerate() {
        let r = got
            .get(id)
            .unwrap_or_else(|| panic!("seed {seed}: PUT {k} unanswered"));
        assert_eq!(r.len(), 1, "one response per request");
        assert_eq!(r[0].status, Status::Stored, "PUT {k}");
        assert_eq!(r[0].tag, (k as u64).to_be_bytes());
    }
    for sp in PROVIDERS {
        let s = sim.storage(sp).unwrap();
        assert_eq!(s.provider().store().stats().blocks, 20, "provider {sp}");
        assert_eq!(s.counts().answered, s.provider().counts().requests);
        assert_eq!(s.counts().no_surbs + s.counts().reply_failed, 0);
    }
    // read back: the reader derives the boxes from its capability alone
    let read = cap.read_cap();
    let mut gets = Vec::new();
    for (k, (_, sp, pos)) in puts.iter().enumerate() {
        let id = read.box_at(pos).unwrap().id;
        gets.push((
            request(&mut sim, 3, *sp, &protocol::encode_get(&[0; 8], &id)),
            k,
        ));
    }
    // a box nobody wrote
    let empty = read.box_at(&p).unwrap().id;
    let empty_req = request(
        &mut sim,
        3,
        PROVIDERS[0],
        &protocol::encode_get(&[1; 8], &empty),
    );
    sim.run_until(at(50.0));
    let got = responses(&sim, 3);
    for (id, k) in &gets {
        let r = &got.get(id).unwrap_or_else(|| panic!("GET {k} unanswered"))[0];
        assert_eq!(r.status, Status::Found, "GET {k}");
        let b = read.box_at(&puts[*k].2).unwrap();
        assert_eq!(
            b.open(&r.sealed().unwrap()).unwrap(),
            format!("symbol {k}").as_bytes()
        );
    }
    assert_eq!(got[&empty_req][0].status, Status::Empty);
    // requests never reach an application on the providers
    for sp in PROVIDERS {
        assert!(
            !sim.nodes[sp]
                .events
                .iter()
                .any(|(_, e)| matches!(e, MessengerEvent::Received(_)))
        );
    }
}

/// Packets node `i` emitted.
fn emitted(sim: &Sim<Served>, i: usize) -> u64 {
    sim.nodes[i].engine().counters().total_sent()
}

#[test]
fn a_providers_emitted_rate_does_not_follow_its_request_load() {
    let seed = 32;
    let (d1, d2) = (Dir::new("sp-idle"), Dir::new("sp-loaded"));
    let mut idle = net(seed, &d1);
    let mut loaded = net(seed, &d2);
    let cap = WriteCap::new([8; 32], Position::new(0, [9; 32]));
    let mut p = cap.start().clone();
    // 60 s of virtual time; the loaded providers get a PUT or a GET every 100 ms
    let mut t = 2.0;
    idle.run_until(at(t));
    loaded.run_until(at(t));
    let base = (
        PROVIDERS.map(|i| emitted(&idle, i)),
        PROVIDERS.map(|i| emitted(&loaded, i)),
    );
    let mut k = 0u64;
    while t < 62.0 {
        let s = cap.box_at(&p).unwrap().seal(b"load").unwrap();
        let sp = PROVIDERS[(k % 2) as usize];
        let from = (k % 8) as usize;
        let req = if k % 3 == 2 {
            protocol::encode_get(&[0; 8], &s.box_id)
        } else {
            protocol::encode_put(&[0; 8], &s.box_id, &s.signature, &s.block)
        };
        request(&mut loaded, from, sp, &req);
        p = p.next().unwrap();
        k += 1;
        t += 0.1;
        idle.run_until(at(t));
        loaded.run_until(at(t));
    }
    let requests: u64 = PROVIDERS
        .iter()
        .map(|&i| loaded.storage(i).unwrap().provider().counts().requests)
        .sum();
    assert!(requests > 400, "{requests} requests reached the providers");
    for (j, &i) in PROVIDERS.iter().enumerate() {
        let a = emitted(&idle, i) - base.0[j];
        let b = emitted(&loaded, i) - base.1[j];
        let ratio = b as f64 / a as f64;
        eprintln!("provider {i}: idle {a}, loaded {b} packets in 60 s ({ratio:.4})");
        assert!(
            (0.99..=1.01).contains(&ratio),
            "provider {i}: {a} idle, {b} loaded"
        );
        assert_eq!(idle.storage(i).unwrap().provider().counts().requests, 0);
    }
}
