//! The driver's latency probe (`raft_core::LATENCY_TARGET`) wired through real nodes: the time
//! a store write resolved is the writer's (not when the main loop learned it), stages never
//! reached are left out of the event (not reported as 0 µs), and a follower reports the
//! AppendEntries it took and answered. The events are captured from a `tracing` subscriber on
//! the test's thread (tokio's current-thread runtime runs every node's tasks there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use raft_core::runtime::TokioRuntime;
use raft_core::{Bytes, Runtime, LATENCY_TARGET};
use support::{wait_until, within, Cluster, Recipe};

/// How long every log write takes on the [`JumpClock`].
const WRITE: Duration = Duration::from_millis(50);
/// How long the hand-off from a resolved write to whoever reads the clock next but one takes.
const HANDOFF: Duration = Duration::from_millis(20);

/// A clock that jumps: a log write moves it `WRITE` on as it ends (the store's hook), and the
/// second read after that (the first is the writer's own, at once, in the same poll) sees it
/// `HANDOFF` later, as if the main loop learned of the write that much later.
#[derive(Clone)]
struct JumpClock {
    inner: TokioRuntime,
    state: Arc<Mutex<Jumps>>,
}

#[derive(Default)]
struct Jumps {
    offset: Duration,
    /// A write resolved and the clock was not read since.
    armed: bool,
}

impl Runtime for JumpClock {
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        self.inner.spawn(future)
    }
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
    fn now(&self) -> Duration {
        let mut jumps = self.state.lock().unwrap();
        let now = self.inner.now() + jumps.offset;
        if std::mem::take(&mut jumps.armed) {
            jumps.offset += HANDOFF;
        }
        now
    }
}

/// The lines the probe logged, captured by a subscriber that shows only its target.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures the probe's events on this thread until the guard is dropped.
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!("{LATENCY_TARGET}=debug")))
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The captured lines holding `event`.
    fn events(&self, event: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        text.lines().filter(|l| l.contains(event)).map(str::to_owned).collect()
    }
}

/// The value of `field=N` in `line`, if the line has the field.
fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
    Some(digits.parse().unwrap())
}

/// On a single voter: `written_us` is when the store's write resolved (after the write's
/// `WRITE`, before the `HANDOFF` to the main loop), `persisted_us` when the main loop learned
/// it, and `acked_us` (no follower) is absent rather than 0.
#[tokio::test]
async fn a_leader_reports_when_its_write_resolved_and_leaves_out_stages_never_reached() {
    let captured = Captured::default();
    let _guard = captured.start();
    let clock = JumpClock { inner: TokioRuntime::current().unwrap(), state: Arc::default() };
    let cluster = Cluster::start(clock.clone(), 1, |_| Recipe::default()).await;
    let leader = cluster.leader().await;
    // From now on every write of the leader's store takes `WRITE` on the clock.
    let jumps = clock.state.clone();
    *cluster.members[&leader].store.after_write.lock().unwrap() = Some(Arc::new(move || {
        let mut jumps = jumps.lock().unwrap();
        jumps.offset += WRITE;
        jumps.armed = true;
    }));
    let node = cluster.node(leader);
    for i in 0..3u8 {
        within(&clock, "a put", node.write(Bytes::from(vec![i]))).await.unwrap();
    }
    wait_until(&clock, "three proposals reported", || {
        captured.events("proposal stages").len() >= 3
    })
    .await;
    for line in captured.events("proposal stages") {
        let written = field(&line, "written_us").expect(&line);
        let persisted = field(&line, "persisted_us").expect(&line);
        let write_us = u64::try_from(WRITE.as_micros()).unwrap();
        let handoff_us = u64::try_from(HANDOFF.as_micros()).unwrap();
        assert!(written >= write_us, "written before the write ended: {line}");
        assert!(persisted >= written + handoff_us, "written when the main loop learned it: {line}");
        assert_eq!(field(&line, "acked_us"), None, "no follower acknowledged: {line}");
    }
    node.shutdown().await;
}

/// Followers report the AppendEntries they took, once written, learned and answered.
#[tokio::test]
async fn followers_report_the_append_entries_they_answered() {
    let captured = Captured::default();
    let _guard = captured.start();
    let rt = TokioRuntime::current().unwrap();
    let cluster = Cluster::start(rt.clone(), 3, |_| Recipe::default()).await;
    let leader = cluster.leader().await;
    for i in 0..3u8 {
        within(&rt, "a put", cluster.node(leader).write(Bytes::from(vec![i]))).await.unwrap();
    }
    wait_until(&rt, "a follower's report", || !captured.events("follower stages").is_empty()).await;
    for line in captured.events("follower stages") {
        let written = field(&line, "written_us").expect(&line);
        let persisted = field(&line, "persisted_us").expect(&line);
        let answered = field(&line, "answered_us").expect(&line);
        assert!(written <= persisted && persisted <= answered, "stages out of order: {line}");
    }
    for id in cluster.members.keys() {
        cluster.node(*id).shutdown().await;
    }
}
