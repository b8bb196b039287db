//! Role-level tests of the engine, driven synchronously: messages are delivered in FIFO order,
//! writes complete immediately, and nodes can be isolated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::*;
use crate::message::*;
use crate::snapshot_meta::SnapshotMeta;
use crate::types::EntryPayload;

struct Node {
    /// What the node was started with (restarts reuse it).
    config: NodeConfig,
    engine: Engine,
    durable_hard_state: HardState,
    durable_log: Vec<Entry>,
    applied: Vec<Entry>,
    /// The durable snapshot: its meta, data and the entries its state reflects.
    snapshot: Option<(SnapshotMeta, Vec<u8>, Vec<Entry>)>,
    /// The snapshot being received.
    receiving: Vec<u8>,
}

enum Msg {
    Request { from: NodeId, to: NodeId, request: RpcRequest },
    Lost { from: NodeId, to: NodeId, request: RpcRequest },
    Response { from: NodeId, to: NodeId, sent: SentRequest, response: RpcResponse },
}

struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    queue: VecDeque<Msg>,
    isolated: BTreeSet<NodeId>,
    /// Nodes that send but hear nothing (their requests are delivered, every answer to them and
    /// every request to them is lost): a node that crashes right after sending.
    deaf: BTreeSet<NodeId>,
    /// A partition (empty: none): two nodes talk only if every group holds both or neither.
    groups: Vec<BTreeSet<NodeId>>,
    /// Links that are down (both directions), as (lower id, higher id).
    links_down: BTreeSet<(NodeId, NodeId)>,
    /// Pending replies: reply id -> (requester, sent summary).
    replies: BTreeMap<u64, (NodeId, SentRequest)>,
    next_reply: u64,
    /// Every action taken, per node, for ordering checks.
    log: Vec<(NodeId, Action)>,
    /// InstallSnapshot requests to drop (by offset), to simulate lost chunks.
    drop_chunks: BTreeSet<u64>,
    /// Every `ReadIndexReady`, per node.
    reads: Vec<(NodeId, ReadId, Result<LogIndex, ReadIndexRefusal>)>,
    /// The drivers' clock (`Engine::set_now`): one tick interval passes with each tick.
    now: std::time::Duration,
    /// Nodes whose state machine is slow to restore: from a `Restore` on, their apply-path
    /// actions wait here (in order).
    held_restores: BTreeMap<NodeId, Vec<Action>>,
}

/// A test node's configuration and the voters its engine starts with while its log holds no
/// membership. (Nodes bootstrap through a membership entry written to their store; the engine's
/// tests start from this implicit membership instead, so that the first leader's entries are at
/// index 1.)
#[derive(Clone, Debug)]
struct NodeConfig {
    config: Config,
    voters: Vec<NodeId>,
}

impl NodeConfig {
    fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Self {
        Self { config: Config::new(id), voters: voters.into_iter().collect() }
    }

    /// A node without members, waiting to join.
    fn joining(id: NodeId) -> Self {
        Self::new(id, [])
    }

    fn membership(&self) -> Membership {
        Membership::with_voters(self.voters.iter().copied())
    }

    /// An engine without snapshots (as `Engine::new`).
    fn engine(self, durable: &DurableState, entries: Vec<Entry>) -> Engine {
        let initial = self.membership();
        Engine::build(self.config, durable, entries, false, None, initial)
    }

    /// An engine with snapshots (as `Engine::with_snapshots`).
    fn engine_with_snapshots(
        self,
        durable: &DurableState,
        entries: Vec<Entry>,
        snapshot: Option<SnapshotMeta>,
    ) -> Engine {
        let initial = self.membership();
        Engine::build(self.config, durable, entries, true, snapshot, initial)
    }
}

impl std::ops::Deref for NodeConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl std::ops::DerefMut for NodeConfig {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.config
    }
}

fn config(id: NodeId, n: u64) -> NodeConfig {
    let mut c = NodeConfig::new(id, 1..=n);
    c.random_seed = id * 7919;
    c
}

impl Cluster {
    fn new(n: u64) -> Self {
        Self::with_configs((1..=n).map(|id| config(id, n)).collect())
    }

