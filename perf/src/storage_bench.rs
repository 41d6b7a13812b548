//! `mixed-storage-bench`: a storage provider's PUT and GET throughput on one core, through
//! its request handling (parse, Ed25519 verification, redb commit before the answer), next
//! to the verification alone measured in the same run: the share of a PUT that is the
//! database.
//!
//! ```text
//! cargo build --release -p perf
//! target/release/mixed-storage-bench              # 2,000 blocks in a temporary folder
//! target/release/mixed-storage-bench --blocks 10000 --dir /var/tmp/sp-bench
//! ```
//!
//! Each PUT is committed with redb's default durability (an fsync) before it is answered,
//! as a provider does, so the figure depends on the disk under `--dir`.

// a driver: reads clocks, prints
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use storage::bacap::{self, WriteCap};
use storage::protocol::{self, Response, Status};
use storage::{BlockStore, Limits, Provider};

#[derive(Parser)]
#[command(
    name = "mixed-storage-bench",
    about = "A storage provider's PUT and GET throughput on one core, with redb commits, against Ed25519 verification alone"
)]
struct Args {
    /// Blocks to PUT (each a full 832-byte block in its own box) and then GET.
    #[arg(long, default_value_t = 2000)]
    blocks: usize,
    /// Where the store goes (default: a new folder under the system's temporary folder,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.blocks == 0 {
        bail!("--blocks must be at least 1");
    }
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mixed-storage-bench-{}", std::process::id())),
            true,
        ),
    };
    if dir.join(storage::store::FILE_NAME).exists() {
        bail!(
            "{} holds a store already: give an empty --dir",
            dir.display()
        );
    }
    // the client's work, before the clock starts: a stream's boxes, sealed and encoded
    let cap = WriteCap::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let mut p = cap.start().clone();
    let mut puts = Vec::with_capacity(args.blocks);
    let mut gets = Vec::with_capacity(args.blocks);
    let mut sealed = Vec::with_capacity(args.blocks);
    for i in 0..args.blocks {
        let s = cap
            .box_at(&p)?
            .seal(&[(i % 251) as u8; bacap::PLAINTEXT_MAX])?;
        puts.push(protocol::encode_put(
            &[0; 8],
            &s.box_id,
            &s.signature,
            &s.block,
        ));
        gets.push(protocol::encode_get(&[0; 8], &s.box_id));
        sealed.push(s);
        p = p.next()?;
    }
    let t = Instant::now();
    for s in &sealed {
        bacap::verify_put(&s.box_id, &s.signature, &s.block)?;
    }
    let verify = t.elapsed().as_secs_f64() / args.blocks as f64;

    let limits = Limits {
        max_blocks: args.blocks as u64 + 1,
        reserve_bytes: 0,
        ..Limits::default()
    };
    let mut sp = Provider::new(BlockStore::open(&dir, limits)?);
    let t = Instant::now();
    for r in &puts {
        let status = Response::decode(&sp.handle(r, 1)).map(|r| r.status);
        if status != Some(Status::Stored) {
            bail!("a PUT was answered {status:?}");
        }
    }
    let put = t.elapsed().as_secs_f64() / args.blocks as f64;
    let t = Instant::now();
    for r in &gets {
        let status = Response::decode(&sp.handle(r, 1)).map(|r| r.status);
        if status != Some(Status::Found) {
            bail!("a GET was answered {status:?}");
        }
    }
    let get = t.elapsed().as_secs_f64() / args.blocks as f64;
    let stats = sp.store().stats();
    drop(sp);
    let file = std::fs::metadata(dir.join(storage::store::FILE_NAME))?.len();
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "{} blocks of {} bytes in {}",
        args.blocks,
        bacap::BLOCK_LEN,
        dir.display()
    );
    println!(
        "  verify alone   {:>8.1} us  {:>9.0} blocks/s",
        verify * 1e6,
        1.0 / verify
    );
    println!(
        "  PUT (commit)   {:>8.1} us  {:>9.0} blocks/s  {:.2}x the verification",
        put * 1e6,
        1.0 / put,
        put / verify
    );
    println!(
        "  GET            {:>8.1} us  {:>9.0} blocks/s",
        get * 1e6,
        1.0 / get
    );
    println!(
        "  store: {} blocks, {} bytes of blocks, file {} bytes ({:.2}x)",
        stats.blocks,
        stats.bytes,
        file,
        file as f64 / stats.bytes.max(1) as f64
    );
    Ok(())
}
