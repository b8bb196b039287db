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
                match_index: Some(r.prev_log_id.index + r.entries.len() as u64),
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
