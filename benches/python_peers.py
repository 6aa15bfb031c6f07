"""Times the Python packages that TARGETS.md names as each workload's peer, on the same
workloads as the Rust benches, and appends the figures to the bench records.

Run through `benches/python_peers.sh`, which makes a throwaway virtual environment outside
the repository. Each figure is the median of several rounds (per-chunk rows: the median
chunk), in seconds, recorded as `python/<workload>` with the package and version in `text`;
`cargo run --release --example bench_report` puts them beside the crate's figures and shows
the ratio. Data are generated the way the Rust benches generate theirs (same shapes,
densities and chunkings; another random generator, so not the same values).

    python benches/python_peers.py RECORDS.jsonl [--only NAME,...]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import statistics
import sys
import time

import numpy as np

FS = 30_000.0


def version(pkg: str) -> str:
    return f"{pkg} {md.version(pkg)}"


def load_average() -> float:
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return -1.0


class Records:
    def __init__(self, path: str):
        self.path = path

    def put(self, key: str, seconds: float, what: str) -> None:
        line = {
            "key": f"python/{key}",
            "value": seconds,
            "text": what,
            "load": load_average(),
            "unix": int(time.time()),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"| {key} | {what} | {fmt(seconds)} |", flush=True)


def fmt(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def median_time(f, rounds: int, warm: int = 1) -> float:
    for _ in range(warm):
        f()
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def axis_array(data, fs: float):
    from ezmsg.util.messages.axisarray import AxisArray

    return AxisArray(
        data=data,
        dims=["time", "ch"],
        axes={"time": AxisArray.TimeAxis(fs=fs, offset=0.0)},
    )


# --- binned kernel activation (ezmsg-event, pynapple) -------------------------------------


def raster(rng, n: int, nc: int) -> np.ndarray:
    """A dense raster with ~1 % of samples set (as `benches/binning.rs`)."""
    return (rng.random((n, nc), dtype=np.float32) < 0.01).astype(np.float32)


def binning(rec: Records, rng) -> None:
    from ezmsg.event.kernel_activation import (
        ActivationKernelType,
        BinAggregation,
        BinnedKernelActivation,
        BinnedKernelActivationSettings,
    )

    what = version("ezmsg-event")
    count_sum = BinnedKernelActivationSettings(
        kernel_type=ActivationKernelType.COUNT, aggregation=BinAggregation.SUM
    )
    x = raster(rng, 30_000, 384)
    msgs = [axis_array(x[a : a + 3000], FS) for a in range(0, 30_000, 3000)]

    def stream():
        op = BinnedKernelActivation(count_sum)
        for m in msgs:
            op(m)

    rec.put("binning/dense_100ms", median_time(stream, 10), what)

    x = raster(rng, 60_000, 384)
    op = BinnedKernelActivation(count_sum)
    t = []
    for a in range(0, 60_000, 30):
        m = axis_array(x[a : a + 30], FS)
        t0 = time.perf_counter()
        op(m)
        t.append(time.perf_counter() - t0)
    rec.put("binning/dense_1ms/p50", statistics.median(t[10:]), what)

    import sparse

    n_ev, n_s = 191_466, 300_000
    samples = np.sort(rng.integers(0, n_s, n_ev))
    channels = rng.integers(0, 384, n_ev)
    chunks = []
    for k in range(10):
        lo, hi = np.searchsorted(samples, [k * 30_000, (k + 1) * 30_000])
        coo = sparse.COO(
            np.stack([samples[lo:hi] - k * 30_000, channels[lo:hi]]),
            np.ones(hi - lo, dtype=np.float32),
            shape=(30_000, 384),
        )
        chunks.append(axis_array(coo, FS))

    def sparse_stream():
        op = BinnedKernelActivation(BinnedKernelActivationSettings())
        for m in chunks:
            op(m)

    rec.put("binning/sparse_exp_last", median_time(sparse_stream, 3), what)

    import pynapple as nap

    times = samples / FS
    group = nap.TsGroup(
        {c: nap.Ts(t=times[channels == c]) for c in range(384)},
        time_support=nap.IntervalSet(0.0, n_s / FS),
    )
    rec.put(
        "binning/sparse_count",
        median_time(lambda: group.count(0.02), 10),
        version("pynapple"),
    )


# --- LRR (ezmsg-learn) ---------------------------------------------------------------------


def lrr_data(rng, n: int, nc: int) -> np.ndarray:
    """A shared source with per-channel gains plus independent noise (as `benches/lrr.rs`)."""
    g = rng.uniform(0.5, 1.5, nc).astype(np.float32)
    s = (rng.random(n, dtype=np.float32) - 0.5)[:, None]
    return g * s + 0.2 * (rng.random((n, nc), dtype=np.float32) - 0.5)


def lrr(rec: Records, rng) -> None:
    from ezmsg.learn.process.ssr import LRRSettings, LRRTransformer

    what = version("ezmsg-learn")

    def groups(k: int, m: int):
        return [list(range(c * m, (c + 1) * m)) for c in range(k)]

    x = lrr_data(rng, 300_000, 384)
    msgs = [axis_array(x[k * 30_000 : (k + 1) * 30_000], FS) for k in range(10)]
    settings = LRRSettings(channel_groups=groups(8, 48))

    def fit():
        op = LRRTransformer(settings)
        for m in msgs:
            op.partial_fit(m)
        return op

    rec.put("lrr/partial_fit", median_time(fit, 5), what)
    op = fit()

    def transform():
        for m in msgs:
            op(m)

    rec.put("lrr/transform", median_time(transform, 5), what)

    xs = lrr_data(rng, 60_000, 512)
    op = LRRTransformer(LRRSettings(channel_groups=groups(8, 64)))
    op.partial_fit(axis_array(xs[:2000], FS))
    op(axis_array(xs[:20], FS))
    t = []
    for i in range(1000):
        m = axis_array(xs[2000 + 20 * i : 2020 + 20 * i], FS)
        t0 = time.perf_counter()
        op.partial_fit(m)
        op(m)
        t.append(time.perf_counter() - t0)
    rec.put("lrr/stream/p50", statistics.median(t), what)


# --- recurrent Poisson GLM (nemos) ---------------------------------------------------------


def glm(rec: Records, rng) -> None:
    import jax
    import nemos as nmo

    n, ws, nb, steps = 50, 100, 10, 10_000
    _, basis = nmo.basis.RaisedCosineLogEval(nb).evaluate_on_grid(ws)
    colsum = basis.sum(axis=0)
    g = 0.5 / n
    cc = g * rng.uniform(-1, 1, (n, n, nb)) / (colsum * nb)
    ffc = np.full((n, 1), 0.1)
    icp = np.full(n, np.log(np.expm1(0.05)))
    ff = np.sin((np.arange(steps)[:, None] + 7 * np.arange(n)[None, :]) * 0.01)[:, :, None]
    init = np.zeros((ws, n))
    key = jax.random.key(0)
    # The value checks (`error_invalid_entry`: NaN/inf) cannot run under `jax.jit`; the
    # inputs are finite, so the jitted run skips them and keeps the shape checks.
    nmo.simulation.validation.error_invalid_entry = lambda *a, **k: None
    simulate = jax.jit(nmo.simulation.simulate_recurrent)

    def run():
        spikes, rates = simulate(cc, ffc, icp, key, ff, basis, init)
        rates.block_until_ready()

    rec.put("glm", median_time(run, 5, warm=2), version("nemos") + ", jitted")


# --- spike encoders (numpy, spyx) ----------------------------------------------------------


def encoders(rec: Records, rng) -> None:
    x = rng.random((256, 784), dtype=np.float32)
    x[rng.random((256, 784)) < 0.8] = 0.0
    t = 100

    def rate_numpy():
        return rng.random((t, 256, 784), dtype=np.float32) < x

    rec.put("encoders/rate_numpy", median_time(rate_numpy, 10), version("numpy") + ", `rng.random < p`")

    import jax
    import spyx.data

    what = version("spyx")
    rate = spyx.data.rate_code(t)
    xr = x[:, None, :]
    key = jax.random.key(0)
    rec.put(
        "encoders/rate_spyx",
        median_time(lambda: rate(xr, key).block_until_ready(), 10, warm=2),
        what,
    )
    latency = spyx.data.latency_code(t)
    rec.put(
        "encoders/latency_spyx",
        median_time(lambda: latency(x).block_until_ready(), 10, warm=2),
        what,
    )


# --- max-rate classifier (numpy, the seed's update + classify) -----------------------------


class NumpyMaxRate:
    """inferno's `MaxRateClassifier.update` and `classify`, written in numpy."""

    def __init__(self, n: int, k: int, decay: float):
        self.k = k
        self.decay = decay
        self.rates = np.zeros((n, k), dtype=np.float32)
        self._derive()

    def _derive(self):
        s = np.abs(self.rates).sum(axis=1, keepdims=True)
        self.proportions = self.rates / np.maximum(s, 1e-12)
        self.assignments = np.argmax(self.proportions, axis=1)
        self.occurrences = np.bincount(self.assignments, minlength=self.k)

    def update(self, x: np.ndarray, labels: np.ndarray):
        counts = np.bincount(labels, minlength=self.k).astype(np.float32)
        onehot = np.eye(self.k, dtype=np.float32)[labels]
        with np.errstate(divide="ignore", invalid="ignore"):
            rates = np.nan_to_num((x.T @ onehot) / counts, nan=0.0, posinf=0.0)
        self.rates = np.exp(-self.decay * counts) * self.rates + rates
        self._derive()

    def classify(self, x: np.ndarray) -> np.ndarray:
        assocs = np.eye(self.k, dtype=np.float32)[self.assignments] * self.proportions
        with np.errstate(divide="ignore", invalid="ignore"):
            logits = np.nan_to_num((x @ assocs) / self.occurrences, nan=0.0, posinf=0.0)
        return np.argmax(logits, axis=1)


