//! Exclusive directories across processes: an `LmdbLogStore` or a `FileSnapshotStore` owns its
//! directory, and deleting a file in the directory does not change that.
//!
//! Tests that release a lock in this process and take it again live in `store.rs` and
//! `snapshots.rs`, not here: a child process that a test here is spawning holds a copy of every
//! open descriptor until it runs its program, so a lock just released could seem held for that
//! moment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use raft_lmdb::{FileSnapshotStore, LmdbLogStore, OpenError};

/// Where the child process opens a store.
const HOLDER_DIR_ENV: &str = "RAFT_LMDB_TEST_LOCK_HOLDER_DIR";
/// Which store the child process opens: `log` or `snapshots`.
const HOLDER_KIND_ENV: &str = "RAFT_LMDB_TEST_LOCK_HOLDER_KIND";
/// The lock file of builds before directory locks.
const LEGACY_LOCK_FILE: &str = "raft-lmdb.lock";

/// Not a test on its own: the child process of the tests below. Holds a store open until its
/// stdin is closed.
#[test]
fn lock_holder_child() {
    let (Ok(dir), Ok(kind)) = (std::env::var(HOLDER_DIR_ENV), std::env::var(HOLDER_KIND_ENV))
    else {
        return;
    };
    let held: Box<dyn std::any::Any> = match kind.as_str() {
        "log" => Box::new(LmdbLogStore::open_dir(dir).unwrap()),
        "snapshots" => Box::new(FileSnapshotStore::open_dir(dir).unwrap()),
        other => panic!("unknown store kind {other}"),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "lock-holder-ready").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {}
    drop(held);
}

/// A child process holding a store of `kind` open in `dir`.
struct Holder {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Holder {
    fn start(dir: &Path, kind: &str) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "lock_holder_child", "--nocapture", "--test-threads=1"])
            .env(HOLDER_DIR_ENV, dir)
            .env(HOLDER_KIND_ENV, kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready =
            lines.by_ref().map_while(Result::ok).any(|line| line.contains("lock-holder-ready"));
        assert!(ready, "the child never opened the {kind} store");
        Holder { child, lines }
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        // Keep reading until the child exits, so that its last words do not hit a closed pipe.
        self.lines.for_each(drop);
        assert!(self.child.wait().unwrap().success());
    }
}

fn assert_locked_by_other_process(err: OpenError) {
    assert!(matches!(err, OpenError::LockedByOtherProcess { .. }), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");
}

#[test]
fn another_process_holding_the_directory_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let holder = Holder::start(root.path(), "log");
    assert_locked_by_other_process(LmdbLogStore::open_dir(root.path()).unwrap_err());
    holder.stop();
    LmdbLogStore::open_dir(root.path()).unwrap();
}

#[test]
fn deleting_files_does_not_let_a_second_process_in() {
    let root = tempfile::tempdir().unwrap();
    let holder = Holder::start(root.path(), "log");
    // Whatever an operator deletes that is not the store itself (a lock file, LMDB's own
    // lock.mdb), the store stays locked.
    for name in [LEGACY_LOCK_FILE, "lock.mdb"] {
        let _ = std::fs::remove_file(root.path().join(name));
        assert_locked_by_other_process(LmdbLogStore::open_dir(root.path()).unwrap_err());
    }
    holder.stop();
    LmdbLogStore::open_dir(root.path()).unwrap();
}

#[test]
fn another_process_holding_a_snapshot_directory_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let holder = Holder::start(root.path(), "snapshots");
    assert_locked_by_other_process(FileSnapshotStore::open_dir(root.path()).unwrap_err());
    holder.stop();
    FileSnapshotStore::open_dir(root.path()).unwrap();
}
