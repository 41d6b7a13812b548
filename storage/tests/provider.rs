//! The storage service through its protocol: one fixed-size response per request, PUT /
//! GET / TOMBSTONE, idempotent retries, every refusal of the issue counted with the
//! provider unharmed, quotas, the free-space reserve and retention.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::PathBuf;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use storage::bacap::{BLOCK_LEN, WriteCap};
use storage::protocol::{self, RESPONSE_LEN, Response, Status};
use storage::{BlockStore, Limits, Provider};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mixed-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn provider(dir: &Dir, limits: Limits) -> Provider {
    Provider::new(BlockStore::open(&dir.0, limits).unwrap())
}

/// Test limits: no free-space reserve (the test machine's disk is not the subject).
fn limits() -> Limits {
    Limits {
        reserve_bytes: 0,
        ..Limits::default()
    }
}

fn answer(p: &mut Provider, request: &[u8], epoch: u64) -> Response {
    let bytes = p.handle(request, epoch);
    assert_eq!(bytes.len(), RESPONSE_LEN);
    Response::decode(&bytes).unwrap()
}

const TAG: [u8; 8] = *b"tag-0001";

#[test]
fn a_block_put_is_read_back_and_opened_by_the_reader() {
    let dir = Dir::new("roundtrip");
    let mut sp = provider(&dir, limits());
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let w = cap.box_at(cap.start()).unwrap();
    let sealed = w.seal(b"a symbol of a message").unwrap();
    let put = protocol::encode_put(&TAG, &sealed.box_id, &sealed.signature, &sealed.block);
    let r = answer(&mut sp, &put, 1);
    assert_eq!(
        (r.status, r.tag, r.box_id),
        (Status::Stored, TAG, sealed.box_id)
    );
    let r = answer(&mut sp, &protocol::encode_get(&TAG, &sealed.box_id), 1);
    assert_eq!(r.status, Status::Found);
    let got = r.sealed().unwrap();
    let reader = cap.read_cap().box_at(cap.start()).unwrap();
    assert_eq!(reader.open(&got).unwrap(), b"a symbol of a message");
    // the same PUT again (a retry) is one block
    assert_eq!(answer(&mut sp, &put, 2).status, Status::Stored);
    assert_eq!(sp.store().stats().blocks, 1);
    assert_eq!(sp.store().recount().unwrap(), sp.store().stats());
    assert_eq!(sp.counts().requests, 3);
    assert_eq!(sp.counts().get(Status::Stored), 2);
}