    fn with_configs(configs: Vec<NodeConfig>) -> Self {
        let mut cluster = Self {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            deaf: BTreeSet::new(),
            groups: Vec::new(),
            links_down: BTreeSet::new(),
            replies: BTreeMap::new(),
            next_reply: 0,
            log: Vec::new(),
            drop_chunks: BTreeSet::new(),
            reads: Vec::new(),
            now: std::time::Duration::ZERO,
            held_restores: BTreeMap::new(),
        };
        for config in configs {
            cluster.add_node(config);
        }
        cluster
    }

    /// Adds a node that starts empty with `config`.
    fn add_node(&mut self, config: NodeConfig) {
        let id = config.id;
        let engine =
            config.clone().engine_with_snapshots(&DurableState::default(), Vec::new(), None);
        let node = Node {
            config,
            engine,
            durable_hard_state: HardState::default(),
            durable_log: Vec::new(),
            applied: Vec::new(),
            snapshot: None,
            receiving: Vec::new(),
        };
        self.nodes.insert(id, node);
    }

    /// Replaces a node's engine by `engine`, started from a store holding `hard_state` and `log`
    /// (a restart).
    fn restart(&mut self, engine: Engine, hard_state: HardState, log: Vec<Entry>) {
        let node = self.nodes.get_mut(&engine.id()).unwrap();
        node.engine = engine;
        node.durable_hard_state = hard_state;
        node.durable_log = log;
    }

    fn engine(&mut self, id: NodeId) -> &mut Engine {
        &mut self.nodes.get_mut(&id).unwrap().engine
    }

    /// Runs node `id`'s actions.
    fn drain(&mut self, id: NodeId) {
        loop {
            let actions = self.engine(id).take_actions();
            if actions.is_empty() {
                return;
            }
            self.run(id, actions);
        }
    }

