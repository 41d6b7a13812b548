//! What the provider tests share: a temporary folder per test, removed on drop.

use std::path::PathBuf;

/// A folder `mixed-<name>-<pid>` under the system's temporary folder, emptied first.
pub(crate) struct Dir(pub(crate) PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mixed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