#[test]
fn every_bad_request_is_refused_counted_and_leaves_the_provider_working() {
    let dir = Dir::new("refusals");
    let mut sp = provider(&dir, limits());
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let p0 = cap.start().clone();
    let b0 = cap.box_at(&p0).unwrap();
    let sealed = b0.seal(b"first").unwrap();
    let put = protocol::encode_put(&TAG, &sealed.box_id, &sealed.signature, &sealed.block);
    assert_eq!(answer(&mut sp, &put, 1).status, Status::Stored);

    let other = b0.seal(b"second").unwrap();
    let mut bad_sig = sealed.signature;
    bad_sig[10] ^= 4;
    let b1 = cap.box_at(&p0.next().unwrap()).unwrap();
    let s1 = b1.seal(b"x").unwrap();
    let mut wrong_service = protocol::encode_get(&TAG, &sealed.box_id);
    wrong_service[1] = 9;
    let mut wrong_version = protocol::encode_get(&TAG, &sealed.box_id);
    wrong_version[0] = 2;
    let mut wrong_op = protocol::encode_get(&TAG, &sealed.box_id);
    wrong_op[2 + 8] = 77;
    let mut trailing = protocol::encode_get(&TAG, &sealed.box_id);
    trailing.push(0);
    let mut short_put = put.clone();
    short_put.truncate(put.len() - 1);
    let cases: Vec<(&str, Vec<u8>, Status)> = vec![
        (
            "a PUT without a valid signature",
            protocol::encode_put(&TAG, &s1.box_id, &bad_sig, &s1.block),
            Status::BadSignature,
        ),
        (
            "a PUT signed for another box",
            protocol::encode_put(&TAG, &s1.box_id, &sealed.signature, &sealed.block),
            Status::BadSignature,
        ),
        (
            "a PUT to a box written already",
            protocol::encode_put(&TAG, &other.box_id, &other.signature, &other.block),
            Status::Exists,
        ),
        (
            "a block over the size",
            protocol::encode_put(&TAG, &s1.box_id, &s1.signature, &[0; BLOCK_LEN + 1]),
            Status::TooLarge,
        ),
        ("an unknown service", wrong_service, Status::UnknownService),
        ("an unknown version", wrong_version, Status::Version),
        ("an unknown operation", wrong_op, Status::UnknownOp),
        ("trailing bytes", trailing, Status::Malformed),
        ("a PUT cut short", short_put, Status::Malformed),
        ("nothing at all", vec![], Status::Malformed),
        (
            "garbage",
            b"GET /mailbox HTTP/1.1\r\n\r\n".to_vec(),
            Status::Version,
        ),
        (
            "a tombstone for another box",
            protocol::encode_tombstone(&TAG, &sealed.box_id, &b1.tombstone()),
            Status::BadSignature,
        ),
        (
            "a box ID that is no key",
            protocol::encode_get(&TAG, &[0xff; 32]),
            Status::Empty,
        ),
    ];
    for (what, request, want) in &cases {
        let r = answer(&mut sp, request, 1);
        assert_eq!(r.status, *want, "{what}");
        assert_eq!(r.block_len, 0, "{what}");
        assert_eq!(r.block, [0; BLOCK_LEN], "{what}");
    }
    // counted by reason
    let c = sp.counts();
    assert_eq!(c.get(Status::BadSignature), 3);
    assert_eq!(c.get(Status::Exists), 1);
    assert_eq!(c.get(Status::TooLarge), 1);
    assert_eq!(c.get(Status::UnknownService), 1);
    assert_eq!(c.get(Status::Malformed), 3);
    assert_eq!(c.get(Status::Version), 2);
    assert_eq!(c.refused(), 12);
    // unharmed: the first block is intact and another PUT works
    let r = answer(&mut sp, &protocol::encode_get(&TAG, &sealed.box_id), 1);
    assert_eq!(r.sealed().unwrap(), sealed);
    let put1 = protocol::encode_put(&TAG, &s1.box_id, &s1.signature, &s1.block);
    assert_eq!(answer(&mut sp, &put1, 1).status, Status::Stored);
    assert_eq!(sp.store().stats().blocks, 2);
    assert_eq!(sp.store_errors(), 0);
}

#[test]
fn an_empty_box_answers_with_as_many_bytes_as_a_full_one() {
    let dir = Dir::new("sizes");
    let mut sp = provider(&dir, limits());
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(3));
    let p0 = cap.start().clone();
    let full = cap.box_at(&p0).unwrap().seal(b"data").unwrap();
    let empty = cap.box_at(&p0.next().unwrap()).unwrap().id;
    sp.handle(
        &protocol::encode_put(&TAG, &full.box_id, &full.signature, &full.block),
        1,
    );
    let a = sp.handle(&protocol::encode_get(&TAG, &full.box_id), 1);
    let b = sp.handle(&protocol::encode_get(&TAG, &empty), 1);
    let c = sp.handle(b"\x00", 1);
    assert_eq!(
        (a.len(), b.len(), c.len()),
        (RESPONSE_LEN, RESPONSE_LEN, RESPONSE_LEN)
    );
    assert_eq!(Response::decode(&a).unwrap().status, Status::Found);
    assert_eq!(Response::decode(&b).unwrap().status, Status::Empty);
}

#[test]
fn random_bytes_never_panic_and_always_get_one_refusal() {
    let dir = Dir::new("garbage");
    let mut sp = provider(&dir, limits());
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    for i in 0..5_000 {
        let len = (rng.next_u32() as usize) % (protocol::REQUEST_MAX + 40);
        let mut b = vec![0u8; len];
        rng.fill_bytes(&mut b);
        // half of them with a valid version and service, to reach the deeper parsers
        if i % 2 == 0 && len >= 2 {
            b[0] = protocol::VERSION;
            b[1] = protocol::SERVICE_STORAGE;
        }
        let r = Response::decode(&sp.handle(&b, 1)).unwrap();
        assert!(r.status.is_refusal() || r.status == Status::Empty, "{r:?}");
    }
    assert_eq!(sp.counts().requests, 5_000);
    assert_eq!(sp.store().stats().blocks, 0);
}

