//! A small runtime-agnostic "latest value" watch for the node status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::types::{Role, Status};

#[derive(Debug)]
struct Slot {
    status: Status,
    version: u64,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct StatusCell {
    slot: Mutex<Slot>,
    changed: Event,
    /// Whether the latest status is a leader's: what every proposal checks first, read
    /// without taking the lock (set under it, with the status).
    leading: AtomicBool,
}

impl StatusCell {
    pub(crate) fn new(status: Status) -> Arc<Self> {
        Arc::new(Self {
            leading: AtomicBool::new(status.role == Role::Leader),
            slot: Mutex::new(Slot { status, version: 0, closed: false }),
            changed: Event::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn get(&self) -> Status {
        self.lock().status.clone()
    }

    /// Whether the latest status published is a leader's (as `get().role == Role::Leader`,
    /// without the lock and the copy).
    pub(crate) fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Publishes `status` if it differs from the current one.
    pub(crate) fn publish(&self, status: Status) {
        {
            let mut slot = self.lock();
            if slot.status == status {
                return;
            }
            self.leading.store(status.role == Role::Leader, Ordering::Release);
            slot.status = status;
            slot.version += 1;
        }
        self.changed.notify(usize::MAX);
    }

    /// Marks the node stopped: watchers see the last status, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify(usize::MAX);
    }
}

/// A watch of a node's [`Status`]: [`changed`](StatusWatch::changed) waits for the next change.
///
/// Changes are coalesced: a slow watcher sees the latest status, not every intermediate one.
#[derive(Debug, Clone)]
pub struct StatusWatch {
    cell: Arc<StatusCell>,
    seen: u64,
}

impl StatusWatch {
    pub(crate) fn new(cell: Arc<StatusCell>) -> Self {
        let seen = cell.lock().version;
        Self { cell, seen }
    }

    /// The latest status.
    pub fn current(&self) -> Status {
        self.cell.get()
    }

    /// Waits until the status differs from the last one this watch returned, and returns it.
    /// Returns `None` once the node has stopped.
    pub async fn changed(&mut self) -> Option<Status> {
        loop {
            let listener = self.cell.changed.listen();
            {
                let slot = self.cell.lock();
                if slot.version != self.seen {
                    self.seen = slot.version;
                    return Some(slot.status.clone());
                }
                if slot.closed {
                    return None;
                }
            }
            listener.await;
        }
    }

    /// Waits until `condition` holds for the status and returns that status, or `None` if the
    /// node stops first.
    pub async fn wait_for(&mut self, mut condition: impl FnMut(&Status) -> bool) -> Option<Status> {
        let current = self.current();
        if condition(&current) {
            return Some(current);
        }
        loop {
            let status = self.changed().await?;
            if condition(&status) {
                return Some(status);
            }
        }
    }
}
