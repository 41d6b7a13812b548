//! The messenger's store: one redb file, **encrypted at rest** under a key from the user's
//! passphrase, every change one ACID transaction (committed, fsync'd, before it returns:
//! a killed process loses nothing it had reported done).
//!
//! - **Keys.** Argon2id (the parameters are stored in the file; 64 MiB, three passes by
//!   default) turns the passphrase and a random salt into a key-encryption key, which
//!   unwraps a random 32-byte data key (XChaCha20-Poly1305). A wrong passphrase fails the
//!   unwrap: [`StoreError::WrongPassphrase`], nothing read, nothing changed.
//! - **Records.** A record is a namespace, a logical key and a payload. On disk its key is
//!   the namespace byte and 16 bytes of HMAC-SHA-256 of the logical key under a key from the
//!   data key, so the file shows neither contacts nor message IDs; its value is a random
//!   24-byte nonce and XChaCha20-Poly1305 of (logical key, payload) with the disk key as
//!   associated data, so a value moved to another key does not open.

use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use redb::{Database, ReadableDatabase, TableDefinition};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
const FORMAT: u8 = 1;
const KEY_CONTEXT: &[u8] = b"mixed-chat-v1 data key";

/// A namespace of records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Ns {
    /// This device and its user (one record).
    Profile = 1,
    /// The Olm account (one record).
    Account = 2,
    /// Contacts, by identity key.
    Contact = 3,
    /// Olm sessions, by the peer device's node key.
    Session = 4,
    /// Messages, by message ID.
    Message = 5,
    /// Envelopes to send or sent, by message ID and device.
    Outbox = 6,
    /// Message IDs handled, by device and message ID (duplicates are dropped).
    Seen = 7,
    /// A link in progress (one record).
    Link = 8,
}

/// Argon2id's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What a new store uses: 64 MiB, three passes, one lane (about a third of a second).
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };
    /// Cheap, for tests only (1 MiB, one pass).
    pub const TESTS_ONLY: KdfParams = KdfParams {
        m_kib: 1024,
        t: 1,
        p: 1,
    };
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The passphrase does not open this store.
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(PathBuf),
    /// No store there yet.
    #[error("no messenger profile at {0}: run `mixed chat init` first")]
    NotFound(PathBuf),
    /// A store exists there already.
    #[error("a messenger profile exists at {0} already; choose another --profile")]
    Exists(PathBuf),
    /// The file could not be opened or read.
    #[error("cannot open {path}: {reason} (another `mixed chat` on this profile?)")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A write failed: nothing of it was stored, and what was stored before is intact.
    #[error("cannot write {path}: {reason} (is the disk full?); nothing already stored was lost")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A record that does not open under the data key.
    #[error("{path} holds a record that does not decrypt ({what}): the file was altered")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record.
        what: &'static str,
    },
}

/// A change, written with others in one transaction ([`Store::write`]).
#[derive(Debug)]
pub enum Op {
    /// Sets a record.
    Put(Ns, Vec<u8>, Vec<u8>),
    /// Removes one.
    Delete(Ns, Vec<u8>),
}

/// A record as read: (logical key, payload).
pub type Record = (Vec<u8>, Vec<u8>);

/// The open store.
pub struct Store {
    db: Database,
    path: PathBuf,
    aead: XChaCha20Poly1305,
    mac: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The nonce at the start of a sealed value (at least 24 bytes: checked by the caller).
pub(crate) fn nonce_of(b: &[u8]) -> XNonce {
    let mut n = [0u8; 24];
    n.copy_from_slice(&b[..24]);
    XNonce::from(n)
}

/// `N` random bytes from the OS (`None` when it gives none: no keys then, never zeros).
pub(crate) fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).ok()?;
    Some(b)
}

fn kek(passphrase: &str, salt: &[u8; 16], p: KdfParams) -> Option<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32)).ok()?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase.as_bytes(), salt, &mut out[..])
        .ok()?;
    Some(out)
}

impl Store {
    /// The file of a profile folder.
    pub fn file(dir: &Path) -> PathBuf {
        dir.join("chat.redb")
    }

