//! Transport scenarios on the tokio runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::sync::Arc;

use common::scenarios;
use raft_quic::quinn::{Runtime, TokioRuntime};

fn rt() -> Arc<dyn Runtime> {
    Arc::new(TokioRuntime)
}

macro_rules! on_tokio {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            scenarios::$name(rt()).await;
        }
    )*};
}

all_scenarios!(on_tokio);
