//! The authority's HTTP API (axum) and its schedule.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/descriptors` | a signed descriptor | 201, or 400 / 403 / 409 / 413 / 429 with the reason |
//! | `POST /v1/withdrawals` | a signed withdrawal | 201, or an error as above |
//! | `GET /v1/consensus/current` | | the signed consensus of the current epoch |
//! | `GET /v1/consensus/{epoch}` | | the signed consensus of that epoch (`?format=json`: for people) |
//! | `POST /v1/votes` | a peer's signed vote | 201 |
//! | `GET /v1/votes/{epoch}` | | this authority's vote |
//! | `POST /v1/signatures/{epoch}` | a peer's signature (96 bytes) | 201 |
//! | `GET /v1/signatures/{epoch}` | | this authority's signature |
//! | `GET /v1/status` | | JSON counts |
//!
//! Every request counts against a token bucket per source address (429 beyond it); request
//! bodies are limited in size (413).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};

use crate::timed::{Peer, TimedListener};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pki_client::AuthorityEndpoint;
use pki_client::consensus::MAX_CONSENSUS_BYTES;

use crate::authority::{Authority, CONSENSUS_AT, Outgoing, SubmitError};
use crate::config::AuthorityConfig;
use crate::store::{Store, StoreError};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The state database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The socket or the runtime.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Most source addresses the rate limiter remembers; it forgets them all beyond.
const MAX_TRACKED_SOURCES: usize = 10_000;

struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, f64)>,
}

impl RateLimiter {
    fn admit(&mut self, ip: IpAddr, now: f64) -> bool {
        if self.buckets.len() >= MAX_TRACKED_SOURCES && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + (now - *last) * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Shared {
    authority: Mutex<Authority>,
    limiter: Mutex<RateLimiter>,
    peers: Vec<AuthorityEndpoint>,
    agent: ureq::Agent,
}

impl Shared {
    fn authority(&self) -> MutexGuard<'_, Authority> {
        // a panic while holding the lock would be a bug; the state is still consistent on
        // disk, so keep serving rather than poison every later request
        self.authority.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wall-clock time, unix seconds: the one clock read of the authority.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn error_response(e: &SubmitError) -> Response {
    use pki_client::DescriptorError as D;
    let status = match e {
        SubmitError::Document(D::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        SubmitError::Document(D::BadSignature) | SubmitError::UnknownAuthority => {
            StatusCode::FORBIDDEN
        }
        SubmitError::Vote(pki_client::VoteError::BadSignature) => StatusCode::FORBIDDEN,
        SubmitError::Document(_) | SubmitError::Vote(_) => StatusCode::BAD_REQUEST,
        SubmitError::Stale { .. }
        | SubmitError::TooEarly { .. }
        | SubmitError::FromTheFuture { .. } => StatusCode::BAD_REQUEST,
        SubmitError::Replayed { .. }
        | SubmitError::WrongEpoch { .. }
        | SubmitError::SignatureMismatch(_) => StatusCode::CONFLICT,
        SubmitError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

/// The 429 answer when `from` is over its rate, `None` when it may go on.
fn rate_limited(shared: &Shared, from: SocketAddr) -> Option<Response> {
    let mut limiter = shared.limiter.lock().unwrap_or_else(|e| e.into_inner());
    (!limiter.admit(from.ip(), unix_now())).then(|| {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "rate limited: too many requests from this address; retry later\n",
        )
            .into_response()
    })
}

async fn post_descriptor(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    body: Bytes,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    let now = unix_now() as u64;
    match shared.authority().submit_descriptor(&body, now) {
        Ok(()) => (StatusCode::CREATED, "accepted\n").into_response(),
        Err(e) => error_response(&e),
    }
}

async fn post_withdrawal(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    body: Bytes,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    match shared.authority().submit_withdrawal(&body) {
        Ok(()) => (StatusCode::CREATED, "accepted\n").into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn consensus_response(shared: &Shared, epoch: u64, json: bool) -> Response {
    let authority = shared.authority();
    match authority.signed_consensus(epoch) {
        Ok(_) if json => match authority.consensus_json(epoch) {
            Some(j) => ([(header::CONTENT_TYPE, "application/json")], j).into_response(),
            None => (StatusCode::NOT_FOUND, "no consensus\n").into_response(),
        },
        Ok(signed) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            signed.to_bytes(),
        )
            .into_response(),
        Err(reason) => (StatusCode::NOT_FOUND, format!("{reason}\n")).into_response(),
    }
}

async fn get_consensus(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    Path(epoch): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    let epoch = if epoch == "current" {
        shared.authority().epoch_at(unix_now() as u64)
    } else {
        match epoch.parse::<u64>() {
            Ok(e) => e,
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    "epoch must be a number or \"current\"\n",
                )
                    .into_response();
            }
        }
    };
    consensus_response(&shared, epoch, q.format.as_deref() == Some("json"))
}

async fn post_vote(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    body: Bytes,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    let now = unix_now() as u64;
    match shared.authority().submit_vote(&body, now) {
        Ok(()) => (StatusCode::CREATED, "accepted\n").into_response(),
        Err(e) => error_response(&e),
    }
}

async fn get_vote(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    Path(epoch): Path<u64>,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    match shared.authority().own_vote(epoch) {
        Some(v) => v.to_vec().into_response(),
        None => (StatusCode::NOT_FOUND, "no vote for that epoch\n").into_response(),
    }
}

async fn post_signature(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    Path(epoch): Path<u64>,
    body: Bytes,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    match shared.authority().submit_signature(epoch, &body) {
        Ok(()) => (StatusCode::CREATED, "accepted\n").into_response(),
        Err(e) => error_response(&e),
    }
}

async fn get_signature(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
    Path(epoch): Path<u64>,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    match shared.authority().own_signature(epoch) {
        Some(s) => s.to_vec().into_response(),
        None => (StatusCode::NOT_FOUND, "no signature for that epoch\n").into_response(),
    }
}

async fn get_status(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(Peer(from)): ConnectInfo<Peer>,
) -> Response {
    if let Some(r) = rate_limited(&shared, from) {
        return r;
    }
    let status = shared.authority().status(unix_now() as u64);
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&status).unwrap_or_default(),
    )
        .into_response()
}

fn router(shared: Arc<Shared>, max_body: usize) -> Router {
    let small = DefaultBodyLimit::max(max_body);
    let large = DefaultBodyLimit::max(MAX_CONSENSUS_BYTES);
    Router::new()
        .route("/v1/descriptors", post(post_descriptor).layer(small))
        .route("/v1/withdrawals", post(post_withdrawal).layer(small))
        .route("/v1/consensus/{epoch}", get(get_consensus))
        .route("/v1/votes", post(post_vote).layer(large))
        .route("/v1/votes/{epoch}", get(get_vote))
        .route(
            "/v1/signatures/{epoch}",
            post(post_signature).get(get_signature).layer(small),
        )
        .route("/v1/status", get(get_status))
        .with_state(shared)
}

/// The peer side: pushes and pulls over blocking HTTP, on the runtime's blocking pool.
fn peer_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build(),
    )
}

