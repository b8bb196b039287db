//! Health of a `kv-node` for supervisors and load balancers: whether it runs, whether it is in
//! a cluster with a leader, and how far behind it is. Served on the client port
//! ([`ClientRequest::Health`](super::protocol::ClientRequest::Health), `kv health`) and on the
//! metrics listener (`GET /health`, `GET /health/live`).
//!
//! * **Live** (liveness): the node's Raft core runs; it has not stopped on a fatal error (a
//!   failed disk, a panicking state machine). A node that is not live answers nothing but its
//!   status until it is restarted: restart it (after fixing the cause it reports).
//! * **Ready** (readiness): live, a member of the cluster (voter or learner), it knows a leader
//!   (or is the leader), and its state machine is at most `max_lag` entries behind the commit
//!   index it knows (`--health-max-lag`, default 1000). Send clients to ready nodes only. A
//!   node that lost touch with its leader (partitioned, no quorum) stops being ready within
//!   an election timeout; a node that just joined is ready once it caught up.
//!
//! "How far behind": `apply_lag` (commit index minus applied index) on every node, and on the
//! leader each follower's lag (the leader's last index minus the follower's match index).

use std::path::{Path, PathBuf};

use raft_core::{Node, NodeId, Role, Status};
use serde::{Deserialize, Serialize};

/// The default readiness bound on the apply lag, in entries.
pub const DEFAULT_MAX_LAG: u64 = 1000;

/// Below this many bytes available, a file system counts as full.
pub const FULL_BELOW_BYTES: u64 = 1 << 20;

/// How a node's health is judged.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// The readiness bound on the apply lag, in entries (`--health-max-lag`).
    pub max_lag: u64,
    /// The node's data directory: a fault report says whether its file system is full or
    /// read-only (a full disk often surfaces as an I/O error: LMDB reports a short write as
    /// `EIO`).
    pub data_dir: Option<PathBuf>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { max_lag: DEFAULT_MAX_LAG, data_dir: None }
    }
}

/// What the file system holding `dir` says now, if it explains a storage failure: it is
/// read-only, or full (less than [`FULL_BELOW_BYTES`] available).
pub fn file_system_trouble(dir: &Path) -> Option<String> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Some(format!("the file system of {} is read-only", dir.display()));
    }
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    (available < FULL_BELOW_BYTES).then(|| {
        format!("the file system of {} is full: {available} bytes available", dir.display())
    })
}

/// The fatal error `node` stopped on, with what its data directory's file system says (see
/// [`file_system_trouble`]); `None` while it runs.
pub fn fault_of(node: &Node, data_dir: Option<&Path>) -> Option<String> {
    let fault = node.fatal_error()?.to_string();
    Some(match data_dir.and_then(file_system_trouble) {
        Some(trouble) => format!("{fault}; {trouble}"),
        None => fault,
    })
}

/// How far one follower is behind the leader (leader only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerLag {
    /// The follower.
    pub id: NodeId,
    /// Whether it votes.
    pub voter: bool,
    /// The highest index known to be replicated to it.
    pub match_index: u64,
    /// The leader's last index minus `match_index`.
    pub lag: u64,
}

/// A node's health (see the module docs for what live and ready mean).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Its Raft status.
    pub status: Status,
    /// Whether it is a member (voter or learner) of the membership it knows.
    pub member: bool,
    /// Whether it votes.
    pub voter: bool,
    /// Commit index minus applied index.
    pub apply_lag: u64,
    /// The readiness bound on `apply_lag`.
    pub max_lag: u64,
    /// On the leader: every follower's lag.
    pub followers: Vec<FollowerLag>,
    /// Why the node stopped, if it did (then it is not live).
    pub fault: Option<String>,
    /// See the module docs.
    pub live: bool,
    /// See the module docs.
    pub ready: bool,
}

impl HealthReport {
    /// The health of `node` now, judged by `config`.
    pub async fn of(node: &Node, config: &HealthConfig) -> Self {
        let status = node.status();
        let membership = node.membership();
        let fault = fault_of(node, config.data_dir.as_deref());
        let followers = if status.role == Role::Leader && fault.is_none() {
            node.replication()
                .await
                .into_iter()
                .map(|p| FollowerLag {
                    id: p.id,
                    voter: p.voter,
                    match_index: p.match_index,
                    lag: status.last_log_index.saturating_sub(p.match_index),
                })
                .collect()
        } else {
            Vec::new()
        };
        Self::assess(status, &membership, followers, fault, config.max_lag)
    }

