//! SIGKILL of a provider process during a stream of PUTs: after a restart every block it
//! had acknowledged is there and opens, none is there twice, and the running counts agree
//! with the table. The provider is a child process (this test binary, re-run with
//! `MIXED_STORAGE_CHILD` set), killed with SIGKILL three times over one store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use storage::bacap::{Position, WriteCap};
use storage::protocol::{self, Response, Status};
use storage::{BlockStore, Limits, Provider};

const CHILD_ENV: &str = "MIXED_STORAGE_CHILD";

fn cap() -> WriteCap {
    WriteCap::new([42; 32], Position::new(1_000, [43; 32]))
}

fn text(i: u64) -> Vec<u8> {
    format!("block {i} of the durability stream").into_bytes()
}

fn limits() -> Limits {
    Limits {
        reserve_bytes: 0,
        ..Limits::default()
    }
}

/// The provider process: PUTs box after box of one stream (from its start each time, so a
/// restarted child first repeats what was stored: idempotent retries) and prints each
/// acknowledgement once it holds. Does nothing unless run as the child.
#[test]
fn child_provider_writes_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut sp = Provider::new(BlockStore::open(Path::new(&dir), limits()).unwrap());
    let cap = cap();
    let mut p = cap.start().clone();
    let mut out = std::io::stdout().lock();
    for i in 0..100_000u64 {
        let s = cap.box_at(&p).unwrap().seal(&text(i)).unwrap();
        let put = protocol::encode_put(b"durable!", &s.box_id, &s.signature, &s.block);
        let r = Response::decode(&sp.handle(&put, 1)).unwrap();
        assert_eq!(r.status, Status::Stored);
        writeln!(out, "acked {i}").unwrap();
        out.flush().unwrap();
        p = p.next().unwrap();
    }
}

fn run_child_until(dir: &Path, acks: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_provider_writes_until_killed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(i) = line.strip_prefix("acked ") {
            last = i.parse::<u64>().ok();
            if last.is_some_and(|l| l + 1 >= acks) || Instant::now() > deadline {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child ran to its end: {status:?}");
    last.map_or(0, |l| l + 1)
}

#[test]
fn after_sigkill_every_acknowledged_block_is_there_once() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("mixed-storage-sigkill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut acked = 0;
    for round in 1..=3u64 {
        let got = run_child_until(&dir, round * 150);
        assert!(got >= round * 150, "round {round}: {got} acknowledged");
        acked = acked.max(got);
        let mut sp = Provider::new(BlockStore::open(&dir, limits()).unwrap());
        let cap = cap();
        let read = cap.read_cap();
        let mut p = cap.start().clone();
        // every acknowledged block opens; past them, the stream runs on contiguously up to
        // what the child committed after its last line was read, then is empty
        let mut found = 0;
        loop {
            let b = read.box_at(&p).unwrap();
            let bytes = sp.handle(&protocol::encode_get(b"check!!!", &b.id), 1);
            let r = Response::decode(&bytes).unwrap();
            if r.status == Status::Empty && found >= acked {
                break;
            }
            assert_eq!(r.status, Status::Found, "round {round}: block {found} lost");
            assert_eq!(b.open(&r.sealed().unwrap()).unwrap(), text(found));
            found += 1;
            p = p.next().unwrap();
        }
        let stats = sp.store().stats();
        assert_eq!(sp.store().recount().unwrap(), stats, "round {round}");
        assert_eq!(
            stats.blocks, found,
            "round {round}: a block twice or astray"
        );
        acked = found;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
