//! GPU half of binned kernel activation (being written).
use std::sync::Arc;

use ndarray::{Array2, ArrayView2};

use super::{Buckets, DenseSample, JumpTable, Params, Plan};
use crate::error::{Error, Result};
use crate::events::DeviceEvents;
use crate::gpu::{DeviceArray, GpuContext};

#[derive(Debug)]
pub(crate) struct GpuBinning {
    ctx: Arc<GpuContext>,
}

impl GpuBinning {
    pub fn new(ctx: &Arc<GpuContext>, _p: &Params, _jt: &JumpTable) -> Result<Self> {
        Ok(GpuBinning { ctx: ctx.clone() })
    }
    pub fn reset(&mut self) {}
    pub fn dense_host<T: DenseSample>(&mut self, _p: &Params, _plan: &Plan, _chunk: ArrayView2<'_, T>) -> Result<Array2<f32>> {
        Err(Error::Validation(format!("not yet on {:?}", self.ctx)))
    }
    pub fn dense_device(&mut self, _p: &Params, _plan: &Plan, _chunk: &DeviceArray) -> Result<DeviceArray> {
        Err(Error::Validation("not yet".into()))
    }
    pub fn sparse_host(&mut self, _p: &Params, _plan: &Plan, _b: &Buckets, _nc: usize) -> Result<Array2<f32>> {
        Err(Error::Validation("not yet".into()))
    }
    pub fn sparse_device(&mut self, _p: &Params, _plan: &Plan, _ev: &DeviceEvents, _pos: u64) -> Result<DeviceArray> {
        Err(Error::Validation("not yet".into()))
    }
}
