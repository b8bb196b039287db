//! Real `Node`s receiving malformed requests through `RpcHandler::handle_rpc`, as a buggy or
//! hostile cluster member would send them (issue 12, item 6, at the driver level). Every call is
//! answered with a refusal that acknowledges nothing, no node stops or panics, and the cluster
//! keeps committing with every node applying the same entries: malformed traffic changes no
//! state. (The engine's own property test drives random messages in every role:
//! `raft-core/src/engine/tests/hostile.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{applied_commands, check_applied_agree, start, wait_applied, write};
use raft_core::{
    AppendEntriesRequest, Bytes, Entry, EntryPayload, Envelope, InstallSnapshotRequest, LogId,
    Membership, NodeId, ReadIndexRequest, RequestVoteRequest, RpcHandler, RpcRequest, RpcResponse,
    SnapshotMeta, SnapshotRefusal, Status, TimeoutNowRequest, MAX_LOG_INDEX, MAX_TERM,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// The seed of the request generator (`RAFT_HOSTILE_SEED` replays another).
fn seed() -> u64 {
    std::env::var("RAFT_HOSTILE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12)
}

struct Forger {
    rng: ChaCha8Rng,
}

impl Forger {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n
    }

    /// A term above the bound, or one whose successor overflows.
    fn huge(&mut self) -> u64 {
        [MAX_TERM + 1, u64::MAX, u64::MAX - 1][self.below(3) as usize]
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, payload: EntryPayload::Command(Bytes::from_static(b"forged")) }
    }

    /// A request from `from` to a node in state `to`, with one defect of a random kind.
    fn malformed(&mut self, from: NodeId, to: &Status) -> RpcRequest {
        let term = to.current_term + self.below(3);
        let last = to.last_log_index;
        let append = |term, prev_log_id, entries| {
            RpcRequest::AppendEntries(AppendEntriesRequest {
                term,
                leader_id: from,
                prev_log_id,
                entries,
                leader_commit: last + 10,
                read_round: 0,
                quiesce: false,
            })
        };
        let prev = LogId::new(1, last.min(1));
        let snapshot = |meta, offset, data: &'static [u8], done| {
            RpcRequest::InstallSnapshot(InstallSnapshotRequest {
                term,
                leader_id: from,
                meta,
                offset,
                data: Bytes::from_static(data),
                done,
            })
        };
        let meta = |index, voters: &[NodeId]| SnapshotMeta {
            last_included: LogId::new(1, index),
            membership: Membership::with_voters(voters.iter().copied()),
            size: 4,
            checksum: 0,
        };
        match self.below(14) {
            0 => append(term, prev, vec![Self::entry(prev.index + 2, term)]),
            1 => append(
                term,
                prev,
                vec![Self::entry(prev.index + 1, term), Self::entry(prev.index + 2, term - 1)],
            ),
            2 => append(term, prev, vec![Self::entry(prev.index + 1, term + 1)]),
            3 => append(self.huge(), prev, Vec::new()),
            4 => append(term, LogId::new(term, u64::MAX), vec![Self::entry(0, term)]),
            5 => append(
                term,
                LogId::new(1, MAX_LOG_INDEX),
                vec![Self::entry(MAX_LOG_INDEX + 1, term)],
            ),
            // Overwrites the first entry, which every node has committed (term 1's blank).
            6 => append(
                to.current_term + 1,
                LogId::default(),
                vec![Self::entry(1, to.current_term + 1)],
            ),
            7 => RpcRequest::RequestVote(RequestVoteRequest {
                term: self.huge(),
                candidate_id: from,
                last_log_id: LogId::new(u64::MAX, u64::MAX),
                pre_vote: self.below(2) == 0,
                leadership_transfer: true,
            }),
            8 => snapshot(meta(u64::MAX, &[1, 2, 3]), 0, b"abcd", true),
            9 => snapshot(meta(last + 5, &[1, 2, 3]), u64::MAX - 1, b"abcd", true),
            10 => snapshot(meta(last + 5, &[]), 0, b"abcd", true),
            11 => RpcRequest::TimeoutNow(TimeoutNowRequest {
                term: [0, self.huge()][self.below(2) as usize],
                leader_id: from,
            }),
            12 => RpcRequest::ReadIndex(ReadIndexRequest {
                term: self.huge(),
                sender: from,
                read_id: self.rng.next_u64(),
            }),
            // From the node itself.
            _ => RpcRequest::AppendEntries(AppendEntriesRequest {
                term,
                leader_id: to.id,
                prev_log_id: LogId::new(0, 0),
                entries: Vec::new(),
                leader_commit: 0,
                read_round: 0,
                quiesce: false,
            }),
        }
    }
}

/// Whether `response` acknowledges anything.
fn acknowledges(response: &RpcResponse) -> bool {
    match response {
        RpcResponse::AppendEntries(r) => r.match_index.is_some(),
        RpcResponse::RequestVote(r) => r.vote_granted,
        RpcResponse::InstallSnapshot(r) => {
            r.complete || r.refusal != Some(SnapshotRefusal::Malformed)
        }
        RpcResponse::ReadIndex(r) => r.read_index.is_some(),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_change_nothing() {
    let rt = raft_core::runtime::TokioRuntime::current().unwrap();
    let (mut cluster, _) = start(3, rt).await;
    for i in 0..5u8 {
        write(&cluster, &[i]).await;
    }
    let mut forger = Forger { rng: ChaCha8Rng::seed_from_u64(seed()) };
    for round in 0..600 {
        let to = cluster.voters()[forger.below(3) as usize];
        let from =
            cluster.voters().iter().copied().filter(|&id| id != to).nth(forger.below(2) as usize);
        let status = cluster.node(to).unwrap().status();
        let request = forger.malformed(from.unwrap(), &status);
        let answer = cluster
            .within(
                "an answer to a malformed request",
                cluster.node(to).unwrap().handle_rpc(Envelope::new(to, request.clone())),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            !acknowledges(&answer),
            "round {round} (seed {}): {request:?} was answered {answer:?}",
            seed()
        );
        let after = cluster.node(to).unwrap().status();
        assert!(after.current_term <= MAX_TERM, "round {round}: term {}", after.current_term);
        assert!(after.commit_index >= status.commit_index);
    }
    // Nothing changed: the cluster commits, and every node applied the same entries.
    let (last, _) = write(&cluster, b"after").await;
    wait_applied(&cluster, &cluster.running(), last).await;
    check_applied_agree(&cluster);
    for id in cluster.running() {
        let node = cluster.node(id).unwrap();
        assert!(node.fatal_error().is_none(), "node {id}: {:?}", node.fatal_error());
        assert!(applied_commands(&cluster, id).iter().all(|c| c.as_ref() != b"forged"));
    }
    cluster.stop_all().await.unwrap();
}
