//! # raft-quic
//!
//! A `Network` for `raft-core` over QUIC (through `quinn`) with mutual TLS. Work in progress: see
//! the raft-quic issue.
#![forbid(unsafe_code)]
