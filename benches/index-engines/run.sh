#!/usr/bin/env bash
# The index workload on each engine: REPORTS reports (default 200000) with
# the settle (forwarded) of each 64 reports later, then 1,000,000 kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/index-engines"
n="${REPORTS:-200000}"
for engine in sled fjall redb; do "$bin" "$engine" "$n" fwd; done
for engine in redb fjall; do "$bin" "$engine" 1000000 keep; done
"$bin" sled 300000 keep
