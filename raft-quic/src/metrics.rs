//! What the transport records through the [`metrics`] facade (the application installs the
//! recorder, before binding the network; without one every handle does nothing):
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `quic_sent_bytes_total` | counter | `node_id`, `peer` | frame bytes written to a peer (requests this node sent, answers it gave) |
//! | `quic_received_bytes_total` | counter | `node_id`, `peer` | bytes of the frames read whole from a peer, counted once the last byte is read, whatever becomes of them (answers it got, stray ones too; requests and batches it took in, refused after being read whole too: undecodable, a broken batch structure, busy at decoding); not a frame refused before its end |
//! | `quic_rpc_errors_total` | counter | `node_id`, `peer`, `error` | outbound RPCs that failed: `timeout`, `unreachable`, `refused`, `codec` |
//! | `quic_dial_failures_total` | counter | `node_id`, `peer` | failed attempts to connect to a peer |
//! | `quic_bad_requests_total` | counter | `node_id`, `peer` | inbound requests refused as bad, each once, when found: a stream closed for a bad frame (a batch refused whole is one) or because the peer's bytes did not all come within the RPC timeout (not when this node kept it waiting: room in the memory budget, the decoding thread; that is refused as busy), a lone request's lying sender header, or one request of a well-formed batch refused alone (undecodable, over the decoding budget, lying sender; not when only busy), even if its answer is never written |
//! | `quic_answer_timeouts_total` | counter | `node_id`, `peer` | inbound streams given up because the peer did not take their answers (did not read them, giving the stream flow-control credit) within one RPC timeout of waiting in all: a lone request's answer, or all the answers of a batch together; each such stream once, reset with `code::TIMEOUT` (its handlers still running dropped, its memory released). The waiting is the wall time of each pending write, so this node's own delays during one (a busy runtime, a process pause) count against the peer too |
//! | `quic_handshakes_total` | counter | `gate`, `outcome` | connection attempts at a [`Gate`](crate::Gate): `admitted`, `failed` (TLS or the peer gave up), `timed_out`, `refused` (limits, Retry not counted), `rejected` (identity or removed node, after the handshake), `over_capacity` |
//!
//! Handles are registered once per peer (per connection on the inbound side) and per gate.

use std::sync::atomic::{AtomicU64, Ordering};

use ::metrics::{Counter, Label};
use raft_core::{NetworkError, NodeId};

/// The counters of one peer, as seen by one node.
#[derive(Debug, Clone)]
pub(crate) struct PeerCounters {
    pub(crate) sent_bytes: Counter,
    pub(crate) received_bytes: Counter,
    errors: [Counter; 4],
    pub(crate) dial_failures: Counter,
    pub(crate) bad_requests: Counter,
    pub(crate) answer_timeouts: Counter,
}

impl PeerCounters {
    pub(crate) fn new(node: NodeId, peer: NodeId) -> Self {
        let labels =
            [Label::new("node_id", node.to_string()), Label::new("peer", peer.to_string())];
        let error = |kind: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(Label::new("error", kind));
            ::metrics::counter!("quic_rpc_errors_total", labels.iter())
        };
        Self {
            sent_bytes: ::metrics::counter!("quic_sent_bytes_total", labels.iter()),
            received_bytes: ::metrics::counter!("quic_received_bytes_total", labels.iter()),
            errors: ["timeout", "unreachable", "refused", "codec"].map(error),
            dial_failures: ::metrics::counter!("quic_dial_failures_total", labels.iter()),
            bad_requests: ::metrics::counter!("quic_bad_requests_total", labels.iter()),
            answer_timeouts: ::metrics::counter!("quic_answer_timeouts_total", labels.iter()),
        }
    }

    /// Counts an outbound RPC that failed with `error`.
    pub(crate) fn failed(&self, error: &NetworkError) {
        let kind = match error {
            NetworkError::Timeout(_) => 0,
            NetworkError::Refused { .. } => 2,
            NetworkError::Codec(_) => 3,
            _ => 1,
        };
        self.errors[kind].increment(1);
    }
}

/// What happened to a connection attempt at a gate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Admitted,
    Failed,
    TimedOut,
    Refused,
    Rejected,
    OverCapacity,
}

/// The counters of one gate, by [`Outcome`].
#[derive(Debug)]
pub(crate) struct GateCounters([Counter; 6]);

impl GateCounters {
    pub(crate) fn new(gate: &'static str) -> Self {
        let outcomes = ["admitted", "failed", "timed_out", "refused", "rejected", "over_capacity"];
        Self(outcomes.map(|outcome| {
            let labels = [Label::new("gate", gate), Label::new("outcome", outcome)];
            ::metrics::counter!("quic_handshakes_total", labels.iter())
        }))
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].increment(1);
    }
}

/// What one node sent to one peer since its network was bound ([`QuicNetwork::peer_stats`](crate::QuicNetwork::peer_stats)).
/// A frame counts as sent once the stream took it whole (it fit the peer's flow-control credit
/// and is QUIC's to deliver); one the peer stopped before that counts in `frames_stopped`
/// only, and one abandoned otherwise (the connection was lost, the RPC timed out while it was
/// written) in neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Requests written whole to the peer (every group's, bulk and small), in the frames of
    /// `frames_sent`.
    pub requests_sent: u64,
    /// Request frames written whole, each on a stream of its own: lone requests and batches.
    pub frames_sent: u64,
    /// Of those frames, the batches: frames carrying more than one request.
    pub batches_sent: u64,
    /// Request frames the peer stopped (`STOP_SENDING`) before the stream took them whole:
    /// not in `frames_sent` (nor their requests in `requests_sent`).
    pub frames_stopped: u64,
}

/// The counts behind [`PeerStats`].
#[derive(Debug, Default)]
pub(crate) struct SentCounts {
    requests: AtomicU64,
    frames: AtomicU64,
    batches: AtomicU64,
    stopped: AtomicU64,
}

impl SentCounts {
    /// A frame of `requests` requests was written whole.
    pub(crate) fn count(&self, requests: usize) {
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
        if requests > 1 {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A frame was stopped by the peer before it was written whole.
    pub(crate) fn stopped(&self) {
        self.stopped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> PeerStats {
        PeerStats {
            requests_sent: self.requests.load(Ordering::Relaxed),
            frames_sent: self.frames.load(Ordering::Relaxed),
            batches_sent: self.batches.load(Ordering::Relaxed),
            frames_stopped: self.stopped.load(Ordering::Relaxed),
        }
    }
}