    fn run(&mut self, id: NodeId, actions: Vec<Action>) {
        // What the store held before these actions: a message that does not wait for the
        // writes emitted before it leaves while they may still be in flight.
        let durable_before = self.nodes[&id].durable_hard_state.current_term;
        for action in actions {
            self.check_term_durable(id, &action, durable_before);
            self.log.push((id, action.clone()));
            match action {
                Action::Restore(_) | Action::Apply(_) | Action::TakeSnapshot { .. }
                    if self.held_restores.get(&id).is_some_and(|held| {
                        !held.is_empty() || matches!(action, Action::Restore(_))
                    }) =>
                {
                    self.held_restores.entry(id).or_default().push(action);
                }
                Action::Persist(batch) => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    if let Some(hs) = batch.hard_state {
                        node.durable_hard_state = hs;
                    }
                    if let Some(cut) = batch.truncate_from {
                        node.durable_log.retain(|e| e.index < cut);
                    }
                    let written = PersistedWrite::of(&batch);
                    node.durable_log.extend(batch.entries);
                    node.engine.on_persisted(written);
                }
                Action::Send { to, mut request, .. } => {
                    if let RpcRequest::InstallSnapshot(req) = &mut request {
                        // The driver's job: fill the chunk from the snapshot store.
                        let (_, data, _) = self.nodes[&id].snapshot.as_ref().unwrap();
                        let chunk = self.nodes[&id].engine.config.snapshot_chunk_bytes;
                        let len = crate::snapshot_meta::chunk_len(req.meta.size, req.offset, chunk);
                        let start = req.offset as usize;
                        req.data = Bytes::copy_from_slice(&data[start..start + len as usize]);
                        if self.drop_chunks.remove(&req.offset) {
                            self.queue.push_back(Msg::Lost { from: id, to, request });
                            continue;
                        }
                    }
                    self.queue.push_back(Msg::Request { from: id, to, request })
                }
                Action::Respond { reply_to, response, .. } => {
                    let (to, sent) = self.replies.remove(&reply_to.0).unwrap();
                    self.queue.push_back(Msg::Response { from: id, to, sent, response });
                }
                Action::Apply(entries) => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    let last = entries.last().unwrap().index;
                    node.applied.extend(entries);
                    node.engine.on_applied(last);
                }
                Action::TakeSnapshot { last_included, membership } => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    assert_eq!(node.applied.last().unwrap().log_id(), last_included);
                    let data: Vec<u8> = node
                        .applied
                        .iter()
                        .flat_map(|e| {
                            e.index
                                .to_le_bytes()
                                .into_iter()
                                .chain(e.command().cloned().unwrap_or_default())
                        })
                        .collect();
                    let meta = SnapshotMeta {
                        last_included,
                        membership,
                        size: data.len() as u64,
                        checksum: crate::snapshot_meta::Checksum::of(&data),
                    };
                    node.snapshot = Some((meta.clone(), data, node.applied.clone()));
                    node.engine.on_snapshot_taken(meta);
                }
                Action::CompactLog { up_to } => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    assert!(node.snapshot.as_ref().unwrap().0.last_included.index >= up_to);
                    node.durable_log.retain(|e| e.index > up_to);
                }
                Action::WriteSnapshotChunk { offset, data, .. } => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    if offset == 0 {
                        node.receiving.clear();
                    }
                    assert_eq!(node.receiving.len() as u64, offset);
                    node.receiving.extend_from_slice(&data);
                }
                Action::InstallSnapshot(meta) => {
                    let entries = self
                        .nodes
                        .values()
                        .find_map(|n| n.snapshot.as_ref().filter(|s| s.0 == meta))
                        .map(|s| s.2.clone())
                        .unwrap();
                    let node = self.nodes.get_mut(&id).unwrap();
                    let data = std::mem::take(&mut node.receiving);
                    assert_eq!(crate::snapshot_meta::Checksum::of(&data), meta.checksum);
                    node.snapshot = Some((meta.clone(), data, entries));
                    node.durable_log.clear();
                    node.engine.on_snapshot_installed(meta.last_included);
                }
                Action::ReadIndexReady { id: read, result } => self.reads.push((id, read, result)),
                Action::Restore(meta) => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    let (stored, _, entries) = node.snapshot.clone().unwrap();
                    assert_eq!(stored, meta, "restores the durable snapshot");
                    node.applied = entries;
                    node.engine.on_applied(meta.last_included.index);
                }
            }
        }
    }

    /// A new term is durable before any message of it leaves the node: checked for every message
    /// of every test (a pre-vote's term is only prospective).
    fn check_term_durable(&self, id: NodeId, action: &Action, durable_before: Term) {
        let (term, after_persist) = match action {
            Action::Send { request: RpcRequest::RequestVote(r), .. } if r.pre_vote => return,
            Action::Respond { response: RpcResponse::RequestVote(r), .. } if r.pre_vote => return,
            Action::Send { request, after_persist, .. } => (request.term(), *after_persist),
            Action::Respond { response, after_persist, .. } => (response.term(), *after_persist),
            _ => return,
        };
        let durable = if after_persist {
            self.nodes[&id].durable_hard_state.current_term
        } else {
            durable_before
        };
        assert!(
            term <= durable,
            "node {id} emitted a message of term {term} that may leave before the term is durable \
             (durable: {durable}, after_persist: {after_persist}): {action:?}"
        );
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.groups.iter().any(|g| g.contains(&a) != g.contains(&b))
            || self.links_down.contains(&(a.min(b), a.max(b)))
            || self.isolated.contains(&a)
            || self.isolated.contains(&b)
            || !self.nodes.contains_key(&a)
            || !self.nodes.contains_key(&b)
    }

    /// Delivers queued messages until the network is quiet.
    fn settle(&mut self) {
        self.drain_all();
        let mut steps = 0;
        while self.deliver_one() {
            steps += 1;
            assert!(steps < 100_000, "cluster did not settle");
        }
    }

    /// Runs every node's actions.
    fn drain_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.drain(*id);
        }
    }

    /// Delivers the oldest queued message, if any (and runs the actions it causes).
    fn deliver_one(&mut self) -> bool {
        let Some(msg) = self.queue.pop_front() else { return false };
        match msg {
            Msg::Request { from, to, request } => {
                let sent = SentRequest::of(&request);
                if self.cut(from, to) || self.deaf.contains(&to) {
                    self.engine(from).on_unreachable(to, sent);
                    self.drain(from);
                    return true;
                }
                let reply = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(reply, (from, sent));
                self.engine(to).on_request(request, ReplyId(reply));
                self.drain(to);
            }
            Msg::Lost { from, to, request } => {
                self.engine(from).on_unreachable(to, SentRequest::of(&request));
                self.drain(from);
            }
            Msg::Response { from, to, sent, response } => {
                if self.cut(from, to) || self.deaf.contains(&to) {
                    self.engine(to).on_unreachable(from, sent);
                } else {
                    self.engine(to).on_response(from, sent, response);
                }
                self.drain(to);
            }
        }
        true
    }

    /// Ticks every node `n` times, settling after each tick; a tick interval passes before each.
    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let interval = self.nodes[&id].engine.config.tick_interval;
                let now = self.now + interval;
                self.engine(id).set_now(now);
                self.engine(id).tick();
            }
            let interval = self.nodes.values().map(|n| n.engine.config.tick_interval).max();
            self.now += interval.unwrap_or_default();
            self.settle();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, n)| n.engine.role() == Role::Leader && !self.isolated.contains(id))
            .map(|(id, _)| *id)
            .collect()
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..200 {
            self.tick(1);
            if let [leader] = self.leaders()[..] {
                return leader;
            }
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, leader: NodeId, data: &'static [u8]) -> LogId {
        let id = self.engine(leader).propose(Bytes::from_static(data)).unwrap();
        self.settle();
        id
    }
}

