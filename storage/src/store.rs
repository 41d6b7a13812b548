//! The block store of a storage provider, in redb: one block per box, immutable once
//! written, each accepted PUT committed (fsync'd) before it is acknowledged.
//!
//! Limits (see [`Limits`]): a block is at most [`BLOCK_LEN`] bytes and a box holds one
//! block (the per-box quota); the store holds at most `max_blocks` blocks and
//! `max_markers` markers (the total quota) and refuses a PUT while the file system has
//! less than `reserve_bytes` free. A block lives `retention_epochs` epochs; then a sweep
//! replaces it by an "expired" marker, which (like a tombstone) keeps the box from being
//! written again for another retention period and is then removed.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::bacap::{self, BLOCK_LEN, BoxId, SIGNATURE_LEN};
use crate::protocol::Status;

const BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
const BY_EPOCH: TableDefinition<'_, &[u8], u8> = TableDefinition::new("by_epoch");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

const STATE_STORED: u8 = 1;
const STATE_TOMBSTONE: u8 = 2;
const STATE_EXPIRED: u8 = 3;

const META_BLOCKS: &str = "blocks";
const META_BYTES: &str = "bytes";
const META_MARKERS: &str = "markers";

/// The file the store lives in, inside its directory.
pub const FILE_NAME: &str = "blocks.redb";

/// The most entries one call of [`BlockStore::sweep`] handles (one transaction).
pub const SWEEP_BATCH: usize = 4096;

/// A store's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most blocks held at once.
    pub max_blocks: u64,
    /// The most tombstone and expiry markers held at once.
    pub max_markers: u64,
    /// PUTs are refused while the file system has less free space than this.
    pub reserve_bytes: u64,
    /// How many epochs a block is kept.
    pub retention_epochs: u64,
}

impl Default for Limits {
    /// About 1 GiB of blocks, as many markers, 256 MiB free space kept, and 1008 epochs of
    /// retention: two weeks at the production epoch of 20 minutes.
    fn default() -> Limits {
        Limits {
            max_blocks: 1 << 20,
            max_markers: 1 << 20,
            reserve_bytes: 256 << 20,
            retention_epochs: 1008,
        }
    }
}

/// The store could not be read or written (a corrupt file, an I/O error): the request is
/// refused with [`Status::Unavailable`] and nothing is acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("block store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

/// What the store holds, as counted in its own transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks held.
    pub blocks: u64,
    /// Bytes of the blocks held.
    pub bytes: u64,
    /// Tombstone and expiry markers held.
    pub markers: u64,
}

/// A block read back.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    /// Its signature under the box ID.
    pub signature: [u8; SIGNATURE_LEN],
    /// Its length.
    pub len: u16,
    /// The block, zero-padded.
    pub data: [u8; BLOCK_LEN],
    /// The epoch it was stored in.
    pub epoch: u64,
}

impl core::fmt::Debug for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Block")
            .field("len", &self.len)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// What a GET finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A block.
    Found(Box<Block>),
    /// Nothing, or a status (`Empty`, `Expired`, `Tombstoned`).
    None(Status),
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Blocks that outlived the retention, now expiry markers.
    pub expired: u64,
    /// Markers that outlived the retention, now gone.
    pub removed: u64,
    /// Whether entries older than the cutoff remain (call again).
    pub more: bool,
}

enum Entry {
    Stored(Box<Block>),
    Marker { state: u8, epoch: u64 },
}

