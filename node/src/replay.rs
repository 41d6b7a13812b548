//! Replay filters that survive a crash. Each mix key's filter ([`engine::ReplayFilter`],
//! in memory, lock-free) is backed by a journal file, `<key_dir>/replay/<epoch>.tags`: the
//! 64-bit fingerprint of every new tag, appended.
//!
//! The packet path only pushes a new tag's fingerprint onto a bounded lock-free queue (no
//! allocation, no lock, no system call); the journal thread appends what is queued every
//! [`FLUSH_EVERY`] and syncs the files to disk every [`SYNC_EVERY`]. A restarted node reads
//! the journal of each key it honours back into the new filter before any packet is
//! processed under the key, so a packet seen before a crash is a replay after it.
//!
//! What a crash can lose: a process killed (SIGKILL, a panic, the OOM killer) loses the tags
//! of at most the last [`FLUSH_EVERY`] (50 ms), whose packets a replay within the epoch
//! would get through once more; a machine that loses power, at most the last [`SYNC_EVERY`]
//! (1 s). A full queue or a failed write (a full disk) is counted
//! (`mixed_replay_unsaved_total`) and logged at most once a minute, never blocking packets.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use crypto_simd::sphinx::ReplayTag;
use engine::{ReplayCheck, ReplayFilter, Seen};

/// How often queued fingerprints are written to the journal.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often the journal files are synced to disk.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);

/// One key's replay filter, in memory and journaled.
#[derive(Debug)]
pub(crate) struct PersistentReplay {
    filter: ReplayFilter,
    /// New fingerprints not yet written.
    pending: ArrayQueue<u64>,
    /// Fingerprints that could not be written (the queue full, a write failed).
    unsaved: AtomicU64,
}

impl ReplayCheck for PersistentReplay {
    fn check_and_insert(&self, tag: &ReplayTag) -> Seen {
        let fp = ReplayFilter::fingerprint(tag);
        let seen = self.filter.check_and_insert_fingerprint(fp);
        if seen == Seen::New && self.pending.push(fp).is_err() {
            self.unsaved.fetch_add(1, Ordering::Relaxed);
        }
        seen
    }
}

impl PersistentReplay {
    /// Tags remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.filter.len()
    }
}

struct Open {
    epoch: u64,
    replay: Arc<PersistentReplay>,
    file: File,
    path: PathBuf,
}