/// A quiesce-marked heartbeat (see `engine/quiesce.rs`).
fn quiesce_mark(
    term: Term,
    leader_id: NodeId,
    prev_log_id: LogId,
    leader_commit: LogIndex,
) -> RpcRequest {
    RpcRequest::AppendEntries(AppendEntriesRequest {
        term,
        leader_id,
        prev_log_id,
        entries: Vec::new(),
        leader_commit,
        read_round: 0,
        quiesce: true,
    })
}

fn commands(entries: &[Entry]) -> Vec<Bytes> {
    entries.iter().filter_map(|e| e.command().cloned()).collect()
}

#[test]
fn single_node_elects_itself_and_commits() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    assert_eq!(leader, 1);
    c.propose(1, b"x");
    assert_eq!(commands(&c.nodes[&1].applied), vec![Bytes::from_static(b"x")]);
    assert_eq!(c.nodes[&1].engine.commit_index(), 2, "blank entry + command");
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let term = c.nodes[&leader].engine.hard_state().current_term;
    for n in c.nodes.values() {
        assert_eq!(n.engine.hard_state().current_term, term);
    }
    c.propose(leader, b"a");
    c.propose(leader, b"b");
    c.tick(10); // heartbeats carry the commit index to followers
    for n in c.nodes.values() {
        assert_eq!(commands(&n.applied), vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
    }
}

#[test]
fn pre_vote_does_not_raise_terms_of_an_isolated_node() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let term = c.nodes[&leader].engine.hard_state().current_term;
    c.isolated.insert(follower);
    c.tick(500);
    assert_eq!(
        c.nodes[&follower].engine.hard_state().current_term,
        term,
        "pre-votes failed, term unchanged"
    );
    c.isolated.clear();
    c.tick(20);
    assert_eq!(c.leaders(), vec![leader], "the rejoining node did not disrupt the leader");
    assert_eq!(c.nodes[&leader].engine.hard_state().current_term, term);
}

#[test]
fn vote_is_persisted_before_the_response() {
    let mut c = Cluster::new(3);
    c.elect();
    for (i, (id, action)) in c.log.iter().enumerate() {
        if let Action::Respond { response: RpcResponse::RequestVote(r), after_persist, .. } = action
        {
            if r.vote_granted && !r.pre_vote {
                assert!(after_persist);
                let persisted = c.log[..i].iter().rev().take_while(|(other, _)| other == id).any(|(_, a)| {
                    matches!(a, Action::Persist(b) if b.hard_state.map(|h| h.voted_for.is_some()) == Some(true))
                });
                assert!(persisted, "vote granted by {id} without a preceding Persist of the vote");
            }
        }
        if let Action::Send { request: RpcRequest::RequestVote(r), after_persist, .. } = action {
            assert!(*after_persist, "RequestVote must wait for the term to be durable");
            let _ = r;
        }
    }
}

