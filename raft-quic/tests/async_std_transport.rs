//! A selection of the transport scenarios on async-std (quinn's `AsyncStdRuntime`), the third
//! runtime raft-quic accepts. async-std is deprecated upstream; this keeps the adapter honest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::scenarios;
use raft_quic::quinn::{AsyncStdRuntime, Runtime};

fn rt() -> Arc<dyn Runtime> {
    Arc::new(AsyncStdRuntime)
}

#[test]
fn round_trip() {
    async_std::task::block_on(scenarios::round_trip(rt()));
}

#[test]
fn sender_must_match_certificate() {
    async_std::task::block_on(scenarios::sender_must_match_certificate(rt()));
}

#[test]
fn malformed_frames_are_survived() {
    async_std::task::block_on(scenarios::malformed_frames_are_survived(rt()));
}

#[test]
fn stale_connection_is_reset_after_crash() {
    async_std::task::block_on(scenarios::stale_connection_is_reset_after_crash(rt()));
}
