//! The node under test as a `mixed node` process of its own, started from a configuration
//! file the bench writes and killed when dropped: what both `mixed-perf` and `mixed node
//! --self-test` measure, so that the node shares no process (allocator, threads, caches)
//! with the load generator and the sink.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use pki_client::IdentitySecret;

use super::{CapacityError, NodeTemplate, Probe, Started, fetch_metrics, free_tcp_port, setup};
use crate::io::IoChoice;

/// How long a node under test may take to write its identity and answer on its metrics.
const COME_UP: Duration = Duration::from_secs(10);

/// A `mixed node` process under test; killed (and reaped) when dropped.
pub struct ChildNode {
    child: Child,
    probe: Probe,
}

impl Started for ChildNode {
    fn probe(&self) -> Probe {
        self.probe
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChildNode {
    /// Starts `mixed` (the path of a `mixed` binary) as node `name` of the bench network
    /// at B = `bandwidth`, listening on `listen`; returns once its identity is written and
    /// its metrics answer. Its logs are errors only, to this process's standard error.
    pub fn start(
        template: &NodeTemplate,
        mixed: &Path,
        io: IoChoice,
        name: &str,
        listen: SocketAddr,
        bandwidth: f64,
    ) -> Result<ChildNode, CapacityError> {
        let metrics = free_tcp_port()?;
        let config = template.config(name, bandwidth, io, listen, metrics);
        std::fs::create_dir_all(&config.key_dir)?;
        let path = config.key_dir.join("node.toml");
        std::fs::write(&path, template.toml(&config))?;
        let child = Command::new(mixed)
            .args(["node", "--config"])
            .arg(&path)
            .env("RUST_LOG", "error")
            .spawn()
            .map_err(|e| {
                setup(format!(
                    "starting the node under test ({}): {e}",
                    mixed.display()
                ))
            })?;
        let pid = child.id();
        let mut node = ChildNode {
            child,
            probe: Probe {
                id: [0; 32],
                metrics,
                pid,
            },
        };
        // its identity (created at its first start) and its metrics answering
        let deadline = Instant::now() + COME_UP;
        loop {
            if let Some(id) = std::fs::read_to_string(config.key_dir.join("identity.key"))
                .ok()
                .and_then(|t| pki_client::json::parse_hex32(&t))
                .map(|b| IdentitySecret::from_bytes(b).public().node_id())
                && fetch_metrics(metrics).is_some()
            {
                node.probe.id = id;
                return Ok(node);
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(setup(format!("the node under test exited: {status}")));
            }
            if Instant::now() > deadline {
                return Err(setup(format!(
                    "the node under test did not come up within {COME_UP:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