#[test]
fn leader_without_quorum_steps_down_and_minority_cannot_commit() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let others: Vec<NodeId> = c.nodes.keys().copied().filter(|&id| id != leader).collect();
    c.isolated.extend(others.iter().copied());
    let before = c.nodes[&leader].engine.commit_index();
    let _ = c.engine(leader).propose(Bytes::from_static(b"lost"));
    c.settle();
    assert_eq!(c.nodes[&leader].engine.commit_index(), before, "no commit without a majority");
    c.tick(100);
    assert_ne!(c.nodes[&leader].engine.role(), Role::Leader, "CheckQuorum stepped the leader down");
}

#[test]
fn follower_rejects_with_conflict_hint_and_leader_backtracks_by_term() {
    // Node 1 is leader of term 3 with log [1,1,1,3,3]; node 2 holds [1,1,1,2,2,2,2] (diverged).
    let mut c = Cluster::new(2);
    let mk = |terms: &[Term]| -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry { index: i as u64 + 1, term: t, payload: EntryPayload::Blank })
            .collect()
    };
    let leader_log = mk(&[1, 1, 1, 3, 3]);
    let follower_log = mk(&[1, 1, 1, 2, 2, 2, 2]);
    for (id, log, term) in [(1, leader_log, 3), (2, follower_log, 2)] {
        let durable = DurableState {
            hard_state: HardState { current_term: term, voted_for: None },
            purged: LogId::default(),
            last: log.last().unwrap().log_id(),
        };
        c.restart(config(id, 2).engine(&durable, log.clone()), durable.hard_state, log);
    }
    // Node 2's log is longer but older: it cannot win; node 1 wins and repairs node 2.
    let leader = c.elect();
    assert_eq!(leader, 1);
    c.tick(10);
    let appends = c
        .log
        .iter()
        .filter(|(id, a)| *id == 1 && matches!(a, Action::Send { request: RpcRequest::AppendEntries(r), .. } if !r.entries.is_empty()))
        .count();
    assert!(appends <= 3, "fast backtracking: {appends} AppendEntries with entries");
    let l: Vec<LogId> = c.nodes[&1].durable_log.iter().map(Entry::log_id).collect();
    let f: Vec<LogId> = c.nodes[&2].durable_log.iter().map(Entry::log_id).collect();
    assert_eq!(l, f, "follower log repaired to the leader's");
    assert_eq!(c.nodes[&2].engine.commit_index(), c.nodes[&1].engine.commit_index());
}

#[test]
fn leader_commits_old_entries_only_through_an_entry_of_its_term() {
    // Figure 8: an entry of term 2 on a majority must not commit by counting alone.
    let mut c = Cluster::new(3);
    let old = vec![Entry {
        index: 1,
        term: 2,
        payload: EntryPayload::Command(Bytes::from_static(b"old")),
    }];
    for id in 1..=3 {
        let log = if id <= 2 { old.clone() } else { Vec::new() };
        let durable = DurableState {
            hard_state: HardState { current_term: 2, voted_for: None },
            purged: LogId::default(),
            last: log.last().map_or(LogId::default(), Entry::log_id),
        };
        c.restart(config(id, 3).engine(&durable, log.clone()), durable.hard_state, log);
    }
    // Force node 1 to be leader of term 3 without letting it replicate its blank entry.
    c.isolated.insert(3);
    c.engine(1).campaign(false, false);
    c.drain(1);
    // Deliver only the vote request/response.
    let mut blank_sent = false;
    while let Some(msg) = c.queue.pop_front() {
        match msg {
            Msg::Request { from, to, request }
                if to == 2 && matches!(request, RpcRequest::RequestVote(_)) =>
            {
                let reply = c.next_reply;
                c.next_reply += 1;
                c.replies.insert(reply, (from, SentRequest::of(&request)));
                c.engine(2).on_request(request, ReplyId(reply));
                c.drain(2);
            }
            Msg::Response { from, to, sent, response } => {
                c.engine(to).on_response(from, sent, response);
                c.drain(to);
            }
            Msg::Request { request: RpcRequest::AppendEntries(_), .. } => blank_sent = true,
            Msg::Request { .. } | Msg::Lost { .. } => {}
        }
    }
    assert!(blank_sent);
    assert_eq!(c.nodes[&1].engine.role(), Role::Leader);
    // Entry 1 (term 2) is on nodes 1 and 2, a majority, yet not committed: the blank entry of
    // term 3 has not reached node 2.
    assert_eq!(c.nodes[&1].engine.commit_index(), 0);
    c.isolated.clear();
    c.tick(10);
    assert_eq!(c.nodes[&1].engine.commit_index(), 2, "committed through the term-3 entry");
}

