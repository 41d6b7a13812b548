//! `mixed demo --chat`: the messenger on a loopback network (docs/messenger.md). Two users,
//! three devices: Alice on her phone; Bob on his phone and on a laptop he links from it.
//! Alice writes to Bob (both of his devices get it), Bob answers from the laptop (the phone
//! shows it too), then Bob's phone is off while Alice writes again: the laptop gets it at
//! once, the phone's copy is parked at a storage provider, and the phone collects it when it
//! is back.

// a demo runs in real time
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use chat::{Chat, KdfParams, State};

use crate::chat::Embedded;
use crate::demo::{LocalNetwork, TempDir};
use crate::runtime::{Node, NodeError};

struct Device {
    name: &'static str,
    chat: Chat,
    transport: Embedded,
}

fn failed(what: impl std::fmt::Display) -> NodeError {
    NodeError::Api(anon::local::ApiError::new(
        anon::local::Code::Timeout,
        format!("chat demo: {what}"),
    ))
}

/// Handles what each device's node reports until `done` holds; the seconds it took.
fn pump(
    devices: &mut [Device],
    what: &str,
    within: Duration,
    done: impl Fn(&[Device]) -> bool,
) -> Result<f64, NodeError> {
    let start = Instant::now();
    while !done(devices) {
        if start.elapsed() > within {
            return Err(failed(format!("{what}: not within {within:?}")));
        }
        for d in devices.iter_mut() {
            let now = chat::cli::unix_now();
            while d
                .chat
                .pump(&mut d.transport, Duration::from_millis(10), now)
                .map_err(|e| failed(format!("{}: {e}", d.name)))?
            {}
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn chat_err(who: &str) -> impl Fn(chat::ChatError) -> NodeError + '_ {
    move |e| failed(format!("{who}: {e}"))
}

/// Runs the story on `net` (with its own provider and device nodes); the lines it printed.
pub fn run(net: &LocalNetwork, bandwidth: f64) -> Result<Vec<String>, NodeError> {
    let dir = TempDir::new("mixed-demo-chat")?;
    let config =
        |name: &str, storage: bool| crate::demo::node_config(net, &dir.0, name, bandwidth, storage);
    let provider = Node::start(config("provider", true))?;
    let alice_node = Node::start(config("alice-phone", false))?;
    let phone_node = Node::start(config("bob-phone", false))?;
    let laptop_node = Node::start(config("bob-laptop", false))?;
    crate::demo::wait_listed(net, &[&provider, &alice_node, &phone_node, &laptop_node])?;
    let mut out = vec![format!(
        "chat: a storage provider and three devices joined the network (epoch {})",
        provider.epoch().unwrap_or(0)
    )];
    let open = |node: &Node| Embedded::open(node).map_err(failed);
    let (mut ta, mut tp, mut tl) = (open(&alice_node)?, open(&phone_node)?, open(&laptop_node)?);
    let kdf = KdfParams::DEFAULT;
    let now = chat::cli::unix_now();
    let profile = |name: &str| dir.0.join(name).join("chat");
    let alice = Chat::init(
        &profile("alice-phone"),
        "alice's passphrase",
        kdf,
        &mut ta,
        "phone",
        now,
    )
    .map_err(chat_err("alice"))?;
    let mut phone = Chat::init(
        &profile("bob-phone"),
        "bob's passphrase",
        kdf,
        &mut tp,
        "phone",
        now,
    )
    .map_err(chat_err("bob's phone"))?;
    let code = phone.link_start(now).map_err(chat_err("bob's phone"))?;
    let laptop = Chat::link(
        &profile("bob-laptop"),
        "bob's laptop",
        kdf,
        &mut tl,
        &code,
        "laptop",
        now,
    )
    .map_err(chat_err("bob's laptop"))?;
    let mut devices = vec![
        Device {
            name: "alice",
            chat: alice,
            transport: ta,
        },
        Device {
            name: "bob's phone",
            chat: phone,
            transport: tp,
        },
        Device {
            name: "bob's laptop",
            chat: laptop,
            transport: tl,
        },
    ];
    let took = pump(
        &mut devices,
        "linking the laptop",
        Duration::from_secs(60),
        |d| d[2].chat.user().is_some(),
    )?;
    out.push(format!(
        "chat: Bob linked his laptop from his phone through the mixnet ({took:.1} s): {} devices",
        devices[1].chat.devices().len()
    ));
    let (a_code, b_code) = (
        devices[0].chat.contact_code().map_err(chat_err("alice"))?,
        devices[1].chat.contact_code().map_err(chat_err("bob"))?,
    );
    let (alice_key, bob_key) = (
        devices[0].chat.user().unwrap_or_default(),
        devices[1].chat.user().unwrap_or_default(),
    );
    {
        let d = &mut devices[0];
        d.chat
            .add_contact(&mut d.transport, &b_code, "bob")
            .map_err(chat_err("alice"))?;
        let d = &mut devices[1];
        d.chat
            .add_contact(&mut d.transport, &a_code, "alice")
            .map_err(chat_err("bob"))?;
    }
    pump(&mut devices, "contacts", Duration::from_secs(60), |d| {
        d[2].chat.contact(&alice_key).is_some() && d[0].chat.contact(&bob_key).is_some()
    })?;
    out.push(format!(
        "chat: contacts exchanged by code; safety number {}",
        devices[0].chat.safety_number(&bob_key).unwrap_or_default()
    ));

    // online
    let d = &mut devices[0];
    let hello = d
        .chat
        .send(
            &mut d.transport,
            &bob_key,
            "Hello Bob!",
            None,
            chat::cli::unix_now(),
        )
        .map_err(chat_err("alice"))?;
    let took = pump(&mut devices, "hello", Duration::from_secs(60), |d| {
        d[1].chat.message(&hello).is_some()
            && d[2].chat.message(&hello).is_some()
            && d[0]
                .chat
                .message(&hello)
                .is_some_and(|m| m.state == State::Delivered)
    })?;
    out.push(format!(
        "chat: online: Alice's message reached both of Bob's devices and she saw it delivered ({took:.1} s)"
    ));
    let d = &mut devices[2];
    let answer = d
        .chat
        .send(
            &mut d.transport,
            &alice_key,
            "Hi Alice, from my laptop",
            None,
            chat::cli::unix_now(),
        )
        .map_err(chat_err("bob's laptop"))?;
    let took = pump(&mut devices, "answer", Duration::from_secs(60), |d| {
        d[0].chat.message(&answer).is_some() && d[1].chat.message(&answer).is_some()
    })?;
    out.push(format!(
        "chat: Bob answered from the laptop; Alice has it, and his phone shows it as his ({took:.1} s)"
    ));

    // offline: Bob's phone is off
    let phone = devices.remove(1);
    drop(phone);
    phone_node.stop();
    let d = &mut devices[0];
    let away = d
        .chat
        .send(
            &mut d.transport,
            &bob_key,
            "Are you there? (your phone was off)",
            None,
            chat::cli::unix_now(),
        )
        .map_err(chat_err("alice"))?;
    let took = pump(
        &mut devices,
        "parked for the phone",
        Duration::from_secs(180),
        |d| {
            d[1].chat.message(&away).is_some()
                && d[0]
                    .chat
                    .message(&away)
                    .is_some_and(|m| m.targets.iter().any(|(_, s)| *s == State::Stored))
        },
    )?;
    out.push(format!(
        "chat: offline: the laptop got it at once; the phone's copy was stored at the provider after three attempts ({took:.1} s)"
    ));
    let phone_node = Node::start(config("bob-phone", false))?;
    let mut tp = open(&phone_node)?;
    let phone = Chat::open(&profile("bob-phone"), "bob's passphrase", &mut tp)
        .map_err(chat_err("bob's phone"))?;
    devices.insert(
        1,
        Device {
            name: "bob's phone",
            chat: phone,
            transport: tp,
        },
    );
    let took = pump(
        &mut devices,
        "the phone catches up",
        Duration::from_secs(180),
        |d| d[1].chat.message(&away).is_some(),
    )?;
    out.push(format!(
        "chat: Bob's phone came back and collected it from the provider ({took:.1} s, marked stored: {})",
        devices[1].chat.message(&away).is_some_and(|m| m.stored)
    ));
    for d in &devices {
        let other = if d.name == "alice" {
            bob_key
        } else {
            alice_key
        };
        out.push(format!("chat: {}'s conversation:", d.name));
        for m in d.chat.conversation(&other) {
            out.push(format!("    {}", chat::tui::line(&d.chat, m)));
        }
    }
    drop(devices);
    for n in [provider, alice_node, phone_node, laptop_node] {
        n.stop();
    }
    Ok(out)
}
