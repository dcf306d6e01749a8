//! The allocator the `sitrep` binary runs with (its `main.rs`), so that a
//! bench measures the node as it ships: mimalloc, not the system's.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