#[test]
fn restarted_node_does_not_vote_twice_in_a_term() {
    let mut c = Cluster::new(3);
    c.elect();
    let voter = *c.nodes.iter().find(|(_, n)| n.engine.role() == Role::Follower).unwrap().0;
    let hs = c.nodes[&voter].durable_hard_state;
    assert!(hs.voted_for.is_some());
    // Restart from the durable state only.
    let durable = DurableState {
        hard_state: hs,
        purged: LogId::default(),
        last: c.nodes[&voter].durable_log.last().unwrap().log_id(),
    };
    let mut engine = config(voter, 3).engine(&durable, c.nodes[&voter].durable_log.clone());
    let other = (1..=3).find(|&id| Some(id) != hs.voted_for && id != voter).unwrap();
    engine.on_request(
        RpcRequest::RequestVote(RequestVoteRequest {
            term: hs.current_term,
            candidate_id: other,
            last_log_id: LogId::new(hs.current_term, 100),
            pre_vote: false,
            leadership_transfer: false,
        }),
        ReplyId(0),
    );
    let granted = engine.take_actions().into_iter().any(|a| {
        matches!(a, Action::Respond { response: RpcResponse::RequestVote(r), .. } if r.vote_granted)
    });
    assert!(!granted, "voted twice in term {}", hs.current_term);
}

#[test]
fn pipelining_is_bounded_by_the_inflight_window() {
    let mut configs: Vec<NodeConfig> = (1..=2).map(|id| config(id, 2)).collect();
    for c in &mut configs {
        c.max_append_entries = 1;
        c.max_inflight_append_entries = 3;
    }
    let mut c = Cluster::with_configs(configs);
    let leader = c.elect();
    c.settle();
    for _ in 0..10 {
        c.engine(leader).propose(Bytes::from_static(b"p")).unwrap();
    }
    let actions = c.engine(leader).take_actions();
    let sends = actions.iter().filter(|a| matches!(a, Action::Send { .. })).count();
    assert_eq!(sends, 3, "at most 3 AppendEntries in flight");
    let persists = actions.iter().filter(|a| matches!(a, Action::Persist(_))).count();
    assert_eq!(persists, 1, "ten proposals, one write (group commit)");
}

fn snapshot_configs(n: u64) -> Vec<NodeConfig> {
    (1..=n)
        .map(|id| {
            let mut c = config(id, n);
            c.snapshot_interval_entries = 5;
            c.snapshot_keep_entries = 0;
            c.snapshot_chunk_bytes = 16;
            c.snapshot_max_inflight_chunks = 2;
            c
        })
        .collect()
}

fn snapshot_sends(c: &Cluster, from: NodeId) -> Vec<(u64, usize, bool)> {
    c.log
        .iter()
        .filter_map(|(id, a)| match a {
            Action::Send { request: RpcRequest::InstallSnapshot(r), .. } if *id == from => {
                Some((r.offset, r.data.len(), r.done))
            }
            _ => None,
        })
        .collect()
}

/// Isolates a follower, writes enough for the leader to snapshot and compact, reconnects it.
fn lagging_follower(c: &mut Cluster) -> (NodeId, NodeId) {
    let leader = c.elect();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    c.isolated.insert(follower);
    for _ in 0..20 {
        c.propose(leader, b"0123456789");
    }
    c.tick(5);
    let compacted = c.nodes[&leader].engine.log.compacted().index;
    assert!(compacted >= 15, "the leader compacted its log (up to {compacted})");
    assert!(c.nodes[&leader].durable_log.first().unwrap().index > compacted);
    c.isolated.clear();
    (leader, follower)
}

