//! Transport scenarios on the smol runtime (quinn's `SmolRuntime`, smol's global executor).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
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

all_scenarios!(on_smol);