    /// Decides liveness and readiness from what the node reports.
    pub fn assess(
        status: Status,
        membership: &raft_core::Membership,
        followers: Vec<FollowerLag>,
        fault: Option<String>,
        max_lag: u64,
    ) -> Self {
        let voter = membership.is_voter(status.id);
        let member = membership.contains(status.id);
        let apply_lag = status.commit_index.saturating_sub(status.applied_index);
        let live = fault.is_none();
        let ready = live && member && status.leader_id.is_some() && apply_lag <= max_lag;
        Self { status, member, voter, apply_lag, max_lag, followers, fault, live, ready }
    }

    /// Why the node is not ready (`None`: it is).
    pub fn not_ready_because(&self) -> Option<String> {
        if let Some(fault) = &self.fault {
            return Some(format!("stopped: {fault}"));
        }
        if !self.member {
            return Some("not a member of the cluster (yet)".into());
        }
        if self.status.leader_id.is_none() {
            return Some("no leader known".into());
        }
        if self.apply_lag > self.max_lag {
            return Some(format!("{} entries behind its commit index", self.apply_lag));
        }
        None
    }

    /// A short summary: `ready`, or what is wrong.
    pub fn summary(&self) -> String {
        self.not_ready_because().unwrap_or_else(|| "ready".into())
    }

    /// The report as `key value` lines (the body of `GET /health`).
    pub fn to_text(&self) -> String {
        let s = &self.status;
        let leader = s.leader_id.map_or("none".to_owned(), |l| l.to_string());
        let mut out = format!(
            "ready {}\nlive {}\nstate {}\nnode {}\nrole {}\nterm {}\nleader {leader}\n\
             member {}\nvoter {}\ncommit_index {}\napplied_index {}\nlast_log_index {}\n\
             apply_lag {}\nmax_lag {}\n",
            self.ready,
            self.live,
            self.summary(),
            s.id,
            s.role,
            s.current_term,
            self.member,
            self.voter,
            s.commit_index,
            s.applied_index,
            s.last_log_index,
            self.apply_lag,
            self.max_lag,
        );
        for f in &self.followers {
            out += &format!("follower {} match_index {} lag {}\n", f.id, f.match_index, f.lag);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::Membership;

    fn status(leader: Option<NodeId>, commit: u64, applied: u64) -> Status {
        Status {
            id: 2,
            role: Role::Follower,
            current_term: 3,
            leader_id: leader,
            commit_index: commit,
            applied_index: applied,
            last_log_index: commit,
            quiesced: false,
        }
    }

    #[test]
    fn readiness_needs_membership_a_leader_and_a_small_lag() {
        let members = Membership::with_voters([1, 2, 3]);
        let assess = |s, m: &Membership, fault: Option<&str>| {
            HealthReport::assess(s, m, Vec::new(), fault.map(str::to_owned), 10)
        };
        let ok = assess(status(Some(1), 100, 95), &members, None);
        assert!(ok.live && ok.ready && ok.member && ok.voter, "{ok:?}");
        assert_eq!(ok.summary(), "ready");

        let no_leader = assess(status(None, 100, 100), &members, None);
        assert!(no_leader.live && !no_leader.ready);
        assert_eq!(no_leader.summary(), "no leader known");

        let behind = assess(status(Some(1), 100, 80), &members, None);
        assert!(!behind.ready);
        assert!(behind.summary().contains("20 entries behind"), "{}", behind.summary());

        let outsider = assess(status(Some(1), 100, 100), &Membership::with_voters([1]), None);
        assert!(!outsider.ready && !outsider.member);

        let failed = assess(status(Some(1), 100, 100), &members, Some("log store failed: EIO"));
        assert!(!failed.live && !failed.ready);
        assert!(failed.summary().contains("EIO"));
        assert!(failed.to_text().starts_with("ready false\nlive false\n"));
    }
}
