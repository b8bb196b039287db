//! [`Outbox`]: coalescing the small requests to one peer ("Nagle without delay"). A request
//! that finds no send to its peer in progress makes its caller the *sender*. If no other request
//! to that peer awaits its answer, the request is alone: it goes at once, as before. Otherwise
//! the caller lets the tasks that are ready run once (one [`raft_core::yield_now`], no timer), then takes
//! everything queued for that peer meanwhile, its own request first, and sends it: alone as an
//! ordinary request frame, or as one batch frame ([`crate::frame::encode_batch`]). Requests that find a
//! send in progress only queue; once the sender's frame is written, whatever queued during the
//! write goes in the next frame, sent by a task the sender spawns (see `client.rs`). A lone
//! request thus waits for no timer and no other request, and requests issued together (the
//! heartbeats of many groups, the pipelined AppendEntries of one) share a stream.
//!
//! Bounds: a batch holds at most [`MAX_BATCH_REQUESTS`] requests and its frame at most the
//! byte budget the sender gives (`priority_frame_threshold`: a batch is a small frame, sent at
//! the control priority and read by the receiver at once, like a lone heartbeat). The queue
//! holds at most one request per caller waiting for its answer (each within its RPC timeout);
//! a request whose caller gave up is dropped when its batch is formed.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::channel::oneshot;
use raft_core::{Envelope, NetworkError, RpcResponse};

use crate::client::lock;
use crate::frame::{BATCH_COUNT_LEN, HEADER_LEN, MAX_BATCH_REQUESTS};

/// Where a queued request's answer goes.
pub(crate) type Answer = oneshot::Sender<Result<RpcResponse, NetworkError>>;

/// A small request waiting for its peer's next frame.
pub(crate) struct Queued {
    pub(crate) request: Envelope,
    /// The size of its request frame.
    pub(crate) len: usize,
    pub(crate) answer: Answer,
}

/// The small requests queued for one peer, and whether a send to it is in progress.
#[derive(Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// A sender holds the turn: it will send what is queued (invariant: the queue is empty
    /// whenever nobody holds the turn).
    sending: bool,
}

impl Outbox {
    /// Queues `request`; true if its caller now holds the turn (no send was in progress), and
    /// must send what is queued (starting with this request) and then [`pass`](Self::pass) it.
    pub(crate) fn push(&self, request: Queued) -> bool {
        let mut state = lock(&self.state);
        state.queue.push_back(request);
        !std::mem::replace(&mut state.sending, true)
    }

    /// The next frame's requests, in the order they were queued: the first always, then as
    /// many as fit `max_bytes` of batch frame and [`MAX_BATCH_REQUESTS`]; the requests whose
    /// caller gave up are dropped. For the turn's holder.
    pub(crate) fn take(&self, max_bytes: usize) -> Vec<Queued> {
        let mut state = lock(&self.state);
        let mut batch: Vec<Queued> = Vec::new();
        let mut bytes = HEADER_LEN + BATCH_COUNT_LEN;
        while let Some(next) = state.queue.front() {
            if next.answer.is_canceled() {
                state.queue.pop_front();
                continue;
            }
            let full = batch.len() >= MAX_BATCH_REQUESTS || bytes + next.len > max_bytes;
            if full && !batch.is_empty() {
                break;
            }
            bytes += next.len;
            batch.extend(state.queue.pop_front());
        }
        batch
    }

    /// The turn's holder wrote its frame (or gave up): true if requests queued meanwhile, and
    /// the caller must have them sent (it still holds the turn); false if none did, and the
    /// turn is free again.
    pub(crate) fn pass(&self) -> bool {
        let mut state = lock(&self.state);
        state.sending = !state.queue.is_empty();
        state.sending
    }

    /// Frees the turn and empties the queue, for a holder that can neither send nor pass the
    /// turn on (its runtime shut down): the requests, for their callers to be failed.
    pub(crate) fn drain(&self) -> Vec<Queued> {
        let mut state = lock(&self.state);
        state.sending = false;
        state.queue.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use raft_core::{RequestVoteRequest, RpcRequest};

    use super::*;

    fn queued(len: usize) -> (Queued, oneshot::Receiver<Result<RpcResponse, NetworkError>>) {
        let request = RpcRequest::RequestVote(RequestVoteRequest {
            term: 1,
            candidate_id: 1,
            last_log_id: raft_core::LogId::new(0, 0),
            pre_vote: false,
            leadership_transfer: false,
        });
        let (answer, rx) = oneshot::channel();
        (Queued { request: Envelope::new(2, request), len, answer }, rx)
    }

    #[test]
    fn the_first_request_takes_the_turn_and_later_ones_queue_behind_it() {
        let outbox = Outbox::default();
        let (first, _a) = queued(100);
        assert!(outbox.push(first), "no send in progress: the caller sends");
        let (second, _b) = queued(100);
        assert!(!outbox.push(second), "a send in progress: the request waits for it");
        assert_eq!(outbox.take(1 << 14).len(), 2, "both go in one frame");
        assert!(!outbox.pass(), "nothing queued during the write: the turn is free");
        let (third, _c) = queued(100);
        assert!(outbox.push(third), "the next request takes the turn again");
        assert_eq!(outbox.take(1 << 14).len(), 1);
        let (fourth, _d) = queued(100);
        assert!(!outbox.push(fourth));
        assert!(outbox.pass(), "queued during the write: the holder keeps the turn");
        assert_eq!(outbox.take(1 << 14).len(), 1);
        assert!(!outbox.pass());
    }

    #[test]
    fn batches_are_bounded_in_bytes_and_count_and_skip_abandoned_requests() {
        let outbox = Outbox::default();
        let mut keep = Vec::new();
        for i in 0..2 * MAX_BATCH_REQUESTS {
            let (request, rx) = queued(10);
            outbox.push(request);
            // Every third caller gave up.
            if i % 3 != 0 {
                keep.push(rx);
            }
        }
        let batch = outbox.take(usize::MAX);
        assert_eq!(batch.len(), MAX_BATCH_REQUESTS);
        assert!(batch.iter().all(|q| !q.answer.is_canceled()));
        // Bytes: the frame header, the count and the requests' frames within the budget.
        let outbox = Outbox::default();
        let mut keep = Vec::new();
        for _ in 0..5 {
            let (request, rx) = queued(100);
            outbox.push(request);
            keep.push(rx);
        }
        assert_eq!(outbox.take(HEADER_LEN + BATCH_COUNT_LEN + 300).len(), 3);
        // The first request goes whatever its size (alone, as a lone frame).
        assert_eq!(outbox.take(10).len(), 1);
        assert_eq!(outbox.take(usize::MAX).len(), 1);
        assert!(outbox.take(usize::MAX).is_empty());
    }
}
