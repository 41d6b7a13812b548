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

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::Duration;

pub use anon::local::{ApiError, Code};
pub use anon::{MessageId, MessengerEvent, Received, ReplyHandle, SendOptions};

use crate::config::NodeConfig;
use crate::runtime::Node;
use crate::service::{APP_QUEUE, Answer, AppId, Input, Request, Sink};

fn closed() -> ApiError {
    ApiError {
        code: Code::Closed,
        text: "the node is not running".into(),
    }
}

/// A session of one application with a node.
#[derive(Debug)]
pub struct App {
    id: AppId,
    service: std::sync::mpsc::SyncSender<Input>,
    events: Option<Receiver<MessengerEvent>>,
}

impl App {
    /// Opens a session; it receives the messages sent to `port` (none: it only sends).
    pub fn open(node: &Node, port: Option<u16>) -> Result<App, ApiError> {
        let (tx, rx) = sync_channel(APP_QUEUE);
        let mut app = App::open_with(&node.service, &node.next_app, port, Sink::Local(tx))?;
        app.events = Some(rx);
        Ok(app)
    }

    pub(crate) fn open_with(
        service: &std::sync::mpsc::SyncSender<Input>,
        ids: &std::sync::atomic::AtomicU64,
        port: Option<u16>,
        sink: Sink,
    ) -> Result<App, ApiError> {
        let app = App {
            id: ids.fetch_add(1, Ordering::Relaxed),
            service: service.clone(),
            events: None,
        };
        app.call(Request::Open { port, sink })?;
        Ok(app)
    }

    fn call(&self, request: Request) -> Answer {
        let (tx, rx) = sync_channel(1);
        self.service
            .try_send(Input::Api {
                app: self.id,
                request,
                answer: Some(tx),
            })
            .map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(_) => ApiError {
                    code: Code::Busy,
                    text: "the node is busy; try again".into(),
                },
                std::sync::mpsc::TrySendError::Disconnected(_) => closed(),
            })?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| closed())?
    }

    /// sendanon: queues `data` for `destination` (a node ID); returns the message ID. An
    /// [`MessengerEvent::Acknowledged`], [`MessengerEvent::Offline`] or
    /// [`MessengerEvent::Undelivered`] about it follows.
    pub fn send(
        &self,
        destination: [u8; 32],
        data: &[u8],
        options: SendOptions,
    ) -> Result<MessageId, ApiError> {
        self.call(Request::Send {
            destination,
            data: data.to_vec(),
            options,
        })
        .map(|(id, _)| id)
    }

    /// Replies through the SURBs that came with a message (used up as the reply needs).
    pub fn reply(
        &self,
        handle: &mut ReplyHandle,
        data: &[u8],
        port: u16,
    ) -> Result<MessageId, ApiError> {
        let (id, left) = self.call(Request::Reply {
            handle: handle.clone(),
            port,
            data: data.to_vec(),
        })?;
        if let Some(left) = left {
            *handle = left;
        }
        Ok(id)
    }

    /// bindanon: registers the node in the PKI, advertising `bandwidth` packets a second
    /// (at most its rate B), and starts forwarding; in the consensus from the next epoch.
    pub fn bind(&self, bandwidth: f64) -> Result<(), ApiError> {
        self.call(Request::Bind { bandwidth }).map(|_| ())
    }

    /// unbindanon: withdraws from the PKI (from the next epoch) and stops forwarding; the
    /// node keeps sending and receiving through SURBs.
    pub fn unbind(&self) -> Result<(), ApiError> {
        self.call(Request::Unbind).map(|_| ())
    }

    /// recvanon: the next event, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<MessengerEvent, ApiError> {
        let Some(rx) = &self.events else {
            return Err(closed());
        };
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => ApiError {
                code: Code::Timeout,
                text: "no event in time".into(),
            },
            RecvTimeoutError::Disconnected => closed(),
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.service.try_send(Input::Api {
            app: self.id,
            request: Request::Close,
            answer: None,
        });
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
