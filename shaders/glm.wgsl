// Recurrent Poisson GLM (SPEC §3). `shaders/philox.wgsl` is prepended (philox4x32_10).
//
// Entry points (one layout):
//   simulate     — one workgroup per trial, one invocation per receiving neuron (strided by
//                  WG); runs W.count steps of the time scan with barriers between steps.
//   draw_poisson — one invocation per element of a (rows, n) rate array: the same draws.
//
// State per trial, in `ring`: the window kept as its future contributions to the coupling
// projection, ws slots (slot s mod ws for step s) of n senders × NBQ vec4 (basis functions
// padded to a multiple of 4). A step reads its slot, computes the rates, draws, clears the
// slot, then adds row[j]·basis[l−1] to the slot of step t + l for every non-zero row[j].
//
// Loop bound: llvmpipe silently stops an invocation after 65 535 loop iterations in total.
// The host counts, per step, ceil(n/WG)·(n·NBQ + 100) iterations for the rates (coupling
// loop, and the sampler's worst case: 64 search steps + one Philox call of 10 rounds, or 16
// PTRS proposals + 8 Philox calls) plus ceil(n·NBQ/WG) + ceil(n·ws·NBQ/WG) for the ring
// (a dense row), and sets W.count so a dispatch stays within 32 768.
//
// Bindings: 0 P (uniform), 1 W (uniform, one per dispatch at a 256-byte offset),
// 2 coef[(j·NBQ + q)·n + i] (vec4: coupling of receiver i on sender j, functions 4q…4q+3),
// 3 basis[(l−1)·NBQ + q] (vec4), 4 ffc[(t·ff_trials + b')·n + i] (feedforward + intercept;
// draw_poisson: the rates), 5 forced[(t·n_trials + b)·n + i], 6 seeds[b] (Philox key),
// 7 ring, 8 rates_out and 9 spikes_out [(t·n_trials + b)·n + i], 10 scratch (per trial:
// n sender indices, n values), 11 status (per trial: dead, step lo, step hi, neuron).

struct Params {
    n: u32,
    ws: u32,
    nbq: u32,
    n_trials: u32,
    ff_trials: u32,
    mode: u32,
    link: u32,
    n_steps: u32,
}