/// The journals of the keys a node honours, and the thread that writes them.
pub(crate) struct Journal {
    dir: PathBuf,
    open: Mutex<Vec<Open>>,
    /// Flushes since the last warning about unsaved tags (`None`: never warned).
    since_warning: Mutex<Option<u64>>,
    /// Fingerprints lost to failed writes (the queues' overflows are counted per filter).
    write_failed: AtomicU64,
    /// The unsaved count when last warned about.
    warned_at: AtomicU64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

impl Journal {
    /// The journals in `dir` (created, mode 0700).
    pub(crate) fn open(dir: &Path) -> io::Result<Journal> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            open: Mutex::new(Vec::new()),
            since_warning: Mutex::new(None),
            write_failed: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        })
    }

    /// The filter of `epoch`'s key, for up to `capacity` tags, with the journal's tags read
    /// back in (the same filter on every call for one epoch). `queue` bounds the
    /// fingerprints waiting to be written.
    pub(crate) fn filter(
        &self,
        epoch: u64,
        capacity: usize,
        queue: usize,
    ) -> io::Result<Arc<PersistentReplay>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = open.iter().find(|o| o.epoch == epoch) {
            return Ok(Arc::clone(&o.replay));
        }
        let path = self.dir.join(format!("{epoch}.tags"));
        let replay = Arc::new(PersistentReplay {
            filter: ReplayFilter::new(capacity),
            pending: ArrayQueue::new(queue.max(1024)),
            unsaved: AtomicU64::new(0),
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // a write cut short by the crash leaves a partial fingerprint at the end: ignored
        for chunk in bytes.chunks_exact(8) {
            let mut fp = [0u8; 8];
            fp.copy_from_slice(chunk);
            let _ = replay
                .filter
                .check_and_insert_fingerprint(u64::from_le_bytes(fp));
        }
        if bytes.len() % 8 != 0 {
            file.set_len((bytes.len() - bytes.len() % 8) as u64)?;
        }
        if !bytes.is_empty() {
            tracing::info!(
                epoch,
                tags = bytes.len() / 8,
                "replay filter restored from its journal"
            );
        }
        open.push(Open {
            epoch,
            replay: Arc::clone(&replay),
            file,
            path,
        });
        Ok(replay)
    }

    /// Drops the journals of epochs before `epoch` (their keys are erased).
    pub(crate) fn forget_before(&self, epoch: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|o| {
            let keep = o.epoch >= epoch;
            if !keep {
                let _ = std::fs::remove_file(&o.path);
            }
            keep
        });
        drop(open);
        // and any left from an earlier run
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let e = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".tags"))
                    .and_then(|n| n.parse::<u64>().ok());
                if e.is_some_and(|e| e < epoch) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Writes what is queued; syncs the files when `sync`.
    pub(crate) fn flush(&self, sync: bool) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = Vec::new();
        for o in open.iter_mut() {
            buf.clear();
            while let Some(fp) = o.replay.pending.pop() {
                buf.extend_from_slice(&fp.to_le_bytes());
            }
            if !buf.is_empty() && o.file.write_all(&buf).is_err() {
                self.write_failed
                    .fetch_add((buf.len() / 8) as u64, Ordering::Relaxed);
            }
            if sync {
                let _ = o.file.sync_data();
            }
        }
        let unsaved = self.unsaved_locked(&open);
        drop(open);
        let mut since = self.since_warning.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = since.as_mut() {
            *n += 1;
        }
        // a minute of flushes between warnings, and one only when more were lost
        let quiet = (Duration::from_secs(60).as_millis() / FLUSH_EVERY.as_millis()) as u64;
        if unsaved > self.warned_at.load(Ordering::Relaxed) && since.is_none_or(|n| n >= quiet) {
            *since = Some(0);
            self.warned_at.store(unsaved, Ordering::Relaxed);
            tracing::warn!(
                unsaved,
                dir = %self.dir.display(),
                "replay tags not written to the journal (a full disk, or more packets \
                 than the queue holds): after a crash their packets could be replayed once"
            );
        }
    }

    fn unsaved_locked(&self, open: &[Open]) -> u64 {
        self.write_failed.load(Ordering::Relaxed)
            + open
                .iter()
                .map(|o| o.replay.unsaved.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Fingerprints not written (queues full, writes failed), since start.
    pub(crate) fn unsaved(&self) -> u64 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        self.unsaved_locked(&open)
    }

    /// The journal thread: writes every [`FLUSH_EVERY`], syncs every [`SYNC_EVERY`], and
    /// once more, synced, when the node stops.
    pub(crate) fn run(&self, stop: &AtomicBool, metrics: &crate::metrics::Metrics) {
        let per_sync = (SYNC_EVERY.as_millis() / FLUSH_EVERY.as_millis()).max(1) as u64;
        let mut flushes = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(FLUSH_EVERY);
            flushes += 1;
            self.flush(flushes.is_multiple_of(per_sync));
            metrics.set_replay_unsaved(self.unsaved());
        }
        self.flush(true);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tag(i: u64) -> ReplayTag {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        ReplayTag(t)
    }

    #[test]
    fn tags_written_before_a_restart_are_replays_after_it() {
        let dir = std::env::temp_dir().join(format!("mixed-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Journal::open(&dir).unwrap();
        let f = journal.filter(7, 1000, 1024).unwrap();
        for i in 0..100 {
            assert_eq!(f.check_and_insert(&tag(i)), Seen::New);
        }
        journal.flush(false);
        // a torn last write is ignored
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("7.tags"))
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        drop(f);
        drop(journal);
        // "restart": a new journal reads the file back
        let journal = Journal::open(&dir).unwrap();
        let f = journal.filter(7, 1000, 1024).unwrap();
        assert_eq!(f.len(), 100);
        for i in 0..100 {
            assert_eq!(f.check_and_insert(&tag(i)), Seen::Replay);
        }
        assert_eq!(f.check_and_insert(&tag(100)), Seen::New);
        // another epoch's key has its own filter
        assert_eq!(
            journal
                .filter(8, 1000, 1024)
                .unwrap()
                .check_and_insert(&tag(1)),
            Seen::New
        );
        journal.forget_before(8);
        assert!(!dir.join("7.tags").exists());
        assert!(dir.join("8.tags").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_is_counted_not_blocking() {
        let dir = std::env::temp_dir().join(format!("mixed-journal-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let journal = Journal::open(&dir).unwrap();
        let f = journal.filter(1, 5000, 1024).unwrap();
        for i in 0..1100 {
            assert_eq!(f.check_and_insert(&tag(i)), Seen::New);
        }
        assert_eq!(journal.unsaved(), 76);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
