#!/usr/bin/env bash
# Times the Python peers of TARGETS.md on the benches' workloads, in the same run as the Rust
# benches, so BENCHMARKS.md's speed-up column is measured rather than copied:
#
#   benches/python_peers.sh [--only binning,lrr,glm,encoders,classifier,chain]
#
# Makes (once) a throwaway virtual environment outside the repository (PEERS_VENV, default
# ${TMPDIR:-/tmp}/neurokernels-python-peers) with the packages below from PyPI, then runs
# benches/python_peers.py, which appends `python/...` records to the same
# bench-records.jsonl as the Rust benches ($CARGO_TARGET_DIR, else target/). Then
# `cargo run --release --example bench_report` shows them. Takes about 4 minutes after the
# install (ezmsg-event's sparse path alone is ~1 s a round).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PEERS_VENV:-${TMPDIR:-/tmp}/neurokernels-python-peers}"
packages=(numpy==2.4.6 scipy==1.17.1 ezmsg-event==0.16.2 ezmsg-learn==1.16.2
    nemos==0.2.8 pynapple==0.11.4 spyx==1.0.0)
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "${packages[@]}"
fi
records="${CARGO_TARGET_DIR:-target}/bench-records.jsonl"
mkdir -p "$(dirname "$records")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# OpenBLAS core-type overrides slow a current numpy: not for this command.
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    "$venv/bin/python" benches/python_peers.py "$records" --tmp "$tmp" "$@"
