//! What a leader knows of one follower's log, and its replication window.

use std::collections::VecDeque;

use super::snapshot_send::TransferFailures;
use crate::snapshot_meta::SnapshotMeta;
use crate::types::LogIndex;

/// How the leader replicates to a follower (etcd's `StateProbe` / `StateReplicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicationMode {
    /// The follower's position is unknown: one AppendEntries at a time, moving `next_index`
    /// back with each rejection's conflict hint.
    Probe,
    /// The follower matches up to `match_index`: stream entries, up to the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted away: send it the snapshot in chunks
    /// (`Progress::transfer`), then resume AppendEntries after it.
    Snapshot,
}

/// An InstallSnapshot transfer to one follower: a window of chunks in flight, resumable at the
/// follower's `next_offset`.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) meta: SnapshotMeta,
    /// The next byte to send.
    pub(crate) next_offset: u64,
    /// How much the follower last said it holds.
    pub(crate) acked_offset: u64,
    /// Whether the last chunk was sent (and not rewound since).
    pub(crate) sent_last: bool,
    /// Chunks in flight: (offset, end).
    pub(crate) inflight: VecDeque<(u64, u64)>,
    /// Ticks since the follower last answered a chunk.
    pub(crate) idle_ticks: u64,
}

impl Transfer {
    pub(crate) fn new(meta: SnapshotMeta) -> Self {
        Self {
            meta,
            next_offset: 0,
            acked_offset: 0,
            sent_last: false,
            inflight: VecDeque::new(),
            idle_ticks: 0,
        }
    }

    /// Starts again from what the follower last said it holds.
    pub(crate) fn rewind(&mut self) {
        self.next_offset = self.acked_offset;
        self.sent_last = false;
        self.inflight.clear();
    }
}

/// The in-flight window: AppendEntries with entries sent but not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Inflight {
    /// (last index carried, bytes carried) per request, oldest first.
    requests: VecDeque<(LogIndex, u64)>,
    bytes: u64,
    max_requests: usize,
    max_bytes: u64,
}

impl Inflight {
    pub(crate) fn new(max_requests: usize, max_bytes: u64) -> Self {
        Self { requests: VecDeque::new(), bytes: 0, max_requests, max_bytes }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.requests.len() >= self.max_requests || self.bytes >= self.max_bytes
    }

    /// Bytes that may still be sent before the window is full (at least one entry is always
    /// allowed into an empty window).
    pub(crate) fn room_bytes(&self) -> u64 {
        self.max_bytes.saturating_sub(self.bytes)
    }

    pub(crate) fn add(&mut self, last_index: LogIndex, bytes: u64) {
        self.requests.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every request whose entries are all acknowledged (`last <= acked`).
    pub(crate) fn free_up_to(&mut self, acked: LogIndex) {
        while let Some(&(last, bytes)) = self.requests.front() {
            if last > acked {
                break;
            }
            self.requests.pop_front();
            self.bytes -= bytes;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.requests.clear();
        self.bytes = 0;
    }

    /// Whether no AppendEntries with entries is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }
}

/// The leader's view of one follower.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log (and be durable on the follower).
    pub(crate) match_index: LogIndex,
    /// Next index to send.
    pub(crate) next_index: LogIndex,
    pub(crate) mode: ReplicationMode,
    /// In `Probe`: an AppendEntries is outstanding, wait for its answer (or the next heartbeat).
    pub(crate) probe_sent: bool,
    pub(crate) inflight: Inflight,
    /// Heard from this follower since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Ticks since anything was last sent to this follower (heartbeats are due when idle).
    pub(crate) idle_ticks: u64,
    /// In `Snapshot` mode: the transfer.
    pub(crate) transfer: Option<Transfer>,
    /// Failed snapshot transfers to this follower, and the back-off they started.
    pub(crate) snapshot_failures: TransferFailures,
    /// The highest ReadIndex round this follower acknowledged.
    pub(crate) read_round_acked: u64,
    /// The `read_round` of the latest AppendEntries sent to this follower.
    pub(crate) read_round_sent: u64,
    /// Heartbeats (empty AppendEntries) sent and not yet answered or failed. A read round adds
    /// a heartbeat only while there is none, so reads never pile heartbeats up on a slow link.
    pub(crate) heartbeats_in_flight: u64,
    /// The `leader_commit` of the latest AppendEntries sent to this follower (quiescence waits
    /// until every follower was sent the commit index).
    pub(crate) commit_sent: LogIndex,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex, max_requests: usize, max_bytes: u64) -> Self {
        Self {
            match_index: 0,
            next_index,
            mode: ReplicationMode::Probe,
            probe_sent: false,
            inflight: Inflight::new(max_requests, max_bytes),
            recent_active: true,
            idle_ticks: 0,
            transfer: None,
            snapshot_failures: TransferFailures::default(),
            read_round_acked: 0,
            read_round_sent: 0,
            heartbeats_in_flight: 0,
            commit_sent: 0,
        }
    }

