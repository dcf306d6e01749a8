//! Shared fixtures for the workspace-level integration tests in `tests/` and
//! the benchmarks in `benches/`.

pub mod http;