struct Win {
    t0: u32,
    count: u32,
    step_lo: u32,
    step_hi: u32,
    slot0: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

override WG: u32 = 64u;
// The model's sizes, compiled into the `simulate` pipeline (the same values are in `Params`):
// the loops have constant bounds and the ring's index arithmetic divides by constants
// (llvmpipe runs a division by a run-time value as one scalar `div` per lane).
override N: u32 = 1u;
override WS: u32 = 1u;
override NBQ: u32 = 1u;

const NONE: u32 = 0xffffffffu;
const STREAM_TAG: u32 = 0x474C4D00u;
const INVERSION_MAX: u32 = 64u;
const PTRS_MAX_PROPOSALS: u32 = 16u;
const PTRS_FROM: f32 = 10.0;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<uniform> W: Win;
@group(0) @binding(2) var<storage, read> coef: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> basis: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> ffc: array<f32>;
@group(0) @binding(5) var<storage, read> forced: array<f32>;
@group(0) @binding(6) var<storage, read> seeds: array<vec2<u32>>;
@group(0) @binding(7) var<storage, read_write> ring: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> rates_out: array<f32>;
@group(0) @binding(9) var<storage, read_write> spikes_out: array<f32>;
@group(0) @binding(10) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(11) var<storage, read_write> status: array<u32>;

var<workgroup> sh_nnz: atomic<u32>;
var<workgroup> sh_bad: atomic<u32>;
var<workgroup> sh_u: u32;

// lgamma(n + 1) − (n + ½)·ln n + n − ln √(2π), n = 0 … 15 (Loader).
var<private> STIRLERR: array<f32, 16> = array<f32, 16>(
    0.0, 0.08106146679532726, 0.04134069595540929, 0.02767792568499834,
    0.02079067210376509, 0.01664469118982119, 0.01387612882307075, 0.01189670994589177,
    0.01041126526197209, 0.009255462182712733, 0.008330563433362871, 0.007573675487951841,
    0.00694284010720953, 0.006408994188004207, 0.005951370112758848, 0.005554733551962801);

// Whether x is neither infinite nor NaN (by its bits: compilers may assume no NaNs).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// ln(1 + y) for y in [0, 1], without `log` near 1: 2·atanh(z), z = y/(2 + y) ≤ 1/3.
fn log1p_unit(y: f32) -> f32 {
    let z = y / (2.0 + y);
    let z2 = z * z;
    let s = 1.0 + z2 * (1.0 / 3.0 + z2 * (1.0 / 5.0 + z2 * (1.0 / 7.0 + z2 * (1.0 / 9.0
        + z2 * (1.0 / 11.0 + z2 * (1.0 / 13.0 + z2 * (1.0 / 15.0 + z2 * (1.0 / 17.0))))))));
    return 2.0 * z * s;
}

fn link(x: f32) -> f32 {
    if (P.link == 1u) {
        return exp(x);
    }
    return max(x, 0.0) + log1p_unit(exp(-abs(x)));
}

// 1 − e^(−l) for l ≥ 0, without cancellation for small l.
fn neg_expm1(l: f32) -> f32 {
    if (l < 0.5) {
        return l * (1.0 - l / 2.0 * (1.0 - l / 3.0 * (1.0 - l / 4.0 * (1.0 - l / 5.0
            * (1.0 - l / 6.0 * (1.0 - l / 7.0 * (1.0 - l / 8.0 * (1.0 - l / 9.0))))))));
    }
    return 1.0 - exp(-l);
}

fn stirlerr(n: f32) -> f32 {
    if (n <= 15.0) {
        return STIRLERR[u32(n)];
    }
    let nn = n * n;
    let s0 = 1.0 / 12.0;
    let s1 = 1.0 / 360.0;
    let s2 = 1.0 / 1260.0;
    let s3 = 1.0 / 1680.0;
    let s4 = 1.0 / 1188.0;
    if (n > 500.0) {
        return (s0 - s1 / nn) / n;
    }
    if (n > 80.0) {
        return (s0 - (s1 - s2 / nn) / nn) / n;
    }
    if (n > 35.0) {
        return (s0 - (s1 - (s2 - s3 / nn) / nn) / nn) / n;
    }
    return (s0 - (s1 - (s2 - (s3 - s4 / nn) / nn) / nn) / nn) / n;
}

fn bd0(x: f32, m: f32) -> f32 {
    let d = x - m;
    if (abs(d) < 0.1 * (x + m)) {
        let v = d / (x + m);
        let v2 = v * v;
        let series = 1.0 / 3.0 + v2 * (1.0 / 5.0 + v2 * (1.0 / 7.0 + v2 * (1.0 / 9.0
            + v2 * (1.0 / 11.0 + v2 * (1.0 / 13.0 + v2 * (1.0 / 15.0 + v2 * (1.0 / 17.0)))))));
        return d * v + 2.0 * x * v * v2 * series;
    }
    return x * log(x / m) + m - x;
}

fn ln_pmf(k: f32, lam: f32) -> f32 {
    if (k < 1.0) {
        return -lam;
    }
    return -stirlerr(k) - bd0(k, lam) - 0.5 * log(6.283185307179586 * k);
}

fn draw_counter(step: vec2<u32>, neuron: u32, block: u32) -> vec4<u32> {
    return vec4<u32>(neuron, step.x, step.y, STREAM_TAG | block);
}

// The inversion's uniform in [0, 1): the word's 24 leading significant bits times 2^-32.
fn v_inversion(w: u32) -> f32 {
    let lz = countLeadingZeros(w);
    var t = w;
    if (lz < 8u) {
        let s = 8u - lz;
        t = (w >> s) << s;
    }
    return ldexp(f32(t), -32);
}

// One Poisson draw (see src/glm/sampler.rs, its f64 twin, for the method).
fn poisson_draw(rate: f32, key: vec2<u32>, step: vec2<u32>, neuron: u32) -> f32 {
    if (!(rate > 0.0)) {
        return 0.0;
    }
    if (rate < PTRS_FROM) {
        let w = philox4x32_10(draw_counter(step, neuron, 0u), key).x;
        let v = v_inversion(w);
        var p = exp(-rate);
        var s = neg_expm1(rate);
        var k = 0u;
        loop {
            if (k >= INVERSION_MAX || v >= s || s < 5.820766e-11) {
                break;
            }
            k = k + 1u;
            p = p * rate / f32(k);
            s = s - p;
        }
        return f32(k);
    }
    let lam = rate;
    let slam = sqrt(lam);
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let invalpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    let log_invalpha = log(invalpha);
    var words = vec4<u32>(0u);
    for (var m = 0u; m < PTRS_MAX_PROPOSALS; m = m + 1u) {
        if ((m & 1u) == 0u) {
            words = philox4x32_10(draw_counter(step, neuron, m >> 1u), key);
        }
        var wu = words.x;
        var wv = words.y;
        if ((m & 1u) == 1u) {
            wu = words.z;
            wv = words.w;
        }
        let u = f32(wu >> 8u) * (1.0 / 16777216.0) - 0.5;
        let v = f32(((wv >> 9u) << 1u) | 1u) * (1.0 / 16777216.0);
        let us = 0.5 - abs(u);
        if (us < 0.013 && v > us) {
            continue;
        }
        let k = floor((2.0 * a / us + b) * u + lam + 0.43);
        if (us >= 0.07 && v <= vr) {
            return k;
        }
        if (k < 0.0) {
            continue;
        }
        let lhs = log(v) + log_invalpha - log(a / (us * us) + b);
        if (lhs <= ln_pmf(k, lam)) {
            return k;
        }
    }
    return floor(lam);
}

// (lo, hi) + k as a 64-bit number.
fn add64(lo: u32, hi: u32, k: u32) -> vec2<u32> {
    let s = lo + k;
    return vec2<u32>(s, hi + select(0u, 1u, s < lo));
}

@compute @workgroup_size(WG)
fn simulate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let b = wid.x + wid.y * nwg.x;
    if (b >= P.n_trials) {
        return;
    }
    let lid = lid3.x;
    if (lid == 0u) {
        sh_u = status[b * 4u];
    }
    if (workgroupUniformLoad(&sh_u) != 0u) {
        return;
    }
    let n = N;
    let nq = N * NBQ;
    let ring0 = b * WS * nq;
    let key = seeds[b];
    let fb = select(b, 0u, P.ff_trials == 1u);
    let sc = b * 2u * n;
    let per = WS * NBQ;
    for (var k = 0u; k < W.count; k = k + 1u) {
        let ts = W.t0 + k;
        let step = add64(W.step_lo, W.step_hi, k);
        let slot = (W.slot0 + k) % WS;
        let sbase = ring0 + slot * nq;
        if (lid == 0u) {
            atomicStore(&sh_nnz, 0u);
            atomicStore(&sh_bad, NONE);
        }
        workgroupBarrier();
        for (var i = lid; i < n; i = i + WG) {
            var acc = 0.0;
            for (var jq = 0u; jq < nq; jq = jq + 1u) {
                acc = acc + dot(coef[jq * n + i], ring[sbase + jq]);
            }
            let x = ffc[(ts * P.ff_trials + fb) * n + i] + acc;
            let rate = link(x);
            let o = (ts * P.n_trials + b) * n + i;
            rates_out[o] = rate;
            if (!is_finite(rate)) {
                atomicMin(&sh_bad, i);
                spikes_out[o] = 0.0;
                continue;
            }
            var y = rate;
            if (P.mode != 1u) {
                y = poisson_draw(rate, key, step, i);
            }
            spikes_out[o] = y;
            var v = y;
            if (P.mode == 2u) {
                v = forced[o];
            }
            if (v != 0.0) {
                let idx = atomicAdd(&sh_nnz, 1u);
                scratch[sc + idx] = i;
                scratch[sc + n + idx] = bitcast<u32>(v);
            }
        }
        storageBarrier();
        workgroupBarrier();
        if (lid == 0u) {
            sh_u = atomicLoad(&sh_bad);
        }
        let bad = workgroupUniformLoad(&sh_u);
        if (bad != NONE) {
            if (lid == 0u) {
                status[b * 4u] = 1u;
                status[b * 4u + 1u] = step.x;
                status[b * 4u + 2u] = step.y;
                status[b * 4u + 3u] = bad;
            }
            return;
        }
        for (var e = lid; e < nq; e = e + WG) {
            ring[sbase + e] = vec4<f32>(0.0);
        }
        storageBarrier();
        if (lid == 0u) {
            sh_u = atomicLoad(&sh_nnz);
        }
        let nnz = workgroupUniformLoad(&sh_u);
        let items = nnz * per;
        for (var it = lid; it < items; it = it + WG) {
            let kk = it / per;
            let r = it % per;
            let l1 = r / NBQ;
            let q = r % NBQ;
            let j = scratch[sc + kk];
            let v = bitcast<f32>(scratch[sc + n + kk]);
            // slot + l1 + 1 < 2·WS: one conditional subtraction instead of `% WS`.
            var s2 = slot + l1 + 1u;
            if (s2 >= WS) {
                s2 = s2 - WS;
            }
            let dst = ring0 + s2 * nq + j * NBQ + q;
            ring[dst] = ring[dst] + v * basis[r];
        }
        storageBarrier();
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn draw_poisson(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let e = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    if (e >= P.n * P.n_steps) {
        return;
    }
    let row = e / P.n;
    let i = e % P.n;
    spikes_out[e] = poisson_draw(ffc[e], seeds[0], add64(W.step_lo, W.step_hi, row), i);
}
