//! The messenger's protocol on an in-memory hub of nodes (instant and lossless): linking a
//! device, fan-out to every device of a contact, the copy to the sender's other devices,
//! revocation, order, restarts, and bad input. Delivery through the mixnet, offline devices
//! included, is in tests/mixnet.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use chat::{Chat, ChatError, KdfParams, Notice, State};
use common::{Dir, Hub, HubPort, settle};
use sha2::{Digest, Sha256};

const NOW: u64 = 1_700_000_000;
const KDF: KdfParams = KdfParams::TESTS_ONLY;

struct World {
    hub: Rc<RefCell<Hub>>,
    a: (Chat, HubPort),
    b1: (Chat, HubPort),
    b2: (Chat, HubPort),
    alice: [u8; 32],
    bob: [u8; 32],
}

impl World {
    fn settle(&mut self) {
        settle(&mut [
            (&mut self.a.0, &mut self.a.1),
            (&mut self.b1.0, &mut self.b1.1),
            (&mut self.b2.0, &mut self.b2.1),
        ]);
    }
}

/// Alice on one device; Bob on two (his laptop linked from his phone); contacts both ways.
fn world(dir: &Dir) -> World {
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut ta, mut tb1, mut tb2) = (Hub::port(&hub, 1), Hub::port(&hub, 2), Hub::port(&hub, 3));
    let a = Chat::init(
        &dir.sub("a"),
        "alice pass",
        KDF,
        &mut ta,
        "alice-phone",
        NOW,
    )
    .unwrap();
    let mut b1 = Chat::init(&dir.sub("b1"), "bob pass", KDF, &mut tb1, "bob-phone", NOW).unwrap();
    let code = b1.link_start(NOW).unwrap();
    let b2 = Chat::link(
        &dir.sub("b2"),
        "bob pass 2",
        KDF,
        &mut tb2,
        &code,
        "bob-laptop",
        NOW,
    )
    .unwrap();
    assert!(b2.user().is_none(), "linked only once the primary answers");
    let mut w = World {
        hub,
        alice: a.user().unwrap(),
        bob: b1.user().unwrap(),
        a: (a, ta),
        b1: (b1, tb1),
        b2: (b2, tb2),
    };
    w.settle();
    assert_eq!(w.b2.0.user(), Some(w.bob));
    assert_eq!(w.b1.0.devices().len(), 2);
    assert_eq!(w.b2.0.devices().len(), 2);
    assert!(w.b1.0.is_primary() && !w.b2.0.is_primary());
    let bob_code = w.b1.0.contact_code().unwrap();
    let alice_code = w.a.0.contact_code().unwrap();
    w.a.0.add_contact(&mut w.a.1, &bob_code, "bob").unwrap();
    w.b1.0
        .add_contact(&mut w.b1.1, &alice_code, "alice")
        .unwrap();
    w.settle();
    // the laptop learned of Alice from the phone, under the phone's name for her
    assert_eq!(w.b2.0.find_contact("alice").unwrap(), w.alice);
    w
}

fn bodies(c: &Chat, conv: &[u8; 32]) -> Vec<String> {
    c.conversation(conv)
        .iter()
        .map(|m| m.body.clone())
        .collect()
}

#[test]
fn a_message_reaches_every_device_and_an_answer_shows_on_the_others() {
    let dir = Dir::new("fanout");
    let mut w = world(&dir);
    let (alice, bob) = (w.alice, w.bob);
    let id =
        w.a.0
            .send(&mut w.a.1, &bob, "hello bob", None, NOW)
            .unwrap();
    assert_eq!(w.a.0.message(&id).unwrap().state, State::Sending);
    w.settle();
    assert_eq!(w.a.0.message(&id).unwrap().state, State::Delivered);
    for b in [&w.b1.0, &w.b2.0] {
        let m = b.message(&id).expect("both of Bob's devices have it");
        assert_eq!(
            (m.body.as_str(), m.state, m.from_me),
            ("hello bob", State::Received, false)
        );
    }
    // Bob answers from his laptop: Alice has it, and so does his phone, as his own
    let attachment = ("photo.jpg".to_string(), vec![7u8; 300_000]);
    let reply =
        w.b2.0
            .send(
                &mut w.b2.1,
                &alice,
                "hi from my laptop",
                Some(attachment.clone()),
                NOW,
            )
            .unwrap();
    w.settle();
    let m = w.a.0.message(&reply).unwrap();
    assert_eq!(m.attachment.as_ref(), Some(&attachment));
    assert_eq!(m.author, w.b2.1.key);
    let m = w.b1.0.message(&reply).unwrap();
    assert_eq!((m.from_me, m.state), (true, State::OtherDevice));
    assert_eq!(bodies(&w.b1.0, &alice), ["hello bob", "hi from my laptop"]);
    assert_eq!(bodies(&w.a.0, &bob), bodies(&w.b1.0, &alice));
    assert_eq!(bodies(&w.a.0, &bob), bodies(&w.b2.0, &alice));
}

