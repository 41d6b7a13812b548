//! The messenger's transport on a node in this process ([`chat::Transport`] for an
//! [`App`] session): what `mixed chat --node-config` and `mixed demo --chat` run on.

use std::time::Duration;

use anon::local::Code;
use chat::{CHAT_PORT, Incoming, TransportError, TransportEvent};

use crate::api::{App, MessengerEvent, ReplyHandle};
use crate::config::NodeConfig;
use crate::runtime::Node;

/// A session with a node of this process, receiving on [`CHAT_PORT`].
#[derive(Debug)]
pub struct Embedded {
    app: App,
    node_key: [u8; 32],
    /// The node, when this session started it (it stops with the session).
    node: Option<Node>,
}

impl Embedded {
    /// Opens a session with `node` on the messenger's port.
    pub fn open(node: &Node) -> Result<Embedded, TransportError> {
        Ok(Embedded {
            app: App::open(node, Some(CHAT_PORT))?,
            node_key: node.identity_key().0,
            node: None,
        })
    }

    /// Starts a node of `config`, passive (paper section 4.3: it sends, and collects what
    /// was stored for it, without being listed) unless `bind` (then it registers at its
    /// configured bandwidth and forwards), waits for its first consensus (at most two
    /// minutes), and opens a session with it.
    #[allow(clippy::disallowed_methods)] // the wait for the first consensus reads the clock
    pub fn start(mut config: NodeConfig, bind: bool) -> Result<Embedded, TransportError> {
        let bandwidth = config.bandwidth;
        config.passive = true;
        let node = Node::start(config).map_err(|e| TransportError(e.to_string()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while node.epoch().is_none() {
            if std::time::Instant::now() >= deadline {
                return Err(TransportError(
                    "no consensus in two minutes: are the authorities reachable?".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut e = Embedded::open(&node)?;
        if bind {
            e.app.bind(bandwidth)?;
        }
        e.node = Some(node);
        Ok(e)
    }

    /// The session (to bind, say).
    pub fn app(&self) -> &App {
        &self.app
    }
}

impl chat::Transport for Embedded {
    fn node_key(&self) -> [u8; 32] {
        self.node_key
    }

    fn send(
        &mut self,
        to: &[u8; 32],
        data: &[u8],
        reply_surbs: u8,
    ) -> Result<anon::MessageId, TransportError> {
        Ok(self.app.send(
            chat::transport::node_id(to),
            data,
            chat::transport::send_options(reply_surbs),
        )?)
    }

    fn reply(&mut self, reply: &[u8], data: &[u8]) -> Result<anon::MessageId, TransportError> {
        let mut h = ReplyHandle::from_bytes(reply)
            .ok_or_else(|| TransportError("a reply handle that does not parse".into()))?;
        Ok(self.app.reply(&mut h, data, CHAT_PORT)?)
    }

    fn add_contact(&mut self, node_key: &[u8; 32]) -> Result<(), TransportError> {
        Ok(self.app.add_contact(pki_client::IdentityKey(*node_key))?)
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<TransportEvent>, TransportError> {
        let e = match self.app.recv(timeout) {
            Ok(e) => e,
            Err(e) if e.code == Code::Timeout => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(match e {
            MessengerEvent::Received(r) => Some(TransportEvent::Received(Incoming {
                id: r.id,
                sender: r.sender.map(|k| k.0),
                data: r.data,
                stored: r.stored,
                reply: r.reply.as_ref().map(ReplyHandle::to_bytes),
            })),
            MessengerEvent::Acknowledged { id, .. } => Some(TransportEvent::Acknowledged(id)),
            MessengerEvent::Stored { id } => Some(TransportEvent::Stored(id)),
            MessengerEvent::Delivered { id } => Some(TransportEvent::Delivered(id)),
            MessengerEvent::Offline { id } => Some(TransportEvent::Failed(
                id,
                "offline, and not stored (no storage provider?)".into(),
            )),
            MessengerEvent::Undelivered { id, reason } => {
                Some(TransportEvent::Failed(id, format!("{reason:?}")))
            }
            _ => None,
        })
    }
}
