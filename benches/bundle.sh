#!/usr/bin/env bash
# Builds every bench and the report into one folder that runs on another x86-64 Linux machine
# with a GPU driver but no Rust toolchain (the benches load the Vulkan or GL driver at run
# time, as any wgpu program does):
#
#   benches/bundle.sh            # here: target/bench-bundle/ (stripped binaries + run.sh), and
#                                #   the same as target/bench-bundle.tar.gz (~30 MB)
#   bench-bundle/run.sh [DIR]    # there: runs them all, results under DIR (default ./results)
#
# run.sh writes, under DIR: one log per bench (criterion's lines and the latency tables),
# criterion's estimates (DIR/criterion), the recorded percentiles (DIR/bench-records.jsonl),
# the adapter and CPU (DIR/machine.txt) and the summary table (DIR/BENCHMARKS.md, made by the
# report from this crate's BENCHMARKS.md). Environment passed through: WGPU_BACKEND,
# NEUROKERNELS_BENCH_MAX_N, GLM_BENCH_QUICK, and BENCH_FILTER (a criterion filter, e.g. `gpu`
# to run only the GPU engine's criterion benches; the latency tables always run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-bundle
rm -rf "$out"
mkdir -p "$out/bin"
cargo bench --no-run 2>&1 | tee target/bench-bundle.log |
    sed -n 's/^ *Executable benches\/\([a-z_]*\)\.rs (\(.*\))$/\1 \2/p' |
    while read -r name exe; do
        strip -o "$out/bin/bench-$name" "$exe"
    done
cargo build --release --example bench_report
strip -o "$out/bin/bench_report" target/release/examples/bench_report
cp BENCHMARKS.md "$out/BENCHMARKS.md"
cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every bench of this bundle, then the report; see benches/bundle.sh in the crate.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mkdir -p "${1:-results}" && cd "${1:-results}" && pwd)
export CARGO_TARGET_DIR=$dir
{
    date -u
    grep -m1 'model name' /proc/cpuinfo || true
    nproc
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv
} >"$dir/machine.txt" 2>&1
status=0
for b in "$here"/bin/bench-*; do
    name=${b##*/bench-}
    echo "== $name"
    # shellcheck disable=SC2086
    "$b" --bench ${BENCH_FILTER:-} >"$dir/$name.log" 2>&1 || { status=1; echo "   failed: see $dir/$name.log"; }
    grep -m1 'GPU engine' "$dir/$name.log" || true
done
cp "$here/BENCHMARKS.md" "$dir/BENCHMARKS.md"
"$here/bin/bench_report" "$dir/BENCHMARKS.md" >/dev/null || status=1
exit $status
RUN
chmod +x "$out/run.sh"
tar czf target/bench-bundle.tar.gz -C target bench-bundle
ls -l target/bench-bundle.tar.gz