#[test]
fn a_revoked_device_gets_nothing_sent_after_its_revocation_and_cannot_send() {
    let dir = Dir::new("revoke");
    let mut w = world(&dir);
    let (alice, bob) = (w.alice, w.bob);
    let before = w.a.0.send(&mut w.a.1, &bob, "before", None, NOW).unwrap();
    w.settle();
    assert!(w.b2.0.message(&before).is_some());
    let laptop = w.b2.1.key;
    assert!(matches!(
        w.b2.0.revoke(&mut w.b2.1, &w.b1.1.key),
        Err(ChatError::NotPrimary)
    ));
    w.b1.0.revoke(&mut w.b1.1, &laptop).unwrap();
    w.settle();
    assert_eq!(w.a.0.contact(&bob).unwrap().list.list().devices.len(), 1);
    let sent_to_laptop = w
        .hub
        .borrow()
        .wire
        .iter()
        .filter(|(to, _)| *to == laptop)
        .count();
    let after = w.a.0.send(&mut w.a.1, &bob, "after", None, NOW).unwrap();
    let mine =
        w.b1.0
            .send(&mut w.b1.1, &alice, "from the phone", None, NOW)
            .unwrap();
    w.settle();
    assert!(w.b1.0.message(&after).is_some());
    assert!(w.b2.0.message(&after).is_none() && w.b2.0.message(&mine).is_none());
    let now_to_laptop = w
        .hub
        .borrow()
        .wire
        .iter()
        .filter(|(to, _)| *to == laptop)
        .count();
    assert_eq!(
        now_to_laptop, sent_to_laptop,
        "nothing went to the revoked device"
    );
    // what it still sends as Bob is refused by Alice
    let forged =
        w.b2.0
            .send(&mut w.b2.1, &alice, "still me", None, NOW)
            .unwrap();
    w.settle();
    assert!(w.a.0.message(&forged).is_none());
    assert!(
        w.a.0
            .counters()
            .dropped
            .keys()
            .any(|r| r.contains("revoked"))
    );
}

#[test]
fn order_is_kept_whatever_the_arrival_order_and_replays_are_dropped() {
    let dir = Dir::new("order");
    let mut w = world(&dir);
    let (alice, bob) = (w.alice, w.bob);
    w.hub.borrow_mut().hold = Some(Vec::new());
    for k in 1..=4 {
        w.a.0
            .send(&mut w.a.1, &bob, &format!("m{k}"), None, NOW)
            .unwrap();
    }
    let held = w.hub.borrow_mut().hold.take().unwrap();
    let to_phone: Vec<_> = held
        .into_iter()
        .filter(|(_, to, _)| *to == w.b1.1.key)
        .collect();
    assert_eq!(to_phone.len(), 4);
    // delivered backwards: the ratchet opens them out of order, the view keeps the order
    for (from, to, data) in to_phone.iter().rev() {
        w.hub.borrow_mut().inject(*from, *to, data.clone());
    }
    w.settle();
    assert_eq!(bodies(&w.b1.0, &alice), ["m1", "m2", "m3", "m4"]);
    // a replay of the same envelope: dropped before decrypting, counted
    let (from, to, data) = to_phone[0].clone();
    let dups = w.b1.0.counters().duplicates;
    w.hub.borrow_mut().inject(from, to, data.clone());
    w.settle();
    assert_eq!(w.b1.0.counters().duplicates, dups + 1);
    // the same ciphertext under another ID: its message key was used and erased
    let mut altered = data;
    altered[2] ^= 1;
    w.hub.borrow_mut().inject(from, to, altered);
    w.settle();
    assert!(
        w.b1.0
            .counters()
            .dropped
            .keys()
            .any(|r| r.starts_with("undecryptable"))
    );
    assert_eq!(bodies(&w.b1.0, &alice).len(), 4);
}

#[test]
fn a_killed_device_comes_back_with_everything_and_sends_what_was_not_sent() {
    let dir = Dir::new("restart");
    let mut w = world(&dir);
    let bob = w.bob;
    let first = w.a.0.send(&mut w.a.1, &bob, "first", None, NOW).unwrap();
    w.settle();
    // a message in the outbox, not handed to the node (held and lost) when the process dies
    w.hub.borrow_mut().hold = Some(Vec::new());
    let pending = w.a.0.send(&mut w.a.1, &bob, "pending", None, NOW).unwrap();
    w.hub.borrow_mut().hold = None;
    let World {
        a: (a, mut ta),
        b1: (mut b1, mut tb1),
        alice,
        ..
    } = w;
    drop(a);
    assert!(matches!(
        Chat::open(&dir.sub("a"), "not alice's", &mut ta),
        Err(ChatError::Store(chat::store::StoreError::WrongPassphrase(
            _
        )))
    ));
    let mut a = Chat::open(&dir.sub("a"), "alice pass", &mut ta).unwrap();
    assert_eq!(a.message(&first).unwrap().state, State::Delivered);
    assert_eq!(a.message(&pending).unwrap().state, State::Sending);
    // the outbox goes again: Bob has it once, Alice sees it delivered
    settle(&mut [(&mut a, &mut ta), (&mut b1, &mut tb1)]);
    assert_eq!(bodies(&b1, &alice), ["first", "pending"]);
    assert_eq!(a.message(&pending).unwrap().state, State::Delivered);
    // and Bob's phone, killed and reopened, has it still
    drop(b1);
    let b1 = Chat::open(&dir.sub("b1"), "bob pass", &mut tb1).unwrap();
    assert_eq!(bodies(&b1, &alice), ["first", "pending"]);
}

