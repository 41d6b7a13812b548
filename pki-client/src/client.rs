//! The directory client: fetches a consensus from any configured authority (timeouts,
//! fallback to the others in random order), verifies it, caches it on disk, fetches the next
//! epoch's ahead of time; registers and withdraws a node's descriptor.
//!
//! Blocking HTTP (ureq): this runs on a node's control-plane thread, never on the packet
//! path. Time is passed in as unix seconds.

use std::path::PathBuf;
use std::time::Duration;

use rand_core::Rng;

use crate::consensus::MAX_CONSENSUS_BYTES;
use crate::descriptor::{IdentityKey, SignedDescriptor, SignedWithdrawal};
use crate::verify::{AuthoritySet, SignatureChecked, UnverifiedConsensus, VerifyError};

/// An authority a client talks to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthorityEndpoint {
    /// Its identity key (lowercase hex in configuration files).
    #[serde(with = "crate::json::hex32")]
    pub identity: IdentityKey,
    /// Its base URL, `http://host:port`.
    pub url: String,
}

/// Checks an authority's base URL: `http://host:port` (or `https://`), no path, query or
/// spaces. The reason names the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("authority url {url:?} must start with http:// or https://"))?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "authority url {url:?} must be http://host:port, without a path"
        ));
    }
    Ok(())
}

/// Why a fetch or a submission failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No authority gave a consensus that verifies; what each said.
    #[error("no authority gave a valid consensus: {}", .0.join("; "))]
    AllFailed(Vec<String>),
    /// The authority answered with an error status and this reason.
    #[error("{url} refused it: HTTP {status}: {reason}")]
    Refused {
        /// The authority.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body of the answer.
        reason: String,
    },
    /// The authority could not be reached.
    #[error("{url} unreachable: {reason}")]
    Unreachable {
        /// The authority.
        url: String,
        /// Why.
        reason: String,
    },
}

/// What an authority's status page says, once its identity checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthorityStatus {
    /// Its current epoch.
    pub epoch: u64,
    /// Its clock, unix seconds (older authorities do not say).
    pub now: Option<u64>,
}

/// A client of the directory authorities.
#[derive(Debug)]
pub struct PkiClient {
    endpoints: Vec<AuthorityEndpoint>,
    authorities: AuthoritySet,
    agent: ureq::Agent,
    cache_dir: Option<PathBuf>,
}

/// Which consensus to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The one for the epoch the authority is in now.
    Current,
    /// The one for this epoch.
    Epoch(u64),
}

