//! The local API socket: a Unix domain socket (mode 0600: its owner only) where processes
//! on the node's machine use the anonymity API, in the framing of [`anon::local`]
//! (docs/local-api.md). Each connection is an application with its own session; a
//! connection that sends garbage gets an ERROR frame and is closed; one that stops reading
//! has its events held (within bounds) and never blocks the node or other applications.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anon::ReplyHandle;
use anon::local::{ApiError, Code, Frame, FrameError, read_frame, write_frame};

use crate::service::{APP_QUEUE, Sink};
use crate::service::{Input, Presence};
use crate::session::App;

/// Applications connected at once, at most.
const MAX_CLIENTS: usize = 64;

/// The server.
#[derive(Debug)]
pub(crate) struct LocalServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a connection's threads need of the node.
#[derive(Clone)]
struct NodeRef {
    node_id: [u8; 32],
    identity: [u8; 32],
    bound: Arc<crate::service::Presence>,
    opener: Arc<dyn Fn(Option<u16>, Sink) -> Result<App, ApiError> + Send + Sync>,
}

impl LocalServer {
    /// Binds `path` (replacing a stale socket file), mode 0600, and serves it.
    /// Serves the node `node_id` (identity key `identity`) whose messaging service takes
    /// `service`.
    pub(crate) fn start(
        path: &Path,
        node_id: [u8; 32],
        identity: [u8; 32],
        service: SyncSender<Input>,
        presence: Arc<Presence>,
    ) -> std::io::Result<LocalServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // a socket file left by a node that died: nothing listens on it
        if path.exists() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot serve the local API at {}: {e}", path.display()),
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let next_app = Arc::new(std::sync::atomic::AtomicU64::new(1 << 32));
        let node_ref = NodeRef {
            node_id,
            identity,
            bound: presence,
            opener: Arc::new(move |port, sink| App::open_with(&service, &next_app, port, sink)),
        };
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mixed-api".into())
            .spawn(move || accept_loop(listener, node_ref, thread_stop))?;
        Ok(LocalServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting and removes the socket file (open sessions end with the node).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, node: NodeRef, stop: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
                    let mut s = stream;
                    let _ = write_frame(
                        &mut s,
                        &Frame::Error {
                            request: 0,
                            code: Code::Busy,
                            text: format!("at most {MAX_CLIENTS} applications at once"),
                        },
                    );
                    continue;
                }
                clients.fetch_add(1, Ordering::Relaxed);
                let node = node.clone();
                let clients = Arc::clone(&clients);
                let stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new()
                    .name("mixed-api-client".into())
                    .spawn(move || {
                        serve(stream, &node, &stop);
                        clients.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a thread for an API client");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(%e, "accept on the API socket");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn protocol_error(w: &SyncSender<Frame>, text: String) {
    let _ = w.try_send(Frame::Error {
        request: 0,
        code: Code::Protocol,
        text,
    });
}

/// One connection: this thread reads requests; a writer thread writes answers and events.
fn serve(stream: UnixStream, node: &NodeRef, stop: &AtomicBool) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let (frames, outbox) = sync_channel::<Frame>(APP_QUEUE);
    let writer = std::thread::Builder::new()
        .name("mixed-api-writer".into())
        .spawn(move || write_loop(write_half, outbox));
    let Ok(writer) = writer else {
        return;
    };
    let mut reader = stream;
    let _ = reader.set_read_timeout(Some(Duration::from_secs(10)));
    // HELLO first
    let app = match read_frame(&mut reader) {
        Ok(Frame::Hello { port }) => match (node.opener)(port, Sink::Socket(frames.clone())) {
            Ok(app) => {
                let _ = frames.try_send(Frame::Welcome {
                    node_id: node.node_id,
                    identity: node.identity,
                    max_message: anon::messenger::DEFAULT_MAX_MESSAGE as u32,
                    bound: node.bound.bound.load(Ordering::Relaxed),
                });
                Some(app)
            }
            Err(e) => {
                let _ = frames.try_send(Frame::Error {
                    request: 0,
                    code: e.code,
                    text: e.text,
                });
                None
            }
        },
        Ok(_) => {
            protocol_error(&frames, "the first frame must be HELLO".into());
            None
        }
        Err(e) => {
            protocol_error(&frames, e.to_string());
            None
        }
    };
    if let Some(app) = app {
        let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
        while !stop.load(Ordering::Relaxed) {
            let frame = match read_frame(&mut reader) {
                Ok(f) => f,
                Err(FrameError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(FrameError::Io(_)) => break, // the application is gone
                Err(e) => {
                    protocol_error(&frames, e.to_string());
                    break;
                }
            };
            let (request, result) = match frame {
                Frame::Send {
                    request,
                    destination,
                    options,
                    data,
                } => (request, app.send(destination, &data, options)),
                Frame::Reply {
                    request,
                    port,
                    handle,
                    data,
                } => match ReplyHandle::from_bytes(&handle) {
                    Some(mut h) => (request, app.reply(&mut h, &data, port)),
                    None => (
                        request,
                        Err(ApiError {
                            code: Code::InvalidArgument,
                            text: "not a reply handle".into(),
                        }),
                    ),
                },
                Frame::Bind { request, bandwidth } => {
                    (request, app.bind(bandwidth).map(|()| [0u8; 16]))
                }
                Frame::Unbind { request } => (request, app.unbind().map(|()| [0u8; 16])),
                Frame::AddContact { request, identity } => (
                    request,
                    app.add_contact(pki_client::IdentityKey(identity))
                        .map(|()| [0u8; 16]),
                ),
                other => {
                    protocol_error(
                        &frames,
                        format!("unexpected frame from a client: {other:?}"),
                    );
                    break;
                }
            };
            let answer = match result {
                Ok(id) => Frame::Done { request, id },
                Err(e) => Frame::Error {
                    request,
                    code: e.code,
                    text: e.text,
                },
            };
            // a client that does not read its answers only stalls itself
            if frames.send(answer).is_err() {
                break;
            }
        }
        drop(app);
    }
    drop(frames);
    let _ = writer.join();
    let _ = reader.shutdown(std::net::Shutdown::Both);
}

fn write_loop(mut stream: UnixStream, outbox: Receiver<Frame>) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    while let Ok(frame) = outbox.recv() {
        let close = matches!(frame, Frame::Error { request: 0, .. });
        if stream.write_all(&frame.encode()).is_err() || close {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}
