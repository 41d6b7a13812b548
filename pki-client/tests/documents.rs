//! Documents and their checks, without a network: encodings round-trip and refuse
//! anything else, a consensus needs a majority of valid signatures and a valid time, and
//! path selection follows Algorithm 1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pki_client::{
    AuthoritySet, Consensus, ConsensusSignature, IdentitySecret, MixKeys, NetworkParams,
    NodeDescriptor, PathError, Roles, SignedConsensus, SignedDescriptor, SignedWithdrawal,
    UnverifiedConsensus, VerifyError, Vote, Withdrawal, select_hops,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

const PARAMS: NetworkParams = NetworkParams {
    packet_size: 1452,
    hops: 3,
    rho_permille: 1500,
    mean_delay_micros: 50_000,
    loops: 4,
    loop_rate_millis: 500,
    epoch_seconds: 1200,
    genesis_unix: 1_700_000_000,
};

fn descriptor(rng: &mut ChaCha20Rng, bandwidth: u32) -> (IdentitySecret, SignedDescriptor) {
    let secret = IdentitySecret::generate(rng);
    let mut keys = vec![[0u8; 32]; 2];
    for k in &mut keys {
        rng.fill_bytes(k);
    }
    let d = NodeDescriptor {
        identity: secret.public(),
        sequence: 1,
        addresses: vec![
            "192.0.2.1:4000".parse().unwrap(),
            "[2001:db8::1]:4000".parse().unwrap(),
        ],
        bandwidth,
        roles: Roles {
            mix: true,
            services: vec!["storage".into()],
        },
        mix_keys: MixKeys {
            first_epoch: 10,
            keys,
        },
    };
    let signed = d.sign(&secret).unwrap();
    (secret, signed)
}

/// Three authorities, a consensus of `n` nodes of the given bandwidths for epoch 10.
fn network(n: usize, seed: u64) -> (Vec<IdentitySecret>, AuthoritySet, Consensus) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let authorities: Vec<IdentitySecret> =
        (0..3).map(|_| IdentitySecret::generate(&mut rng)).collect();
    let set = AuthoritySet::new(authorities.iter().map(|a| a.public())).unwrap();
    let descriptors: Vec<SignedDescriptor> = (0..n)
        .map(|i| descriptor(&mut rng, 10 * (i as u32 + 1)).1)
        .collect();
    let votes: Vec<Vote> = authorities
        .iter()
        .map(|a| Vote {
            authority: a.public(),
            epoch: 10,
            descriptors: descriptors.clone(),
        })
        .collect();
    let refs: Vec<&Vote> = votes.iter().collect();
    let consensus = Consensus::compute(10, PARAMS, &refs, set.majority());
    (authorities, set, consensus)
}

fn signed_by(consensus: &Consensus, who: &[&IdentitySecret]) -> Vec<u8> {
    let sigs: Vec<ConsensusSignature> = who.iter().map(|a| consensus.sign(a)).collect();
    SignedConsensus::new(consensus, sigs).to_bytes()
}

