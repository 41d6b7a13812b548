//! The authority's configuration file (TOML), and what it resolves to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pki_client::json::parse_hex32;
use pki_client::{AuthorityEndpoint, AuthoritySet, IdentitySecret, NetworkParams};
use serde::Deserialize;

/// An example configuration, for `--help` and the docs.
pub const EXAMPLE: &str = r#"# mixed directory authority
identity_key_file = "authority.key"   # 32-byte Ed25519 secret, hex; created (mode 0600) if absent
listen = "127.0.0.1:7001"
data_dir = "authority-data"           # the redb state database lives here

[network]
genesis_unix = 1764150000             # when epoch 0 starts
epoch_seconds = 1200                  # 20 minutes
packet_size = 1452
hops = 3                              # h
rho = 1.5                             # leniency factor
mean_delay_ms = 50.0                  # 1/lambda
loops = 4                             # L
loop_rate = 0.5                       # b_loop, packets per second per loop

# every authority, this one included: each one's key as `mixed dirauth --print-key` prints it
[[authorities]]
identity = "0000000000000000000000000000000000000000000000000000000000000000"
url = "http://127.0.0.1:7001"

[limits]
max_body_bytes = 4096                 # descriptors and withdrawals
requests_per_second = 20              # per source address
burst = 40
"#;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    identity_key_file: PathBuf,
    listen: SocketAddr,
    data_dir: PathBuf,
    network: NetworkSection,
    authorities: Vec<AuthorityEndpoint>,
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSection {
    genesis_unix: u64,
    epoch_seconds: u64,
    #[serde(default = "default_packet_size")]
    packet_size: u32,
    hops: u8,
    rho: f64,
    mean_delay_ms: f64,
    loops: u32,
    loop_rate: f64,
}

fn default_packet_size() -> u32 {
    1452
}

/// Request limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest descriptor or withdrawal request body, bytes.
    pub max_body_bytes: usize,
    /// Requests a second allowed per source address.
    pub requests_per_second: f64,
    /// Requests allowed in a burst per source address.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4096,
            requests_per_second: 20.0,
            burst: 40.0,
        }
    }
}

/// A configuration, resolved: keys loaded, values checked.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// This authority's identity secret.
    pub identity: IdentitySecret,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the state database lives.
    pub data_dir: PathBuf,
    /// The network parameters it puts in every consensus.
    pub params: NetworkParams,
    /// Every authority, this one included.
    pub authorities: Vec<AuthorityEndpoint>,
    /// Request limits.
    pub limits: Limits,
}

/// A configuration problem, saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid configuration {path}: {reason}\n\nAn example:\n{EXAMPLE}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Value(String),
    /// The identity key file is unreadable or not 64 hex digits.
    #[error("identity key file {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl AuthorityConfig {
    /// The identity of the authority a configuration file names, its key file created if
    /// absent, without checking the rest (what `--print-key` prints, before this
    /// authority's key is in `[[authorities]]`).
    pub fn load_identity(path: &Path) -> Result<IdentitySecret, ConfigError> {
        #[derive(Deserialize)]
        struct KeyOnly {
            identity_key_file: PathBuf,
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: KeyOnly = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        load_or_create_key(&base.join(file.identity_key_file))
    }

    /// Reads and checks a configuration file; relative paths in it are relative to the
    /// file's folder. Creates the identity key file if it does not exist.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let key_path = base.join(&file.identity_key_file);
        let identity = load_or_create_key(&key_path)?;
        let n = &file.network;
        let fixed = |v: f64, scale: f64, what: &str| -> Result<u64, ConfigError> {
            let x = v * scale;
            if !x.is_finite() || x < 0.0 || x > u32::MAX as f64 {
                return Err(ConfigError::Value(format!("{what} out of range")));
            }
            Ok(x.round() as u64)
        };
        let params = NetworkParams {
            packet_size: n.packet_size,
            hops: n.hops,
            rho_permille: fixed(n.rho, 1000.0, "rho")? as u32,
            mean_delay_micros: fixed(n.mean_delay_ms, 1000.0, "mean_delay_ms")?,
            loops: n.loops,
            loop_rate_millis: fixed(n.loop_rate, 1000.0, "loop_rate")? as u32,
            epoch_seconds: n.epoch_seconds,
            genesis_unix: n.genesis_unix,
        };
        let config = AuthorityConfig {
            identity,
            listen: file.listen,
            data_dir: base.join(file.data_dir),
            params,
            authorities: file.authorities,
            limits: file.limits,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values: parameters in range, this authority among the authorities, no
    /// authority twice, sane limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.params
            .validate()
            .map_err(|e| ConfigError::Value(e.to_owned()))?;
        let me = self.identity.public();
        if !self.authorities.iter().any(|a| a.identity == me) {
            return Err(ConfigError::Value(format!(
                "this authority's key {} is not in [[authorities]]",
                me.to_hex()
            )));
        }
        if self.authority_set().keys().len() != self.authorities.len() {
            return Err(ConfigError::Value("an authority is listed twice".into()));
        }
        for a in &self.authorities {
            pki_client::client::check_url(&a.url).map_err(ConfigError::Value)?;
        }
        if self.limits.max_body_bytes < 256
            || self.limits.requests_per_second.is_nan()
            || self.limits.requests_per_second <= 0.0
            || self.limits.burst.is_nan()
            || self.limits.burst < 1.0
        {
            return Err(ConfigError::Value(
                "limits: max_body_bytes >= 256, requests_per_second > 0, burst >= 1".into(),
            ));
        }
        Ok(())
    }

    /// The trusted set: every configured authority.
    pub fn authority_set(&self) -> AuthoritySet {
        AuthoritySet::including(
            self.identity.public(),
            self.authorities.iter().map(|a| a.identity),
        )
    }

    /// The other authorities.
    pub fn peers(&self) -> Vec<AuthorityEndpoint> {
        let me = self.identity.public();
        self.authorities
            .iter()
            .filter(|a| a.identity != me)
            .cloned()
            .collect()
    }
}

/// Reads a hex identity key, or creates one readable by its owner only.
pub fn load_or_create_key(path: &Path) -> Result<IdentitySecret, ConfigError> {
    let key_err = |reason: String| ConfigError::Key {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        // an empty file holds no key (a crash before writes were atomic): make one
        Ok(text) if text.trim().is_empty() => {
            let _ = std::fs::remove_file(path);
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        other => other,
    };
    match text {
        Ok(text) => parse_hex32(&text)
            .map(IdentitySecret::from_bytes)
            .ok_or_else(|| key_err("expected 64 hex digits".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| key_err(e.to_string()))?;
            let secret = IdentitySecret::from_bytes(bytes);
            write_private(path, &pki_client::descriptor::hex(&bytes))
                .map_err(|e| key_err(e.to_string()))?;
            Ok(secret)
        }
        Err(e) => Err(key_err(e.to_string())),
    }
}

/// Writes a new file readable and writable by its owner only, atomically: the text goes to
/// a temporary file, is synced, and is linked into place only whole (an existing file is
/// never replaced: `AlreadyExists`). A crash or a full disk leaves no partial key behind.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    // the new name survives a crash once the directory is synced
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
