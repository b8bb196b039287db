//! A real I/O error while committing (the file size limit of the process is reached, as a full
//! disk would be): the write fails with a typed `StorageError::Io`, every later write fails, no
//! acknowledged entry is lost, and the store works again once reopened without the limit.
//!
//! The child process runs under `sh -c "trap '' XFSZ; ulimit -f ..."`: writes past the limit
//! fail with `EFBIG` (the signal is ignored, and stays ignored across `exec`). Unix only.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::Command;

use bytes::Bytes;
use futures::executor::block_on;
use raft_core::{Entry, EntryPayload, LogStore, StorageError, WriteBatch};
use raft_lmdb::LmdbLogStore;

const CHILD_ENV: &str = "RAFT_LMDB_TEST_IO_ERROR_DIR";
/// The child's file size limit, in the shell's `ulimit -f` blocks (512 or 1024 bytes).
const FILE_SIZE_LIMIT_BLOCKS: u32 = 4096;

fn entry(index: u64) -> Entry {
    Entry { index, term: 1, payload: EntryPayload::Command(Bytes::from(vec![7u8; 4000])) }
}

/// Not a test on its own: the child process of `a_write_error_stops_the_store`.
#[test]
fn io_error_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let store = LmdbLogStore::open_dir(dir).unwrap();
    let mut out = std::io::stdout().lock();
    let mut index = 1;
    let err = loop {
        let batch = WriteBatch { entries: vec![entry(index)], ..WriteBatch::default() };
        match block_on(store.write(batch)) {
            Ok(()) => index += 1,
            Err(err) => break err,
        }
        assert!(index < 100_000, "the file size limit was never reached");
    };
    assert!(matches!(&err, StorageError::Io(_)), "expected an I/O error, got {err:?}");
    assert!(store.has_failed());
    let again = WriteBatch { entries: vec![entry(index)], ..WriteBatch::default() };
    assert!(matches!(block_on(store.write(again)), Err(StorageError::Closed)));
    assert!(matches!(block_on(store.purge(1)), Err(StorageError::Closed)));
    // Reads of what was acknowledged still work.
    assert_eq!(block_on(store.read(1..index, u64::MAX)).unwrap().len() as u64, index - 1);
    writeln!(out, "\nACKED {} ERROR {err}", index - 1).unwrap();
    out.flush().unwrap();
}

#[test]
fn a_write_error_stops_the_store() {
    let root = tempfile::tempdir().unwrap();
    let script = format!("trap '' XFSZ; ulimit -f {FILE_SIZE_LIMIT_BLOCKS}; exec \"$0\" \"$@\"");
    let output = Command::new("sh")
        .args(["-c", &script])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "io_error_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, root.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = stdout.lines().find_map(|l| l.strip_prefix("ACKED ")).expect("child report");
    println!("child: acknowledged {report}");
    let acked: u64 = report.split_whitespace().next().unwrap().parse().unwrap();
    assert!(acked > 0);
    // Without the limit, the store opens with every acknowledged entry and accepts writes.
    let store = LmdbLogStore::open_dir(root.path()).unwrap();
    let state = block_on(store.open()).unwrap();
    assert_eq!(state.last.index, acked);
    let entries = block_on(store.read(1..acked + 1, u64::MAX)).unwrap();
    assert!(entries.iter().enumerate().all(|(i, e)| *e == entry(i as u64 + 1)));
    let next = WriteBatch { entries: vec![entry(acked + 1)], ..WriteBatch::default() };
    block_on(store.write(next)).unwrap();
}