#[test]
fn documents_round_trip_and_refuse_trailing_or_truncated_bytes() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (secret, d) = descriptor(&mut rng, 42);
    let bytes = d.to_bytes();
    assert_eq!(SignedDescriptor::from_bytes(&bytes).unwrap(), d);
    for cut in [0, 1, 10, bytes.len() - 65, bytes.len() - 1] {
        assert!(
            SignedDescriptor::from_bytes(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let w = Withdrawal {
        identity: secret.public(),
        sequence: 2,
        from_epoch: 11,
    }
    .sign(&secret)
    .unwrap();
    assert_eq!(SignedWithdrawal::from_bytes(&w.to_bytes()).unwrap(), w);

    let (authorities, set, consensus) = network(5, 2);
    assert_eq!(Consensus::decode(&consensus.encode()).unwrap(), consensus);
    let mut body = consensus.encode();
    body.push(0);
    assert!(Consensus::decode(&body).is_err());
    let bytes = signed_by(&consensus, &[&authorities[0], &authorities[1]]);
    let checked = UnverifiedConsensus::from_bytes(&bytes)
        .unwrap()
        .check_signatures(&set)
        .unwrap();
    assert_eq!(checked.to_bytes(), bytes);
}

#[test]
fn arbitrary_bytes_never_panic_the_decoders() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (_, set, consensus) = network(3, 3);
    let valid = SignedConsensus::new(&consensus, vec![]).to_bytes();
    for i in 0..20_000 {
        let mut bytes = if i % 2 == 0 {
            let mut b = vec![0u8; (rng.next_u32() % 600) as usize];
            rng.fill_bytes(&mut b);
            b
        } else {
            valid.clone()
        };
        // mutate a few bytes of the valid document
        for _ in 0..1 + rng.next_u32() % 4 {
            if !bytes.is_empty() {
                let at = (rng.next_u32() as usize) % bytes.len();
                bytes[at] ^= 1 + (rng.next_u32() % 255) as u8;
            }
        }
        let _ = SignedDescriptor::from_bytes(&bytes);
        let _ = SignedWithdrawal::from_bytes(&bytes);
        let _ = Vote::from_signed_bytes(&bytes);
        let _ = Consensus::decode(&bytes);
        if let Ok(u) = UnverifiedConsensus::from_bytes(&bytes) {
            assert!(u.check_signatures(&set).is_err());
        }
    }
}

#[test]
fn a_consensus_signed_by_one_authority_alone_is_refused_as_such() {
    let (authorities, set, consensus) = network(4, 4);
    let err = UnverifiedConsensus::from_bytes(&signed_by(&consensus, &[&authorities[0]]))
        .unwrap()
        .check_signatures(&set)
        .unwrap_err();
    assert_eq!(
        err,
        VerifyError::NotEnoughSignatures {
            valid: 1,
            needed: 2,
            invalid: 0,
            unknown: 0
        }
    );
    assert!(err.to_string().contains("1 valid of the 2 needed"), "{err}");
    // the same authority twice still counts once
    let twice = signed_by(&consensus, &[&authorities[0], &authorities[0]]);
    assert!(
        UnverifiedConsensus::from_bytes(&twice)
            .unwrap()
            .check_signatures(&set)
            .is_err()
    );
    // a majority of strangers counts for nothing
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let strangers: Vec<IdentitySecret> =
        (0..3).map(|_| IdentitySecret::generate(&mut rng)).collect();
    let err = UnverifiedConsensus::from_bytes(&signed_by(
        &consensus,
        &strangers.iter().collect::<Vec<_>>(),
    ))
    .unwrap()
    .check_signatures(&set)
    .unwrap_err();
    assert!(
        matches!(err, VerifyError::NotEnoughSignatures { unknown: 3, .. }),
        "{err}"
    );
}

#[test]
fn a_consensus_altered_after_signing_is_refused_as_such() {
    let (authorities, set, consensus) = network(4, 6);
    let mut altered = consensus.clone();
    altered.nodes[0].bandwidth += 1;
    let sigs: Vec<ConsensusSignature> = authorities.iter().map(|a| consensus.sign(a)).collect();
    let bytes = SignedConsensus::new(&altered, sigs).to_bytes();
    let err = UnverifiedConsensus::from_bytes(&bytes)
        .unwrap()
        .check_signatures(&set)
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
    assert!(err.to_string().contains("altered after signing"), "{err}");
}

#[test]
fn a_consensus_is_usable_only_within_its_validity_window() {
    let (authorities, set, consensus) = network(2, 7);
    let bytes = signed_by(
        &consensus,
        &[&authorities[0], &authorities[1], &authorities[2]],
    );
    let check = |now: u64| {
        UnverifiedConsensus::from_bytes(&bytes)
            .unwrap()
            .check_signatures(&set)
            .unwrap()
            .check_valid_at(now, 30)
    };
    let (after, until) = (consensus.valid_after, consensus.valid_until);
    assert_eq!(after, PARAMS.epoch_start(10));
    assert!(check(after).is_ok());
    assert!(check(after - 30).is_ok(), "skew tolerated");
    assert!(check(until + 30).is_ok(), "skew tolerated");
    let early = check(after - 31).unwrap_err();
    assert!(matches!(early, VerifyError::NotYetValid { .. }), "{early}");
    assert!(early.to_string().contains("not yet valid"));
    let late = check(until + 31).unwrap_err();
    assert!(matches!(late, VerifyError::Expired { .. }), "{late}");
    assert!(late.to_string().contains("expired"));
    let verified = check(after + 1).unwrap();
    assert_eq!(verified.nodes().len(), 2);
    assert_eq!(verified.params(), &PARAMS);
}

#[test]
fn a_node_needs_a_majority_of_votes_and_the_newest_descriptor_wins() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let authorities: Vec<IdentitySecret> =
        (0..3).map(|_| IdentitySecret::generate(&mut rng)).collect();
    let (secret, d1) = descriptor(&mut rng, 5);
    let mut newer = d1.descriptor().clone();
    newer.sequence = 2;
    newer.bandwidth = 99;
    let d2 = newer.sign(&secret).unwrap();
    let (_, lonely) = descriptor(&mut rng, 7);
    let vote = |a: &IdentitySecret, ds: Vec<SignedDescriptor>| Vote {
        authority: a.public(),
        epoch: 10,
        descriptors: ds,
    };
    let votes = [
        vote(&authorities[0], vec![d1.clone(), lonely.clone()]),
        vote(&authorities[1], vec![d2.clone()]),
        vote(&authorities[2], vec![d1.clone()]),
    ];
    let refs: Vec<&Vote> = votes.iter().collect();
    let c = Consensus::compute(10, PARAMS, &refs, 2);
    assert_eq!(
        c.nodes.len(),
        1,
        "the node held by one authority only is out"
    );
    assert_eq!(c.nodes[0].bandwidth, 99, "the highest sequence wins");
    // the same votes in another order give the same bytes
    let reversed: Vec<&Vote> = votes.iter().rev().collect();
    assert_eq!(
        Consensus::compute(10, PARAMS, &reversed, 2).encode(),
        c.encode()
    );
    // a vote survives its signed encoding
    let bytes = votes[0].sign(&authorities[0]);
    assert_eq!(Vote::from_signed_bytes(&bytes).unwrap(), votes[0]);
}

