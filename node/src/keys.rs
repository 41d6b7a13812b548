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

    fn read_or_create(&self, name: &str) -> Result<[u8; 32], KeyError> {
        let path = self.dir.join(name);
        let err = |reason: String| KeyError {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_hex32(&text).ok_or_else(|| {
                err("not 64 hex digits: restore it from a backup, or delete it to make a new key (losing the old identity)".into())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| err(e.to_string()))?;
                dirauth::config::write_private(&path, &pki_client::descriptor::hex(&bytes))
                    .map_err(|e| err(e.to_string()))?;
                Ok(bytes)
            }
            Err(e) => Err(err(format!("unreadable ({e}): check its owner and permissions"))),
        }
    }

    /// The identity key, created on first use.
    pub fn identity(&self) -> Result<IdentitySecret, KeyError> {
        self.read_or_create("identity.key")
            .map(IdentitySecret::from_bytes)
    }

    /// The mix key of `epoch`, created on first use.
    pub fn mix_key(&self, epoch: u64) -> Result<MixSecretKey, KeyError> {
        self.read_or_create(&format!("mix-{epoch}.key"))
            .map(MixSecretKey::from_bytes)
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
