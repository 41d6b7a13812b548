//! What the sessions protect (docs/messenger.md): forward secrecy (today's state does not
//! open yesterday's messages) and healing after compromise (a copy of a device's ratchet
//! state stops opening its traffic after one round trip), on the Olm sessions the messenger
//! uses between two devices.

#![allow(clippy::unwrap_used)]

use chat::identity::DeviceEntry;
use chat::olm::{Olm, OlmError};

fn entry(olm: &Olm, i: u8) -> DeviceEntry {
    DeviceEntry {
        node_key: [i; 32],
        curve: olm.curve(),
        fallback: olm.fallback(),
        signing: olm.signing(),
        name: format!("device {i}"),
        added: 0,
    }
}

/// A copy of everything `olm` holds (what an attacker who read its disk has).
fn copy(olm: &Olm, peer: &DeviceEntry) -> Olm {
    Olm::restore(
        &olm.account_pickle(),
        [(peer.node_key, olm.sessions_pickle(&peer.node_key))],
    )
    .unwrap()
}

#[test]
fn a_copied_ratchet_state_stops_opening_messages_after_one_round_trip() {
    let (mut a, mut b) = (Olm::new(), Olm::new());
    let (ea, eb) = (entry(&a, 1), entry(&b, 2));
    for k in 0..3u8 {
        let (t, c) = a.encrypt(&eb, &[k]).unwrap();
        b.decrypt(&ea, t, &c).unwrap();
        let (t, c) = b.encrypt(&ea, &[k]).unwrap();
        a.decrypt(&eb, t, &c).unwrap();
    }
    // the attacker copies B's state
    let mut stolen = copy(&b, &ea);
    // with it, the next message from A opens: the compromise is real
    let (t, c) = a.encrypt(&eb, b"seen by the thief").unwrap();
    assert_eq!(b.decrypt(&ea, t, &c).unwrap(), b"seen by the thief");
    assert_eq!(stolen.decrypt(&ea, t, &c).unwrap(), b"seen by the thief");
    // one round trip: B answers (a new ratchet key the thief lacks), A writes again
    let (t, c) = b.encrypt(&ea, b"answer").unwrap();
    a.decrypt(&eb, t, &c).unwrap();
    // the thief keeps up as best it can: it sees the answer on the wire too
    let _ = stolen.decrypt(&ea, t, &c);
    for k in 0..3u8 {
        let (t, c) = a.encrypt(&eb, &[b'n', k]).unwrap();
        assert_eq!(b.decrypt(&ea, t, &c).unwrap(), [b'n', k]);
        assert_eq!(
            stolen.decrypt(&ea, t, &c),
            Err(OlmError::Undecryptable),
            "the copy opened message {k} after the round trip"
        );
    }
}

#[test]
fn old_messages_stay_unreadable_with_todays_keys() {
    let (mut a, mut b) = (Olm::new(), Olm::new());
    let (ea, eb) = (entry(&a, 1), entry(&b, 2));
    let mut wire = Vec::new();
    for k in 0..5u8 {
        let (t, c) = a.encrypt(&eb, &[k]).unwrap();
        assert_eq!(b.decrypt(&ea, t, &c).unwrap(), [k]);
        wire.push((t, c));
        let (t, c) = b.encrypt(&ea, &[k]).unwrap();
        a.decrypt(&eb, t, &c).unwrap();
    }
    // everything B holds today (its disk, later seized) opens none of what it received
    // after the first message; the first is a pre-key message, under B's long-lived
    // fallback key, and so only as safe as that key (docs/messenger.md says so)
    assert!(chat::olm::prekey_identity(wire[0].0, &wire[0].1).is_some());
    assert!(chat::olm::prekey_identity(wire[1].0, &wire[1].1).is_none());
    let mut seized = copy(&b, &ea);
    for (k, (t, c)) in wire.iter().enumerate().skip(1) {
        assert_eq!(
            seized.decrypt(&ea, *t, c),
            Err(OlmError::Undecryptable),
            "message {k} opened with today's state"
        );
    }
}
