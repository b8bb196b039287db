//! [`MatchingFollower`] and [`append_entries`]: the two ends of a transport measured alone,
//! without a Raft node behind it (the QUIC benchmarks).

use async_trait::async_trait;
use bytes::Bytes;

use crate::message::{
    AppendEntriesRequest, AppendEntriesResponse, Envelope, RpcRequest, RpcResponse,
};
use crate::network::{RpcError, RpcHandler};
use crate::types::{Entry, EntryPayload, LogId};

/// An [`RpcHandler`] that answers every AppendEntries as a follower whose log always matches
/// (its match index is the request's last entry), at once and storing nothing, and refuses
/// every other request ([`RpcError::Shutdown`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchingFollower;

#[async_trait]
impl RpcHandler for MatchingFollower {
    async fn handle_rpc(&self, request: Envelope) -> Result<RpcResponse, RpcError> {
        match request.request {
            RpcRequest::AppendEntries(r) => Ok(RpcResponse::AppendEntries(AppendEntriesResponse {
                term: r.term,
                match_index: Some(r.prev_log_id.index.saturating_add(r.entries.len() as u64)),
                conflict: None,
                lease_promise_ms: 0,
                quiesced: false,
            })),
            _ => Err(RpcError::Shutdown),
        }
    }
}

/// An AppendEntries from leader 1 in term 1 carrying `entries` commands of `entry_bytes` bytes
/// each (all the same bytes), after index 100 (a heartbeat for `entries == 0`).
pub fn append_entries(entries: usize, entry_bytes: usize) -> RpcRequest {
    let payload = Bytes::from(vec![0x5a; entry_bytes]);
    RpcRequest::AppendEntries(AppendEntriesRequest {
        term: 1,
        leader_id: 1,
        prev_log_id: LogId::new(1, 100),
        entries: (0..entries)
            .map(|i| Entry {
                index: 101 + i as u64,
                term: 1,
                payload: EntryPayload::Command(payload.clone()),
            })
            .collect(),
        leader_commit: 100,
        read_round: 0,
        quiesce: false,
    })
}

#[cfg(test)]
mod tests {
    use super::{append_entries, MatchingFollower};
    use crate::message::{Envelope, RpcRequest, RpcResponse};
    use crate::network::RpcHandler;

    /// A request whose last index would pass `u64::MAX` is answered, not a panic (the handler
    /// is public: its input may come from a peer).
    #[test]
    fn a_request_ending_past_the_last_index_is_answered() {
        let RpcRequest::AppendEntries(mut request) = append_entries(2, 8) else {
            unreachable!("append_entries builds an AppendEntries");
        };
        request.prev_log_id.index = u64::MAX - 1;
        let envelope = Envelope::new(2, RpcRequest::AppendEntries(request));
        let answer = futures::executor::block_on(MatchingFollower.handle_rpc(envelope));
        assert!(
            matches!(&answer, Ok(RpcResponse::AppendEntries(a)) if a.match_index == Some(u64::MAX)),
            "{answer:?}"
        );
    }
}
