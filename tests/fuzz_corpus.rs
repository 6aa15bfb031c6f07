//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`: minimized inputs, hand-written
//! seeds and every input that once crashed) through the fuzz targets' own bodies
//! (`fuzz/entries.rs`), on stable Rust: each input must run without a panic.
//!
//! Fuzzing itself (nightly, libFuzzer) is described in the README's "Fuzzing" section.

#[path = "../fuzz/entries.rs"]
mod entries;

use std::path::Path;

/// Runs every file of `fuzz/corpus/<target>/` through the target; there must be some.
fn replay(target: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let outcome = std::panic::catch_unwind(|| entries::run(target, &data));
        assert!(outcome.is_ok(), "{} panicked", f.display());
    }
}

#[test]
fn every_target_has_a_corpus() {
    for t in entries::TARGETS {
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(t)
                .is_dir(),
            "no corpus for {t}"
        );
    }
}

#[test]
fn npy() {
    replay("npy");
}

#[test]
fn spikeglx_meta() {
    replay("spikeglx_meta");
}

#[test]
fn oebin() {
    replay("oebin");
}

#[test]
fn lrr_csv() {
    replay("lrr_csv");
}

#[test]
fn cli() {
    replay("cli");
}

#[test]
fn operators() {
    replay("operators");
}

#[test]
fn state() {
    replay("state");
}

/// The `state` corpus's seeds: a valid mid-stream state of each operator kind, each taken by
/// the fuzz entry. `cargo test --test fuzz_corpus -- --ignored write_state_seeds` rewrites
/// them (after a change of the format or of an operator's state).
#[test]
fn state_seeds_are_restored() {
    let seeds = neurokernels::state::fuzz_seeds().expect("seeds");
    assert!(seeds.len() >= 6);
    for (i, s) in seeds.iter().enumerate() {
        assert!(
            neurokernels::state::fuzz_restore(s).is_ok(),
            "seed {i} refused"
        );
    }
}

#[test]
#[ignore = "writes fuzz/corpus/state/seed-*"]
fn write_state_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/state");
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for (i, s) in neurokernels::state::fuzz_seeds()
        .expect("seeds")
        .iter()
        .enumerate()
    {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("write seed");
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs that once crashed, kept in the corpus, with the error they now give.

fn corpus_file(target: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_format_error<T: std::fmt::Debug>(r: neurokernels::Result<T>, needle: &str) {
    match r {
        Err(neurokernels::Error::Format { message, .. }) => {
            assert!(message.contains(needle), "{message}")
        }
        other => panic!("expected a format error naming {needle}, got {other:?}"),
    }
}

/// Found by the `npy` target: a header of 0 rows and 88 888 888 888 columns (no data
/// needed) built per-channel tables of that size, a capacity-overflow panic or an abort.
#[test]
fn npy_with_zero_rows_and_a_huge_channel_count_is_a_format_error() {
    let options = neurokernels::OpenOptions {
        fs: Some(30_000.0),
        ..Default::default()
    };
    for name in [
        "crash-zero-rows-huge-channel-count",
        "oom-zero-rows-huge-channel-count",
    ] {
        let r = neurokernels::Recording::from_npy_bytes(corpus_file("npy", name), &options);
        assert_format_error(r, "channels supported");
    }
}

/// The same fault in the SpikeGLX reader: `nSavedChans=100000000000` with an empty `.bin`
/// (every size check passes at 0 bytes).
#[test]
fn spikeglx_meta_with_a_huge_channel_count_is_a_format_error() {
    let meta = corpus_file("spikeglx_meta", "regress-zero-bytes-huge-nSavedChans.meta");
    let text = std::str::from_utf8(&meta).expect("text");
    let r = neurokernels::Recording::from_spikeglx_bytes(text, Vec::new());
    assert_format_error(r, "nSavedChans");
}

/// The command line stored in corpus file `cli/<name>`, parsed and checked (for `process`,
/// as for a 384-channel recording at 30 kHz).
fn check_cli(name: &str) -> Result<(), String> {
    use clap::Parser;
    let args = corpus_file("cli", name);
    let text = std::str::from_utf8(&args).expect("text");
    let argv = std::iter::once("neurokernels").chain(text.split('\0'));
    let cli = entries::cli::Cli::try_parse_from(argv).expect("the flags parse");
    entries::cli::check(&cli, 384, 30_000.0)
}

/// `--clusters 0-18446744073709551615` expanded the range before checking it against the
/// channel count (an allocation of 2⁶⁴ indices); now an error naming the flag.
#[test]
fn cli_cluster_range_past_the_channels_is_an_error() {
    let e = check_cli("regress-clusters-huge-range").expect_err("out of range");
    assert!(
        e.contains("--clusters") && e.contains("out of range"),
        "{e}"
    );
}

/// `simulate --channels 1000000000000 --clusters 7` sized the cluster lists by the channel
/// count before the simulation's settings were checked (an abort on allocation); the
/// channel count is now limited to `MAX_CHANNELS` and checked first.
#[test]
fn cli_simulation_with_a_huge_channel_count_is_an_error() {
    let e = check_cli("regress-simulate-huge-channels").expect_err("too many channels");
    assert!(e.contains("channels"), "{e}");
}

/// 200 copies of `0-383` were all expanded before the first repeat was reported; now the
/// expansion stops at the first repeated channel.
#[test]
fn cli_repeated_cluster_ranges_stop_at_the_first_repeat() {
    let e = check_cli("regress-repeated-ranges").expect_err("repeated channels");
    assert!(e.contains("channel 0 is listed twice"), "{e}");
}

/// Found by the `spikeglx_meta` target: `snsApLfSy=10,018446744073709551615,1` made the sum
/// of the counts overflow (a panic with overflow checks, a wrong sum without). Every count
/// is now at most `MAX_CHANNELS`, which also bounds the `acqApLfSy` sums and the channel
/// numbers built from them.
#[test]
fn spikeglx_meta_with_huge_counts_is_a_format_error() {
    for name in [
        "crash-counts-sum-overflow",
        "regress-acq-counts-overflow.meta",
    ] {
        let meta = corpus_file("spikeglx_meta", name);
        let text = std::str::from_utf8(&meta).expect("text");
        let bin = vec![0u8; 22 * 10];
        let r = neurokernels::Recording::from_spikeglx_bytes(text, bin);
        assert_format_error(r, "channels supported");
    }
}

/// 64 ranges `0:1048575` in `snsSaveChanSubset` were all expanded (256 MB; a longer list,
/// an abort) before the count was compared with `nSavedChans`; the list is now cut off at
/// `MAX_CHANNELS` entries.
#[test]
fn spikeglx_meta_with_many_long_subset_ranges_is_a_format_error() {
    let meta = corpus_file("spikeglx_meta", "regress-subset-many-long-ranges.meta");
    let text = std::str::from_utf8(&meta).expect("text");
    let r = neurokernels::Recording::from_spikeglx_bytes(text, vec![0u8; 22 * 10]);
    assert_format_error(r, "snsSaveChanSubset");
}
