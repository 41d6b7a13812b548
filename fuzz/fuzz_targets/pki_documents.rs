//! Arbitrary bytes as every document the directory exchanges: a signed descriptor, a
//! withdrawal, a vote, a signed consensus (and its signatures checked against a fixed
//! set), a consensus body. Nothing may panic; what parses must encode back to the same
//! bytes and parse again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_client::{
    AuthoritySet, Consensus, IdentitySecret, SignedConsensus, SignedDescriptor, SignedWithdrawal,
    UnverifiedConsensus, Vote,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = SignedDescriptor::from_bytes(data) {
        assert_eq!(d.to_bytes(), data, "a descriptor re-encodes differently");
    }
    if let Ok(w) = SignedWithdrawal::from_bytes(data) {
        assert_eq!(w.to_bytes(), data, "a withdrawal re-encodes differently");
    }
    let _ = Vote::from_signed_bytes(data);
    if let Ok(c) = Consensus::decode(data) {
        let again = Consensus::decode(&c.encode()).expect("a consensus re-encoded parses");
        assert_eq!(again.encode(), c.encode());
    }
    if let Ok(s) = SignedConsensus::from_bytes(data) {
        let again = SignedConsensus::from_bytes(&s.to_bytes()).expect("re-encoded parses");
        assert_eq!(again.to_bytes(), s.to_bytes());
    }
    if let Ok(u) = UnverifiedConsensus::from_bytes(data) {
        let set = AuthoritySet::new([IdentitySecret::from_bytes([3; 32]).public()])
            .expect("a set of one");
        let _ = u.check_signatures(&set);
    }
});
