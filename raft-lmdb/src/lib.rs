//! # raft-lmdb
//!
//! A durable `LogStore` for `raft-core` on LMDB (through `heed`). Work in progress: see the
//! raft-lmdb issue.
#![deny(unsafe_code)]
