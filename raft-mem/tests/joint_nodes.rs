//! Joint consensus and member metadata through real `Node`s on the in-memory backends (issues
//! 18 and 17.1): `Node::set_membership` replaces voters in one call, and the network is told
//! every member's metadata at start and whenever it changes, also after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{config, in_order, PATIENCE};
use futures::FutureExt;
use raft_core::{
    Bytes, CommitError, EntryPayload, Envelope, Membership, MembershipError, Network, NetworkError,
    Node, NodeId, NodeInfo, ProposeError, Role, RpcRequest, RpcResponse, Runtime,
};
use raft_mem::harness::RecordingStateMachine;
use raft_mem::{MemLogStore, MemNetwork};

type Members = BTreeMap<NodeId, NodeInfo>;

/// A network that records what `members_changed` was told; once `cut` is armed with a
/// membership, the first AppendEntries carrying it disconnects the node (it sends nothing more
/// and hears nothing).
struct Recording<N> {
    inner: N,
    calls: Arc<Mutex<Vec<Members>>>,
    cut: Arc<Cut>,
}

/// See [`Recording`].
struct Cut {
    network: MemNetwork,
    id: NodeId,
    armed: Mutex<Option<Membership>>,
    fired: AtomicBool,
}

#[async_trait]
impl<N: Network> Network for Recording<N> {
    async fn send(&self, envelope: Envelope) -> Result<RpcResponse, NetworkError> {
        let (target, request) = (envelope.receiver, &envelope.request);
        let cut = &self.cut;
        let armed = cut.armed.lock().unwrap().clone();
        if armed.is_some_and(|m| carries(request, &m)) {
            cut.fired.store(true, Ordering::SeqCst);
            cut.network.disconnect(cut.id);
        }
        if cut.fired.load(Ordering::SeqCst) {
            let reason = "cut off".to_owned();
            return Err(NetworkError::Unreachable { peer: target, reason });
        }
        self.inner.send(envelope).await
    }

    fn members_changed(&self, members: &Members) {
        self.calls.lock().unwrap().push(members.clone());
    }
}

/// Whether `request` is an AppendEntries carrying an entry of `membership`.
fn carries(request: &RpcRequest, membership: &Membership) -> bool {
    let RpcRequest::AppendEntries(r) = request else { return false };
    r.entries.iter().any(|e| matches!(&e.payload, EntryPayload::Membership(m) if m == membership))
}

fn info(id: NodeId) -> NodeInfo {
    NodeInfo::new(format!("10.0.0.{id}:7000"), format!("client 10.0.0.{id}:8000"))
}

struct Nodes<R: Runtime + Clone> {
    runtime: R,
    network: MemNetwork,
    stores: BTreeMap<NodeId, MemLogStore>,
    nodes: BTreeMap<NodeId, Node>,
    recorders: BTreeMap<NodeId, RecordingStateMachine>,
    calls: BTreeMap<NodeId, Arc<Mutex<Vec<Members>>>>,
    cuts: BTreeMap<NodeId, Arc<Cut>>,
}

impl<R: Runtime + Clone> Nodes<R> {
    fn new(runtime: R) -> Self {
        Self {
            runtime,
            network: MemNetwork::new(),
            stores: BTreeMap::new(),
            nodes: BTreeMap::new(),
            recorders: BTreeMap::new(),
            calls: BTreeMap::new(),
            cuts: BTreeMap::new(),
        }
    }

