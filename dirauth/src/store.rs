//! The authority's durable state, in redb: every accepted descriptor and withdrawal is
//! committed before the authority answers, so a restart loses nothing; votes, consensus
//! documents and signatures are kept for a few epochs.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const DESCRIPTORS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("descriptors");
const WITHDRAWALS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("withdrawals");
const VOTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("votes");
const CONSENSUS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("consensus");
const SIGNATURES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("signatures");

/// A storage failure (disk full, a corrupt file): the authority reports it and refuses the
/// request rather than answer without persisting.
#[derive(Debug, thiserror::Error)]
#[error("state database: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Identity -> signed descriptor bytes.
    pub descriptors: Vec<([u8; 32], Vec<u8>)>,
    /// Identity -> (sequence, from epoch).
    pub withdrawals: Vec<([u8; 32], u64, u64)>,
    /// (epoch, authority) -> signed vote bytes.
    pub votes: Vec<(u64, [u8; 32], Vec<u8>)>,
    /// Epoch -> consensus body.
    pub consensus: Vec<(u64, Vec<u8>)>,
    /// (epoch, authority) -> signature bytes.
    pub signatures: Vec<(u64, [u8; 32], Vec<u8>)>,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

fn epoch_key(epoch: u64, authority: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(authority);
    k
}

fn split_epoch_key(k: &[u8]) -> Option<(u64, [u8; 32])> {
    let (e, a) = k.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*e), a.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) `dir/state.redb`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let db = Database::create(dir.join("state.redb")).map_err(err)?;
        // create the tables, so that reading an empty database works
        let txn = db.begin_write().map_err(err)?;
        {
            txn.open_table(DESCRIPTORS).map_err(err)?;
            txn.open_table(WITHDRAWALS).map_err(err)?;
            txn.open_table(VOTES).map_err(err)?;
            txn.open_table(CONSENSUS).map_err(err)?;
            txn.open_table(SIGNATURES).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(Store { db })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        f(&txn).map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Stores a node's descriptor, replacing its previous one and any withdrawal.
    pub fn put_descriptor(&self, identity: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(DESCRIPTORS)?.insert(&identity[..], bytes)?;
            txn.open_table(WITHDRAWALS)?.remove(&identity[..])?;
            Ok(())
        })
    }

    /// Stores a withdrawal.
    pub fn put_withdrawal(
        &self,
        identity: &[u8; 32],
        sequence: u64,
        from_epoch: u64,
    ) -> Result<(), StoreError> {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&sequence.to_be_bytes());
        v[8..].copy_from_slice(&from_epoch.to_be_bytes());
        self.write(|txn| {
            txn.open_table(WITHDRAWALS)?.insert(&identity[..], &v[..])?;
            Ok(())
        })
    }

    /// Stores a vote.
    pub fn put_vote(
        &self,
        epoch: u64,
        authority: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let k = epoch_key(epoch, authority);
        self.write(|txn| {
            txn.open_table(VOTES)?.insert(&k[..], bytes)?;
            Ok(())
        })
    }

    /// Stores the consensus this authority computed for an epoch.
    pub fn put_consensus(&self, epoch: u64, body: &[u8]) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(CONSENSUS)?.insert(epoch, body)?;
            Ok(())
        })
    }

    /// Stores an authority's signature over an epoch's consensus.
    pub fn put_signature(
        &self,
        epoch: u64,
        authority: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let k = epoch_key(epoch, authority);
        self.write(|txn| {
            txn.open_table(SIGNATURES)?.insert(&k[..], bytes)?;
            Ok(())
        })
    }

    /// Drops votes, consensus documents and signatures of epochs before `epoch`, and the
    /// descriptors whose keys all expired before it.
    pub fn prune(&self, epoch: u64, expired: &[[u8; 32]]) -> Result<(), StoreError> {
        let cut = epoch_key(epoch, &[0; 32]);
        self.write(|txn| {
            for def in [VOTES, SIGNATURES] {
                let mut t = txn.open_table(def)?;
                t.retain(|k, _| k >= &cut[..])?;
            }
            txn.open_table(CONSENSUS)?.retain(|k, _| k >= epoch)?;
            let mut d = txn.open_table(DESCRIPTORS)?;
            for id in expired {
                d.remove(&id[..])?;
            }
            Ok(())
        })
    }

    /// Reads everything back.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let mut loaded = Loaded::default();
        for row in txn
            .open_table(DESCRIPTORS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            if let Ok(id) = <[u8; 32]>::try_from(k.value()) {
                loaded.descriptors.push((id, v.value().to_vec()));
            }
        }
        for row in txn
            .open_table(WITHDRAWALS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            let (Ok(id), Some((s, f))) = (
                <[u8; 32]>::try_from(k.value()),
                v.value().split_first_chunk::<8>(),
            ) else {
                continue;
            };
            let Ok(f) = <[u8; 8]>::try_from(f) else {
                continue;
            };
            loaded
                .withdrawals
                .push((id, u64::from_be_bytes(*s), u64::from_be_bytes(f)));
        }
        for row in txn.open_table(VOTES).map_err(err)?.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            if let Some((e, a)) = split_epoch_key(k.value()) {
                loaded.votes.push((e, a, v.value().to_vec()));
            }
        }
        for row in txn
            .open_table(CONSENSUS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            loaded.consensus.push((k.value(), v.value().to_vec()));
        }
        for row in txn
            .open_table(SIGNATURES)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            if let Some((e, a)) = split_epoch_key(k.value()) {
                loaded.signatures.push((e, a, v.value().to_vec()));
            }
        }
        Ok(loaded)
    }
}
