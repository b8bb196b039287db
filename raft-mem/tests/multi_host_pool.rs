//! `multi_host.rs`'s scenario with every process's groups on a [`TaskPool`] (issue 21 item 7,
//! step 1 of the host-level loop), under tokio and smol: 3 hosts on one `MemNetwork`, 4 groups
//! each, a pool of 2 drivers per host. Every group commits and reads; group 2's state machine
//! panics on a command and group 2 stops alone (the node's own supervision, inside the pool's
//! futures); a third-party future that panics on a pool is dropped and counted, and the groups
//! of its driver go on; once the hosts are shut down and every handle is dropped, the drivers
//! end. (`multi_host.rs`'s helpers are private to that file, so the few needed are here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::multi::GroupHealth;
use raft_core::runtime::TaskPool;
use raft_core::{
    Bytes, Entry, FatalError, GroupId, Host, Membership, Node, NodeId, Role, Runtime, StateMachine,
    StateMachineError,
};
use raft_mem::harness::{test_config, RecordingStateMachine};
use raft_mem::{MemLogStore, MemNetwork, MemSnapshotStore};
use support::within;

mod support;

const HOSTS: [NodeId; 3] = [1, 2, 3];
const GROUPS: [GroupId; 4] = [1, 2, 3, 4];
/// Drivers of each host's pool.
const DRIVERS: usize = 2;

/// A recording state machine that panics on the command `poison`.
#[derive(Clone, Default)]
struct Poisonable(RecordingStateMachine);

#[async_trait]
impl StateMachine for Poisonable {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        if entries.iter().any(|e| e.command().is_some_and(|c| c.as_ref() == b"poison")) {
            panic!("poisoned command");
        }
        self.0.apply(entries).await
    }
}

/// The inner runtime, counting the tasks spawned on it that are still alive (the drivers).
#[derive(Clone)]
struct Counted<R> {
    inner: R,
    alive: Arc<AtomicUsize>,
}

/// Counts a task alive until it is dropped.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<R: Runtime> Runtime for Counted<R> {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.alive.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.alive.clone());
        self.inner.spawn(
            async move {
                future.await;
                drop(alive);
            }
            .boxed(),
        );
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
    fn now(&self) -> Duration {
        self.inner.now()
    }
}

/// Three hosts, each with its pool, its groups on the pool's drivers.
struct Hosts {
    hosts: BTreeMap<NodeId, Host>,
    pools: BTreeMap<NodeId, TaskPool>,
    records: BTreeMap<(NodeId, GroupId), RecordingStateMachine>,
}

impl Hosts {
    async fn start<R: Runtime + Clone>(rt: &R) -> Self {
        let network = MemNetwork::new();
        let (mut hosts, mut pools, mut records) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for id in HOSTS {
            let host = Host::new(id);
            network.serve(id, Arc::new(host.clone()));
            let endpoint = network.endpoint(id);
            let pool = TaskPool::new(rt.clone(), DRIVERS);
            for group in GROUPS {
                let state_machine = Poisonable::default();
                records.insert((id, group), state_machine.0.clone());
                let builder = Node::builder(
                    test_config(id),
                    MemLogStore::new(),
                    endpoint.clone(),
                    state_machine,
                    pool.runtime_for(group),
                )
                .snapshot_store(MemSnapshotStore::new())
                .bootstrap(Membership::with_voters(HOSTS));
                host.add_group(group, builder).await.unwrap();
            }
            hosts.insert(id, host);
            pools.insert(id, pool);
        }
        Self { hosts, pools, records }
    }

    fn node(&self, id: NodeId, group: GroupId) -> Node {
        self.hosts[&id].group(group).unwrap()
    }

