//! The node's durable state for offline delivery (docs/storage.md): its contacts, where
//! their two streams stand, and the stored messages it delivered, in
//! `<key_dir>/offline.redb` (redb: each write one ACID transaction, fsync'd before it
//! returns). The offline layer hands out [`Changes`]; the messaging service writes them
//! before it gives the events that followed them to applications, so a restart neither
//! forgets a contact, nor walks a stream from its start again, nor delivers a stored
//! message twice.
//!
//! The file holds the streams' chain keys, which read and write the streams: it is as
//! secret as the identity key beside it (the key directory is mode 0700).

use std::path::{Path, PathBuf};

use anon::MessageId;
use anon::offline::{Changes, ContactState, DELIVERED_REMEMBERED};
use pki_client::IdentityKey;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The file in the key directory.
pub const FILE_NAME: &str = "offline.redb";

/// node ID -> version (1) || identity key (32) || writer frontier (40) || reader (40).
const CONTACTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("contacts");
/// sequence -> message ID: stored messages delivered, the last [`DELIVERED_REMEMBERED`].
const DELIVERED: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("delivered");

const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 1 + 32 + 40 + 40;

/// The durable state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The file could not be opened or created.
    #[error(
        "cannot open the node's offline state {path}: {reason} (is another node running on \
         this key directory? is the disk full or read-only?)"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        reason: String,
    },
    /// A record is not one this version wrote.
    #[error(
        "the node's offline state {path} holds a record this version cannot read ({what}); \
         move the file away to start afresh (contacts must then be added again)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: String,
    },
    /// A write failed.
    #[error("cannot write the node's offline state {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What redb said.
        reason: String,
    },
}

/// What a node finds at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// The contacts and their streams' frontiers.
    pub contacts: Vec<ContactState>,
    /// The stored messages delivered, oldest first.
    pub delivered: Vec<MessageId>,
}

/// The open file.
#[derive(Debug)]
pub struct DurableState {
    db: Database,
    path: PathBuf,
    next_seq: u64,
}

impl DurableState {
    /// Opens (or creates) the file in `key_dir` and reads what it holds.
    pub fn open(key_dir: &Path) -> Result<(DurableState, Restored), DurableError> {
        let path = key_dir.join(FILE_NAME);
        let open = |e: &dyn std::fmt::Display| DurableError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let db = Database::create(&path).map_err(|e| open(&e))?;
        let txn = db.begin_write().map_err(|e| open(&e))?;
        txn.open_table(CONTACTS).map_err(|e| open(&e))?;
        txn.open_table(DELIVERED).map_err(|e| open(&e))?;
        txn.commit().map_err(|e| open(&e))?;

        let corrupt = |what: String| DurableError::Corrupt {
            path: path.clone(),
            what,
        };
        let mut restored = Restored::default();
        let txn = db.begin_read().map_err(|e| open(&e))?;
        let contacts = txn.open_table(CONTACTS).map_err(|e| open(&e))?;
        for entry in contacts.iter().map_err(|e| open(&e))? {
            let (k, v) = entry.map_err(|e| open(&e))?;
            let state = decode(v.value())
                .filter(|s| s.identity.node_id()[..] == *k.value())
                .ok_or_else(|| corrupt(format!("a contact of {} bytes", v.value().len())))?;
            restored.contacts.push(state);
        }
        let delivered = txn.open_table(DELIVERED).map_err(|e| open(&e))?;
        let mut next_seq = 0;
        for entry in delivered.iter().map_err(|e| open(&e))? {
            let (k, v) = entry.map_err(|e| open(&e))?;
            let id: MessageId = v
                .value()
                .try_into()
                .map_err(|_| corrupt(format!("a delivered ID of {} bytes", v.value().len())))?;
            restored.delivered.push(id);
            next_seq = k.value() + 1;
        }
        Ok((DurableState { db, path, next_seq }, restored))
    }