    /// Starts node `id` from its store (a new one the first time), bootstrapping it with
    /// `bootstrap` if given.
    async fn start(&mut self, id: NodeId, bootstrap: Option<Membership>) {
        let store = self.stores.entry(id).or_default().clone();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Cut {
            network: self.network.clone(),
            id,
            armed: Mutex::new(None),
            fired: AtomicBool::new(false),
        });
        self.cuts.insert(id, cut.clone());
        let network = Recording { inner: self.network.endpoint(id), calls: calls.clone(), cut };
        let recorder = RecordingStateMachine::new();
        let runtime = self.runtime.clone();
        let builder = Node::builder(config(id), store, network, recorder.clone(), runtime);
        let builder = match bootstrap {
            Some(membership) => builder.bootstrap(membership),
            None => builder,
        };
        let node = builder.start().await.unwrap();
        self.network.serve(id, Arc::new(node.clone()));
        self.nodes.insert(id, node);
        self.recorders.insert(id, recorder);
        self.calls.insert(id, calls);
    }

    async fn stop(&mut self, id: NodeId) {
        self.network.stop_serving(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    fn calls(&self, id: NodeId) -> Vec<Members> {
        self.calls[&id].lock().unwrap().clone()
    }

    async fn within<T>(&self, what: &str, future: impl std::future::Future<Output = T>) -> T {
        futures::select! {
            value = future.fuse() => value,
            _ = self.runtime.sleep(PATIENCE).fuse() => panic!("timed out waiting for {what}"),
        }
    }

    /// Waits until one of `among` leads and returns it.
    async fn leader(&self, among: &[NodeId]) -> NodeId {
        self.within("a leader", async {
            loop {
                let leaders: Vec<NodeId> = among
                    .iter()
                    .copied()
                    .filter(|id| self.nodes[id].status().role == Role::Leader)
                    .collect();
                if let [leader] = leaders[..] {
                    return leader;
                }
                self.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Proposes `data` on whichever of `among` leads until it is applied; returns its index.
    async fn write(&self, among: &[NodeId], data: &str) -> u64 {
        let data = Bytes::from(data.to_owned());
        self.within("a write", async {
            loop {
                let leader = self.leader(among).await;
                if let Ok(proposal) = self.nodes[&leader].propose(data.clone()).await {
                    let index = proposal.index;
                    if proposal.response().await.is_ok() {
                        return index;
                    }
                }
                self.runtime.sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    fn commands(&self, id: NodeId) -> Vec<Bytes> {
        let applied = in_order(self.recorders[&id].entries());
        applied.iter().filter_map(|e| e.command().cloned()).collect()
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}

async fn set_membership_replaces_two_of_three_voters<R: Runtime + Clone>(rt: R) {
    let mut n = Nodes::new(rt);
    for id in 1..=3 {
        n.start(id, Some(Membership::with_voters([1, 2, 3]))).await;
    }
    for id in 1..=3 {
        let bootstrap: Members = (1..=3).map(|id| (id, NodeInfo::default())).collect();
        assert_eq!(n.calls(id), [bootstrap], "node {id} is told its members at start");
    }
    for id in [4, 5] {
        n.start(id, None).await;
        assert_eq!(n.calls(id), [Members::new()], "a joining node knows no member yet");
    }
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged.push(format!("before-{i}"));
        n.write(&[1, 2, 3], &acknowledged[i]).await;
    }
    let leader = n.leader(&[1, 2, 3]).await;
    let keep = (1..=3).find(|&id| id != leader).unwrap();
    let current = n.nodes[&leader].membership();
    let target = current.target([keep, 4, 5], [], [(4, info(4)), (5, info(5))]).unwrap();
    let set = n.nodes[&leader].set_membership(target.clone(), PATIENCE);
    let result = n.within("set_membership", set).await.unwrap();
    assert_eq!(result, target);

    // The new voters commit without the removed ones.
    let new = [keep, 4, 5];
    for id in (1..=3).filter(|&id| id != keep) {
        n.stop(id).await;
    }
    for i in 0..5 {
        acknowledged.push(format!("after-{i}"));
        n.write(&new, &acknowledged[20 + i]).await;
    }
    let leader = n.leader(&new).await;
    let again = n.nodes[&leader].set_membership(target.clone(), PATIENCE).await;
    assert_eq!(again, Ok(target.clone()), "a retry of a completed change returns at once");
    let expected: Vec<Bytes> = acknowledged.iter().map(|s| Bytes::from(s.clone())).collect();
    for id in new {
        let mut watch = n.nodes[&id].watch();
        let last = n.nodes[&leader].status().commit_index;
        n.within("applies", watch.wait_for(|s| s.applied_index >= last)).await;
        assert_eq!(n.commands(id), expected, "node {id}");
        // Every member's metadata reached every member's network, and the last call is the
        // membership in force.
        assert_eq!(n.calls(id).last().cloned(), Some(target.nodes().clone()), "node {id}");
    }

    // A follower's refusal names the leader and carries its metadata.
    let follower = new.into_iter().find(|&id| id != leader).unwrap();
    let refused = n.nodes[&follower].propose(Bytes::from_static(b"x")).await;
    let leader_info = target.node(leader).cloned();
    assert_eq!(
        refused.err(),
        Some(ProposeError::NotLeader { leader_id: Some(leader), leader_info })
    );

    // A restarted node learns every member's metadata from its log, at start.
    n.stop(4).await;
    n.start(4, None).await;
    assert_eq!(n.calls(4).first().cloned(), Some(target.nodes().clone()));
    n.shutdown().await;
}

async fn a_learner_that_never_catches_up_is_not_promoted<R: Runtime + Clone>(rt: R) {
    let mut n = Nodes::new(rt);
    for id in 1..=3 {
        n.start(id, Some(Membership::with_voters([1, 2, 3]))).await;
    }
    n.write(&[1, 2, 3], "a").await;
    let leader = n.leader(&[1, 2, 3]).await;
    // Node 6 is never started: it joins as a learner and never answers.
    let current = n.nodes[&leader].membership();
    let target = current.target([1, 2, 3, 6], [], [(6, info(6))]).unwrap();
    let set = n.nodes[&leader].set_membership(target, Duration::from_millis(300));
    assert_eq!(n.within("set_membership", set).await, Err(MembershipError::CatchUpTimeout));
    let membership: Membership = n.nodes[&leader].membership();
    assert_eq!(membership.voters(), &[1, 2, 3].into());
    assert!(membership.is_learner(6) && membership.node(6) == Some(&info(6)));
    n.write(&[1, 2, 3], "b").await;
    n.shutdown().await;
}

async fn a_leader_that_loses_office_in_the_joint_phase_does_not_wait_forever<R: Runtime + Clone>(
    rt: R,
) {
    let mut n = Nodes::new(rt);
    for id in 1..=3 {
        n.start(id, Some(Membership::with_voters([1, 2, 3]))).await;
    }
    n.start(4, None).await;
    n.write(&[1, 2, 3], "a").await;
    let leader = n.leader(&[1, 2, 3]).await;
    let current = n.nodes[&leader].membership();
    let target = current.target([1, 2, 3, 4], [], [(4, info(4))]).unwrap();
    // Node 4 joins as a learner first: the change below appends only the joint and the final
    // configuration.
    let learner = current.target([1, 2, 3], [4], [(4, info(4))]).unwrap();
    let set = n.nodes[&leader].set_membership(learner, PATIENCE);
    n.within("adding the learner", set).await.unwrap();
    n.write(&[1, 2, 3], "b").await;
    // The joint entry commits; the leader is cut off as it sends the final configuration, and
    // steps down (CheckQuorum) before it knows that configuration committed.
    *n.cuts[&leader].armed.lock().unwrap() = Some(target.clone());
    let set = n.nodes[&leader].set_membership(target.clone(), PATIENCE);
    let lost = MembershipError::Commit(CommitError::LeadershipLost);
    assert_eq!(n.within("the cut-off leader's answer", set).await, Err(lost));
    assert!(n.cuts[&leader].fired.load(Ordering::SeqCst));
    // The next leader finishes the change; a retry there returns once it is complete.
    let others: Vec<NodeId> = (1..=4).filter(|&id| id != leader).collect();
    let new_leader = n.leader(&others).await;
    let retry = n.nodes[&new_leader].set_membership(target.clone(), PATIENCE);
    assert_eq!(n.within("the retry", retry).await, Ok(target));
    n.shutdown().await;
}

common::under_runtimes!(
    set_membership_replaces_two_of_three_voters,
    a_learner_that_never_catches_up_is_not_promoted,
    a_leader_that_loses_office_in_the_joint_phase_does_not_wait_forever,
);