    /// Writes `command` to `group` through its leader (retrying while leadership moves), and
    /// waits until every host applied it.
    async fn write<R: Runtime>(&self, rt: &R, group: GroupId, command: &'static [u8]) {
        within(rt, "a write", async {
            loop {
                let leader = HOSTS
                    .into_iter()
                    .find(|&id| self.node(id, group).status().role == Role::Leader);
                if let Some(leader) = leader {
                    let node = self.node(leader, group);
                    if let Ok(answer) = node.write(Bytes::from_static(command)).await {
                        assert_eq!(answer.as_ref(), command);
                        return;
                    }
                }
                rt.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        within(rt, "the command applied on every host", async {
            while !HOSTS.iter().all(|&id| {
                self.records[&(id, group)].commands().iter().any(|(_, c)| c.as_ref() == command)
            }) {
                rt.sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// A linearizable read of `group` answers on every host.
    async fn read_everywhere<R: Runtime>(&self, rt: &R, group: GroupId) {
        for id in HOSTS {
            let node = self.node(id, group);
            within(rt, "a read", async {
                while node.read_index().await.is_err() {
                    rt.sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
    }
}

/// A future that panics, without the supervision the node's own tasks have.
async fn third_party_panic() {
    std::panic::resume_unwind(Box::new("third party"))
}

async fn groups_on_pools_fail_alone_and_the_drivers_end<R: Runtime + Clone>(rt: R) {
    let alive = Arc::new(AtomicUsize::new(0));
    let counted = Counted { inner: rt.clone(), alive: alive.clone() };
    let hosts = Hosts::start(&counted).await;
    assert_eq!(alive.load(Ordering::SeqCst), HOSTS.len() * DRIVERS, "only the drivers are tasks");
    for group in GROUPS {
        hosts.write(&rt, group, b"before").await;
    }

    // A third-party future that panics on host 1's driver of groups 1 and 3 (1 % 2 == 1).
    let pool = hosts.pools[&1].clone();
    pool.runtime(1).spawn(third_party_panic().boxed());
    within(&rt, "the panic counted", async {
        while pool.panics() == 0 {
            rt.sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(pool.panics(), 1);

    // Group 2's state machine panics: group 2 stops on the hosts that apply the command.
    let leader = HOSTS.into_iter().find(|&id| hosts.node(id, 2).status().role == Role::Leader);
    if let Some(leader) = leader {
        let _ = hosts.node(leader, 2).write(Bytes::from_static(b"poison")).await;
    }
    within(&rt, "group 2 failing", async {
        while HOSTS.iter().all(|id| hosts.hosts[id].failed_groups().is_empty()) {
            rt.sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for id in HOSTS {
        for (group, error) in hosts.hosts[&id].failed_groups() {
            assert_eq!(group, 2);
            assert!(matches!(error, FatalError::Panicked { .. }), "{error}");
        }
        for info in hosts.hosts[&id].groups() {
            if info.id != 2 {
                assert!(matches!(info.health, GroupHealth::Running), "{info:?}");
            }
        }
    }
    // The panics were the node's own (caught by its supervisor), not the pool's.
    assert!(hosts.pools.values().map(TaskPool::panics).sum::<u64>() == 1);

    // The other groups, on the same drivers as group 2 and the third-party panic, go on.
    for group in [1, 3, 4] {
        hosts.write(&rt, group, b"after").await;
        hosts.read_everywhere(&rt, group).await;
    }

    for id in HOSTS {
        within(&rt, "host shutdown", hosts.hosts[&id].shutdown()).await;
    }
    drop(pool);
    drop(hosts);
    within(&rt, "the drivers ending", async {
        while alive.load(Ordering::SeqCst) > 0 {
            rt.sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

mod tokio_rt {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_on_pools_fail_alone_and_the_drivers_end() {
        let rt = raft_core::runtime::TokioRuntime::current().unwrap();
        super::groups_on_pools_fail_alone_and_the_drivers_end(rt).await;
    }
}

mod smol_rt {
    #[test]
    fn groups_on_pools_fail_alone_and_the_drivers_end() {
        smol::block_on(super::groups_on_pools_fail_alone_and_the_drivers_end(
            raft_core::runtime::SmolRuntime::global(),
        ));
    }
}