#[test]
fn lagging_follower_installs_the_snapshot_in_chunks_then_gets_entries() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let (leader, follower) = lagging_follower(&mut c);
    c.tick(20);
    c.propose(leader, b"after");
    c.tick(5);
    let sends = snapshot_sends(&c, leader);
    assert!(sends.len() > 4, "a multi-chunk transfer: {sends:?}");
    assert!(sends.iter().all(|&(_, len, _)| len <= 16), "chunks are bounded");
    let leader_applied = commands(&c.nodes[&leader].applied);
    assert_eq!(commands(&c.nodes[&follower].applied), leader_applied);
    assert_eq!(leader_applied.last().unwrap(), &Bytes::from_static(b"after"));
    let installed = c.nodes[&follower].snapshot.as_ref().unwrap().0.last_included;
    assert!(installed.index >= 15);
    // Persistence ordering: the follower said "complete" only after the InstallSnapshot action.
    let position = |pred: &dyn Fn(&Action) -> bool| {
        c.log.iter().position(|(id, a)| *id == follower && pred(a)).unwrap()
    };
    let install = position(&|a| matches!(a, Action::InstallSnapshot(_)));
    let complete = position(
        &|a| matches!(a, Action::Respond { response: RpcResponse::InstallSnapshot(r), after_persist: true, .. } if r.complete),
    );
    let restore = position(&|a| matches!(a, Action::Restore(_)));
    assert!(install < complete, "acknowledged only after the install");
    assert!(install < restore, "restored through the apply path after the install");
    let first_apply_after = c.log[restore..]
        .iter()
        .find_map(|(id, a)| match a {
            Action::Apply(e) if *id == follower => Some(e[0].index),
            _ => None,
        })
        .unwrap();
    assert_eq!(first_apply_after, installed.index + 1, "entries continue after the snapshot");
}

#[test]
fn a_lost_chunk_resumes_where_the_follower_is() {
    let mut c = Cluster::with_configs(snapshot_configs(3));
    let (leader, follower) = lagging_follower(&mut c);
    let before = snapshot_sends(&c, leader).len();
    c.drop_chunks.insert(32);
    c.tick(30);
    assert_eq!(commands(&c.nodes[&follower].applied), commands(&c.nodes[&leader].applied));
    let offsets: Vec<u64> = snapshot_sends(&c, leader)[before..].iter().map(|s| s.0).collect();
    let lost = offsets.iter().position(|&o| o == 32).unwrap();
    assert!(offsets[lost + 1..].contains(&32), "the lost chunk was sent again: {offsets:?}");
    assert_eq!(
        offsets.iter().filter(|&&o| o == 0).count(),
        1,
        "never restarted from 0: {offsets:?}"
    );
}

#[test]
fn restart_from_a_snapshot_never_applies_covered_entries() {
    let mut c = Cluster::with_configs(snapshot_configs(1));
    let leader = c.elect();
    for _ in 0..12 {
        c.propose(leader, b"x");
    }
    let node = &c.nodes[&leader];
    let (meta, _, _) = node.snapshot.clone().unwrap();
    let durable = DurableState {
        hard_state: node.durable_hard_state,
        purged: LogId::new(1, node.durable_log[0].index - 1),
        last: node.durable_log.last().unwrap().log_id(),
    };
    let mut engine = snapshot_configs(1).remove(0).engine_with_snapshots(
        &durable,
        node.durable_log.clone(),
        Some(meta.clone()),
    );
    assert_eq!(engine.status().applied_index, meta.last_included.index);
    assert_eq!(engine.commit_index(), meta.last_included.index);
    for _ in 0..200 {
        engine.tick();
        for action in engine.take_actions() {
            if let Action::Apply(entries) = action {
                assert!(entries[0].index > meta.last_included.index, "re-applied {entries:?}");
            }
        }
    }
    assert_eq!(engine.role(), Role::Leader);
}

