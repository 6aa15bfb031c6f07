//! Recording readers (SpikeGLX, Open Ephys, plain binary, `.npy`), sync edges and the
//! streaming `.npy` writer. Metadata fixtures live in `tests/fixtures/recording/`; data
//! payloads are generated here into temporary directories.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use neurokernels::{
    sync_edges, Dtype, Error, NpyWriter, OpenOptions, RawFormat, Recording, SyncEdge,
};
use serde_json::{json, Value};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/recording");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIX).join(name)).unwrap()
}

/// Replaces (or, with `None`, removes) the `key=` line of a meta text.
fn patch(meta: &str, key: &str, value: Option<&str>) -> String {
    let mut out = String::new();
    let mut found = false;
    for line in meta.lines() {
        if line.split_once('=').map(|(k, _)| k) == Some(key) {
            found = true;
            if let Some(v) = value {
                out.push_str(&format!("{key}={v}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        if let Some(v) = value {
            out.push_str(&format!("{key}={v}\n"));
        }
    }
    out
}

fn bytes_i16(data: &[i16]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes `stem.bin` (int16 `data`) and `stem.meta` (`meta` with `fileSizeBytes` set).
fn write_sglx(dir: &Path, stem: &str, meta: &str, data: &[i16]) -> PathBuf {
    let bin = dir.join(format!("{stem}.bin"));
    let bytes = bytes_i16(data);
    std::fs::write(&bin, &bytes).unwrap();
    let meta = patch(meta, "fileSizeBytes", Some(&bytes.len().to_string()));
    std::fs::write(dir.join(format!("{stem}.meta")), meta).unwrap();
    bin
}

/// Deterministic int16 values covering the full range.
fn signal(n: usize, seed: u64) -> Vec<i16> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 48) as u16 as i16
        })
        .collect()
}

/// A sync word: bit 0 toggles every 10 samples, bit 6 is high for samples 37..91 and
/// 400..401, bit 15 toggles at sample 500.
fn sync_word(t: usize) -> u16 {
    let mut w = ((t / 10) % 2) as u16;
    if (37..91).contains(&t) || t == 400 {
        w |= 1 << 6;
    }
    if t >= 500 {
        w |= 1 << 15;
    }
    w
}

/// `t` samples of `neural` channels plus a sync column, interleaved.
fn interleaved(t: usize, neural: usize, seed: u64) -> Vec<i16> {
    let sig = signal(t * neural, seed);
    let mut out = Vec::with_capacity(t * (neural + 1));
    for i in 0..t {
        out.extend_from_slice(&sig[i * neural..(i + 1) * neural]);
        out.push(sync_word(i) as i16);
    }
    out
}

fn read_all(rec: &Recording, chunk: usize) -> Array2<f32> {
    let n = rec.n_samples();
    let mut all = Array2::<f32>::zeros((n, rec.n_channels()));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let mut out = Array2::<f32>::zeros((len, rec.n_channels()));
        rec.read_chunk(start, &mut out).unwrap();
        all.slice_mut(ndarray::s![start..start + len, ..])
            .assign(&out);
        start += len;
    }
    all
}

fn expect_format(r: Result<Recording, Error>, file: &str, words: &str) {
    match r {
        Err(Error::Format { path, message }) => {
            assert!(
                path.ends_with(file),
                "error names `{path}`, expected `{file}` ({message})"
            );
            assert!(
                message.contains(words),
                "message `{message}` lacks `{words}`"
            );
            assert!(!message.contains('\n'));
        }
        Err(e) => panic!("expected a format error about {file}, got {e:?}"),
        Ok(_) => panic!("expected a format error about {file}, got a recording"),
    }
}

fn open(path: &Path) -> Result<Recording, Error> {
    Recording::open(path, &OpenOptions::default())
}

