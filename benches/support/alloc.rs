//! The allocator the `sitrep` binary runs with (its `main.rs`), so that a
//! bench measures the node as it ships: jemalloc, not the system's.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
