//! The GPU host layer: adapter and device, device arrays, pipeline cache, dispatch and
//! read-back. Every operator's GPU half is built on this module.

mod array;
mod buffer;
mod context;
mod dispatch;

pub(crate) use array::write_padded;
pub use array::{DType, DeviceArray, DeviceElement};
pub(crate) use buffer::{grow_slot, TrackedBuffer};
pub use context::{grid, GpuContext, GpuOptions, MAX_GROUPS_PER_DIM};
pub(crate) use context::{Binding, GrowBuffer};
pub(crate) use dispatch::{
    align_step, bind, check_context, non_finite_row, read_with_status, record_pass,
    reusable_output, row_pieces, rows_per_piece, rows_too_wide, upload_checked, upload_chunk,
    ParamsBuffer, SameShapeKernel, Staged, StreamMark,
};