#[test]
fn np1_ap_meta() {
    let dir = tempfile::tempdir().unwrap();
    let bin = write_sglx(
        dir.path(),
        "run_g0_t0.imec0.ap",
        &fixture("np1.ap.meta"),
        &interleaved(50, 384, 1),
    );
    let rec = open(&bin).unwrap();
    assert_eq!(rec.format_name(), "spikeglx");
    assert_eq!(rec.fs(), 30000.0);
    assert_eq!(rec.n_samples(), 50);
    assert_eq!(rec.n_channels(), 384);
    assert_eq!(rec.first_sample(), 0);
    assert!(rec.has_sync());
    assert_eq!(rec.channel_ids(), (0..384).collect::<Vec<u32>>().as_slice());
    for (c, &uv) in rec.uv_per_bit().iter().enumerate() {
        let want = if c % 4 == 3 { 4.6875 } else { 2.34375 };
        assert!((uv - want).abs() < 1e-12, "channel {c}: {uv}");
    }
    assert_eq!(rec.path(), bin.as_path());
    let p = rec.provenance();
    assert_eq!(p["format"], "spikeglx");
    assert_eq!(p["n_channels"], 384);
    assert_eq!(p["meta"]["imMaxInt"], "512");
    assert_eq!(p["meta"]["snsSaveChanSubset"], "0:383,768");
    assert_eq!(p["channel_ids"][383], 383);
    assert_eq!(p["sync_column"], 384);

    // The sync word is dropped from the data and read on its own.
    let mut out = Array2::<f32>::zeros((50, 384));
    rec.read_chunk(0, &mut out).unwrap();
    let raw = interleaved(50, 384, 1);
    for t in [0, 17, 49] {
        for c in [0, 3, 383] {
            let want = raw[t * 385 + c] as f32 * rec.uv_per_bit()[c] as f32;
            assert_eq!(out[(t, c)], want);
        }
    }
    let sync = rec.read_sync(0, 50).unwrap();
    assert_eq!(sync, (0..50).map(sync_word).collect::<Vec<_>>());

    // imMaxInt defaults to 512 for a 1.0 probe.
    let meta = patch(&fixture("np1.ap.meta"), "imMaxInt", None);
    let bin = write_sglx(dir.path(), "nomax.ap", &meta, &interleaved(5, 384, 1));
    let rec = open(&bin).unwrap();
    assert!((rec.uv_per_bit()[0] - 2.34375).abs() < 1e-12);
}

#[test]
fn np1_lf_meta() {
    let dir = tempfile::tempdir().unwrap();
    let bin = write_sglx(
        dir.path(),
        "run_g0_t0.imec0.lf",
        &fixture("np1.lf.meta"),
        &interleaved(20, 384, 2),
    );
    let rec = open(&bin).unwrap();
    assert_eq!(rec.fs(), 2500.0);
    assert_eq!(rec.n_channels(), 384);
    assert_eq!(rec.channel_ids()[0], 384);
    assert_eq!(rec.channel_ids()[383], 767);
    assert!(rec.has_sync());
    for (c, &uv) in rec.uv_per_bit().iter().enumerate() {
        let want = if c % 2 == 1 { 9.375 } else { 4.6875 };
        assert!((uv - want).abs() < 1e-12, "channel {c}: {uv}");
    }
}

#[test]
fn np2_ap_meta() {
    let dir = tempfile::tempdir().unwrap();
    let bin = write_sglx(
        dir.path(),
        "np2.ap",
        &fixture("np2.ap.meta"),
        &interleaved(30, 384, 3),
    );
    let rec = open(&bin).unwrap();
    assert_eq!(rec.n_channels(), 384);
    assert_eq!(rec.first_sample(), 123456);
    assert!(rec.has_sync());
    assert_eq!(rec.channel_ids(), (0..384).collect::<Vec<u32>>().as_slice());
    let want = 0.62 / 8192.0 / 80.0 * 1e6;
    assert!(rec.uv_per_bit().iter().all(|&u| (u - want).abs() < 1e-12));
    assert!((want - 0.946044921875).abs() < 1e-12);
    assert_eq!(rec.provenance()["meta"]["neuropixels_2"], true);
    // imMaxInt defaults to 8192 for a 2.0 probe.
    let meta = patch(&fixture("np2.ap.meta"), "imMaxInt", None);
    let bin = write_sglx(dir.path(), "nomax.ap", &meta, &interleaved(5, 384, 3));
    let rec = open(&bin).unwrap();
    assert!((rec.uv_per_bit()[7] - want).abs() < 1e-12);
}

#[test]
fn subset_meta() {
    let dir = tempfile::tempdir().unwrap();
    let bin = write_sglx(
        dir.path(),
        "subset.ap",
        &fixture("subset.ap.meta"),
        &interleaved(40, 10, 4),
    );
    let rec = open(&bin).unwrap();
    assert_eq!(rec.n_channels(), 10);
    assert_eq!(rec.channel_ids(), (0..10).collect::<Vec<u32>>().as_slice());
    assert_eq!(rec.first_sample(), (1u64 << 32) - 100);
    assert!(rec.has_sync());
    assert_eq!(
        rec.read_sync(3, 5).unwrap(),
        (3..8).map(sync_word).collect::<Vec<_>>()
    );
}

