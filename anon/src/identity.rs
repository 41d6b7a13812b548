//! The sender's identity, revealed deniably (section 2.1: "whether to reveal the sender's
//! identity"). The sender puts its identity key and a MAC in the message; the MAC's key is
//! the static-static X25519 secret of the sender's and the recipient's identity keys (their
//! Ed25519 keys in Montgomery form). The recipient, who can compute the same key, is
//! convinced; no one else is, since the recipient could have made the MAC itself: unlike a
//! signature, it proves nothing to a third party.

use hmac::{KeyInit, Mac};
use pki_client::{IdentityKey, IdentitySecret};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::MessageId;

const DIGEST_CONTEXT: &[u8] = b"mixed message digest v1\0";
const MAC_KEY_CONTEXT: &[u8] = b"mixed deniable mac key v1\0";

type HmacSha256 = hmac::Hmac<Sha256>;

/// SHA-256 over the message ID, the port and the data: what the MAC covers and what the
/// recipient checks the decoded object against.
pub fn digest(id: &MessageId, port: u16, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DIGEST_CONTEXT);
    h.update(id);
    h.update(port.to_be_bytes());
    h.update((data.len() as u64).to_be_bytes());
    h.update(data);
    h.finalize().into()
}

/// The MAC key shared by `me` and `peer`, with `sender`'s key first in its derivation;
/// `None` when `peer` is not a valid key or the exchange yields the zero point.
fn mac_key(me: &IdentitySecret, peer: &IdentityKey, sender: &IdentityKey) -> Option<[u8; 32]> {
    let point = peer.x25519_public()?;
    let shared = x25519_dalek::x25519(me.x25519_secret(), point);
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        return None;
    }
    let recipient = if sender == peer { me.public() } else { *peer };
    let mut h = Sha256::new();
    h.update(MAC_KEY_CONTEXT);
    h.update(shared);
    h.update(sender.0);
    h.update(recipient.0);
    Some(h.finalize().into())
}

fn mac(key: &[u8; 32], id: &MessageId, digest: &[u8; 32]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail
    let Ok(mut m) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return [0u8; 32];
    };
    m.update(id);
    m.update(digest);
    m.finalize().into_bytes().into()
}

/// The sender's MAC for `recipient` over the message.
pub fn seal(
    sender: &IdentitySecret,
    recipient: &IdentityKey,
    id: &MessageId,
    digest: &[u8; 32],
) -> Option<[u8; 32]> {
    let key = mac_key(sender, recipient, &sender.public())?;
    Some(mac(&key, id, digest))
}

/// Whether `tag` is `sender`'s MAC for this recipient over the message.
pub fn verify(
    recipient: &IdentitySecret,
    sender: &IdentityKey,
    id: &MessageId,
    digest: &[u8; 32],
    tag: &[u8; 32],
) -> bool {
    let Some(key) = mac_key(recipient, sender, sender) else {
        return false;
    };
    bool::from(mac(&key, id, digest).ct_eq(tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn the_recipient_verifies_and_anyone_else_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice = IdentitySecret::generate(&mut rng);
        let bob = IdentitySecret::generate(&mut rng);
        let carol = IdentitySecret::generate(&mut rng);
        let id = [5u8; 16];
        let d = digest(&id, 0, b"hello");
        let tag = seal(&alice, &bob.public(), &id, &d).unwrap_or([0; 32]);
        assert!(verify(&bob, &alice.public(), &id, &d, &tag));
        // another recipient, another claimed sender, another message: all fail
        assert!(!verify(&carol, &alice.public(), &id, &d, &tag));
        assert!(!verify(&bob, &carol.public(), &id, &d, &tag));
        let d2 = digest(&id, 0, b"hellp");
        assert!(!verify(&bob, &alice.public(), &id, &d2, &tag));
        // deniable: the recipient can make the very same tag
        let forged = mac(
            &mac_key(&bob, &alice.public(), &alice.public()).unwrap_or([1; 32]),
            &id,
            &d,
        );
        assert_eq!(forged, tag);
    }
}
