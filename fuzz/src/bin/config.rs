//! AFL target `config`: see [`sitrep_fuzz::config`]. Run it with `fuzz/run`; on its
//! own, the binary reads one input from standard input (to replay a crash).

fn main() {
    // Set up once, before AFL's fork server starts.
    sitrep_fuzz::config_base();
    afl::fuzz!(|data: &[u8]| sitrep_fuzz::config(data));
}
