//! Test support for store implementations (the conformance suite lands with raft-lmdb).