def classifier(rec: Records, rng) -> None:
    n, k, b = 10_000, 10, 256
    x = rng.random((b, n), dtype=np.float32)
    labels = rng.integers(0, k, b)
    c = NumpyMaxRate(n, k, 0.01)

    def step():
        c.update(x, labels)
        c.classify(x)

    rec.put("classifier", median_time(step, 20, warm=3), version("numpy") + ", the seed's formulas")


# --- the chain (scipy + numpy) -------------------------------------------------------------


def chain(rec: Records, rng, tmp: str) -> None:
    from scipy import signal

    nc, n, per = 384, 60_000, 600
    shared = rng.standard_normal((n, 8)).astype(np.float32)
    noise = 10.0 * rng.standard_normal((n, nc)).astype(np.float32)
    x = noise + 5.0 * np.repeat(shared, 48, axis=1)
    spikes = rng.random((n, nc)) < 20.0 / FS
    x[spikes] -= 120.0
    raw = np.clip(np.round(x / 0.195), -32768, 32767).astype(np.int16)
    path = os.path.join(tmp, "chain.raw")
    raw.tofile(path)
    mm = np.memmap(path, dtype=np.int16, mode="r", shape=(n, nc))

    sos = signal.butter(3, [300.0, 6000.0], btype="bandpass", fs=FS, output="sos")
    cal = signal.sosfilt(sos, mm[:30_000].astype(np.float32) * 0.195, axis=0).astype(np.float32)
    blocks = []
    for c in range(8):
        xc = cal[:, c * 48 : (c + 1) * 48].astype(np.float64)
        cxx = xc.T @ xc
        w = np.zeros((48, 48))
        for i in range(48):
            o = [j for j in range(48) if j != i]
            w[o, i] = np.linalg.solve(cxx[np.ix_(o, o)], cxx[o, i])
        blocks.append((np.eye(48) - w).astype(np.float32))
    y = np.concatenate([cal[:, c * 48 : (c + 1) * 48] @ blocks[c] for c in range(8)], axis=1)
    thr = -5.0 * np.median(np.abs(y), axis=0) / 0.6745

    def stream():
        zi = np.zeros((sos.shape[0], 2, nc), dtype=np.float64)
        prev = np.zeros(nc, dtype=bool)
        bins = []
        for a in range(0, n, per):
            chunk = mm[a : a + per].astype(np.float32) * 0.195
            f, zi = signal.sosfilt(sos, chunk, axis=0, zi=zi)
            f = f.astype(np.float32)
            out = np.empty_like(f)
            for c in range(8):
                s = slice(c * 48, (c + 1) * 48)
                np.matmul(f[:, s], blocks[c], out=out[:, s])
            below = out < thr
            cross = below & ~np.vstack([prev[None, :], below[:-1]])
            prev = below[-1]
            bins.append(cross.sum(axis=0))
        return bins

    rec.put("chain", median_time(stream, 5), version("scipy") + " + " + version("numpy"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("records")
    p.add_argument("--only", default="")
    p.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    a = p.parse_args()
    rec = Records(a.records)
    rng = np.random.default_rng(1)
    jobs = {
        "binning": lambda: binning(rec, rng),
        "lrr": lambda: lrr(rec, rng),
        "glm": lambda: glm(rec, rng),
        "encoders": lambda: encoders(rec, rng),
        "classifier": lambda: classifier(rec, rng),
        "chain": lambda: chain(rec, rng, a.tmp),
    }
    only = [s for s in a.only.split(",") if s]
    print("| workload | package | median |\n| --- | --- | ---: |", flush=True)
    for name, job in jobs.items():
        if not only or name in only:
            job()
    return 0


if __name__ == "__main__":
    sys.exit(main())
