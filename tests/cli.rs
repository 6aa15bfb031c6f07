//! The `neurokernels` command line, run as a binary: `process` gives the same events and bins
//! whichever format holds the recording, writes the sync edges and the provenance, and fails
//! with a one-line message naming the file or flag (and no output left looking complete) on
//! every kind of bad input; `simulate` runs and writes its arrays.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ndarray::{Array1, Array2};
use ndarray_npy::read_npy;
use neurokernels::NpyWriter;
use serde_json::{json, Value};

const FS: f64 = 30_000.0;
/// Neural channels of the fixture `subset.ap.meta` (a Neuropixels 2.0 probe, 10 channels
/// saved plus the sync channel).
const NC: usize = 10;
/// Its `firstSample` (2³² − 100).
const FIRST: u64 = 4_294_967_196;
/// Its µV per bit: `imAiRangeMax / imMaxInt / gain · 1e6` with gain 80.
const UV: f64 = 0.62 / 8192.0 / 80.0 * 1e6;

fn bin() -> Command {
    let mut c = Command::cargo_bin("neurokernels").expect("binary");
    c.env_remove("WGPU_BACKEND");
    c
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recording")
        .join(name);
    std::fs::read_to_string(&p).expect("fixture")
}

/// `(t, NC + 1)` int16 frames: noise, spikes of ~100 µV on every channel, and a sync word
/// whose bit 0 toggles every 0.1 s.
fn frames(t: usize) -> Vec<i16> {
    let mut state = 0x1234_5678u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 8) as f32 / 16_777_216.0
    };
    let mut out = Vec::with_capacity(t * (NC + 1));
    for s in 0..t {
        for c in 0..NC {
            let noise: f32 = (0..4).map(|_| next()).sum::<f32>() - 2.0;
            let phase = (s + 397 * c) % 1500;
            let spike = if phase < 30 {
                -110.0 * (-(((phase as f32 / 30.0) - 0.25) / 0.08).powi(2)).exp()
            } else {
                0.0
            };
            out.push(((noise * 8.0 + spike) as f64 / UV).round() as i16);
        }
        out.push(((s / 3000) % 2) as i16);
    }
    out
}

