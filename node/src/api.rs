//! The anonymity API of section 2.1 of the paper, for Rust applications in the node's
//! process. The six calls and their Rust names:
//!
//! | paper                                 | here                                   |
//! |---------------------------------------|----------------------------------------|
//! | `socketanon(params)`                  | [`socketanon`] -> [`AnonSocket`]       |
//! | `bindanon(socket, bandwidth, pk)`     | [`AnonSocket::bindanon`]               |
//! | `unbindanon(socket)`                  | [`AnonSocket::unbindanon`]             |
//! | `sendanon(socket, dest, data, params)`| [`AnonSocket::sendanon`]               |
//! | `recvanon(socket, callback, params)`  | [`AnonSocket::recvanon`] (and `recv`)  |
//! | `closeanon(socket)`                   | [`AnonSocket::closeanon`]              |
//!
//! An [`AnonSocket`] owns a node it starts in passive mode (keys loaded or created,
//! constant-rate emission of own data and loops, not in the PKI, no forwarding). Several
//! applications can share one node: [`App`] is a session with a running [`Node`] (what the
//! local API socket gives processes, [`crate::local`]).

use std::sync::mpsc::sync_channel;
use std::time::Duration;

pub use anon::local::{ApiError, Code};
pub use anon::{MessageId, MessengerEvent, Received, ReplyHandle, SendOptions};

use crate::config::NodeConfig;
use crate::runtime::Node;
use crate::service::{APP_QUEUE, Sink};
pub use crate::session::App;
use crate::session::closed;

impl App {
    /// Opens a session; it receives the messages sent to `port` (none: it only sends).
    pub fn open(node: &Node, port: Option<u16>) -> Result<App, ApiError> {
        let (tx, rx) = sync_channel(APP_QUEUE);
        let mut app = App::open_with(&node.service, &node.next_app, port, Sink::Local(tx))?;
        app.events = Some(rx);
        Ok(app)
    }
}

/// What socketanon takes: the node's configuration (its `passive` is ignored: a socket
/// starts passive) and the port to receive on.
#[derive(Clone, Debug)]
pub struct SocketParams {
    /// The node.
    pub config: NodeConfig,
    /// The port this socket receives on.
    pub port: u16,
}

/// What bindanon advertises besides the bandwidth (the paper's pk params).
#[derive(Clone, Debug, Default)]
pub struct PkParams {}

/// An anonymous socket: a node of its own and a session with it.
#[derive(Debug)]
pub struct AnonSocket {
    app: Option<App>,
    node: Option<Node>,
}

/// socketanon: loads or creates the keys, starts the node in passive mode (constant-rate
/// emission of own data and loops; not in the PKI; no forwarding) and returns the socket.
pub fn socketanon(params: SocketParams) -> Result<AnonSocket, ApiError> {
    let mut config = params.config;
    config.passive = true;
    let node = Node::start(config).map_err(|e| ApiError {
        code: Code::Io,
        text: e.to_string(),
    })?;
    let app = App::open(&node, Some(params.port))?;
    Ok(AnonSocket {
        app: Some(app),
        node: Some(node),
    })
}

impl AnonSocket {
    fn app(&self) -> Result<&App, ApiError> {
        self.app.as_ref().ok_or_else(closed)
    }

    /// The node under the socket.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// This socket's address for others: its node ID.
    pub fn node_id(&self) -> Option<[u8; 32]> {
        self.node.as_ref().map(Node::node_id)
    }

    /// bindanon: see [`App::bind`].
    pub fn bindanon(&self, bandwidth: f64, _pk: &PkParams) -> Result<(), ApiError> {
        self.app()?.bind(bandwidth)
    }

    /// unbindanon: see [`App::unbind`].
    pub fn unbindanon(&self) -> Result<(), ApiError> {
        self.app()?.unbind()
    }

    /// sendanon: see [`App::send`].
    pub fn sendanon(
        &self,
        destination: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, ApiError> {
        self.app()?.send(destination, data, options)
    }

    /// recvanon: calls `callback` with each event until it returns `false` or `timeout`
    /// passes without one.
    pub fn recvanon(
        &self,
        mut callback: impl FnMut(MessengerEvent) -> bool,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        loop {
            match self.app()?.recv(timeout) {
                Ok(e) => {
                    if !callback(e) {
                        return Ok(());
                    }
                }
                Err(e) if e.code == Code::Timeout => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<MessengerEvent, ApiError> {
        self.app()?.recv(timeout)
    }

    /// Replies through a received message's SURBs.
    pub fn reply(
        &self,
        handle: &mut ReplyHandle,
        data: &[u8],
        port: u16,
    ) -> Result<MessageId, ApiError> {
        self.app()?.reply(handle, data, port)
    }

    /// closeanon: unbinds if bound, stops the node, and erases its ephemeral (mix) keys.
    /// The identity key stays: it is the node's address.
    pub fn closeanon(mut self) -> Result<(), ApiError> {
        self.close()
    }

    fn close(&mut self) -> Result<(), ApiError> {
        let Some(node) = self.node.take() else {
            return Err(closed());
        };
        if node.is_bound()
            && let Some(app) = &self.app
        {
            let _ = app.unbind();
            // give the control thread a turn to withdraw
            std::thread::sleep(Duration::from_millis(300));
        }
        self.app = None;
        let keys = node.key_dir().to_path_buf();
        node.stop();
        crate::keys::KeyDir::open(&keys)
            .map(|k| k.erase_before(u64::MAX))
            .map_err(|e| ApiError {
                code: Code::Io,
                text: e.to_string(),
            })
    }
}

impl Drop for AnonSocket {
    fn drop(&mut self) {
        if self.node.is_some() {
            let _ = self.close();
        }
    }
}