    /// Writes `changes` in one transaction, committed (fsync'd) before it returns; the
    /// delivered IDs past the last [`DELIVERED_REMEMBERED`] are dropped.
    pub fn write(&mut self, changes: &Changes) -> Result<(), DurableError> {
        let fail = |e: &dyn std::fmt::Display| DurableError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        let mut next_seq = self.next_seq;
        {
            let mut contacts = txn.open_table(CONTACTS).map_err(|e| fail(&e))?;
            for c in &changes.contacts {
                contacts
                    .insert(&c.identity.node_id()[..], &encode(c)[..])
                    .map_err(|e| fail(&e))?;
            }
            let mut delivered = txn.open_table(DELIVERED).map_err(|e| fail(&e))?;
            for id in &changes.delivered {
                delivered.insert(next_seq, &id[..]).map_err(|e| fail(&e))?;
                next_seq += 1;
            }
            let keep_from = next_seq.saturating_sub(DELIVERED_REMEMBERED as u64);
            if !changes.delivered.is_empty() && keep_from > 0 {
                delivered
                    .retain_in(..keep_from, |_, _| false)
                    .map_err(|e| fail(&e))?;
            }
        }
        txn.commit().map_err(|e| fail(&e))?;
        self.next_seq = next_seq;
        Ok(())
    }
}

fn encode(c: &ContactState) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[0] = RECORD_VERSION;
    out[1..33].copy_from_slice(&c.identity.0);
    out[33..73].copy_from_slice(&c.writer);
    out[73..].copy_from_slice(&c.reader);
    out
}

fn decode(b: &[u8]) -> Option<ContactState> {
    if b.len() != RECORD_LEN || b[0] != RECORD_VERSION {
        return None;
    }
    Some(ContactState {
        identity: IdentityKey(b[1..33].try_into().ok()?),
        writer: b[33..73].try_into().ok()?,
        reader: b[73..].try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mixed-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn contact(i: u8) -> ContactState {
        ContactState {
            identity: IdentityKey([i; 32]),
            writer: [i + 1; 40],
            reader: [i + 2; 40],
        }
    }

    #[test]
    fn contacts_and_deliveries_survive_a_reopen_and_the_last_writes_win() {
        let d = dir("reopen");
        let (mut s, r) = DurableState::open(&d).unwrap();
        assert!(r.contacts.is_empty() && r.delivered.is_empty());
        s.write(&Changes {
            contacts: vec![contact(1), contact(2)],
            delivered: vec![[7; 16]],
        })
        .unwrap();
        let mut moved = contact(1);
        moved.writer = [9; 40];
        s.write(&Changes {
            contacts: vec![moved.clone()],
            delivered: vec![[8; 16]],
        })
        .unwrap();
        drop(s);
        let (_, r) = DurableState::open(&d).unwrap();
        assert_eq!(r.contacts, vec![moved, contact(2)]);
        assert_eq!(r.delivered, vec![[7; 16], [8; 16]]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn at_most_the_last_delivered_ids_are_kept_in_order() {
        let d = dir("limit");
        let (mut s, _) = DurableState::open(&d).unwrap();
        let ids: Vec<MessageId> = (0..DELIVERED_REMEMBERED as u32 + 10)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        for chunk in ids.chunks(4096) {
            s.write(&Changes {
                contacts: vec![],
                delivered: chunk.to_vec(),
            })
            .unwrap();
        }
        drop(s);
        let (_, r) = DurableState::open(&d).unwrap();
        assert_eq!(r.delivered.len(), DELIVERED_REMEMBERED);
        assert_eq!(r.delivered[..], ids[10..]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_it_cannot_read_is_a_clear_error() {
        let d = dir("corrupt");
        let (s, _) = DurableState::open(&d).unwrap();
        let txn = s.db.begin_write().unwrap();
        txn.open_table(CONTACTS)
            .unwrap()
            .insert(&[1u8; 32][..], &[2u8; 5][..])
            .unwrap();
        txn.commit().unwrap();
        drop(s);
        let e = DurableState::open(&d).unwrap_err().to_string();
        assert!(
            e.contains("offline.redb") && e.contains("move the file away"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