fn bytes(v: &[i16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn meta_with_size(size: usize) -> String {
    fixture("subset.ap.meta")
        .lines()
        .map(|l| {
            if l.starts_with("fileSizeBytes=") {
                format!("fileSizeBytes={size}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// The same recording as SpikeGLX, Open Ephys, raw int16 and `.npy` (µV); returns each
/// format's path and the extra flags it needs.
fn four_formats(dir: &Path, t: usize) -> Vec<(&'static str, PathBuf, Vec<String>)> {
    let data = frames(t);
    let neural: Vec<i16> = data
        .chunks_exact(NC + 1)
        .flat_map(|f| f[..NC].to_vec())
        .collect();
    let sglx = dir.join("rec.ap.bin");
    std::fs::write(&sglx, bytes(&data)).expect("write");
    std::fs::write(dir.join("rec.ap.meta"), meta_with_size(data.len() * 2)).expect("write");

    let stream = dir.join("oe/recording1/continuous/Neuropix-PXI-100.ProbeA-AP");
    std::fs::create_dir_all(&stream).expect("mkdir");
    let oebin = json!({
        "GUI version": "0.6.4",
        "continuous": [{
            "folder_name": "Neuropix-PXI-100.ProbeA-AP/",
            "sample_rate": FS,
            "num_channels": NC,
            "channels": (0..NC).map(|j| json!({"channel_name": format!("CH{}", j + 1), "bit_volts": UV, "units": "uV"})).collect::<Vec<_>>(),
        }],
    });
    std::fs::write(dir.join("oe/recording1/structure.oebin"), oebin.to_string()).expect("write");
    std::fs::write(stream.join("continuous.dat"), bytes(&neural)).expect("write");
    let mut w = NpyWriter::<i64>::create(stream.join("sample_numbers.npy"), 0).expect("npy");
    w.append_rows(&(0..t as i64).map(|i| FIRST as i64 + i).collect::<Vec<_>>())
        .expect("npy");
    w.finish().expect("npy");

    let raw = dir.join("rec.raw");
    std::fs::write(&raw, bytes(&neural)).expect("write");
    let npy = dir.join("rec.npy");
    let mut w = NpyWriter::<f32>::create(&npy, NC).expect("npy");
    let uv: Vec<f32> = neural.iter().map(|&v| v as f32 * UV as f32).collect();
    w.append_rows(&uv).expect("npy");
    w.finish().expect("npy");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("spikeglx", sglx, vec![]),
        ("openephys", stream.join("continuous.dat"), vec![]),
        (
            "raw",
            raw,
            s(&[
                "--dtype",
                "int16",
                "--channels",
                "10",
                "--fs",
                "30000",
                "--uv-per-bit",
                &UV.to_string(),
            ]),
        ),
        ("npy", npy, s(&["--fs", "30000"])),
    ]
}

struct Out {
    events: Array2<u64>,
    bins: Array2<f32>,
    sync: Array2<u64>,
    provenance: Value,
}

fn run_process(rec: &Path, extra: &[String], out: &Path, backend: &str) -> Out {
    let mut cmd = bin();
    cmd.arg("process")
        .arg(rec)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd.args([
        "--backend",
        backend,
        "--quiet",
        "--fit-seconds",
        "1",
        "--reference",
        "car",
    ]);
    if backend == "gpu" {
        if let Ok(b) = std::env::var("WGPU_BACKEND") {
            cmd.env("WGPU_BACKEND", b);
        }
    }
    let o = cmd.output().expect("run");
    assert!(
        o.status.success(),
        "{}: {}",
        rec.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Out {
        events: read_npy(out.join("events.npy")).expect("events.npy"),
        bins: read_npy(out.join("bins.npy")).expect("bins.npy"),
        sync: read_npy(out.join("sync_edges.npy")).expect("sync_edges.npy"),
        provenance: serde_json::from_str(
            &std::fs::read_to_string(out.join("provenance.json")).expect("provenance"),
        )
        .expect("json"),
    }
}

#[test]
fn process_gives_the_same_outputs_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = 45_000;
    let mut outs = Vec::new();
    for (name, path, extra) in four_formats(dir.path(), t) {
        let out = run_process(
            &path,
            &extra,
            &dir.path().join(format!("out-{name}")),
            "cpu",
        );
        outs.push((name, out));
    }
    let relative = |name: &str, e: &Array2<u64>| {
        let first = if matches!(name, "spikeglx" | "openephys") {
            FIRST
        } else {
            0
        };
        e.rows()
            .into_iter()
            .map(|r| (r[0] - first, r[1]))
            .collect::<Vec<_>>()
    };
    let (name0, first) = &outs[0];
    let want = relative(name0, &first.events);
    // 10 channels × one spike every 50 ms over 1.5 s.
    assert!(want.len() >= 250, "{} events", want.len());
    assert_eq!(first.bins.dim(), (75, NC));
    for (name, o) in &outs[1..] {
        assert_eq!(relative(name, &o.events), want, "{name}");
        assert_eq!(o.bins, first.bins, "{name}");
    }
    // The SpikeGLX sync channel: bit 0 toggles every 3 000 samples, edges at absolute samples.
    let sync = &first.sync;
    assert_eq!(sync.nrows(), (t - 1) / 3000);
    for (k, row) in sync.rows().into_iter().enumerate() {
        assert_eq!(row[0], FIRST + 3000 * (k as u64 + 1));
        assert_eq!(row[1], 0);
        assert_eq!(row[2], u64::from(k % 2 == 0));
    }
    let p = &first.provenance;
    assert_eq!(p["neurokernels_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        p["calibration"]["noise_uv"].as_array().map(Vec::len),
        Some(NC)
    );
    assert_eq!(
        p["calibration"]["thresholds_uv"].as_array().map(Vec::len),
        Some(NC)
    );
    assert!(p["source"].is_object());
}

#[test]
fn process_on_the_gpu_matches_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let formats = four_formats(dir.path(), 30_000);
    let (_, path, extra) = &formats[0];
    let cpu = run_process(path, extra, &dir.path().join("cpu"), "cpu");
    let gpu = run_process(path, extra, &dir.path().join("gpu"), "gpu");
    assert_eq!(gpu.events, cpu.events);
    assert_eq!(gpu.bins, cpu.bins);
    assert!(
        gpu.provenance["engine"]
            .as_str()
            .is_some_and(|e| e != "cpu"),
        "ran on {}",
        gpu.provenance["engine"]
    );
}

/// Runs `process` with `args`, expects failure with a one-line message containing `words`.
fn fails(args: &[&str], words: &[&str]) {
    let o = bin()
        .arg("process")
        .args(args)
        .args(["--backend", "cpu", "--quiet"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    let line = err
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
    for w in words {
        assert!(
            line.contains(w),
            "{args:?}: {line:?} does not mention {w:?}"
        );
    }
}

#[test]
fn bad_input_fails_with_a_message_naming_the_file_or_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let formats = four_formats(d, 3_000);
    let raw = s(&formats[2].1);
    let out = s(&d.join("out"));
    // A truncated plain binary (not a whole number of samples).
    let trunc = d.join("trunc.raw");
    std::fs::write(&trunc, vec![0u8; 2 * 10 * 100 + 3]).expect("write");
    fails(
        &[
            &s(&trunc),
            "--dtype",
            "int16",
            "--channels",
            "10",
            "--fs",
            "30000",
            "--out",
            &out,
        ],
        &["trunc.raw"],
    );
    // Metadata not matching the data size.
    let bad = d.join("bad.ap.bin");
    std::fs::write(&bad, bytes(&frames(100))).expect("write");
    std::fs::write(d.join("bad.ap.meta"), meta_with_size(1234)).expect("write");
    fails(&[&s(&bad), "--out", &out], &["bad.ap", "fileSizeBytes"]);
    // A SpikeGLX .bin without its .meta.
    let lonely = d.join("lonely.ap.bin");
    std::fs::write(&lonely, bytes(&frames(100))).expect("write");
    fails(&[&s(&lonely), "--out", &out], &["lonely.ap", "meta"]);
    // Unknown dtype, zero channels, a missing rate.
    fails(
        &[
            &raw,
            "--dtype",
            "int8",
            "--channels",
            "10",
            "--fs",
            "30000",
            "--out",
            &out,
        ],
        &["dtype", "int8"],
    );
    fails(
        &[
            &raw,
            "--dtype",
            "int16",
            "--channels",
            "0",
            "--fs",
            "30000",
            "--out",
            &out,
        ],
        &["--channels"],
    );
    fails(
        &[&raw, "--dtype", "int16", "--channels", "10", "--out", &out],
        &["--fs"],
    );
    // A missing file.
    fails(
        &[&s(&d.join("nothing.npy")), "--fs", "30000", "--out", &out],
        &["nothing.npy"],
    );
    // An output path that cannot be written (a regular file stands where the directory goes).
    let blocker = d.join("blocker");
    std::fs::write(&blocker, b"x").expect("write");
    let raw_flags = ["--dtype", "int16", "--channels", "10", "--fs", "30000"];
    let mut a = vec![raw.as_str()];
    a.extend(raw_flags);
    let blocked = s(&blocker.join("out"));
    fails(&[a.clone(), vec!["--out", &blocked]].concat(), &["--out"]);
    // Settings out of range.
    for (flag, value) in [
        ("--bin-duration", "0"),
        ("--threshold-k", "0"),
        ("--fit-seconds", "-1"),
        ("--refractory", "-0.001"),
        ("--ridge", "-1"),
        ("--chunk-ms", "0"),
        ("--clusters", "0-3;2-12"),
    ] {
        let arg = format!("{flag}={value}");
        fails(&[a.clone(), vec!["--out", &out, &arg]].concat(), &[flag]);
    }
    fails(
        &[a.clone(), vec!["--out", &out, "--band", "6000", "300"]].concat(),
        &["--band"],
    );
}

#[test]
fn a_failed_stream_leaves_no_output_looking_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let npy = dir.path().join("nan.npy");
    let t = 45_000;
    let mut x = Array2::<f32>::zeros((t, 4));
    x[[40_000, 2]] = f32::NAN; // after the 1 s calibration window
    let mut w = NpyWriter::<f32>::create(&npy, 4).expect("npy");
    w.append_rows(x.as_slice().expect("contiguous"))
        .expect("npy");
    w.finish().expect("npy");
    let out = dir.path().join("out");
    let o = bin()
        .args([
            "process",
            &npy.to_string_lossy(),
            "--fs",
            "30000",
            "--fit-seconds",
            "1",
            "--backend",
            "cpu",
            "--quiet",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nan.npy") && err.contains("non-finite"),
        "{err}"
    );
    for f in [
        "events.npy",
        "bins.npy",
        "event_values.npy",
        "sync_edges.npy",
        "provenance.json",
    ] {
        assert!(!out.join(f).exists(), "{f} left behind");
    }
}

#[test]
fn simulate_runs_and_writes_its_arrays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = bin()
        .args([
            "simulate",
            "--backend",
            "cpu",
            "--channels",
            "16",
            "--trials",
            "12",
            "--cluster-size",
            "8",
        ])
        .args(["--fit-seconds", "1", "--out"])
        .arg(dir.path())
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for w in [
        "precision",
        "recall",
        "accuracy",
        "chance",
        "real time",
        "algorithmic delay",
    ] {
        assert!(stdout.contains(w), "no {w:?} in {stdout}");
    }
    let truth: Array2<u64> = read_npy(dir.path().join("true_spikes.npy")).expect("truth");
    let events: Array2<u64> = read_npy(dir.path().join("events.npy")).expect("events");
    let bins: Array2<f32> = read_npy(dir.path().join("bins.npy")).expect("bins");
    let labels: Array1<u64> = read_npy(dir.path().join("trial_labels.npy")).expect("labels");
    assert!(truth.nrows() > 100 && events.nrows() > 100);
    assert_eq!(bins.dim(), (120, 16));
    assert_eq!(labels.len(), 12);
    let bad = bin()
        .args(["simulate", "--channels", "0", "--backend", "cpu"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("channels"));
}

/// Degenerate recordings through the command line: an all-zero raw recording and one shorter
/// than the fit window both process to completion with no events (every channel reported
/// dead), on the CPU engine.
#[test]
fn degenerate_recordings_process_to_completion_with_no_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw_args = |p: &Path| {
        let mut v = vec![p.display().to_string()];
        v.extend(
            ["--dtype", "int16", "--channels", "10", "--fs", "30000"]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    };
    // 2 s of zeros; then 0.2 s of zeros against a 1 s fit window.
    for (name, samples) in [("zeros.raw", 60_000usize), ("short.raw", 6_000)] {
        let path = dir.path().join(name);
        std::fs::write(&path, vec![0u8; samples * NC * 2]).expect("write");
        let out = dir.path().join(format!("{name}.out"));
        let o = bin()
            .arg("process")
            .args(raw_args(&path))
            .args(["--backend", "cpu", "--quiet", "--fit-seconds", "1", "--out"])
            .arg(&out)
            .output()
            .expect("run");
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let events: Array2<u64> = read_npy(out.join("events.npy")).expect("events.npy");
        let bins: Array2<f32> = read_npy(out.join("bins.npy")).expect("bins.npy");
        assert_eq!(events.nrows(), 0, "{name}");
        assert_eq!(bins.nrows(), samples / 600, "{name}");
        assert!(bins.iter().all(|&v| v == 0.0), "{name}");
    }
}