mod counters;
mod durability;
mod elections;
mod hostile;
mod joint;
mod membership;
mod quiesce;
mod reads;
mod snapshot_failures;
mod snapshot_restore;

/// Write batches (review L2 of perf6): a leader's next write starts with room for as many
/// entries as its last; a follower reserves nothing (its write is the vector its request
/// arrived in), and a request mostly stored already does not keep its whole allocation.
#[test]
fn only_a_leader_reserves_room_for_its_next_write() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    for _ in 0..10 {
        c.engine(leader).propose(Bytes::from_static(b"x")).unwrap();
    }
    let actions = c.engine(leader).take_actions();
    let written = actions.iter().find_map(|a| match a {
        Action::Persist(batch) => Some(batch.entries.len()),
        _ => None,
    });
    assert_eq!(written, Some(10));
    c.run(leader, actions);
    assert_eq!(c.engine(leader).pending_write.entries.capacity(), 0, "nothing reserved yet");
    c.engine(leader).propose(Bytes::from_static(b"y")).unwrap();
    assert!(c.engine(leader).pending_write.entries.capacity() >= 10, "room for as many");
    c.settle();
    assert_eq!(c.engine(follower).pending_write.entries.capacity(), 0, "a follower reserves none");

    // Eight entries of which the first seven are stored already: the write keeps the new one
    // and not the request's allocation.
    let written = write_of_seven_stored_and_one_new(c.engine(follower), leader);
    assert_eq!(written.len(), 1);
    assert!(written.capacity() < 8, "{}", written.capacity());
}

/// The log write of a follower `engine` for an AppendEntries from `leader` of eight entries:
/// its last seven and a new one.
fn write_of_seven_stored_and_one_new(engine: &mut Engine, leader: NodeId) -> Vec<Entry> {
    let last = engine.last_log_id();
    let term = engine.hard_state().current_term;
    let first = last.index - 6;
    let mut entries = Vec::with_capacity(8);
    entries.extend(engine.log.slice(first, 7, u64::MAX));
    entries.push(Entry { index: last.index + 1, term, payload: EntryPayload::Blank });
    let request = AppendEntriesRequest {
        term,
        leader_id: leader,
        prev_log_id: LogId::new(engine.term_at(first - 1).unwrap(), first - 1),
        entries,
        leader_commit: engine.commit_index(),
        read_round: 0,
        quiesce: false,
    };
    engine.on_request(RpcRequest::AppendEntries(request), ReplyId(1_000_001));
    let written = engine.take_actions().into_iter().find_map(|a| match a {
        Action::Persist(batch) => Some(batch.entries),
        _ => None,
    });
    written.unwrap()
}

/// A request whose first entries the follower has committed already (a duplicate or a
/// delayed AppendEntries) does not keep its allocation for the few entries it adds either
/// (review LOW-1 of perf6: only a stored, uncommitted prefix was shrunk).
#[test]
fn a_request_mostly_committed_already_is_shrunk() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    for _ in 0..10 {
        c.engine(leader).propose(Bytes::from_static(b"x")).unwrap();
    }
    c.settle();
    let leader_commit = c.engine(leader).commit_index();
    let engine = c.engine(follower);
    let last = engine.last_log_id();
    let term = engine.hard_state().current_term;
    assert_eq!(leader_commit, last.index, "the leader committed everything");
    // A heartbeat brings the follower's commit point to its last entry.
    let heartbeat = AppendEntriesRequest {
        term,
        leader_id: leader,
        prev_log_id: last,
        entries: Vec::new(),
        leader_commit,
        read_round: 0,
        quiesce: false,
    };
    engine.on_request(RpcRequest::AppendEntries(heartbeat), ReplyId(1_000_000));
    engine.take_actions();
    assert_eq!(engine.commit_index(), last.index);

    // Eight entries of which the first seven are committed: the write keeps the new one and
    // not the request's allocation.
    let written = write_of_seven_stored_and_one_new(engine, leader);
    assert_eq!(written.len(), 1);
    assert!(written.capacity() < 8, "kept capacity {}", written.capacity());
}
