//! `kv-node`: one node of the replicated key-value service, over QUIC (mutual TLS) with a
//! durable log. See `kv-node --help` and `examples::kv::config` for the options.
//!
//! ```text
//! kv-node --id 1 --data-dir /var/lib/kv/1 --certs /etc/kv/certs \
//!     --node 1=10.0.0.1:7001,10.0.0.1:7101 --node 2=10.0.0.2:7001,10.0.0.2:7101 \
//!     --node 3=10.0.0.3:7001,10.0.0.3:7101
//! ```
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    examples::kv::node::main_with_args(std::env::args().skip(1))
}