/// Writes the same int16 data as SpikeGLX, Open Ephys, raw int16 and `.npy` (f32 µV).
fn four_formats(dir: &Path, t: usize) -> Vec<Recording> {
    let data = interleaved(t, 10, 9);
    let sglx_bin = write_sglx(dir, "eq.ap", &fixture("subset.ap.meta"), &data);
    let sglx = open(&sglx_bin).unwrap();
    let uv = sglx.uv_per_bit().to_vec();
    let neural: Vec<i16> = data
        .chunks_exact(11)
        .flat_map(|f| f[..10].iter().copied())
        .collect();

    // Open Ephys: one stream with the same µV per bit, first sample as in the meta.
    let rec_dir = dir.join("oe").join("recording1");
    let stream_dir = rec_dir
        .join("continuous")
        .join("Neuropix-PXI-100.ProbeA-AP");
    std::fs::create_dir_all(&stream_dir).unwrap();
    let oebin = json!({
        "GUI version": "0.6.4",
        "continuous": [{
            "folder_name": "Neuropix-PXI-100.ProbeA-AP/",
            "sample_rate": 30000.0,
            "num_channels": 10,
            "channels": uv.iter().enumerate().map(|(j, &b)| json!({
                "channel_name": format!("CH{}", j + 1), "bit_volts": b, "units": "uV"
            })).collect::<Vec<Value>>(),
        }],
    });
    std::fs::write(rec_dir.join("structure.oebin"), oebin.to_string()).unwrap();
    std::fs::write(stream_dir.join("continuous.dat"), bytes_i16(&neural)).unwrap();
    let mut w = NpyWriter::<i64>::create(stream_dir.join("sample_numbers.npy"), 0).unwrap();
    let first = sglx.first_sample() as i64;
    w.append_rows(&(0..t as i64).map(|i| first + i).collect::<Vec<_>>())
        .unwrap();
    w.finish().unwrap();
    let oe = open(&stream_dir.join("continuous.dat")).unwrap();

    // Raw int16.
    let raw_path = dir.join("eq.raw");
    std::fs::write(&raw_path, bytes_i16(&neural)).unwrap();
    let mut fmt = RawFormat::new("int16".parse().unwrap(), 10, 30000.0);
    fmt.uv_per_bit = uv[0];
    let raw = Recording::open(
        &raw_path,
        &OpenOptions {
            raw: Some(fmt),
            ..Default::default()
        },
    )
    .unwrap();

    // .npy in µV.
    let npy_path = dir.join("eq.npy");
    let mut w = NpyWriter::<f32>::create(&npy_path, 10).unwrap();
    let uv32: Vec<f32> = neural
        .iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * uv[i % 10] as f32)
        .collect();
    w.append_rows(&uv32).unwrap();
    w.finish().unwrap();
    let npy = Recording::open(
        &npy_path,
        &OpenOptions {
            fs: Some(30000.0),
            ..Default::default()
        },
    )
    .unwrap();
    vec![sglx, oe, raw, npy]
}

#[test]
fn formats_agree_for_any_chunking() {
    let dir = tempfile::tempdir().unwrap();
    let t = 1000;
    let recs = four_formats(dir.path(), t);
    let names: Vec<&str> = recs.iter().map(|r| r.format_name()).collect();
    assert_eq!(names, ["spikeglx", "openephys", "raw", "npy"]);
    assert_eq!(recs[1].first_sample(), recs[0].first_sample());
    let reference = read_all(&recs[0], t);
    let data = interleaved(t, 10, 9);
    let uv = recs[0].uv_per_bit()[0] as f32;
    for i in [0, 1, 499, 999] {
        for c in [0, 9] {
            assert_eq!(reference[(i, c)], data[i * 11 + c] as f32 * uv);
        }
    }
    for rec in &recs {
        assert_eq!(rec.n_samples(), t);
        assert_eq!(rec.n_channels(), 10);
        assert_eq!(rec.fs(), 30000.0);
        for chunk in [1, 7, 64, 333, 1000] {
            assert_eq!(
                read_all(rec, chunk),
                reference,
                "{} chunk {chunk}",
                rec.format_name()
            );
        }
        // An interior chunk on its own.
        let mut out = Array2::<f32>::zeros((123, 10));
        rec.read_chunk(456, &mut out).unwrap();
        assert_eq!(out, reference.slice(ndarray::s![456..579, ..]));
        // Only SpikeGLX has a sync word.
        assert_eq!(rec.has_sync(), rec.format_name() == "spikeglx");
        if !rec.has_sync() {
            assert!(rec.read_sync(0, 10).unwrap().is_empty());
        }
        // Bounds.
        let mut out = Array2::<f32>::zeros((2, 10));
        assert!(matches!(
            rec.read_chunk(t - 1, &mut out),
            Err(Error::IndexOutOfRange { .. })
        ));
        let mut out = Array2::<f32>::zeros((0, 10));
        rec.read_chunk(t, &mut out).unwrap();
        let mut out = Array2::<f32>::zeros((2, 9));
        assert!(matches!(
            rec.read_chunk(0, &mut out),
            Err(Error::Shape { .. })
        ));
    }
}