#[test]
fn bad_codes_and_tampered_lists_are_clear_errors() {
    let dir = Dir::new("bad");
    let mut w = world(&dir);
    let e =
        w.a.0
            .add_contact(&mut w.a.1, "mixed-contact-1:HELLO", "x")
            .unwrap_err();
    assert!(e.to_string().contains("not a contact code"), "{e}");
    let e = w.a.0.add_contact(&mut w.a.1, "hello", "x").unwrap_err();
    assert!(e.to_string().contains("not a contact code"), "{e}");
    let own = w.a.0.contact_code().unwrap();
    assert!(matches!(
        w.a.0.add_contact(&mut w.a.1, &own, "me"),
        Err(ChatError::OwnCode)
    ));
    // Bob's list with a device slipped in, the code's checksum made to match
    let mut list = w.b1.0.contact_code().unwrap();
    list = list.trim_start_matches("mixed-contact-1:").to_string();
    let mut bytes = chat::codec::unbase32(&list).unwrap();
    bytes.truncate(bytes.len() - 4);
    bytes[60] ^= 0x80; // inside the first device's node key
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum[..4]);
    let forged = format!("mixed-contact-1:{}", chat::codec::base32(&bytes));
    let e = w.a.0.add_contact(&mut w.a.1, &forged, "bob?").unwrap_err();
    assert!(e.to_string().contains("signature does not verify"), "{e}");
    assert!(
        w.a.0
            .poll_notice()
            .is_some_and(|n| !matches!(n, Notice::Revoked))
    );
}

#[test]
fn a_lost_introduction_is_made_up_for_by_the_next_message() {
    let dir = Dir::new("intro");
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut ta, mut tb) = (Hub::port(&hub, 1), Hub::port(&hub, 2));
    let mut a = Chat::init(&dir.sub("a"), "a", KDF, &mut ta, "a", NOW).unwrap();
    let mut b = Chat::init(&dir.sub("b"), "b", KDF, &mut tb, "b", NOW).unwrap();
    let bob = b.user().unwrap();
    // Alice adds Bob; her introduction is lost on the way
    hub.borrow_mut().hold = Some(Vec::new());
    a.add_contact(&mut ta, &b.contact_code().unwrap(), "bob")
        .unwrap();
    let lost = hub.borrow_mut().hold.take().unwrap();
    assert_eq!(lost.len(), 1);
    let id = a.send(&mut ta, &bob, "do you know me?", None, NOW).unwrap();
    settle(&mut [(&mut a, &mut ta), (&mut b, &mut tb)]);
    let alice = a.user().unwrap();
    assert!(
        b.contact(&alice).is_some(),
        "introduced by the message itself"
    );
    assert_eq!(b.message(&id).unwrap().body, "do you know me?");
    // once Bob answered, Alice's messages go without the list
    b.send(&mut tb, &alice, "I do now", None, NOW).unwrap();
    settle(&mut [(&mut a, &mut ta), (&mut b, &mut tb)]);
    let before = hub.borrow().wire.len();
    a.send(&mut ta, &bob, "short", None, NOW).unwrap();
    settle(&mut [(&mut a, &mut ta), (&mut b, &mut tb)]);
    let wire = hub.borrow();
    let sizes: Vec<usize> = wire.wire[before..].iter().map(|(_, d)| d.len()).collect();
    assert!(sizes.iter().all(|&n| n < 400), "{sizes:?}");
}

#[test]
fn the_largest_attachment_goes_and_a_larger_one_is_refused() {
    let dir = Dir::new("large");
    let mut w = world(&dir);
    let bob = w.bob;
    let max = chat::protocol::MAX_CONTENT;
    let name = "x".repeat(255);
    let data = vec![9u8; max - name.len() - 2];
    let id =
        w.a.0
            .send(
                &mut w.a.1,
                &bob,
                "hi",
                Some((name.clone(), data.clone())),
                NOW,
            )
            .unwrap();
    w.settle();
    assert_eq!(w.b2.0.message(&id).unwrap().attachment, Some((name, data)));
    assert!(matches!(
        w.a.0
            .send(&mut w.a.1, &bob, "", Some(("a".into(), vec![0; max])), NOW),
        Err(ChatError::TooLarge(_))
    ));
}