fn push(agent: &ureq::Agent, peers: &[AuthorityEndpoint], item: &Outgoing) {
    for peer in peers {
        let (url, body) = match item {
            Outgoing::Vote(bytes) => (format!("{}/v1/votes", peer.url), bytes.clone()),
            Outgoing::Signature(epoch, sig) => {
                (format!("{}/v1/signatures/{epoch}", peer.url), sig.to_vec())
            }
        };
        match agent
            .post(&url)
            .header("content-type", "application/octet-stream")
            .send(&body[..])
        {
            Err(e) => tracing::warn!(peer = %peer.url, error = %e, "push to peer failed"),
            Ok(mut r) if !r.status().is_success() => {
                let reason = r.body_mut().read_to_string().unwrap_or_default();
                tracing::warn!(peer = %peer.url, status = %r.status(), %reason, "peer refused");
            }
            Ok(_) => {}
        }
    }
}

fn pull(agent: &ureq::Agent, url: &str) -> Option<Vec<u8>> {
    let mut r = agent.get(url).call().ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.body_mut()
        .with_config()
        .limit(MAX_CONSENSUS_BYTES as u64)
        .read_to_vec()
        .ok()
}

/// One turn of the schedule: the authority's own steps, then pulls of what peers have not
/// pushed (a vote before the consensus is computed, signatures after).
fn schedule_turn(shared: &Shared) {
    let agent = &shared.agent;
    let now = unix_now();
    let outgoing = match shared.authority().tick((now * 1000.0) as u64) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "schedule step failed");
            return;
        }
    };
    for item in &outgoing {
        push(agent, &shared.peers, item);
    }
    let (next, into, pull_votes) = {
        let a = shared.authority();
        (
            a.epoch_at(now as u64) + 1,
            a.epoch_fraction((now * 1000.0) as u64),
            a.wants_peer_votes((now * 1000.0) as u64),
        )
    };
    if pull_votes {
        for peer in &shared.peers {
            if shared.authority().has_vote(next, &peer.identity) {
                continue;
            }
            if let Some(v) = pull(agent, &format!("{}/v1/votes/{next}", peer.url)) {
                let _ = shared.authority().submit_vote(&v, now as u64);
            }
        }
    }
    if into >= CONSENSUS_AT {
        for peer in &shared.peers {
            if shared.authority().has_signature(next, &peer.identity) {
                continue;
            }
            if let Some(s) = pull(agent, &format!("{}/v1/signatures/{next}", peer.url)) {
                let _ = shared.authority().submit_signature(next, &s);
            }
        }
    }
}

/// A running authority.
#[derive(Debug)]
pub struct AuthorityHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuthorityHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and waits until its database is closed.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AuthorityHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts an authority on an already bound listener, in a thread of its own. Opening the
/// database happens before this returns, so its errors are reported here.
pub fn spawn(
    config: AuthorityConfig,
    listener: std::net::TcpListener,
) -> Result<AuthorityHandle, ServerError> {
    let store = Store::open(&config.data_dir)?;
    let authority = Authority::open(
        config.identity.clone(),
        config.authority_set(),
        config.params,
        store,
    )?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        authority: Mutex::new(authority),
        limiter: Mutex::new(RateLimiter {
            rate: config.limits.requests_per_second,
            burst: config.limits.burst,
            buckets: HashMap::new(),
        }),
        peers: config.peers(),
        agent: peer_agent(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let max_body = config.limits.max_body_bytes;
    let thread = std::thread::Builder::new()
        .name(format!("dirauth-{}", addr.port()))
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "listener");
                        return;
                    }
                };
                let schedule_shared = Arc::clone(&shared);
                let schedule = tokio::spawn(async move {
                    let mut interval = tokio::time::interval(Duration::from_millis(100));
                    loop {
                        interval.tick().await;
                        let s = Arc::clone(&schedule_shared);
                        let _ = tokio::task::spawn_blocking(move || {
                            schedule_turn(&s);
                        })
                        .await;
                    }
                });
                // every connection lives CONNECTION_LIFETIME at most: slow or idle clients
                // cannot hold the server's connections
                let app = router(shared, max_body).into_make_service_with_connect_info::<Peer>();
                let serve =
                    axum::serve(TimedListener(listener), app).with_graceful_shutdown(async move {
                        let _ = rx.await;
                    });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "server");
                }
                schedule.abort();
            });
        })?;
    Ok(AuthorityHandle {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