#[test]
fn a_tombstone_deletes_for_good() {
    let dir = Dir::new("tombstone");
    let mut sp = provider(&dir, limits());
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(5));
    let b0 = cap.box_at(cap.start()).unwrap();
    let sealed = b0.seal(b"gone soon").unwrap();
    let put = protocol::encode_put(&TAG, &sealed.box_id, &sealed.signature, &sealed.block);
    assert_eq!(answer(&mut sp, &put, 1).status, Status::Stored);
    let t = protocol::encode_tombstone(&TAG, &b0.id, &b0.tombstone());
    assert_eq!(answer(&mut sp, &t, 2).status, Status::Deleted);
    assert_eq!(answer(&mut sp, &t, 2).status, Status::Deleted, "idempotent");
    let get = protocol::encode_get(&TAG, &b0.id);
    assert_eq!(answer(&mut sp, &get, 2).status, Status::Tombstoned);
    assert_eq!(answer(&mut sp, &put, 3).status, Status::Tombstoned);
    let s = sp.store().stats();
    assert_eq!((s.blocks, s.bytes, s.markers), (0, 0, 1));
    assert_eq!(sp.store().recount().unwrap(), s);
}

#[test]
fn quotas_and_the_free_space_reserve_answer_full() {
    let dir = Dir::new("quota");
    let mut sp = provider(
        &dir,
        Limits {
            max_blocks: 3,
            ..limits()
        },
    );
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(6));
    let mut p = cap.start().clone();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let s = cap.box_at(&p).unwrap().seal(b"q").unwrap();
        statuses.push(
            answer(
                &mut sp,
                &protocol::encode_put(&TAG, &s.box_id, &s.signature, &s.block),
                1,
            )
            .status,
        );
        p = p.next().unwrap();
    }
    assert_eq!(
        statuses,
        [Status::Stored, Status::Stored, Status::Stored, Status::Full]
    );
    drop(sp);
    // a reserve larger than any disk: every PUT is refused, reads still work
    let mut sp = provider(
        &dir,
        Limits {
            reserve_bytes: u64::MAX,
            ..limits()
        },
    );
    let s = cap.box_at(&p).unwrap().seal(b"r").unwrap();
    let put = protocol::encode_put(&TAG, &s.box_id, &s.signature, &s.block);
    assert_eq!(answer(&mut sp, &put, 1).status, Status::Full);
    let first = cap.box_at(cap.start()).unwrap().id;
    assert_eq!(
        answer(&mut sp, &protocol::encode_get(&TAG, &first), 1).status,
        Status::Found
    );
    assert_eq!(sp.store().stats().blocks, 3, "the counts survive a reopen");
}

#[test]
fn blocks_expire_after_the_retention_and_their_boxes_stay_closed_for_another() {
    let dir = Dir::new("retention");
    let mut sp = provider(
        &dir,
        Limits {
            retention_epochs: 2,
            ..limits()
        },
    );
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(7));
    let s = cap.box_at(cap.start()).unwrap().seal(b"old").unwrap();
    let put = protocol::encode_put(&TAG, &s.box_id, &s.signature, &s.block);
    let get = protocol::encode_get(&TAG, &s.box_id);
    assert_eq!(answer(&mut sp, &put, 10).status, Status::Stored);
    assert_eq!(answer(&mut sp, &get, 12).status, Status::Found);
    assert_eq!(
        answer(&mut sp, &get, 13).status,
        Status::Expired,
        "before a sweep"
    );
    let swept = sp.sweep(13).unwrap();
    assert_eq!((swept.expired, swept.removed, swept.more), (1, 0, false));
    assert_eq!(answer(&mut sp, &get, 13).status, Status::Expired);
    assert_eq!(answer(&mut sp, &put, 13).status, Status::Expired);
    let st = sp.store().stats();
    assert_eq!((st.blocks, st.bytes, st.markers), (0, 0, 1));
    assert_eq!(sp.sweep(15).unwrap().removed, 0);
    assert_eq!(sp.sweep(16).unwrap().removed, 1);
    assert_eq!(answer(&mut sp, &get, 16).status, Status::Empty);
    assert_eq!(sp.store().stats(), Default::default());
    assert_eq!(sp.store().recount().unwrap(), Default::default());
}