#[test]
fn sync_edges_are_chunk_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let t = 1000;
    let recs = four_formats(dir.path(), t);
    let rec = &recs[0];
    let first = rec.first_sample();
    let words = rec.read_sync(0, t).unwrap();
    assert_eq!(words, (0..t).map(sync_word).collect::<Vec<_>>());
    let all = sync_edges(&words, first, None);

    // Expected edges, computed directly.
    let mut want = Vec::new();
    for i in 1..t {
        let (a, b) = (sync_word(i - 1), sync_word(i));
        for bit in 0..16u8 {
            if (a ^ b) >> bit & 1 == 1 {
                want.push(SyncEdge {
                    sample: first + i as u64,
                    bit,
                    rising: b >> bit & 1 == 1,
                });
            }
        }
    }
    assert_eq!(all, want);
    assert!(all.contains(&SyncEdge {
        sample: first + 37,
        bit: 6,
        rising: true
    }));
    assert!(all.contains(&SyncEdge {
        sample: first + 91,
        bit: 6,
        rising: false
    }));
    assert!(all.contains(&SyncEdge {
        sample: first + 500,
        bit: 15,
        rising: true
    }));
    assert_eq!(all.iter().filter(|e| e.bit == 0).count(), 99);

    for chunk in [1, 3, 10, 37, 256, 999] {
        let mut got = Vec::new();
        let mut prev = None;
        let mut start = 0;
        while start < t {
            let len = chunk.min(t - start);
            let w = rec.read_sync(start, len).unwrap();
            got.extend(sync_edges(&w, first + start as u64, prev));
            prev = w.last().copied();
            start += len;
        }
        assert_eq!(got, all, "chunk {chunk}");
    }
    assert!(sync_edges(&[], 0, Some(1)).is_empty());
    assert_eq!(
        sync_edges(&[0b101], 10, Some(0b011)),
        vec![
            SyncEdge {
                sample: 10,
                bit: 1,
                rising: false
            },
            SyncEdge {
                sample: 10,
                bit: 2,
                rising: true
            }
        ]
    );
    assert!(matches!(
        rec.read_sync(t - 1, 2),
        Err(Error::IndexOutOfRange { .. })
    ));
}

/// Lays the fixture `structure.oebin` out with data for both streams.
fn oe_fixture(dir: &Path) -> PathBuf {
    let rec_dir = dir
        .join("Record Node 101")
        .join("experiment1")
        .join("recording1");
    let ap = rec_dir
        .join("continuous")
        .join("Neuropix-PXI-100.ProbeA-AP");
    let lfp = rec_dir
        .join("continuous")
        .join("Neuropix-PXI-100.ProbeA-LFP");
    std::fs::create_dir_all(&ap).unwrap();
    std::fs::create_dir_all(&lfp).unwrap();
    std::fs::write(rec_dir.join("structure.oebin"), fixture("structure.oebin")).unwrap();
    std::fs::write(ap.join("continuous.dat"), bytes_i16(&signal(6 * 300, 5))).unwrap();
    std::fs::write(lfp.join("continuous.dat"), bytes_i16(&signal(4 * 25, 6))).unwrap();
    let mut w = NpyWriter::<i64>::create(ap.join("sample_numbers.npy"), 0).unwrap();
    w.append_rows(&(0..300).map(|i| 987_654 + i).collect::<Vec<i64>>())
        .unwrap();
    w.finish().unwrap();
    rec_dir
}

