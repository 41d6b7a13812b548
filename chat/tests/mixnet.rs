//! The messenger on the deterministic mixnet (`stack::sim`: real engines, real Sphinx,
//! storage providers, virtual time): Alice on one device, Bob on two, the second linked
//! through the mixnet. A message reaches both of Bob's devices; Bob's answer from his
//! second device shows on his first; his first device, offline during a send, catches up
//! from the storage providers when it returns; once revoked, his second device gets nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::time::Duration;

use anon::offline::OfflineConfig;
use chat::{Chat, KdfParams, State};
use common::{Dir, SimPort};
use scheduler::Timestamp;
use stack::services::Served;
use stack::sim::{LinkModel, Sim, params};

const KDF: KdfParams = KdfParams::TESTS_ONLY;
const PROVIDERS: [usize; 2] = [10, 11];
const A: usize = 0;
const B1: usize = 1;
const B2: usize = 2;

struct Net {
    sim: Sim<Served>,
    chats: Vec<Option<Chat>>,
    cursors: Vec<usize>,
    down: Vec<bool>,
    t: f64,
}

impl Net {
    fn new(seed: u64, dir: &Dir) -> Net {
        let limits = storage::Limits {
            reserve_bytes: 0,
            ..storage::Limits::default()
        };
        let mut sim = Sim::served(
            12,
            seed,
            params(3),
            100.0,
            LinkModel::PERFECT,
            &PROVIDERS,
            &dir.sub("providers"),
            limits,
        )
        .unwrap();
        let config = OfflineConfig {
            store_rate: 10.0,
            fetch_rate: 10.0,
            request_timeout: Duration::from_secs(10),
            idle_poll: Duration::from_secs(3),
            ..OfflineConfig::default()
        };
        for node in [A, B1, B2] {
            sim.offline(node, config.clone(), &[]);
        }
        let mut net = Net {
            sim,
            chats: vec![None, None, None],
            cursors: vec![0; 3],
            down: vec![false; 3],
            t: 0.0,
        };
        net.run_for(3.0);
        net
    }

    fn port(&mut self, i: usize) -> (SimPort<'_>, &mut Option<Chat>) {
        (
            SimPort {
                sim: &mut self.sim,
                node: i,
                cursor: &mut self.cursors[i],
            },
            &mut self.chats[i],
        )
    }

    fn unix(&self) -> u64 {
        1_700_000_000 + self.t as u64
    }

    fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Chat, &mut SimPort<'_>, u64) -> R) -> R {
        let now = self.unix();
        let (mut port, chat) = self.port(i);
        f(chat.as_mut().unwrap(), &mut port, now)
    }

    fn set_down(&mut self, i: usize, down: bool) {
        self.down[i] = down;
        self.sim.set_down(i, down);
    }

    /// Runs the network half a second at a time, each device handling what came, until
    /// `done` holds; fails past `limit` virtual seconds. Returns the seconds it took.
    fn run_until(&mut self, limit: f64, what: &str, done: impl Fn(&Net) -> bool) -> f64 {
        let start = self.t;
        while !done(self) {
            if self.t - start >= limit {
                for (i, c) in self.chats.iter_mut().enumerate() {
                    if let Some(c) = c {
                        let notices: Vec<_> = std::iter::from_fn(|| c.poll_notice()).collect();
                        eprintln!("device {i}: {:?} {notices:?}", c.counters());
                    }
                }
                panic!("{what}: not within {limit} s");
            }
            self.step();
        }
        self.t - start
    }

    /// Runs the network for `seconds`.
    fn run_for(&mut self, seconds: f64) {
        let end = self.t + seconds;
        while self.t < end {
            self.step();
        }
    }

    fn step(&mut self) {
        self.t += 0.5;
        self.sim
            .run_until(Timestamp::from_nanos((self.t * 1e9) as u64));
        let now = self.unix();
        for i in 0..self.chats.len() {
            if self.down[i] {
                continue;
            }
            let (mut port, chat) = self.port(i);
            if let Some(c) = chat {
                while c.pump(&mut port, Duration::ZERO, now).unwrap() {}
            }
        }
    }

    fn chat(&self, i: usize) -> &Chat {
        self.chats[i].as_ref().unwrap()
    }

    fn has(&self, i: usize, id: &[u8; 16]) -> bool {
        self.chat(i).message(id).is_some()
    }
}

