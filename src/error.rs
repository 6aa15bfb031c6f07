//! The crate's one error type.
//!
//! Every fallible call returns [`Result`]. An error never leaves an operator half-updated: the
//! state after a failed call is the state before it, so the caller can fix the input and resend.

use thiserror::Error as ThisError;

/// Everything that can go wrong in a call into the crate.
#[derive(Debug, Clone, PartialEq, ThisError)]
pub enum Error {
    /// A setting is out of its valid range (e.g. a non-positive `fs`, `tau` or `bin_duration`).
    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting {
        /// Which setting.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// An input has the wrong shape (wrong rank, or a channel count that changed mid-stream).
    #[error("shape mismatch in `{what}`: expected {expected}, got {got}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was passed.
        got: String,
    },
    /// A non-finite value (NaN or ±inf) where only finite values are allowed.
    #[error("non-finite value {value} in `{what}` at sample {sample}, channel {channel}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row (sample within the chunk, or event index for sparse input).
        sample: usize,
        /// Column (channel).
        channel: usize,
        /// The offending value.
        value: f64,
    },
    /// An index (event sample, event channel, cluster member) is out of range.
    #[error("index out of range in `{what}`: {index} is not below {bound}")]
    IndexOutOfRange {
        /// Which input.
        what: &'static str,
        /// The offending index.
        index: u64,
        /// The exclusive upper bound.
        bound: u64,
    },
    /// A stream position would overflow 64 bits.
    #[error("stream position overflow: {0}")]
    PositionOverflow(String),
    /// No GPU adapter matched the request.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter could not give a device with the features and limits the kernels need.
    #[error("could not open a GPU device: {0}")]
    RequestDevice(String),
    /// The device ran out of memory.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// The host could not allocate an output whose size the caller's settings chose (an
    /// encoder's time steps, a basis's window, …). Nothing was allocated and the operator is
    /// unchanged; smaller settings or inputs go on working.
    #[error("host out of memory: {0}")]
    HostMemory(String),
    /// Creating a device buffer would take the context's live device bytes past its memory
    /// budget ([`crate::GpuOptions::memory_budget`]). Nothing was allocated; smaller chunks go
    /// on working.
    #[error(
        "device memory budget exceeded: {requested} bytes requested, {live} live, budget {budget}"
    )]
    DeviceMemory {
        /// Bytes of the buffer that was refused.
        requested: u64,
        /// Live device bytes of the context at the time.
        live: u64,
        /// The context's budget.
        budget: u64,
    },
    /// A chunk needs a buffer, binding or dispatch larger than the device's limits allow.
    /// Nothing was allocated; smaller chunks go on working.
    #[error("device limit `{limit}` exceeded: {requested} requested, at most {max}")]
    DeviceLimit {
        /// Which limit (a field of [`wgpu::Limits`]).
        limit: &'static str,
        /// What was asked for.
        requested: u64,
        /// The device's limit.
        max: u64,
    },
    /// wgpu reported a validation or internal error (a bug in this crate if it ever happens).
    #[error("GPU validation error: {0}")]
    Validation(String),
    /// The device was lost (driver reset, adapter unplugged).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Mapping a buffer for read-back failed.
    #[error("GPU read-back failed: {0}")]
    Readback(String),
    /// A device array of the wrong element type or shape was passed.
    #[error("device array mismatch: {0}")]
    DeviceArray(String),
    /// A file could not be opened, read, mapped, written or renamed.
    #[error("{path}: {message}")]
    Io {
        /// The file concerned.
        path: String,
        /// What went wrong (one line).
        message: String,
    },
    /// A recording or metadata file is malformed or disagrees with itself (missing or
    /// unparsable field, truncated data, channel count or file size not matching the data).
    #[error("{path}: {message}")]
    Format {
        /// The file concerned.
        path: String,
        /// What is wrong with it (one line).
        message: String,
    },
    /// A saved operator state is malformed, corrupted, of another format version, or was
    /// saved by an operator of another kind, shape or settings (see [`crate::state`]).
    #[error("cannot restore state: {0}")]
    State(String),
}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidSetting`].
    pub(crate) fn setting(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidSetting {
            name,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Shape`].
    pub(crate) fn shape(what: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape {
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
