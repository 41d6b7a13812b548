//! The node's key directory: its Ed25519 identity key and its X25519 mix key of each epoch,
//! one file each, hex. The directory is created readable by the owner only (0700), each
//! file 0600; a key file that is unreadable or not 64 hex digits is an error that names it.

use std::path::{Path, PathBuf};

use crypto_simd::sphinx::MixSecretKey;
use pki_client::IdentitySecret;
use pki_client::json::parse_hex32;

/// A key problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("key file {path}: {reason}")]
pub struct KeyError {
    /// The file.
    pub path: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// Why a key file could not be read.
enum ReadError {
    Key(KeyError),
    Corrupt(PathBuf),
}

/// The key directory.
#[derive(Clone, Debug)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        let err = |reason: String| KeyError {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(format!("cannot restrict permissions: {e}")))?;
        }
        Ok(KeyDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Reads key file `name`, or creates it (atomically) when it is absent or empty (an
    /// empty file holds no key: what a crash left before writes were atomic). A corrupt
    /// file is `Corrupt`, for the caller to decide.
    fn read_or_create(&self, name: &str) -> Result<[u8; 32], ReadError> {
        let path = self.dir.join(name);
        let err = |reason: String| KeyError {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => {
                parse_hex32(&text).ok_or(ReadError::Corrupt(path.clone()))
            }
            Ok(_) => {
                tracing::warn!(file = %path.display(), "empty key file: making a new key");
                let _ = std::fs::remove_file(&path);
                self.create(&path).map_err(ReadError::Key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.create(&path).map_err(ReadError::Key)
            }
            Err(e) => Err(ReadError::Key(err(format!(
                "unreadable ({e}): check its owner and permissions"
            )))),
        }
    }

    fn create(&self, path: &Path) -> Result<[u8; 32], KeyError> {
        let err = |reason: String| KeyError {
            path: path.display().to_string(),
            reason,
        };
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| err(e.to_string()))?;
        dirauth::config::write_private(path, &pki_client::descriptor::hex(&bytes)).map_err(
            |e| {
                err(format!(
                    "cannot write ({e}): check the disk and permissions"
                ))
            },
        )?;
        Ok(bytes)
    }

    /// The identity key, created on first use. A corrupt one stops the node: it is the
    /// node's name in the network.
    pub fn identity(&self) -> Result<IdentitySecret, KeyError> {
        match self.read_or_create("identity.key") {
            Ok(b) => Ok(IdentitySecret::from_bytes(b)),
            Err(ReadError::Key(e)) => Err(e),
            Err(ReadError::Corrupt(path)) => Err(KeyError {
                path: path.display().to_string(),
                reason: "not 64 hex digits: restore it from a backup, or delete it to start \
                         as a new node (a new identity and node ID)"
                    .into(),
            }),
        }
    }

    /// The mix key of `epoch`, created on first use. A corrupt one is replaced by a new one,
    /// with a warning: a mix key is used for one epoch only, and packets built under the
    /// corrupt one could not be unwrapped anyway.
    pub fn mix_key(&self, epoch: u64) -> Result<MixSecretKey, KeyError> {
        let name = format!("mix-{epoch}.key");
        match self.read_or_create(&name) {
            Ok(b) => Ok(MixSecretKey::from_bytes(b)),
            Err(ReadError::Key(e)) => Err(e),
            Err(ReadError::Corrupt(path)) => {
                tracing::warn!(
                    file = %path.display(),
                    epoch,
                    "corrupt mix key: making a new one (packets built under the old one fail until the next registration)"
                );
                std::fs::remove_file(&path).map_err(|e| KeyError {
                    path: path.display().to_string(),
                    reason: format!("corrupt, and cannot be removed ({e})"),
                })?;
                self.create(&path).map(MixSecretKey::from_bytes)
            }
        }
    }

    /// Erases the mix keys of epochs before `epoch` (forward secrecy).
    pub fn erase_before(&self, epoch: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(e) = name
                .to_str()
                .and_then(|n| n.strip_prefix("mix-"))
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if e < epoch {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A key directory for one test, removed when the guard is dropped.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> (Scratch, KeyDir) {
        let d = std::env::temp_dir().join(format!("mixed-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let keys = KeyDir::open(&d).unwrap();
        (Scratch(d), keys)
    }

    #[test]
    fn an_empty_identity_file_left_by_a_crash_is_replaced() {
        let (_d, keys) = dir("empty");
        std::fs::write(keys.dir.join("identity.key"), "").unwrap();
        let id = keys.identity().unwrap();
        // the new key is on disk, whole, and no temporary file is left
        assert_eq!(keys.identity().unwrap().public(), id.public());
        let names: Vec<String> = std::fs::read_dir(&keys.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["identity.key".to_string()]);
    }

    #[test]
    fn a_corrupt_identity_stops_with_the_right_advice_and_a_corrupt_mix_key_is_replaced() {
        let (_d, keys) = dir("corrupt");
        std::fs::write(keys.dir.join("identity.key"), "garbage").unwrap();
        let err = keys.identity().unwrap_err().to_string();
        assert!(
            err.contains("identity.key") && err.contains("new identity"),
            "{err}"
        );
        std::fs::write(keys.dir.join("mix-7.key"), "garbage").unwrap();
        let k = keys.mix_key(7).unwrap();
        assert_eq!(keys.mix_key(7).unwrap().public_key(), k.public_key());
        assert!(!keys.dir.join("mix-7.key.corrupt").exists());
    }

    #[test]
    fn a_key_file_is_never_overwritten() {
        let (_d, keys) = dir("exists");
        let path = keys.dir.join("mix-1.key");
        dirauth::config::write_private(&path, "one").unwrap();
        let again = dirauth::config::write_private(&path, "two").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
    }
}
