//! Transport scenarios on the smol runtime (quinn's `SmolRuntime`, smol's global executor).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::scenarios;
use raft_quic::quinn::{Runtime, SmolRuntime};

fn rt() -> Arc<dyn Runtime> {
    Arc::new(SmolRuntime)
}

macro_rules! on_smol {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            smol::block_on(scenarios::$name(rt()));
        }
    )*};
}

on_smol!(
    round_trip,
    concurrent_rpcs,
    sender_must_match_certificate,
    refuses_until_serving,
    server_must_prove_dialed_id,
    unknown_node_with_a_cluster_certificate_is_served,
    foreign_ca_is_refused,
    reconnects_after_restart,
    large_batches_do_not_block_heartbeats,
    oversized_frames,
    close_is_final,
    malformed_frames_are_survived,
    reconnects_after_link_break,
    stale_connection_is_reset_after_crash,
    rpc_timeout_is_enforced,
);
