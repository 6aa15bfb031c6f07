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