/// Chi-square critical values at p = 0.01 for 19 degrees of freedom.
const CHI2_19_P001: f64 = 36.191;

#[test]
fn path_selection_follows_bandwidth_without_replacement() {
    let (authorities, set, consensus) = network(20, 9);
    let bytes = signed_by(&consensus, &[&authorities[0], &authorities[1]]);
    let verified = UnverifiedConsensus::from_bytes(&bytes)
        .unwrap()
        .check_signatures(&set)
        .unwrap()
        .check_valid_at(consensus.valid_after, 0)
        .unwrap();
    let nodes = verified.nodes();
    let b: Vec<f64> = nodes.iter().map(|n| f64::from(n.bandwidth)).collect();
    let total: f64 = b.iter().sum();

    const RUNS: usize = 100_000;
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut first = vec![0u64; nodes.len()];
    let mut second = vec![0u64; nodes.len()];
    let mut out = [0usize; 3];
    for _ in 0..RUNS {
        select_hops(&verified, 3, &[], |_| 1.0, &mut rng, &mut out).unwrap();
        assert!(
            out[0] != out[1] && out[1] != out[2] && out[0] != out[2],
            "a repeated node"
        );
        first[out[0]] += 1;
        second[out[1]] += 1;
    }
    // the first hop is drawn with probability b_i / sum(b)
    let chi2: f64 = first
        .iter()
        .zip(&b)
        .map(|(&o, &bi)| {
            let e = RUNS as f64 * bi / total;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    assert!(chi2 < CHI2_19_P001, "first hop: chi-square {chi2}");
    // the second, proportionally among the rest: P(j) = sum_i b_i/W * b_j/(W - b_i)
    let chi2: f64 = (0..b.len())
        .map(|j| {
            let p: f64 = (0..b.len())
                .filter(|&i| i != j)
                .map(|i| b[i] / total * b[j] / (total - b[i]))
                .sum();
            let e = RUNS as f64 * p;
            (second[j] as f64 - e).powi(2) / e
        })
        .sum();
    assert!(chi2 < CHI2_19_P001, "second hop: chi-square {chi2}");

    // exclusions and reliabilities are honoured
    let me = nodes[19].id();
    let unreliable = nodes[18].id();
    for _ in 0..2000 {
        select_hops(
            &verified,
            3,
            &[me],
            |id| if *id == unreliable { 0.0 } else { 1.0 },
            &mut rng,
            &mut out,
        )
        .unwrap();
        assert!(!out.contains(&19) && !out.contains(&18));
    }
    let err = select_hops(&verified, 3, &[], |_| 0.0, &mut rng, &mut out).unwrap_err();
    assert_eq!(
        err,
        PathError::NotEnoughNodes {
            needed: 3,
            available: 0
        }
    );
}

#[test]
fn a_consensus_with_parameters_out_of_range_is_refused_naming_the_field() {
    let (authorities, set, consensus) = network(3, 9);
    let cases = [
        (
            NetworkParams {
                mean_delay_micros: 86_400 * 1_000_000 + 1,
                ..PARAMS
            },
            "mean_delay_micros",
        ),
        (
            NetworkParams {
                loops: 1_001,
                ..PARAMS
            },
            "loops",
        ),
        (NetworkParams { hops: 6, ..PARAMS }, "hops"),
        (
            NetworkParams {
                rho_permille: 999,
                ..PARAMS
            },
            "rho",
        ),
    ];
    for (params, field) in cases {
        assert!(params.validate().unwrap_err().contains(field));
        let mut bad = consensus.clone();
        bad.params = params;
        let who: Vec<&IdentitySecret> = authorities.iter().collect();
        let err = UnverifiedConsensus::from_bytes(&signed_by(&bad, &who))
            .and_then(|u| u.check_signatures(&set))
            .unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[test]
fn a_consensus_carried_forward_lists_the_next_keys_once() {
    let (authorities, set, consensus) = network(3, 9);
    let bytes = signed_by(&consensus, &[&authorities[0], &authorities[1]]);
    let verified = UnverifiedConsensus::from_bytes(&bytes)
        .unwrap()
        .check_signatures(&set)
        .unwrap()
        .check_valid_at(consensus.valid_after, 0)
        .unwrap();
    let carried = verified.carried_forward().unwrap();
    assert_eq!(carried.epoch(), 11);
    assert_eq!(carried.consensus().valid_after, PARAMS.epoch_start(11));
    assert!(carried.consensus().valid_until > consensus.valid_until);
    assert_eq!(carried.nodes().len(), 3);
    for (was, now) in verified.nodes().iter().zip(carried.nodes()) {
        assert_eq!(now.id(), was.id());
        assert_eq!(Some(now.mix_key), was.next_mix_key);
        assert_eq!(now.addresses, was.addresses);
        assert!(carried.node(&was.id()).is_some());
    }
    assert_eq!(carried.signed_by(), verified.signed_by());
    // a carried consensus lists no next keys: it is not carried again
    assert!(carried.carried_forward().is_none());
}
