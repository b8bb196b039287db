//! `bench-kv` (placeholder while the benchmark is written).
fn main() {}
