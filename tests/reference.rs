//! Common-average reference (SPEC §7, "Reference") on both engines: hand cases, random
//! parity with a plain `f64` truth written here (mean, and the median by sorting), the
//! device path and bad input.
//!
//! GPU tests never skip: without an adapter they fail.

mod support;

use ndarray::{array, s, Array2, ArrayView2};
use neurokernels::{CarSettings, CommonAverage, DeviceArray, Engine, Error};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use support::{ctx, engines, gpu};

const MEAN: CarSettings = CarSettings { median: false };
const MEDIAN: CarSettings = CarSettings { median: true };

/// The truth: per row, the f64 mean (sequential sum) or the median of the sorted row.
fn truth(x: ArrayView2<'_, f32>, median: bool) -> Array2<f64> {
    let mut y = Array2::zeros(x.dim());
    for (t, row) in x.outer_iter().enumerate() {
        let mut v: Vec<f64> = row.iter().map(|&a| a as f64).collect();
        let centre = if median {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        for (c, &a) in row.iter().enumerate() {
            y[[t, c]] = a as f64 - centre;
        }
    }
    y
}

#[test]
fn spec_hand_cases() {
    for (name, e) in engines() {
        let mut mean = CommonAverage::new(&e, MEAN).expect("mean");
        let mut med = CommonAverage::new(&e, MEDIAN).expect("median");
        let odd = array![[1.0f32, 2.0, 6.0], [-3.0, 0.0, 3.0]];
        assert_eq!(
            mean.process(odd.view()).unwrap(),
            array![[-2.0f32, -1.0, 3.0], [-3.0, 0.0, 3.0]],
            "{name}"
        );
        assert_eq!(
            med.process(odd.view()).unwrap(),
            array![[-1.0f32, 0.0, 4.0], [-3.0, 0.0, 3.0]],
            "{name}"
        );
        let even = array![[4.0f32, 1.0, 3.0, 10.0]];
        assert_eq!(
            mean.process(even.view()).unwrap(),
            array![[-0.5f32, -3.5, -1.5, 5.5]],
            "{name}"
        );
        // Median of (1, 3, 4, 10): (3 + 4) / 2.
        assert_eq!(
            med.process(even.view()).unwrap(),
            array![[0.5f32, -2.5, -0.5, 6.5]],
            "{name}"
        );
        let ties = array![[2.0f32, 2.0, 2.0, 5.0, -1.0, 2.0]];
        assert_eq!(
            med.process(ties.view()).unwrap(),
            array![[0.0f32, 0.0, 0.0, 3.0, -3.0, 0.0]],
            "{name}"
        );
        let one = array![[3.5f32], [-2.0], [0.0]];
        assert_eq!(
            mean.process(one.view()).unwrap(),
            Array2::<f32>::zeros((3, 1)),
            "{name}"
        );
        assert_eq!(
            med.process(one.view()).unwrap(),
            Array2::<f32>::zeros((3, 1)),
            "{name}"
        );
        assert_eq!(
            mean.process(Array2::<f32>::zeros((0, 5)).view())
                .unwrap()
                .dim(),
            (0, 5)
        );
    }
}

#[test]
fn parity_random_with_the_f64_truth() {
    let mut r = Pcg64::seed_from_u64(5);
    for &(n, nc) in &[
        (1000usize, 67usize),
        (333, 1),
        (257, 2),
        (100, 384),
        (64, 31),
    ] {
        let mut x =
            Array2::from_shape_simple_fn((n, nc), || r.random_range(-200.0f32..200.0) + 1000.0);
        // Quantised values in part of the rows: many ties for the median.
        for t in (0..n).step_by(3) {
            for c in 0..nc {
                x[[t, c]] = (x[[t, c]] / 50.0).round() * 50.0;
            }
        }
        for median in [false, true] {
            let want = truth(x.view(), median);
            for (name, e) in engines() {
                let mut op = CommonAverage::new(&e, CarSettings { median }).expect("op");
                let y = op.process(x.view()).expect("chunk");
                let mut worst = 0.0f64;
                for (t, row) in y.outer_iter().enumerate() {
                    let scale = x
                        .row(t)
                        .iter()
                        .fold(0.0f64, |m, &v| m.max((v as f64).abs()));
                    for (c, &g) in row.iter().enumerate() {
                        worst = worst.max((g as f64 - want[[t, c]]).abs() / scale);
                    }
                }
                eprintln!("{name} {n}×{nc} median={median}: worst error {worst:.2e} × max|x|");
                let tol = if name == "cpu" { 1e-7 } else { 1e-6 };
                assert!(worst <= tol, "{name} {n}×{nc} median={median}: {worst:e}");
            }
        }
    }
}

#[test]
fn strided_input_and_chunking() {
    let mut r = Pcg64::seed_from_u64(9);
    let x = Array2::from_shape_simple_fn((300, 13), || r.random_range(-5.0f32..5.0));
    let xt = x.t().to_owned();
    for (name, e) in engines() {
        for st in [MEAN, MEDIAN] {
            let mut op = CommonAverage::new(&e, st).expect("op");
            let whole = op.process(x.view()).expect("x");
            assert_eq!(op.process(xt.t()).expect("strided"), whole, "{name}");
            let a = op.process(x.slice(s![..101, ..])).expect("a");
            let b = op.process(x.slice(s![101.., ..])).expect("b");
            assert_eq!(a, whole.slice(s![..101, ..]), "{name}");
            assert_eq!(b, whole.slice(s![101.., ..]), "{name}");
        }
    }
}

#[test]
fn device_path_matches_host_path() {
    let c = ctx();
    let mut r = Pcg64::seed_from_u64(2);
    let x = Array2::from_shape_simple_fn((600, 40), || r.random_range(-50.0f32..50.0));
    for st in [MEAN, MEDIAN] {
        let mut op = CommonAverage::new(&gpu(), st).expect("op");
        let want = op.process(x.view()).expect("host");
        let up = DeviceArray::upload(&c, x.view().into_dyn()).expect("upload");
        let out = op.process_device(&up).expect("device");
        let got = out
            .to_host::<f32>()
            .expect("read")
            .into_dimensionality()
            .expect("2-D");
        assert_eq!(got, want);
        let mut bad = x.clone();
        bad[[17, 39]] = f32::INFINITY;
        let up = DeviceArray::upload(&c, bad.view().into_dyn()).expect("upload");
        match op.process_device(&up) {
            Err(Error::NonFinite {
                sample: 17,
                channel: 39,
                ..
            }) => {}
            other => panic!("expected NonFinite at (17, 39), got {other:?}"),
        }
    }
    let mut cpu = CommonAverage::new(&Engine::cpu(), MEAN).expect("cpu");
    let up = DeviceArray::upload(&c, x.view().into_dyn()).expect("upload");
    assert!(matches!(
        cpu.process_device(&up),
        Err(Error::DeviceArray(_))
    ));
}

#[test]
fn error_bad_chunks() {
    for (name, e) in engines() {
        for st in [MEAN, MEDIAN] {
            let mut op = CommonAverage::new(&e, st).expect("op");
            assert!(
                matches!(
                    op.process(Array2::<f32>::zeros((4, 0)).view()),
                    Err(Error::Shape { .. })
                ),
                "{name}"
            );
            let mut x = Array2::<f32>::ones((10, 7));
            x[[6, 2]] = f32::NAN;
            match op.process(x.view()) {
                Err(Error::NonFinite {
                    sample: 6,
                    channel: 2,
                    ..
                }) => {}
                other => panic!("{name}: expected NonFinite at (6, 2), got {other:?}"),
            }
            x[[6, 2]] = 1.0;
            assert_eq!(
                op.process(x.view()).expect("good"),
                Array2::<f32>::zeros((10, 7))
            );
        }
    }
}

#[test]
fn process_into_equals_process() {
    let mut r = Pcg64::seed_from_u64(77);
    let x = Array2::from_shape_simple_fn((37, 13), || r.random_range(-50.0f32..50.0));
    for (name, e) in engines() {
        for st in [MEAN, MEDIAN] {
            let mut car = CommonAverage::new(&e, st).expect("car");
            let want = car.process(x.view()).expect("process");
            let mut out = Array2::<f32>::zeros(x.dim());
            car.process_into(x.view(), out.view_mut())
                .expect("process_into");
            assert_eq!(out, want, "{name} {st:?}");
            let mut wrong = Array2::<f32>::zeros((37, 12));
            assert!(
                matches!(
                    car.process_into(x.view(), wrong.view_mut()),
                    Err(Error::Shape { .. })
                ),
                "{name}"
            );
        }
    }
}