    /// Whether the leader may send entries now.
    pub(crate) fn can_send_entries(&self) -> bool {
        match self.mode {
            ReplicationMode::Probe => !self.probe_sent,
            ReplicationMode::Replicate => !self.inflight.is_full(),
            ReplicationMode::Snapshot => false,
        }
    }

    /// Records an AppendEntries sent with entries up to `last_index` (`bytes` of them).
    pub(crate) fn sent(&mut self, last_index: LogIndex, bytes: u64) {
        self.idle_ticks = 0;
        match self.mode {
            ReplicationMode::Probe => self.probe_sent = true,
            ReplicationMode::Replicate => {
                self.next_index = last_index + 1;
                self.inflight.add(last_index, bytes);
            }
            ReplicationMode::Snapshot => {}
        }
    }

    /// A success: the follower matches up to `index`. Returns whether `match_index` grew.
    pub(crate) fn acknowledged(&mut self, index: LogIndex) -> bool {
        self.probe_sent = false;
        self.inflight.free_up_to(index);
        let grew = index > self.match_index;
        if grew {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        if self.mode == ReplicationMode::Probe {
            self.mode = ReplicationMode::Replicate;
        }
        grew
    }

    /// Switches to sending `meta` (the follower needs entries before the compaction point).
    pub(crate) fn start_snapshot(&mut self, meta: SnapshotMeta) {
        self.mode = ReplicationMode::Snapshot;
        self.inflight.clear();
        self.probe_sent = false;
        self.transfer = Some(Transfer::new(meta));
    }

    /// The follower's state covers `index` (a snapshot was installed): resume AppendEntries
    /// after it.
    pub(crate) fn snapshot_done(&mut self, index: LogIndex) {
        self.transfer = None;
        self.match_index = self.match_index.max(index);
        self.next_index = self.match_index + 1;
        self.mode = ReplicationMode::Replicate;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Gives up a snapshot transfer (it failed): probe again; a new transfer resumes where the
    /// follower's data ends.
    pub(crate) fn abandon_snapshot(&mut self) {
        self.transfer = None;
        self.mode = ReplicationMode::Probe;
        self.probe_sent = false;
        self.next_index = self.match_index + 1;
    }

    /// A rejection: the follower's log diverges; continue probing from `next_index`.
    pub(crate) fn rejected(&mut self, next_index: LogIndex) {
        self.mode = ReplicationMode::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next_index = next_index.max(self.match_index + 1);
    }

    /// The follower could not be reached: whatever was in flight is presumed lost. Nothing more
    /// is sent until the next heartbeat retries (no hot retry loop against a dead peer).
    pub(crate) fn unreachable(&mut self) {
        self.mode = ReplicationMode::Probe;
        self.probe_sent = true;
        self.inflight.clear();
        self.next_index = self.match_index + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_window_fills_and_frees_in_order() {
        let mut w = Inflight::new(2, 100);
        w.add(5, 10);
        assert!(!w.is_full());
        w.add(9, 10);
        assert!(w.is_full());
        w.free_up_to(4);
        assert_eq!(w.len(), 2);
        w.free_up_to(7);
        assert_eq!(w.len(), 1);
        assert!(!w.is_full());
        w.free_up_to(100);
        assert_eq!(w.len(), 0);
        assert_eq!(w.room_bytes(), 100);
    }

    #[test]
    fn inflight_bytes_bound() {
        let mut w = Inflight::new(10, 100);
        w.add(1, 60);
        assert_eq!(w.room_bytes(), 40);
        w.add(2, 60);
        assert!(w.is_full());
    }

    #[test]
    fn probe_sends_one_at_a_time_then_replicates() {
        let mut p = Progress::new(11, 4, 1000);
        assert!(p.can_send_entries());
        p.sent(10, 0);
        assert!(!p.can_send_entries());
        assert_eq!(p.next_index, 11, "probing does not advance next_index optimistically");
        p.acknowledged(10);
        assert_eq!(p.mode, ReplicationMode::Replicate);
        p.sent(15, 50);
        p.sent(20, 50);
        assert_eq!(p.next_index, 21);
        assert_eq!(p.inflight.len(), 2);
        p.acknowledged(15);
        assert_eq!((p.match_index, p.inflight.len()), (15, 1));
    }

    #[test]
    fn rejection_and_unreachable_fall_back_to_probe() {
        let mut p = Progress::new(11, 4, 1000);
        p.acknowledged(10);
        p.sent(20, 10);
        p.rejected(5);
        assert_eq!((p.mode, p.next_index), (ReplicationMode::Probe, 11), "never below match + 1");
        p.acknowledged(12);
        p.sent(30, 10);
        p.unreachable();
        assert_eq!((p.mode, p.next_index, p.inflight.len()), (ReplicationMode::Probe, 13, 0));
        assert!(!p.can_send_entries(), "paused until the next heartbeat");
    }
}