fn decode_entry(v: &[u8]) -> Option<Entry> {
    let (&state, rest) = v.split_first()?;
    let epoch = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    match state {
        STATE_STORED => {
            let signature: [u8; SIGNATURE_LEN] = rest.get(8..8 + SIGNATURE_LEN)?.try_into().ok()?;
            let at = 8 + SIGNATURE_LEN;
            let len = u16::from_be_bytes(rest.get(at..at + 2)?.try_into().ok()?);
            let data = rest.get(at + 2..)?;
            if data.len() != usize::from(len) || data.len() > BLOCK_LEN {
                return None;
            }
            let mut block = Box::new(Block {
                signature,
                len,
                data: [0; BLOCK_LEN],
                epoch,
            });
            block.data[..data.len()].copy_from_slice(data);
            Some(Entry::Stored(block))
        }
        STATE_TOMBSTONE | STATE_EXPIRED if rest.len() == 8 => Some(Entry::Marker { state, epoch }),
        _ => None,
    }
}

fn encode_stored(epoch: u64, signature: &[u8; 64], block: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + 8 + SIGNATURE_LEN + 2 + block.len());
    v.push(STATE_STORED);
    v.extend_from_slice(&epoch.to_be_bytes());
    v.extend_from_slice(signature);
    v.extend_from_slice(&(block.len() as u16).to_be_bytes());
    v.extend_from_slice(block);
    v
}

fn encode_marker(state: u8, epoch: u64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = state;
    v[1..].copy_from_slice(&epoch.to_be_bytes());
    v
}

fn epoch_key(epoch: u64, box_id: &BoxId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(box_id);
    k
}

/// The block store.
#[derive(Debug)]
pub struct BlockStore {
    db: Database,
    dir: PathBuf,
    limits: Limits,
    stats: Stats,
}

/// Free bytes for unprivileged users on the file system holding `dir`.
#[allow(unsafe_code)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = core::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` points to writable memory of the
    // size statvfs fills; it is read only when the call succeeded.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // the field types differ between targets
    #[allow(clippy::unnecessary_cast)]
    let (avail, size) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(avail.saturating_mul(size))
}

