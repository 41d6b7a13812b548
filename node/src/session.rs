//! A session of one application with the node's messaging service: what [`crate::api`]
//! gives Rust applications in the node's process and [`crate::local`] gives processes
//! over the local API socket.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::Duration;

use anon::local::{ApiError, Code};
use anon::{MessageId, MessengerEvent, ReplyHandle, SendOptions};

use crate::service::{Answer, AppId, Input, Request, Sink};

pub(crate) fn closed() -> ApiError {
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
    pub(crate) events: Option<Receiver<MessengerEvent>>,
}

impl App {
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

    /// Adds a contact (its identity key): a message to it that gets no ACK after every
    /// attempt is stored at storage providers (`Stored`, then `Delivered`), and its stored
    /// messages to this node are collected (docs/storage.md).
    pub fn add_contact(&self, identity: pki_client::IdentityKey) -> Result<(), ApiError> {
        self.call(Request::AddContact { identity }).map(|_| ())
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