    /// Creates a store in `dir` (which must not hold one) under `passphrase`.
    pub fn create(dir: &Path, passphrase: &str, kdf: KdfParams) -> Result<Store, StoreError> {
        let path = Store::file(dir);
        if path.exists() {
            return Err(StoreError::Exists(dir.to_path_buf()));
        }
        let open = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open(&e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let no_random = || open(&"the OS gave no randomness");
        let salt: [u8; 16] = random().ok_or_else(no_random)?;
        let kek =
            kek(passphrase, &salt, kdf).ok_or_else(|| open(&"bad key derivation parameters"))?;
        let data = Zeroizing::new(random::<32>().ok_or_else(no_random)?);
        let nonce: [u8; 24] = random().ok_or_else(no_random)?;
        let wrapped = XChaCha20Poly1305::new((&*kek).into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &data[..],
                    aad: KEY_CONTEXT,
                },
            )
            .map_err(|_| open(&"cannot wrap the key"))?;
        let mut kdf_rec = Writer::default();
        kdf_rec
            .u8(FORMAT)
            .bytes(&salt)
            .u32(kdf.m_kib)
            .u32(kdf.t)
            .u32(kdf.p);
        let mut key_rec = nonce.to_vec();
        key_rec.extend_from_slice(&wrapped);
        let db = Database::create(&path).map_err(|e| open(&e))?;
        let txn = db.begin_write().map_err(|e| open(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| open(&e))?;
            meta.insert("kdf", &kdf_rec.0[..]).map_err(|e| open(&e))?;
            meta.insert("key", &key_rec[..]).map_err(|e| open(&e))?;
            txn.open_table(RECORDS).map_err(|e| open(&e))?;
        }
        txn.commit().map_err(|e| open(&e))?;
        Ok(Store::with_key(db, path, &data))
    }