#[test]
fn open_ephys_two_streams() {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = oe_fixture(dir.path());
    let oebin = rec_dir.join("structure.oebin");

    let ap = open(&oebin).unwrap();
    assert_eq!(ap.format_name(), "openephys");
    assert_eq!(ap.fs(), 30000.0);
    assert_eq!(ap.n_channels(), 6);
    assert_eq!(ap.n_samples(), 300);
    assert_eq!(ap.first_sample(), 987_654);
    assert!(!ap.has_sync());
    assert_eq!(ap.channel_names()[5], "CH6");
    assert_eq!(ap.channel_ids(), &[0, 1, 2, 3, 4, 5]);
    assert!(ap.uv_per_bit().iter().all(|&b| b == 0.1949999928474426));
    assert!(ap
        .path()
        .ends_with("Neuropix-PXI-100.ProbeA-AP/continuous.dat"));
    let p = ap.provenance();
    assert_eq!(p["meta"]["folder_name"], "Neuropix-PXI-100.ProbeA-AP");
    assert_eq!(p["channel_names"][0], "CH1");

    // The directory opens the same stream.
    let same = open(&rec_dir).unwrap();
    assert_eq!(read_all(&same, 300), read_all(&ap, 300));

    let by_name = Recording::open(
        &oebin,
        &OpenOptions {
            stream: Some("LFP".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let by_dat = open(
        &rec_dir
            .join("continuous")
            .join("Neuropix-PXI-100.ProbeA-LFP")
            .join("continuous.dat"),
    )
    .unwrap();
    for lfp in [&by_name, &by_dat] {
        assert_eq!(lfp.fs(), 2500.0);
        assert_eq!(lfp.n_channels(), 4);
        assert_eq!(lfp.n_samples(), 25);
        assert_eq!(lfp.first_sample(), 0);
        assert!(lfp.uv_per_bit().iter().all(|&b| b == 0.5));
    }
    let want = signal(100, 6);
    assert_eq!(read_all(&by_dat, 25)[(3, 2)], want[3 * 4 + 2] as f32 * 0.5);

    expect_format(
        Recording::open(
            &oebin,
            &OpenOptions {
                stream: Some("ProbeB".into()),
                ..Default::default()
            },
        ),
        "structure.oebin",
        "ProbeB",
    );
}

fn sglx_err(meta: &str, data: &[i16]) -> (tempfile::TempDir, Result<Recording, Error>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = write_sglx(dir.path(), "bad.ap", meta, data);
    let r = open(&bin);
    (dir, r)
}

#[test]
fn spikeglx_errors() {
    let base = fixture("subset.ap.meta");
    let data = interleaved(20, 10, 7);

    // Missing .meta.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("lonely.ap.bin");
    std::fs::write(&bin, bytes_i16(&data)).unwrap();
    expect_format(open(&bin), "lonely.ap.meta", "missing");

    // Truncated file (size matches fileSizeBytes but is not whole samples).
    let (_d, r) = sglx_err(&base, &data[..data.len() - 3]);
    expect_format(r, "bad.ap.bin", "truncated");

    // fileSizeBytes not matching the file.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bad.ap.bin");
    std::fs::write(&bin, bytes_i16(&data)).unwrap();
    std::fs::write(
        dir.path().join("bad.ap.meta"),
        patch(&base, "fileSizeBytes", Some("1234")),
    )
    .unwrap();
    expect_format(open(&bin), "bad.ap.bin", "fileSizeBytes=1234");

    // Channel counts that disagree.
    let (_d, r) = sglx_err(&patch(&base, "nSavedChans", Some("12")), &data);
    expect_format(r, "bad.ap.bin", "nSavedChans=12");
    let (_d, r) = sglx_err(
        &patch(&base, "nSavedChans", Some("12")),
        &interleaved(20, 11, 7),
    );
    expect_format(r, "bad.ap.meta", "nSavedChans=12");
    let (_d, r) = sglx_err(&patch(&base, "snsSaveChanSubset", Some("0:10,384")), &data);
    expect_format(r, "bad.ap.meta", "nSavedChans=11");
    let (_d, r) = sglx_err(&patch(&base, "nSavedChans", Some("0")), &data);
    expect_format(r, "bad.ap.meta", "0");

    // Sample rate.
    let (_d, r) = sglx_err(&patch(&base, "imSampRate", None), &data);
    expect_format(r, "bad.ap.meta", "imSampRate");
    let (_d, r) = sglx_err(&patch(&base, "imSampRate", Some("0")), &data);
    expect_format(r, "bad.ap.meta", "not positive");
    let (_d, r) = sglx_err(&patch(&base, "imSampRate", Some("-30000")), &data);
    expect_format(r, "bad.ap.meta", "not positive");

    // Unparsable values.
    let (_d, r) = sglx_err(&patch(&base, "imAiRangeMax", Some("abc")), &data);
    expect_format(r, "bad.ap.meta", "imAiRangeMax=abc");
    let (_d, r) = sglx_err(&patch(&base, "snsApLfSy", Some("10,x,1")), &data);
    expect_format(r, "bad.ap.meta", "snsApLfSy");
    let (_d, r) = sglx_err(&patch(&base, "snsSaveChanSubset", Some("0:9;384")), &data);
    expect_format(r, "bad.ap.meta", "snsSaveChanSubset");
    let (_d, r) = sglx_err(&patch(&base, "firstSample", Some("-1")), &data);
    expect_format(r, "bad.ap.meta", "firstSample");
    let (_d, r) = sglx_err(&format!("{base}not a key value line\n"), &data);
    expect_format(r, "bad.ap.meta", "key=value");

    // Subset index out of range.
    let (_d, r) = sglx_err(&patch(&base, "snsSaveChanSubset", Some("0:9,385")), &data);
    expect_format(r, "bad.ap.meta", "out of range");
    let np1 = fixture("np1.ap.meta");
    let np1 = patch(&np1, "acqApLfSy", None);
    let np1 = patch(&np1, "snsSaveChanSubset", Some("0:382,384,768"));
    let (_d, r) = sglx_err(&np1, &interleaved(2, 384, 1));
    expect_format(r, "bad.ap.meta", "out of range");
}

/// An edit of a parsed `structure.oebin`.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn open_ephys_errors() {
    let base: Value = serde_json::from_str(&fixture("structure.oebin")).unwrap();
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v: &mut Value| v["continuous"][0]["num_channels"] = json!(7)),
            "num_channels=7",
        ),
        (
            Box::new(|v: &mut Value| {
                v["continuous"][0]["num_channels"] = json!(0);
                v["continuous"][0]["channels"] = json!([]);
            }),
            "0 channels",
        ),
        (
            Box::new(|v: &mut Value| v["continuous"][0]["sample_rate"] = json!(-1.0)),
            "not positive",
        ),
        (
            Box::new(|v: &mut Value| {
                v["continuous"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("sample_rate");
            }),
            "sample_rate",
        ),
        (
            Box::new(|v: &mut Value| v["continuous"][0]["channels"][2]["bit_volts"] = json!("x")),
            "bit_volts",
        ),
        (
            Box::new(|v: &mut Value| v["continuous"] = json!([])),
            "empty",
        ),
    ];
    for (edit, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        let rec_dir = oe_fixture(dir.path());
        let mut v = base.clone();
        edit(&mut v);
        std::fs::write(rec_dir.join("structure.oebin"), v.to_string()).unwrap();
        expect_format(
            open(&rec_dir.join("structure.oebin")),
            "structure.oebin",
            words,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = oe_fixture(dir.path());
    std::fs::write(rec_dir.join("structure.oebin"), "{ not json").unwrap();
    expect_format(open(&rec_dir), "structure.oebin", "JSON");

    // Data not a whole number of samples.
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = oe_fixture(dir.path());
    let dat = rec_dir
        .join("continuous")
        .join("Neuropix-PXI-100.ProbeA-AP")
        .join("continuous.dat");
    std::fs::write(&dat, bytes_i16(&signal(6 * 300 - 1, 5))).unwrap();
    expect_format(open(&dat), "continuous.dat", "truncated");

    // num_channels agreeing with the channel list but not with the data.
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = oe_fixture(dir.path());
    let mut v = base.clone();
    v["continuous"][0]["num_channels"] = json!(3);
    let three: Vec<Value> = v["continuous"][0]["channels"].as_array().unwrap()[..3].to_vec();
    v["continuous"][0]["channels"] = json!(three);
    std::fs::write(rec_dir.join("structure.oebin"), v.to_string()).unwrap();
    expect_format(
        open(&rec_dir.join("structure.oebin")),
        "sample_numbers.npy",
        "num_channels=3",
    );

    // A continuous.dat with no structure.oebin above it.
    let dir = tempfile::tempdir().unwrap();
    let dat = dir.path().join("continuous.dat");
    std::fs::write(&dat, bytes_i16(&signal(10, 5))).unwrap();
    expect_format(open(&dat), "continuous.dat", "structure.oebin");
}

#[test]
fn raw_and_npy_errors() {
    // Unknown dtype.
    assert!(matches!(
        "int12".parse::<Dtype>(),
        Err(Error::InvalidSetting { name: "dtype", .. })
    ));
    assert_eq!("float32".parse::<Dtype>().unwrap(), Dtype::F32);
    assert_eq!("INT16".parse::<Dtype>().unwrap(), Dtype::I16);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.dat");
    std::fs::write(&path, bytes_i16(&signal(30, 1))).unwrap();
    let with = |f: RawFormat| OpenOptions {
        raw: Some(f),
        ..Default::default()
    };
    expect_format(
        Recording::open(&path, &with(RawFormat::new(Dtype::I16, 0, 1000.0))),
        "x.dat",
        "0 channels",
    );
    expect_format(
        Recording::open(&path, &with(RawFormat::new(Dtype::I16, 3, 0.0))),
        "x.dat",
        "not positive",
    );
    expect_format(
        Recording::open(&path, &with(RawFormat::new(Dtype::I16, 4, 1000.0))),
        "x.dat",
        "truncated",
    );
    expect_format(
        Recording::open(&path, &with(RawFormat::new(Dtype::F32, 4, 1000.0))),
        "x.dat",
        "truncated",
    );
    expect_format(open(&path), "x.dat", "unknown recording format");
    let ok = Recording::open(&path, &with(RawFormat::new(Dtype::F32, 3, 1000.0))).unwrap();
    assert_eq!(ok.n_samples(), 5);
    assert_eq!(ok.dtype(), Dtype::F32);
    // A .bin without .meta reads as raw when a raw format is given.
    let bin = dir.path().join("plain.bin");
    std::fs::write(&bin, bytes_i16(&signal(30, 1))).unwrap();
    let raw = Recording::open(&bin, &with(RawFormat::new(Dtype::I16, 3, 1000.0))).unwrap();
    assert_eq!(raw.format_name(), "raw");
    assert_eq!(raw.n_samples(), 10);
    // Empty file: zero samples.
    let empty = dir.path().join("empty.dat");
    std::fs::write(&empty, b"").unwrap();
    let e = Recording::open(&empty, &with(RawFormat::new(Dtype::I16, 3, 1000.0))).unwrap();
    assert_eq!(e.n_samples(), 0);
    let mut out = Array2::<f32>::zeros((0, 3));
    e.read_chunk(0, &mut out).unwrap();

    // .npy: Fortran order, truncated, unsupported dtype, missing fs.
    let npy = dir.path().join("a.npy");
    let arr = Array2::from_shape_fn((8, 3), |(i, j)| (i * 3 + j) as f32);
    ndarray_npy::write_npy(&npy, &arr).unwrap();
    let fs = OpenOptions {
        fs: Some(1000.0),
        ..Default::default()
    };
    let rec = Recording::open(&npy, &fs).unwrap();
    assert_eq!(read_all(&rec, 3), arr);
    expect_format(open(&npy), "a.npy", "sample rate");
    let fortran = dir.path().join("f.npy");
    let bytes = std::fs::read(&npy).unwrap();
    let text =
        String::from_utf8_lossy(&bytes).replace("'fortran_order': False", "'fortran_order': True ");
    let mut fbytes = bytes.clone();
    let at = text.find("'fortran_order'").unwrap();
    fbytes[at..at + 22].copy_from_slice(&text.as_bytes()[at..at + 22]);
    std::fs::write(&fortran, &fbytes).unwrap();
    expect_format(Recording::open(&fortran, &fs), "f.npy", "Fortran");
    let mut bytes = std::fs::read(&npy).unwrap();
    bytes.truncate(bytes.len() - 4);
    let short = dir.path().join("short.npy");
    std::fs::write(&short, &bytes).unwrap();
    expect_format(Recording::open(&short, &fs), "short.npy", "truncated");
    let f64npy = dir.path().join("d.npy");
    ndarray_npy::write_npy(&f64npy, &arr.mapv(|v| v as f64)).unwrap();
    expect_format(Recording::open(&f64npy, &fs), "d.npy", "<f8");
    // int16 .npy with a scale, and 1-D as one channel.
    let i16npy = dir.path().join("i.npy");
    let ai = Array1::from_iter((0..10).map(|v| v as i16 - 5));
    ndarray_npy::write_npy(&i16npy, &ai).unwrap();
    let mut f = RawFormat::new(Dtype::I16, 1, 500.0);
    f.uv_per_bit = 0.5;
    let r = Recording::open(&i16npy, &with(f)).unwrap();
    assert_eq!(r.n_channels(), 1);
    assert_eq!(r.fs(), 500.0);
    assert_eq!(
        read_all(&r, 4).column(0).to_vec(),
        ai.mapv(|v| v as f32 * 0.5).to_vec()
    );
}

#[test]
fn npy_writer_round_trip() {
    let dir = tempfile::tempdir().unwrap();

    // f32, 2-D, written in uneven pieces.
    let path = dir.path().join("x.npy");
    let arr = Array2::from_shape_fn((37, 5), |(i, j)| i as f32 * 0.5 - j as f32 * 1e3);
    let flat: Vec<f32> = arr.iter().copied().collect();
    let mut w = NpyWriter::<f32>::create(&path, 5).unwrap();
    assert!(!path.exists());
    w.append_rows(&flat[..5]).unwrap();
    w.append_rows(&[]).unwrap();
    w.append_rows(&flat[5..100]).unwrap();
    w.append_rows(&flat[100..]).unwrap();
    assert!(matches!(
        w.append_rows(&flat[..3]),
        Err(Error::Shape { .. })
    ));
    assert_eq!(w.rows(), 37);
    assert_eq!(w.finish().unwrap(), path);
    let back: Array2<f32> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back, arr);
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
    assert_eq!(header_len % 64, 0);
    assert_eq!(bytes[header_len - 1], b'\n');
    assert!(String::from_utf8_lossy(&bytes[..header_len]).starts_with("\u{FFFD}NUMPY\u{1}\u{0}"));
    assert!(!dir.path().join("x.npy.partial").exists());

    // u64, 1-D, values beyond 2^32.
    let path = dir.path().join("s.npy");
    let v: Vec<u64> = (0..1000).map(|i| (1u64 << 40) + i * 7).collect();
    let mut w = NpyWriter::<u64>::create(&path, 0).unwrap();
    for c in v.chunks(333) {
        w.append_rows(c).unwrap();
    }
    w.finish().unwrap();
    let back: Array1<u64> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back.to_vec(), v);

    // u32 and i64 2-D.
    let path = dir.path().join("u.npy");
    let mut w = NpyWriter::<u32>::create(&path, 2).unwrap();
    w.append_rows(&[1, 2, 3, 4]).unwrap();
    w.finish().unwrap();
    let back: Array2<u32> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back, ndarray::arr2(&[[1, 2], [3, 4]]));
    let path = dir.path().join("i.npy");
    let mut w = NpyWriter::<i64>::create(&path, 3).unwrap();
    w.append_rows(&[-1, i64::MIN, i64::MAX]).unwrap();
    w.finish().unwrap();
    let back: Array2<i64> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back, ndarray::arr2(&[[-1, i64::MIN, i64::MAX]]));

    // Zero rows.
    let path = dir.path().join("z.npy");
    NpyWriter::<f32>::create(&path, 4)
        .unwrap()
        .finish()
        .unwrap();
    let back: Array2<f32> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back.dim(), (0, 4));
    let path = dir.path().join("z1.npy");
    NpyWriter::<u64>::create(&path, 0)
        .unwrap()
        .finish()
        .unwrap();
    let back: Array1<u64> = ndarray_npy::read_npy(&path).unwrap();
    assert_eq!(back.len(), 0);

    // Dropped without finish: nothing left.
    let path = dir.path().join("dropped.npy");
    {
        let mut w = NpyWriter::<f32>::create(&path, 2).unwrap();
        w.append_rows(&[1.0, 2.0]).unwrap();
        assert!(dir.path().join("dropped.npy.partial").exists());
    }
    assert!(!path.exists());
    assert!(!dir.path().join("dropped.npy.partial").exists());

    // Unwritable location.
    assert!(matches!(
        NpyWriter::<f32>::create(dir.path().join("no/such/dir/x.npy"), 1),
        Err(Error::Io { .. })
    ));
}

