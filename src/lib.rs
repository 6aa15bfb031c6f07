//! # neurokernels
//!
//! The core kernels of neural-data processing as WGSL compute shaders on wgpu, with a CPU
//! engine of the same API. See `README.md` for a tour, and each module for its operator's
//! exact definition and error bound.
//!
//! ## Threads
//!
//! All public types are `Send + Sync`. Operators and [`chain::Chain`] process through
//! `&mut self`, so each stream is driven by one thread at a time; to share one device, clone the
//! [`Engine`] (its GPU variant holds an `Arc<GpuContext>`) into each thread and build that
//! thread's operators from it.

#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod binning;
pub mod chain;
pub mod classifier;
mod crew;
pub mod encoders;
pub mod engine;
pub mod error;
pub mod events;
pub mod exact;
pub mod filter;
pub mod glm;
pub mod gpu;
pub mod lrr;
pub mod recording;
pub mod reference;
pub mod rng;
pub mod shaders;
pub mod simulate;
pub mod state;
pub mod threshold;
mod validate;

pub use binning::{Aggregation, Binned, BinnedActivation, BinningSettings, DeviceBinned, Kernel};
pub use classifier::{ClassifierSettings, MaxRateClassifier, Prediction};
pub use encoders::{
    AngleEncoder, AngleSettings, LatencyEncoder, LatencySettings, RateEncoder, RateSettings,
    ShiftAugment, ShiftSettings,
};
pub use engine::Engine;
pub use error::{Error, Result};
pub use events::{DeviceEvents, Event};
pub use filter::{butter_sos, BandpassFilter, FilterSettings};
pub use gpu::{DeviceArray, GpuContext, GpuOptions};
pub use lrr::{Lrr, LrrSettings, LrrSnapshot, WeightsSource};
pub use recording::{sync_edges, Dtype, NpyWriter, OpenOptions, RawFormat, Recording, SyncEdge};
pub use reference::{CarSettings, CommonAverage};
pub use threshold::{ThresholdCrossing, ThresholdSettings};

/// The README's Rust examples, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
