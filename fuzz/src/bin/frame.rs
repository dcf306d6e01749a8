//! AFL target `frame`: see [`sitrep_fuzz::frame`]. Run it with `fuzz/run`; on its
//! own, the binary reads one input from standard input (to replay a crash).

fn main() {
    // Set up once, before AFL's fork server starts.
    sitrep_fuzz::net();
    afl::fuzz!(|data: &[u8]| sitrep_fuzz::frame(data));
}