#[test]
fn nidq_meta() {
    let meta = "typeThis=nidq\nniSampRate=25000\nnSavedChans=4\nsnsMnMaXaDw=0,0,3,1\n\
                snsSaveChanSubset=all\nniAiRangeMax=5\nniMaxInt=32768\nniMNGain=200\n\
                niMAGain=1\nfirstSample=77\nfileSizeBytes=0\n";
    let dir = tempfile::tempdir().unwrap();
    let data = interleaved(16, 3, 11);
    let bin = write_sglx(dir.path(), "run_g0_t0.nidq", meta, &data);
    let rec = open(&bin).unwrap();
    assert_eq!(rec.fs(), 25000.0);
    assert_eq!(rec.n_channels(), 3);
    assert_eq!(rec.first_sample(), 77);
    assert_eq!(rec.channel_ids(), &[0, 1, 2]);
    assert!(rec.uv_per_bit().iter().all(|&u| u == 152.587890625));
    assert_eq!(
        rec.read_sync(0, 16).unwrap(),
        (0..16).map(sync_word).collect::<Vec<_>>()
    );
    let all = read_all(&rec, 5);
    assert_eq!(
        all[(9, 1)],
        data[9 * 4 + 1] as f32 * rec.uv_per_bit()[1] as f32
    );
}
