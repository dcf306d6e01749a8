//! Profiling only a bench's measured window.

/// With `SITREP_BENCH_PERF_FIFO` naming the control FIFO of a
/// `perf record -D -1 --control fifo:PATH …`, sends `command` (`enable`,
/// `disable`) to it, so that set-up, filling and warm-up stay out of the
/// profile. Does nothing without the variable.
pub(crate) fn control(command: &str) {
    if let Some(path) = std::env::var_os("SITREP_BENCH_PERF_FIFO")
        && let Err(e) = std::fs::write(&path, format!("{command}\n"))
    {
        eprintln!("perf control {command}: {e}");
    }
}