    /// Opens the store in `dir` with `passphrase`.
    pub fn open(dir: &Path, passphrase: &str) -> Result<Store, StoreError> {
        let path = Store::file(dir);
        if !path.exists() {
            return Err(StoreError::NotFound(dir.to_path_buf()));
        }
        let open = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        };
        let corrupt = |what| StoreError::Corrupt {
            path: path.clone(),
            what,
        };
        let db = Database::create(&path).map_err(|e| open(&e))?;
        let (kdf_rec, key_rec) = {
            let txn = db.begin_read().map_err(|e| open(&e))?;
            let meta = txn.open_table(META).map_err(|e| open(&e))?;
            let get = |k| -> Result<Vec<u8>, StoreError> {
                Ok(meta
                    .get(k)
                    .map_err(|e| open(&e))?
                    .ok_or_else(|| corrupt("meta"))?
                    .value()
                    .to_vec())
            };
            (get("kdf")?, get("key")?)
        };
        let mut r = Reader::new(&kdf_rec, "kdf");
        let parsed = (|| {
            if r.u8()? != FORMAT {
                return Err(crate::codec::Malformed("kdf"));
            }
            let salt: [u8; 16] = r.arr()?;
            let p = KdfParams {
                m_kib: r.u32()?,
                t: r.u32()?,
                p: r.u32()?,
            };
            Ok((salt, p))
        })();
        let (salt, params) = parsed.map_err(|_| corrupt("kdf"))?;
        let kek = kek(passphrase, &salt, params).ok_or_else(|| corrupt("kdf"))?;
        if key_rec.len() < 24 {
            return Err(corrupt("key"));
        }
        let data = XChaCha20Poly1305::new((&*kek).into())
            .decrypt(
                &nonce_of(&key_rec),
                Payload {
                    msg: &key_rec[24..],
                    aad: KEY_CONTEXT,
                },
            )
            .map_err(|_| StoreError::WrongPassphrase(dir.to_path_buf()))?;
        let data = Zeroizing::new(data);
        if data.len() != 32 {
            return Err(corrupt("key"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&data);
        Ok(Store::with_key(db, path, &key))
    }

    fn with_key(db: Database, path: PathBuf, data: &[u8; 32]) -> Store {
        let hk = hkdf::Hkdf::<Sha256>::new(None, data);
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        // 32-byte outputs of HKDF-SHA-256 cannot fail
        let _ = hk.expand(b"mixed-chat-v1 records", &mut enc[..]);
        let _ = hk.expand(b"mixed-chat-v1 names", &mut mac[..]);
        Store {
            db,
            path,
            aead: XChaCha20Poly1305::new((&*enc).into()),
            mac,
        }
    }

    fn disk_key(&self, ns: Ns, logical: &[u8]) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = ns as u8;
        // HMAC takes keys of any length
        if let Ok(mut m) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.mac[..]) {
            m.update(&[ns as u8]);
            m.update(logical);
            out[1..].copy_from_slice(&m.finalize().into_bytes()[..16]);
        }
        out
    }

    fn seal(&self, key: &[u8; 17], logical: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + logical.len() + payload.len()));
        plain.extend_from_slice(&(logical.len() as u16).to_be_bytes());
        plain.extend_from_slice(logical);
        plain.extend_from_slice(payload);
        let nonce: [u8; 24] = random()?;
        let sealed = self
            .aead
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: key,
                },
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open_value(&self, key: &[u8], value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let corrupt = || StoreError::Corrupt {
            path: self.path.clone(),
            what: "record",
        };
        if value.len() < 24 {
            return Err(corrupt());
        }
        let plain = Zeroizing::new(
            self.aead
                .decrypt(
                    &nonce_of(value),
                    Payload {
                        msg: &value[24..],
                        aad: key,
                    },
                )
                .map_err(|_| corrupt())?,
        );
        let n = plain
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(corrupt)?;
        let logical = plain.get(2..2 + n).ok_or_else(corrupt)?.to_vec();
        Ok((logical, plain[2 + n..].to_vec()))
    }

    /// Applies `ops` in one transaction, committed (fsync'd) before it returns; on an error
    /// none of them is applied.
    pub fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut t = txn.open_table(RECORDS).map_err(|e| fail(&e))?;
            for op in ops {
                match op {
                    Op::Put(ns, logical, payload) => {
                        let key = self.disk_key(*ns, logical);
                        let value = self
                            .seal(&key, logical, payload)
                            .ok_or_else(|| fail(&"encryption failed"))?;
                        t.insert(&key[..], &value[..]).map_err(|e| fail(&e))?;
                    }
                    Op::Delete(ns, logical) => {
                        t.remove(&self.disk_key(*ns, logical)[..])
                            .map_err(|e| fail(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| fail(&e))
    }

    /// One record's payload.
    pub fn get(&self, ns: Ns, logical: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let open = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let key = self.disk_key(ns, logical);
        let txn = self.db.begin_read().map_err(|e| open(&e))?;
        let t = txn.open_table(RECORDS).map_err(|e| open(&e))?;
        let Some(v) = t.get(&key[..]).map_err(|e| open(&e))? else {
            return Ok(None);
        };
        let (_, payload) = self.open_value(&key, v.value())?;
        Ok(Some(payload))
    }

    /// Every record of a namespace: (logical key, payload), in no particular order.
    pub fn list(&self, ns: Ns) -> Result<Vec<Record>, StoreError> {
        let open = |e: &dyn std::fmt::Display| StoreError::Open {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let txn = self.db.begin_read().map_err(|e| open(&e))?;
        let t = txn.open_table(RECORDS).map_err(|e| open(&e))?;
        let lo = [ns as u8];
        let hi = [ns as u8 + 1];
        let mut out = Vec::new();
        for entry in t.range(&lo[..]..&hi[..]).map_err(|e| open(&e))? {
            let (k, v) = entry.map_err(|e| open(&e))?;
            out.push(self.open_value(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use redb::ReadableTable;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("mixed-chat-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_survive_a_reopen_and_only_the_passphrase_opens_them() {
        let d = dir("reopen");
        let s = Store::create(&d, "correct horse", KdfParams::TESTS_ONLY).unwrap();
        s.write(&[
            Op::Put(Ns::Contact, b"alice".to_vec(), b"secret note".to_vec()),
            Op::Put(Ns::Contact, b"bob".to_vec(), b"another".to_vec()),
            Op::Put(Ns::Message, b"m1".to_vec(), b"hello".to_vec()),
        ])
        .unwrap();
        s.write(&[Op::Delete(Ns::Contact, b"bob".to_vec())])
            .unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&d, "wrong horse"),
            Err(StoreError::WrongPassphrase(_))
        ));
        assert!(matches!(
            Store::create(&d, "x", KdfParams::TESTS_ONLY),
            Err(StoreError::Exists(_))
        ));
        let s = Store::open(&d, "correct horse").unwrap();
        assert_eq!(
            s.list(Ns::Contact).unwrap(),
            vec![(b"alice".to_vec(), b"secret note".to_vec())]
        );
        assert_eq!(s.get(Ns::Message, b"m1").unwrap().unwrap(), b"hello");
        assert_eq!(s.get(Ns::Message, b"m2").unwrap(), None);
        drop(s);
        // nothing readable on disk
        let raw = std::fs::read(Store::file(&d)).unwrap();
        for needle in [&b"secret note"[..], b"alice", b"hello"] {
            assert!(!raw.windows(needle.len()).any(|w| w == needle));
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_value_moved_to_another_key_does_not_open() {
        let d = dir("moved");
        let s = Store::create(&d, "p", KdfParams::TESTS_ONLY).unwrap();
        s.write(&[
            Op::Put(Ns::Contact, b"a".to_vec(), b"one".to_vec()),
            Op::Put(Ns::Contact, b"b".to_vec(), b"two".to_vec()),
        ])
        .unwrap();
        let (ka, kb) = (s.disk_key(Ns::Contact, b"a"), s.disk_key(Ns::Contact, b"b"));
        let txn = s.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(RECORDS).unwrap();
            let va = t.get(&ka[..]).unwrap().unwrap().value().to_vec();
            t.insert(&kb[..], &va[..]).unwrap();
        }
        txn.commit().unwrap();
        assert!(matches!(
            s.get(Ns::Contact, b"b"),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(s.get(Ns::Contact, b"a").unwrap().unwrap(), b"one");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_missing_profile_says_to_run_init() {
        let d = dir("missing");
        let e = Store::open(&d, "p").unwrap_err().to_string();
        assert!(e.contains("mixed chat init"), "{e}");
    }
}
