//! A storage provider's request handling: every request, well-formed or not, gets exactly
//! one response of [`RESPONSE_LEN`] bytes (one in, one out: paper section 4.6), and every
//! answer is counted by its status.

use crate::protocol::{self, RESPONSE_LEN, Request, Response, Status};
use crate::store::{BlockStore, Lookup, Swept};

/// Requests answered, by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received (= responses sent).
    pub requests: u64,
    /// By status, in the order of [`Status::ALL`].
    pub by_status: [u64; Status::ALL.len()],
}

impl Counts {
    /// How many requests were answered with `status`.
    pub fn get(&self, status: Status) -> u64 {
        self.by_status[status.index()]
    }

    /// How many were refused.
    pub fn refused(&self) -> u64 {
        Status::ALL
            .iter()
            .filter(|s| s.is_refusal())
            .map(|s| self.get(*s))
            .sum()
    }
}

/// The storage service of one provider.
#[derive(Debug)]
pub struct Provider {
    store: BlockStore,
    counts: Counts,
    store_errors: u64,
}

impl Provider {
    /// A provider over `store`.
    pub fn new(store: BlockStore) -> Provider {
        Provider {
            store,
            counts: Counts::default(),
            store_errors: 0,
        }
    }

    /// The store.
    pub fn store(&self) -> &BlockStore {
        &self.store
    }

    /// What was answered so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Storage errors met (each answered `Unavailable`).
    pub fn store_errors(&self) -> u64 {
        self.store_errors
    }

    /// Answers one request at `epoch`: always exactly one response.
    pub fn handle(&mut self, request: &[u8], epoch: u64) -> [u8; RESPONSE_LEN] {
        let response = match protocol::parse_request(request) {
            Err(r) => Response::bare(r.tag, r.op, r.status, [0; 32]),
            Ok(req) => self.serve(req, epoch),
        };
        self.counts.requests += 1;
        self.counts.by_status[response.status.index()] += 1;
        response.encode()
    }

    fn serve(&mut self, req: Request<'_>, epoch: u64) -> Response {
        match req {
            Request::Put {
                tag,
                box_id,
                signature,
                block,
            } => {
                let status = self
                    .store
                    .put(&box_id, &signature, block, epoch)
                    .unwrap_or_else(|_| {
                        self.store_errors += 1;
                        Status::Unavailable
                    });
                Response::bare(tag, protocol::Op::Put as u8, status, box_id)
            }
            Request::Get { tag, box_id } => {
                let op = protocol::Op::Get as u8;
                match self.store.get(&box_id, epoch) {
                    Ok(Lookup::Found(b)) => Response {
                        status: Status::Found,
                        signature: b.signature,
                        block_len: b.len,
                        block: b.data,
                        ..Response::bare(tag, op, Status::Found, box_id)
                    },
                    Ok(Lookup::None(status)) => Response::bare(tag, op, status, box_id),
                    Err(_) => {
                        self.store_errors += 1;
                        Response::bare(tag, op, Status::Unavailable, box_id)
                    }
                }
            }
            Request::Tombstone {
                tag,
                box_id,
                signature,
            } => {
                let status = self
                    .store
                    .tombstone(&box_id, &signature, epoch)
                    .unwrap_or_else(|_| {
                        self.store_errors += 1;
                        Status::Unavailable
                    });
                Response::bare(tag, protocol::Op::Tombstone as u8, status, box_id)
            }
        }
    }

    /// Ends what outlived the retention (call once an epoch, until `more` is false).
    pub fn sweep(&mut self, epoch: u64) -> Result<Swept, crate::store::StoreError> {
        self.store.sweep(epoch)
    }
}
