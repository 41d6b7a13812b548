//! The node's configuration file (TOML).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pki_client::AuthorityEndpoint;
use serde::Deserialize;

use crate::io::IoChoice;

/// An example configuration, for `--help` and the docs.
pub const EXAMPLE: &str = r#"# mixed node
key_dir = "keys"                 # identity and mix keys; created mode 0700, files 0600
listen = "0.0.0.0:9000"          # UDP, for packets; "[::]:9000" listens on IPv6 and IPv4 both
# advertise = ["198.51.100.7:9000", "[2001:db8::7]:9000"] # optional: where others reach this node
bandwidth = 50                   # B: packets per second this node emits, always
cores = 1                        # threads, one per core, each with its own socket (SO_REUSEPORT)
io = "auto"                      # auto | io-uring | portable
metrics = "127.0.0.1:9100"       # Prometheus text at http://<metrics>/metrics; "off" to disable
passive = false                  # true: send and receive without registering or forwarding
on_loop_collapse = "withdraw"    # loops stop returning (an (n-1) attack?): withdraw | report
api_socket = "api.sock"          # the local API (Unix socket, mode 0600), relative to key_dir; "off" to disable

# optional: be a storage provider, where senders park messages for offline recipients
# [storage]
# dir = "storage"                # the block store (redb), relative to this file
# max_blocks = 1048576           # blocks held at most (832 bytes each: about 1 GiB in all)
# reserve_mib = 256              # refuse new blocks while the disk has less free than this
# retention_epochs = 1008        # how long a block is kept: two weeks at 20-minute epochs

# optional: offline delivery (docs/storage.md), for messages to contacts that seem offline
# [offline]
# store_rate = 1.0               # PUTs a second at most when parking a message at providers
# fetch_rate = 0.5               # GETs a second on average when collecting (random gaps)
# idle_poll = 60                 # seconds a contact's stream found empty rests before it is asked again

# each authority's key as `mixed dirauth --print-key --config <its file>` prints it
[[authorities]]
identity = "0000000000000000000000000000000000000000000000000000000000000000"
url = "http://127.0.0.1:7001"
"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    key_dir: PathBuf,
    listen: SocketAddr,
    #[serde(default)]
    advertise: Advertise,
    bandwidth: f64,
    #[serde(default = "one")]
    cores: usize,
    #[serde(default = "auto")]
    io: IoChoice,
    #[serde(default = "default_metrics")]
    metrics: String,
    #[serde(default)]
    passive: bool,
    #[serde(default)]
    on_loop_collapse: OnCollapse,
    #[serde(default = "default_api_socket")]
    api_socket: String,
    #[serde(default)]
    storage: Option<FileStorage>,
    #[serde(default)]
    offline: FileOffline,
    authorities: Vec<AuthorityEndpoint>,
}

/// `[offline]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOffline {
    store_rate: Option<f64>,
    fetch_rate: Option<f64>,
    idle_poll: Option<f64>,
}

/// How fast offline delivery stores and collects (`[offline]`; docs/storage.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OfflineRates {
    /// PUTs a second at most while a message is parked at storage providers: slowly and
    /// regularly, inside the own-data budget rho * B / h.
    pub store_rate: f64,
    /// GETs a second on average (exponential gaps) while collecting contacts' streams.
    pub fetch_rate: f64,
    /// Seconds a stream found empty at every provider rests before it is asked again: the
    /// longest a stored message waits for a recipient that is online (a passive one, say).
    pub idle_poll: f64,
}

impl Default for OfflineRates {
    fn default() -> Self {
        let d = anon::offline::OfflineConfig::default();
        OfflineRates {
            store_rate: d.store_rate,
            fetch_rate: d.fetch_rate,
            idle_poll: d.idle_poll.as_secs_f64(),
        }
    }
}

impl OfflineRates {
    /// The offline layer's configuration at these rates.
    pub fn config(&self) -> anon::offline::OfflineConfig {
        anon::offline::OfflineConfig {
            store_rate: self.store_rate,
            fetch_rate: self.fetch_rate,
            idle_poll: std::time::Duration::from_secs_f64(self.idle_poll.clamp(1.0, 86_400.0)),
            ..anon::offline::OfflineConfig::default()
        }
    }
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    #[serde(default = "default_storage_dir")]
    dir: PathBuf,
    max_blocks: Option<u64>,
    reserve_mib: Option<u64>,
    retention_epochs: Option<u64>,
}

fn default_storage_dir() -> PathBuf {
    "storage".into()
}

/// A storage provider's configuration (`[storage]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// The block store's directory.
    pub dir: PathBuf,
    /// Its limits.
    pub limits: storage::Limits,
}

/// `on_loop_collapse`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnCollapse {
    #[default]
    Withdraw,
    Report,
}

/// `advertise`: one address or a list.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Advertise {
    #[default]
    None,
    One(SocketAddr),
    Many(Vec<SocketAddr>),
}

fn default_api_socket() -> String {
    "api.sock".into()
}

fn one() -> usize {
    1
}
fn auto() -> IoChoice {
    IoChoice::Auto
}
fn default_metrics() -> String {
    "127.0.0.1:9100".into()
}