#[test]
fn two_users_three_devices_online_and_offline_delivery_and_revocation() {
    let dir = Dir::new("mixnet");
    let mut net = Net::new(7, &dir);
    let now = net.unix();
    let (mut port, slot) = net.port(A);
    *slot = Some(Chat::init(&dir.sub("a"), "a", KDF, &mut port, "alice-phone", now).unwrap());
    let (mut port, slot) = net.port(B1);
    let mut b1 = Chat::init(&dir.sub("b1"), "b", KDF, &mut port, "bob-phone", now).unwrap();
    let code = b1.link_start(now).unwrap();
    *slot = Some(b1);
    let (mut port, slot) = net.port(B2);
    *slot = Some(
        Chat::link(
            &dir.sub("b2"),
            "b2",
            KDF,
            &mut port,
            &code,
            "bob-laptop",
            now,
        )
        .unwrap(),
    );
    let took = net.run_until(60.0, "linking", |n| n.chat(B2).user().is_some());
    eprintln!("linked through the mixnet in {took} s");
    let (alice, bob) = (net.chat(A).user().unwrap(), net.chat(B1).user().unwrap());

    let bob_code = net.chat(B1).contact_code().unwrap();
    let alice_code = net.chat(A).contact_code().unwrap();
    net.with(A, |c, p, _| c.add_contact(p, &bob_code, "bob"))
        .unwrap();
    net.with(B1, |c, p, _| c.add_contact(p, &alice_code, "alice"))
        .unwrap();
    net.run_until(60.0, "contacts", |n| {
        n.chat(B2).contact(&alice).is_some() && n.chat(A).contact(&bob).is_some()
    });

    // online: to both of Bob's devices
    let hello = net
        .with(A, |c, p, now| c.send(p, &bob, "hello bob", None, now))
        .unwrap();
    let took = net.run_until(60.0, "hello", |n| n.has(B1, &hello) && n.has(B2, &hello));
    eprintln!("hello on both of Bob's devices after {took} s");
    net.run_until(30.0, "hello acknowledged", |n| {
        n.chat(A).message(&hello).unwrap().state == State::Delivered
    });

    // Bob answers from his laptop: Alice has it, and his phone shows it as his
    let answer = net
        .with(B2, |c, p, now| {
            c.send(p, &alice, "hi, from my laptop", None, now)
        })
        .unwrap();
    net.run_until(60.0, "answer", |n| n.has(A, &answer) && n.has(B1, &answer));
    let m = net.chat(B1).message(&answer).unwrap();
    assert_eq!((m.from_me, m.state), (true, State::OtherDevice));

    // Bob's phone is offline during a send; it catches up from the storage providers
    net.set_down(B1, true);
    let away = net
        .with(A, |c, p, now| {
            c.send(p, &bob, "written while your phone was off", None, now)
        })
        .unwrap();
    net.run_until(60.0, "laptop has it", |n| n.has(B2, &away));
    // the phone's copy: three attempts, then parked at the providers
    let took = net.run_until(200.0, "stored for the phone", |n| {
        n.chat(A)
            .message(&away)
            .unwrap()
            .targets
            .iter()
            .any(|(_, s)| *s == State::Stored)
    });
    eprintln!("parked for the phone after {took} s more");
    net.set_down(B1, false);
    let took = net.run_until(200.0, "the phone catches up", |n| n.has(B1, &away));
    let m = net.chat(B1).message(&away).unwrap();
    assert!(m.stored, "it came from the storage providers");
    eprintln!("the phone caught up {took} s after it returned");
    assert_eq!(
        net.chat(B1)
            .conversation(&alice)
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        [
            "hello bob",
            "hi, from my laptop",
            "written while your phone was off"
        ]
    );

    // the laptop is revoked: nothing sent afterwards reaches it
    let laptop = net.sim.nodes[B2].identity.public().0;
    net.with(B1, |c, p, _| c.revoke(p, &laptop)).unwrap();
    net.run_until(60.0, "Alice learns of the revocation", |n| {
        n.chat(A).contact(&bob).unwrap().list.list().devices.len() == 1
    });
    let after = net
        .with(A, |c, p, now| {
            c.send(p, &bob, "after the revocation", None, now)
        })
        .unwrap();
    net.run_until(60.0, "after the revocation", |n| n.has(B1, &after));
    net.run_for(20.0);
    assert!(
        !net.has(B2, &after),
        "the revoked laptop got a message sent after"
    );
}