impl BlockStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, limits: Limits) -> Result<BlockStore, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError {
            path: dir.join(FILE_NAME),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(|e| fail(&e))?;
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        let stats;
        {
            txn.open_table(BLOCKS).map_err(|e| fail(&e))?;
            txn.open_table(BY_EPOCH).map_err(|e| fail(&e))?;
            let meta = txn.open_table(META).map_err(|e| fail(&e))?;
            let get = |k| -> Result<u64, StoreError> {
                Ok(meta
                    .get(k)
                    .map_err(|e| fail(&e))?
                    .map(|g| g.value())
                    .unwrap_or(0))
            };
            stats = Stats {
                blocks: get(META_BLOCKS)?,
                bytes: get(META_BYTES)?,
                markers: get(META_MARKERS)?,
            };
        }
        txn.commit().map_err(|e| fail(&e))?;
        Ok(BlockStore {
            db,
            dir: dir.to_path_buf(),
            limits,
            stats,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.dir.join(FILE_NAME),
            message: e.to_string(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the store holds.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Stores `block` in box `box_id` at `epoch`, if `signature` is the box's PUT signature:
    /// `Stored` once committed (or when this very block is there already: retries are
    /// idempotent), else the refusal (`BadSignature`, `TooLarge`, `Exists`, `Tombstoned`,
    /// `Expired`, `Full`).
    pub fn put(
        &mut self,
        box_id: &BoxId,
        signature: &[u8; SIGNATURE_LEN],
        block: &[u8],
        epoch: u64,
    ) -> Result<Status, StoreError> {
        if block.len() > BLOCK_LEN {
            return Ok(Status::TooLarge);
        }
        if bacap::verify_put(box_id, signature, block).is_err() {
            return Ok(Status::BadSignature);
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let stats = {
            let mut blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let existing = blocks
                .get(&box_id[..])
                .map_err(|e| self.err(e))?
                .map(|g| decode_entry(g.value()));
            match existing {
                Some(Some(Entry::Stored(b))) => {
                    let same = b.signature == *signature && &b.data[..usize::from(b.len)] == block;
                    return Ok(if same { Status::Stored } else { Status::Exists });
                }
                Some(Some(Entry::Marker { state, .. })) => {
                    return Ok(if state == STATE_TOMBSTONE {
                        Status::Tombstoned
                    } else {
                        Status::Expired
                    });
                }
                // an entry this code cannot read: never overwritten
                Some(None) => return Ok(Status::Exists),
                None => {}
            }
            if self.stats.blocks >= self.limits.max_blocks
                || free_bytes(&self.dir).is_some_and(|f| f < self.limits.reserve_bytes)
            {
                return Ok(Status::Full);
            }
            blocks
                .insert(&box_id[..], &encode_stored(epoch, signature, block)[..])
                .map_err(|e| self.err(e))?;
            txn.open_table(BY_EPOCH)
                .map_err(|e| self.err(e))?
                .insert(&epoch_key(epoch, box_id)[..], STATE_STORED)
                .map_err(|e| self.err(e))?;
            let stats = Stats {
                blocks: self.stats.blocks + 1,
                bytes: self.stats.bytes + block.len() as u64,
                ..self.stats
            };
            self.write_stats(&txn, &stats)?;
            stats
        };
        txn.commit().map_err(|e| self.err(e))?;
        self.stats = stats;
        Ok(Status::Stored)
    }

    fn write_stats(&self, txn: &redb::WriteTransaction, s: &Stats) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
        for (k, v) in [
            (META_BLOCKS, s.blocks),
            (META_BYTES, s.bytes),
            (META_MARKERS, s.markers),
        ] {
            meta.insert(k, v).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Reads box `box_id` at `epoch`: its block, or `Empty`, `Expired` (past the retention,
    /// swept or not), `Tombstoned`.
    pub fn get(&self, box_id: &BoxId, epoch: u64) -> Result<Lookup, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
        let entry = blocks
            .get(&box_id[..])
            .map_err(|e| self.err(e))?
            .map(|g| decode_entry(g.value()));
        Ok(match entry {
            None => Lookup::None(Status::Empty),
            Some(None) => Lookup::None(Status::Unavailable),
            Some(Some(Entry::Stored(b))) => {
                if epoch > b.epoch.saturating_add(self.limits.retention_epochs) {
                    Lookup::None(Status::Expired)
                } else {
                    Lookup::Found(b)
                }
            }
            Some(Some(Entry::Marker { state, .. })) => Lookup::None(if state == STATE_TOMBSTONE {
                Status::Tombstoned
            } else {
                Status::Expired
            }),
        })
    }

    /// Deletes box `box_id` for good, if `signature` is its tombstone: `Deleted` (also when
    /// it was deleted already, or never written: then nobody can write it later), else
    /// `BadSignature` or `Full` (no room for the marker).
    pub fn tombstone(
        &mut self,
        box_id: &BoxId,
        signature: &[u8; SIGNATURE_LEN],
        epoch: u64,
    ) -> Result<Status, StoreError> {
        if bacap::verify_tombstone(box_id, signature).is_err() {
            return Ok(Status::BadSignature);
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let stats = {
            let mut blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let mut by_epoch = txn.open_table(BY_EPOCH).map_err(|e| self.err(e))?;
            let existing = blocks
                .get(&box_id[..])
                .map_err(|e| self.err(e))?
                .map(|g| decode_entry(g.value()));
            let mut stats = self.stats;
            match existing {
                Some(Some(Entry::Marker {
                    state: STATE_TOMBSTONE,
                    ..
                })) => return Ok(Status::Deleted),
                Some(Some(Entry::Stored(b))) => {
                    by_epoch
                        .remove(&epoch_key(b.epoch, box_id)[..])
                        .map_err(|e| self.err(e))?;
                    stats.blocks -= 1;
                    stats.bytes -= u64::from(b.len);
                    stats.markers += 1;
                }
                Some(Some(Entry::Marker { epoch: was, .. })) => {
                    by_epoch
                        .remove(&epoch_key(was, box_id)[..])
                        .map_err(|e| self.err(e))?;
                }
                Some(None) => return Ok(Status::Unavailable),
                None => {
                    if self.stats.markers >= self.limits.max_markers {
                        return Ok(Status::Full);
                    }
                    stats.markers += 1;
                }
            }
            blocks
                .insert(&box_id[..], &encode_marker(STATE_TOMBSTONE, epoch)[..])
                .map_err(|e| self.err(e))?;
            by_epoch
                .insert(&epoch_key(epoch, box_id)[..], STATE_TOMBSTONE)
                .map_err(|e| self.err(e))?;
            self.write_stats(&txn, &stats)?;
            stats
        };
        txn.commit().map_err(|e| self.err(e))?;
        self.stats = stats;
        Ok(Status::Deleted)
    }

    /// Ends what outlived the retention at `epoch`: blocks stored before
    /// `epoch - retention` become expiry markers, markers set before then go. At most
    /// [`SWEEP_BATCH`] entries per call, in one transaction.
    pub fn sweep(&mut self, epoch: u64) -> Result<Swept, StoreError> {
        let Some(cutoff) = epoch.checked_sub(self.limits.retention_epochs) else {
            return Ok(Swept::default());
        };
        let end = epoch_key(cutoff, &[0; 32]);
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut swept = Swept::default();
        let stats = {
            let mut blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let mut by_epoch = txn.open_table(BY_EPOCH).map_err(|e| self.err(e))?;
            let mut due = Vec::new();
            for item in by_epoch.range(..&end[..]).map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if due.len() == SWEEP_BATCH {
                    swept.more = true;
                    break;
                }
                let mut key = [0u8; 40];
                if k.value().len() == 40 {
                    key.copy_from_slice(k.value());
                    due.push((key, v.value()));
                }
            }
            let mut stats = self.stats;
            for (key, state) in due {
                by_epoch.remove(&key[..]).map_err(|e| self.err(e))?;
                let box_id = &key[8..];
                let entry = blocks
                    .get(box_id)
                    .map_err(|e| self.err(e))?
                    .map(|g| decode_entry(g.value()));
                match (state, entry) {
                    (STATE_STORED, Some(Some(Entry::Stored(b)))) => {
                        blocks
                            .insert(box_id, &encode_marker(STATE_EXPIRED, epoch)[..])
                            .map_err(|e| self.err(e))?;
                        let mut id = [0u8; 32];
                        id.copy_from_slice(box_id);
                        by_epoch
                            .insert(&epoch_key(epoch, &id)[..], STATE_EXPIRED)
                            .map_err(|e| self.err(e))?;
                        stats.blocks -= 1;
                        stats.bytes -= u64::from(b.len);
                        stats.markers += 1;
                        swept.expired += 1;
                    }
                    (_, Some(Some(Entry::Marker { .. }))) => {
                        blocks.remove(box_id).map_err(|e| self.err(e))?;
                        stats.markers = stats.markers.saturating_sub(1);
                        swept.removed += 1;
                    }
                    _ => {}
                }
            }
            self.write_stats(&txn, &stats)?;
            stats
        };
        txn.commit().map_err(|e| self.err(e))?;
        self.stats = stats;
        Ok(swept)
    }

    /// Counts the entries of the blocks table by state, reading every one (for tests and
    /// `mixed` diagnostics; the running counts are [`Self::stats`]).
    pub fn recount(&self) -> Result<Stats, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let blocks = txn.open_table(BLOCKS).map_err(|e| self.err(e))?;
        let mut s = Stats::default();
        for item in blocks.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            match decode_entry(v.value()) {
                Some(Entry::Stored(b)) => {
                    s.blocks += 1;
                    s.bytes += u64::from(b.len);
                }
                Some(Entry::Marker { .. }) => s.markers += 1,
                None => {}
            }
        }
        Ok(s)
    }
}
