//! Sparse events: the form threshold crossing produces and binning consumes.

use std::sync::Arc;

use crate::gpu::TrackedBuffer;

/// One event: an absolute stream sample, a channel and a value.
///
/// Positions are absolute (SPEC §0: 64-bit stream sample indices), so the output of threshold
/// crossing feeds binning unchanged. [`Event::in_chunk`] builds one from a chunk-relative
/// sample, the form the seed's sparse input uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// Absolute stream sample.
    pub sample: u64,
    /// Channel index.
    pub channel: u32,
    /// Value (the event's weight when `scale_by_value`; the peak value for threshold output).
    pub value: f32,
}

impl Event {
    /// An event at `offset` samples into a chunk that starts at absolute sample `chunk_start`.
    pub fn in_chunk(chunk_start: u64, offset: u64, channel: u32, value: f32) -> Self {
        Event {
            sample: chunk_start + offset,
            channel,
            value,
        }
    }
}

/// Sparse events resident on the device, grouped by channel.
///
/// Layout (what every kernel that reads or writes events agrees on): channel `c`'s events are
/// the slots `c·capacity .. c·capacity + counts[c]` of `slots`, sorted by sample; each slot is
/// a `vec2<u32>`: the sample relative to `chunk_start` as a bit-cast `i32` (negative for an
/// event held open from an earlier chunk), and the value as a bit-cast `f32`.
#[derive(Debug, Clone)]
pub struct DeviceEvents {
    /// `n_channels · capacity` slots of `vec2<u32>`.
    pub(crate) slots: Arc<TrackedBuffer>,
    /// `n_channels` event counts.
    pub(crate) counts: Arc<TrackedBuffer>,
    /// Slots per channel.
    pub(crate) capacity: u32,
    /// Number of channels.
    pub(crate) n_channels: usize,
    /// Absolute sample of the chunk the events were produced for.
    pub(crate) chunk_start: u64,
    /// Length of that chunk in samples.
    pub(crate) n_samples: usize,
}

impl DeviceEvents {
    /// Number of channels.
    pub fn n_channels(&self) -> usize {
        self.n_channels
    }
    /// First absolute sample of the chunk these events belong to.
    pub fn chunk_start(&self) -> u64 {
        self.chunk_start
    }
    /// Length of that chunk in samples.
    pub fn n_samples(&self) -> usize {
        self.n_samples
    }
    /// Slots per channel.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}
