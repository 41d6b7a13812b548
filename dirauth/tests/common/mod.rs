//! A network of directory authorities on loopback, and nodes that register with them.

// tests run real servers on wall-clock time
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dirauth::config::Limits;
use dirauth::{AuthorityConfig, AuthorityHandle};
use pki_client::{
    AuthorityEndpoint, IdentitySecret, MixKeys, NetworkParams, NodeDescriptor, PkiClient, Roles,
    SignatureChecked, SignedDescriptor, Which,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Epochs of a few seconds: the authorities vote at 30% and sign at 50% of each.
pub const EPOCH_SECONDS: u64 = 4;

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub struct Net {
    pub params: NetworkParams,
    /// Generous by default, so polling tests are not rate limited.
    pub limits: Limits,
    pub secrets: Vec<IdentitySecret>,
    pub endpoints: Vec<AuthorityEndpoint>,
    pub dirs: Vec<PathBuf>,
    pub handles: Vec<Option<AuthorityHandle>>,
    pub rng: ChaCha20Rng,
    _tmp: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "mixed-{tag}-{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Net {
    /// `n` authorities on loopback, the network starting now.
    pub fn start(n: usize, seed: u64) -> Net {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let tmp = TempDir::new("dirauth");
        let params = NetworkParams {
            packet_size: 1452,
            hops: 3,
            rho_permille: 1500,
            mean_delay_micros: 50_000,
            loops: 4,
            loop_rate_millis: 500,
            epoch_seconds: EPOCH_SECONDS,
            genesis_unix: unix_now() as u64,
        };
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let secrets: Vec<IdentitySecret> =
            (0..n).map(|_| IdentitySecret::generate(&mut rng)).collect();
        let endpoints: Vec<AuthorityEndpoint> = secrets
            .iter()
            .zip(&listeners)
            .map(|(s, l)| AuthorityEndpoint {
                identity: s.public(),
                url: format!("http://{}", l.local_addr().unwrap()),
            })
            .collect();
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.0.join(format!("auth{i}"))).collect();
        let mut net = Net {
            params,
            limits: Limits {
                max_body_bytes: 4096,
                requests_per_second: 1000.0,
                burst: 1000.0,
            },
            secrets,
            endpoints,
            dirs,
            handles: Vec::new(),
            rng,
            _tmp: tmp,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let handle = dirauth::spawn(net.config(i), listener).unwrap();
            net.handles.push(Some(handle));
        }
        net
    }

    pub fn config(&self, i: usize) -> AuthorityConfig {
        AuthorityConfig {
            identity: self.secrets[i].clone(),
            listen: self.addr(i),
            data_dir: self.dirs[i].clone(),
            params: self.params,
            authorities: self.endpoints.clone(),
            limits: self.limits,
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.endpoints[i]
            .url
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(h) = self.handles[i].take() {
            h.stop();
        }
    }

    /// Restarts authority `i` on its old address and database.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        let listener = TcpListener::bind(self.addr(i)).unwrap();
        self.handles[i] = Some(dirauth::spawn(self.config(i), listener).unwrap());
    }

    pub fn client(&self) -> PkiClient {
        PkiClient::new(self.endpoints.clone(), Duration::from_secs(2), None).unwrap()
    }

    /// A client of authority `i` alone (fetches only from it; trusts all of them).
    pub fn client_of(&self, i: usize) -> PkiClient {
        // trust every authority, fetch from one: the others are listed with a dead URL
        let mut endpoints: Vec<AuthorityEndpoint> = self
            .endpoints
            .iter()
            .map(|e| AuthorityEndpoint {
                identity: e.identity,
                url: "http://127.0.0.1:9".into(),
            })
            .collect();
        endpoints[i] = self.endpoints[i].clone();
        PkiClient::new(endpoints, Duration::from_secs(2), None).unwrap()
    }

    pub fn epoch_now(&self) -> u64 {
        self.params.epoch_at(unix_now() as u64)
    }

    /// The first epoch whose vote happens after now (its consensus will hold what is
    /// registered now).
    pub fn next_voted_epoch(&self) -> u64 {
        let now = unix_now();
        let current = self.params.epoch_at(now as u64);
        let vote_time = self.params.epoch_start(current) as f64
            + dirauth::authority::VOTE_AT * self.params.epoch_seconds as f64;
        // a margin: registrations in flight must land before the vote
        if now + 0.3 < vote_time {
            current + 1
        } else {
            current + 2
        }
    }

    /// A node's descriptor with keys from the current epoch on, registered now: its
    /// sequence is the unix time in milliseconds plus `sequence` (so a larger one is newer).
    pub fn node(&mut self, i: u16, sequence: u64) -> (IdentitySecret, SignedDescriptor) {
        let secret = IdentitySecret::generate(&mut self.rng);
        let mut keys = vec![[0u8; 32]; 4];
        for k in &mut keys {
            self.rng.fill_bytes(k);
        }
        let d = NodeDescriptor {
            identity: secret.public(),
            sequence: (unix_now() * 1000.0) as u64 + sequence,
            addresses: vec![format!("127.0.0.1:{}", 20_000 + i).parse().unwrap()],
            bandwidth: 1 + self.rng.next_u32() % 100,
            roles: Roles {
                mix: true,
                services: vec![],
            },
            mix_keys: MixKeys {
                first_epoch: self.epoch_now(),
                keys,
            },
        };
        let signed = d.sign(&secret).unwrap();
        (secret, signed)
    }

    /// Registers with every authority; every running one must accept.
    pub fn register(&self, d: &SignedDescriptor) {
        for (url, r) in self.client().register(d) {
            if self
                .handles
                .iter()
                .zip(&self.endpoints)
                .any(|(h, e)| h.is_some() && e.url == url)
            {
                r.unwrap_or_else(|e| panic!("{url} refused a registration: {e}"));
            }
        }
    }

    /// Waits (up to three epochs) until `client` gets the consensus of `epoch`.
    pub fn wait_for(&mut self, client: &PkiClient, epoch: u64) -> SignatureChecked {
        let deadline = Instant::now() + Duration::from_secs(3 * EPOCH_SECONDS + 2);
        loop {
            match client.fetch(Which::Epoch(epoch), &mut self.rng) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!("no consensus for epoch {epoch}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The raw bytes authority `i` serves for `epoch`.
    pub fn raw(&self, i: usize, epoch: u64) -> Vec<u8> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut r = agent
            .get(&format!("{}/v1/consensus/{epoch}", self.endpoints[i].url))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "authority {i}, epoch {epoch}");
        r.body_mut()
            .with_config()
            .limit(1 << 24)
            .read_to_vec()
            .unwrap()
    }

    /// POSTs raw bytes; returns status and body.
    pub fn get(&self, i: usize, path: &str) -> u16 {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        agent
            .get(&format!("{}{path}", self.endpoints[i].url))
            .call()
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn post(&self, i: usize, path: &str, body: &[u8]) -> (u16, String) {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut r = agent
            .post(&format!("{}{path}", self.endpoints[i].url))
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build(),
        );
        let mut r = agent
            .get(&format!("{}/v1/status", self.endpoints[i].url))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }
}
