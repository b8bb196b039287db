//! The log writer task: writes `Persist` batches in order, merging those that queue up while a
//! write is in progress into one store call (group commit at the node level).

use std::sync::Arc;

use async_channel::{Receiver, Sender};

use super::Input;
use crate::engine::PersistedWrite;
use crate::metrics::NodeMetrics;
use crate::storage::{LogStore, WriteBatch};

/// A batch and its sequence number (batches are numbered 1, 2, ... in emission order).
pub(super) struct WriteRequest {
    pub(super) seq: u64,
    pub(super) batch: WriteBatch,
}

/// At most this many entries go into one merged write.
const MAX_MERGED_ENTRIES: usize = 65_536;

pub(super) async fn run<S: LogStore>(
    store: S,
    requests: Receiver<WriteRequest>,
    inputs: Sender<Input>,
    metrics: Arc<NodeMetrics>,
) {
    while let Ok(first) = requests.recv().await {
        let mut seq = first.seq;
        let mut batch = first.batch;
        while batch.entries.len() < MAX_MERGED_ENTRIES {
            match requests.try_recv() {
                Ok(next) => {
                    seq = next.seq;
                    batch.merge(next.batch);
                }
                Err(_) => break,
            }
        }
        let written = PersistedWrite::of(&batch);
        let entries = batch.entries.len();
        let started = metrics.now();
        let result = store.write(batch).await.map_err(std::sync::Arc::new);
        let failed = result.is_err();
        metrics.log_write_done(entries, started, !failed);
        if inputs.send(Input::Persisted { seq, written, result }).await.is_err() || failed {
            // The node stopped, or the store failed: nothing more may be acknowledged.
            return;
        }
    }
}
