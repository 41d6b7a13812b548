//! Offline delivery with real nodes on loopback (docs/storage.md): a message to a contact
//! whose node is stopped is stored at a storage provider (`Stored`), the contact's node
//! started again, passive and with its contacts from disk, collects it (a message with
//! `stored` set) and the sender hears `Delivered`; started once more, it delivers nothing
//! again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use node::api::{App, MessengerEvent, SendOptions};
use node::demo::{LocalNetwork, LocalOptions};
use node::{IoChoice, Node, NodeConfig};

fn config(net: &LocalNetwork, dir: &std::path::Path, storage: bool) -> NodeConfig {
    node::demo::node_config(net, dir, "keys", 60.0, storage)
}

/// Waits until every node given has installed one epoch's consensus, that epoch at least
/// `from`; returns it.
fn same_epoch(nodes: &[&Node], from: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let epochs: Vec<Option<u64>> = nodes.iter().map(|n| n.epoch()).collect();
        if let Some(Some(e)) = epochs.first()
            && *e >= from
            && epochs.iter().all(|x| *x == Some(*e))
        {
            return *e;
        }
        assert!(Instant::now() < deadline, "no common epoch: {epochs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_event(
    app: &App,
    within: Duration,
    want: impl Fn(&MessengerEvent) -> bool,
) -> MessengerEvent {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the event did not come in {within:?}");
        if let Ok(e) = app.recv(left)
            && want(&e)
        {
            return e;
        }
    }
}

#[test]
fn a_message_to_a_stopped_contact_is_stored_and_collected_when_it_starts_again() {
    let net = LocalNetwork::start(&LocalOptions {
        nodes: 4,
        epoch_seconds: 10,
        bandwidth: 60.0,
        cores: 1,
        io: IoChoice::Auto,
        mean_delay: Duration::from_millis(10),
        loop_rate: 1.0,
    })
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mixed-offline-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let provider = Node::start(config(&net, &dir.join("provider"), true)).unwrap();
    let recipient_config = config(&net, &dir.join("recipient"), false);
    let recipient = Node::start(recipient_config.clone()).unwrap();
    let first = net.nodes[0].epoch().unwrap_or(0);
    // an epoch whose consensus lists the provider and the recipient, on every node
    let mut all: Vec<&Node> = net.nodes.iter().collect();
    all.push(&provider);
    all.push(&recipient);
    same_epoch(&all, first + 2, Duration::from_secs(60));
    let sender = &net.nodes[0];
    let (recipient_key, recipient_id) = (recipient.identity_key(), recipient.node_id());
    sender.add_contact(recipient_key).unwrap();
    // the recipient's contacts are kept on disk: it is not told again after its restarts
    recipient.add_contact(sender.identity_key()).unwrap();
    recipient.stop();

    let app = App::open(sender, None).unwrap();
    let text = b"written while you were away".to_vec();
    let id = app
        .send(recipient_id, &text, SendOptions::default())
        .unwrap();
    // three attempts, then storage
    let e = wait_event(&app, Duration::from_secs(120), |e| {
        matches!(
            e,
            MessengerEvent::Stored { .. } | MessengerEvent::Offline { .. }
        )
    });
    assert!(
        matches!(e, MessengerEvent::Stored { id: i } if i == id),
        "{e:?}"
    );

    // the recipient comes back (same keys), passive (not in the consensus: it collects
    // through SURBs before it binds), and collects it
    let mut passive = recipient_config;
    passive.passive = true;
    passive.offline.fetch_rate = 2.0;
    let recipient = Node::start(passive.clone()).unwrap();
    let inbox = App::open(&recipient, Some(0)).unwrap();
    let got = wait_event(&inbox, Duration::from_secs(120), |e| {
        matches!(e, MessengerEvent::Received(_))
    });
    let MessengerEvent::Received(r) = got else {
        unreachable!()
    };
    assert_eq!((r.id, r.data, r.stored), (id, text, true));
    assert_eq!(r.sender, Some(sender.identity_key()));
    // and the sender hears of it
    let e = wait_event(&app, Duration::from_secs(60), |e| {
        matches!(e, MessengerEvent::Delivered { .. })
    });
    assert!(matches!(e, MessengerEvent::Delivered { id: i } if i == id));
    drop(inbox);
    recipient.stop();

    // once more: it reads on from where it stood and delivers nothing again
    let recipient = Node::start(passive).unwrap();
    let inbox = App::open(&recipient, Some(0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while recipient.metrics().offline().gets < 10 {
        assert!(
            Instant::now() < deadline,
            "the restarted recipient asked for nothing"
        );
        if let Ok(MessengerEvent::Received(r)) = inbox.recv(Duration::from_millis(200)) {
            panic!("delivered again after a restart: {:?}", r.id);
        }
    }
    let o = recipient.metrics().offline();
    assert_eq!(o.recovered, 0, "{o:?}");
    drop(inbox);
    recipient.stop();
    provider.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
