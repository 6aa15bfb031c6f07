//! Degenerate recordings through the chain on both engines: an all-zero recording calibrates
//! and streams without a panic, and gives no crossings.

mod support;

use ndarray::{s, Array2};
use neurokernels::chain::{Chain, ChainSettings};
use support::engines;

const FS: f64 = 30_000.0;

/// Calibrates a default chain on the first 3000 samples of `x`, streams `x` in chunks of
/// 1000 and returns the number of events.
fn events(engine: &neurokernels::Engine, x: &Array2<f32>) -> usize {
    let mut chain = Chain::calibrate(
        engine,
        ChainSettings::default(),
        FS,
        x.slice(s![..3000, ..]),
        0,
    )
    .expect("calibrate");
    let mut n = 0;
    for at in (0..x.nrows()).step_by(1000) {
        let o = chain
            .process(x.slice(s![at..(at + 1000).min(x.nrows()), ..]))
            .expect("chunk");
        n += o.events.len();
    }
    n
}

/// An all-zero recording: calibration succeeds and no sample is a crossing.
#[test]
fn all_zero_recording_gives_no_crossings() {
    for (name, engine) in engines() {
        let x = Array2::<f32>::zeros((6000, 8));
        assert_eq!(events(&engine, &x), 0, "{name}");
    }
}