/// A node's configuration, checked.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the keys live.
    pub key_dir: PathBuf,
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// The addresses to publish, one or two per family (default: the bound address; a
    /// wildcard `listen` needs them). A port 0 is the port bound.
    pub advertise: Vec<SocketAddr>,
    /// B, packets a second.
    pub bandwidth: f64,
    /// Cores (threads).
    pub cores: usize,
    /// I/O backend.
    pub io: IoChoice,
    /// Where to serve metrics, or `None`.
    pub metrics: Option<SocketAddr>,
    /// Passive: no registration, no forwarding.
    pub passive: bool,
    /// What a collapse of loops does (section 5.0.2's high-alert mode, or a warning only).
    pub on_loop_collapse: engine::AlertPolicy,
    /// Where to serve the local API (a Unix socket, mode 0600), or `None`.
    pub api_socket: Option<PathBuf>,
    /// The storage service this node provides, if any.
    pub storage: Option<StorageConfig>,
    /// Offline delivery's rates.
    pub offline: OfflineRates,
    /// The directory authorities.
    pub authorities: Vec<AuthorityEndpoint>,
}

/// A configuration problem, saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not valid TOML for this configuration.
    #[error("invalid configuration {path}: {reason}\n\nAn example:\n{EXAMPLE}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// A value out of range.
    #[error("invalid configuration: {0}")]
    Value(String),
}

impl NodeConfig {
    /// Reads and checks a configuration file; relative paths are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a configuration's text as if read from `path` (relative paths are
    /// relative to its folder; nothing is read or written).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let metrics = match file.metrics.trim() {
            "off" | "" => None,
            m => Some(m.parse().map_err(|_| {
                ConfigError::Value(format!("metrics: {m:?} is not an address or \"off\""))
            })?),
        };
        let key_dir = base.join(file.key_dir);
        let api_socket = match file.api_socket.trim() {
            "off" | "" => None,
            p => Some(key_dir.join(p)),
        };
        let config = NodeConfig {
            key_dir,
            api_socket,
            listen: file.listen,
            advertise: match file.advertise {
                Advertise::None => Vec::new(),
                Advertise::One(a) => vec![a],
                Advertise::Many(v) => v,
            },
            bandwidth: file.bandwidth,
            cores: file.cores,
            io: file.io,
            metrics,
            passive: file.passive,
            on_loop_collapse: match file.on_loop_collapse {
                OnCollapse::Withdraw => engine::AlertPolicy::Withdraw,
                OnCollapse::Report => engine::AlertPolicy::Report,
            },
            storage: file.storage.map(|st| {
                let d = storage::Limits::default();
                StorageConfig {
                    dir: base.join(st.dir),
                    limits: storage::Limits {
                        max_blocks: st.max_blocks.unwrap_or(d.max_blocks),
                        max_markers: st.max_blocks.unwrap_or(d.max_markers),
                        reserve_bytes: st
                            .reserve_mib
                            .map_or(d.reserve_bytes, |m| m.saturating_mul(1 << 20)),
                        retention_epochs: st.retention_epochs.unwrap_or(d.retention_epochs),
                    },
                }
            }),
            offline: {
                let d = OfflineRates::default();
                OfflineRates {
                    store_rate: file.offline.store_rate.unwrap_or(d.store_rate),
                    fetch_rate: file.offline.fetch_rate.unwrap_or(d.fetch_rate),
                    idle_poll: file.offline.idle_poll.unwrap_or(d.idle_poll),
                }
            },
            authorities: file.authorities,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.bandwidth.is_finite() || !(1.0..=10_000_000.0).contains(&self.bandwidth) {
            return Err(ConfigError::Value(
                "bandwidth must be 1 to 10,000,000 packets a second".into(),
            ));
        }
        if self.cores == 0 || self.cores > 256 {
            return Err(ConfigError::Value("cores must be 1 to 256".into()));
        }
        if self.authorities.is_empty() {
            return Err(ConfigError::Value(
                "at least one [[authorities]] entry is needed".into(),
            ));
        }
        for a in &self.authorities {
            pki_client::client::check_url(&a.url).map_err(ConfigError::Value)?;
        }
        if let Some(st) = &self.storage {
            if st.limits.max_blocks == 0 || st.limits.retention_epochs == 0 {
                return Err(ConfigError::Value(
                    "storage: max_blocks and retention_epochs must be at least 1".into(),
                ));
            }
            if self.passive {
                return Err(ConfigError::Value(
                    "storage: a storage provider is listed in the consensus, so it cannot be \
                     passive; set passive = false or remove [storage]"
                        .into(),
                ));
            }
        }
        for (name, rate) in [
            ("store_rate", self.offline.store_rate),
            ("fetch_rate", self.offline.fetch_rate),
        ] {
            if !rate.is_finite() || !(0.01..=50.0).contains(&rate) {
                return Err(ConfigError::Value(format!(
                    "offline: {name} must be 0.01 to 50 requests a second (it is {rate})"
                )));
            }
        }
        if !self.offline.idle_poll.is_finite()
            || !(1.0..=86_400.0).contains(&self.offline.idle_poll)
        {
            return Err(ConfigError::Value(format!(
                "offline: idle_poll must be 1 to 86,400 seconds (it is {})",
                self.offline.idle_poll
            )));
        }
        if self.advertise.len() > 4 {
            return Err(ConfigError::Value(
                "advertise: at most four addresses".into(),
            ));
        }
        for a in &self.advertise {
            if a.ip().is_unspecified() || a.ip().is_multicast() {
                return Err(ConfigError::Value(format!(
                    "advertise: {a} is not an address others can send to (not 0.0.0.0, [::] \
                     or multicast; a port 0 means the port bound)"
                )));
            }
        }
        if !self.passive && self.advertise.is_empty() && self.listen.ip().is_unspecified() {
            tracing::warn!(
                listen = %self.listen,
                "listening on a wildcard address with no `advertise`: others are told the \
                 wildcard address and cannot reach this node; set `advertise`"
            );
        }
        Ok(())
    }
}