impl PkiClient {
    /// A client of these authorities (all of them form the trusted set), with a timeout per
    /// request and an optional cache directory.
    pub fn new(
        endpoints: Vec<AuthorityEndpoint>,
        timeout: Duration,
        cache_dir: Option<PathBuf>,
    ) -> Option<Self> {
        let authorities = AuthoritySet::new(endpoints.iter().map(|e| e.identity))?;
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .build(),
        );
        Some(PkiClient {
            endpoints,
            authorities,
            agent,
            cache_dir,
        })
    }

    /// The trusted authorities.
    pub fn authorities(&self) -> &AuthoritySet {
        &self.authorities
    }

    fn cache_path(&self, epoch: u64) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("consensus-{epoch}.bin")))
    }

    /// A cached consensus of `epoch` whose signatures still check, if any.
    pub fn cached(&self, epoch: u64) -> Option<SignatureChecked> {
        let bytes = std::fs::read(self.cache_path(epoch)?).ok()?;
        let checked = UnverifiedConsensus::from_bytes(&bytes)
            .and_then(|u| u.check_signatures(&self.authorities))
            .ok()?;
        (checked.epoch() == epoch).then_some(checked)
    }

    /// Fetches a consensus, trying the authorities in random order until one gives a
    /// consensus whose signatures check (and, for [`Which::Epoch`], of that epoch). Uses
    /// the cache first for a given epoch and fills it after.
    pub fn fetch<R: Rng + ?Sized>(
        &self,
        which: Which,
        rng: &mut R,
    ) -> Result<SignatureChecked, ClientError> {
        if let Which::Epoch(epoch) = which
            && let Some(c) = self.cached(epoch)
        {
            return Ok(c);
        }
        let path = match which {
            Which::Current => "/v1/consensus/current".to_owned(),
            Which::Epoch(e) => format!("/v1/consensus/{e}"),
        };
        let mut order: Vec<usize> = (0..self.endpoints.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut failures = Vec::new();
        for i in order {
            let endpoint = &self.endpoints[i];
            match self.fetch_from(endpoint, &path) {
                Ok(checked) => {
                    if let Which::Epoch(e) = which
                        && checked.epoch() != e
                    {
                        failures.push(format!(
                            "{}: served epoch {} for {e}",
                            endpoint.url,
                            checked.epoch()
                        ));
                        continue;
                    }
                    if let Some(p) = self.cache_path(checked.epoch()) {
                        // a failed cache write only costs a later refetch
                        let _ = std::fs::write(p, checked.to_bytes());
                    }
                    return Ok(checked);
                }
                Err(e) => failures.push(format!("{}: {e}", endpoint.url)),
            }
        }
        Err(ClientError::AllFailed(failures))
    }

    fn fetch_from(
        &self,
        endpoint: &AuthorityEndpoint,
        path: &str,
    ) -> Result<SignatureChecked, String> {
        let url = format!("{}{path}", endpoint.url);
        let mut response = self.agent.get(&url).call().map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_CONSENSUS_BYTES as u64 + 1024)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        UnverifiedConsensus::from_bytes(&body)
            .and_then(|u| u.check_signatures(&self.authorities))
            .map_err(|e: VerifyError| e.to_string())
    }

    /// The consensus of the epoch after the one unix time `now` falls in, fetched ahead of
    /// time (authorities publish it before the epoch starts). `current` is a verified
    /// consensus that gives the epoch schedule.
    pub fn fetch_next<R: Rng + ?Sized>(
        &self,
        current: &crate::verify::VerifiedConsensus,
        now: u64,
        rng: &mut R,
    ) -> Result<SignatureChecked, ClientError> {
        let next = current.params().epoch_at(now) + 1;
        self.fetch(Which::Epoch(next), rng)
    }

    /// The epoch an authority says it is in (from its status page): how a node that has
    /// no consensus yet, when the network starts, learns which epoch to register keys for.
    pub fn current_epoch(&self) -> Option<u64> {
        self.endpoints.iter().find_map(|e| {
            let mut r = self
                .agent
                .get(&format!("{}/v1/status", e.url))
                .call()
                .ok()?;
            let text = r
                .body_mut()
                .with_config()
                .limit(1 << 16)
                .read_to_string()
                .ok()?;
            serde_json::from_str::<serde_json::Value>(&text).ok()?["epoch"].as_u64()
        })
    }

    /// Each authority's status page, checked against its configured identity: what a node
    /// asks before it registers, so a wrong key or a skewed clock is an error that names
    /// the fix rather than a silent dead hop.
    pub fn check_authorities(&self) -> Vec<(String, Result<AuthorityStatus, String>)> {
        self.endpoints
            .iter()
            .map(|e| {
                let status = (|| {
                    let mut r = self
                        .agent
                        .get(&format!("{}/v1/status", e.url))
                        .call()
                        .map_err(|err| format!("unreachable: {err}"))?;
                    let text = r
                        .body_mut()
                        .with_config()
                        .limit(1 << 16)
                        .read_to_string()
                        .map_err(|err| format!("unreadable status: {err}"))?;
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|err| format!("status is not JSON: {err}"))?;
                    let identity = v["identity"].as_str().unwrap_or_default().to_string();
                    if identity != e.identity.to_hex() {
                        return Err(format!(
                            "its identity is {identity}, but the configuration lists {}: \
                             copy the key `mixed dirauth --print-key` prints on that authority",
                            e.identity.to_hex()
                        ));
                    }
                    Ok(AuthorityStatus {
                        epoch: v["epoch"].as_u64().ok_or("status without an epoch")?,
                        now: v["now"].as_u64(),
                    })
                })();
                (e.url.clone(), status)
            })
            .collect()
    }

    fn post_all(&self, path: &str, body: &[u8]) -> Vec<(String, Result<(), ClientError>)> {
        self.endpoints
            .iter()
            .map(|e| {
                let url = format!("{}{path}", e.url);
                let result = match self
                    .agent
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .send(body)
                {
                    Err(err) => Err(ClientError::Unreachable {
                        url: e.url.clone(),
                        reason: err.to_string(),
                    }),
                    Ok(mut r) if !r.status().is_success() => Err(ClientError::Refused {
                        url: e.url.clone(),
                        status: r.status().as_u16(),
                        reason: r
                            .body_mut()
                            .with_config()
                            .limit(4096)
                            .read_to_string()
                            .unwrap_or_default(),
                    }),
                    Ok(_) => Ok(()),
                };
                (e.url.clone(), result)
            })
            .collect()
    }

    /// Registers a descriptor with every authority (it is in the consensus when a majority
    /// hold it). Returns each authority's answer.
    pub fn register(
        &self,
        descriptor: &SignedDescriptor,
    ) -> Vec<(String, Result<(), ClientError>)> {
        self.post_all("/v1/descriptors", &descriptor.to_bytes())
    }

    /// Withdraws a node from every authority (effective from the withdrawal's epoch).
    pub fn withdraw(
        &self,
        withdrawal: &SignedWithdrawal,
    ) -> Vec<(String, Result<(), ClientError>)> {
        self.post_all("/v1/withdrawals", &withdrawal.to_bytes())
    }
}
