//! Device-memory accounting: every buffer the crate creates is a [`TrackedBuffer`], counted in
//! its context's live buffers and bytes until it is dropped, and checked against the device's
//! limits and the context's memory budget before it is created.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Live buffer and byte counts of one context (shared by its buffers, which outlive no count).
#[derive(Debug, Default)]
pub(crate) struct MemoryCounters {
    buffers: AtomicU64,
    bytes: AtomicU64,
}

impl MemoryCounters {
    /// Live buffers.
    pub(crate) fn buffers(&self) -> u64 {
        self.buffers.load(Ordering::Relaxed)
    }

    /// Live bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Reserves `size` bytes for one new buffer, unless that would take the live bytes past
    /// `budget`: then nothing is reserved and the error says by how much.
    pub(crate) fn reserve(&self, size: u64, budget: Option<u64>) -> Result<()> {
        let cap = budget.unwrap_or(u64::MAX);
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                live.checked_add(size).filter(|&t| t <= cap)
            })
            .map_err(|live| Error::DeviceMemory {
                requested: size,
                live,
                budget: cap,
            })?;
        self.buffers.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back one buffer of `size` bytes.
    fn release(&self, size: u64) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        self.buffers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A device buffer counted in its context's live buffers and bytes until dropped (made by
/// `GpuContext::create_buffer`). Dereferences to the [`wgpu::Buffer`]; a clone of that
/// handle is not counted, so the crate keeps such clones no longer than one call.
pub(crate) struct TrackedBuffer {
    buffer: wgpu::Buffer,
    counters: Arc<MemoryCounters>,
}

impl TrackedBuffer {
    /// Wraps `buffer`, whose bytes `counters` has already reserved.
    pub(crate) fn new(buffer: wgpu::Buffer, counters: Arc<MemoryCounters>) -> Self {
        TrackedBuffer { buffer, counters }
    }
}

impl Deref for TrackedBuffer {
    type Target = wgpu::Buffer;

    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl std::fmt::Debug for TrackedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBuffer")
            .field("size", &self.buffer.size())
            .finish()
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.counters.release(self.buffer.size());
    }
}

/// The buffer in `slot` (a cheap handle) if it holds at least `need` bytes; otherwise the old
/// one is dropped first (so the budget sees only the new one) and `make` makes the new one.
/// After an error the slot is empty.
pub(crate) fn grow_slot(
    slot: &mut Option<TrackedBuffer>,
    need: u64,
    make: impl FnOnce() -> Result<TrackedBuffer>,
) -> Result<wgpu::Buffer> {
    if let Some(b) = slot.as_ref().filter(|b| b.size() >= need) {
        return Ok((**b).clone());
    }
    *slot = None;
    let b = make()?;
    let handle = (*b).clone();
    *slot = Some(b);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_respects_the_budget_and_changes_nothing_when_refused() {
        let c = MemoryCounters::default();
        c.reserve(100, Some(150)).expect("fits");
        let e = c.reserve(60, Some(150)).expect_err("over budget");
        assert_eq!(
            e,
            Error::DeviceMemory {
                requested: 60,
                live: 100,
                budget: 150
            }
        );
        assert_eq!((c.buffers(), c.bytes()), (1, 100));
        c.reserve(50, Some(150)).expect("exactly the budget");
        c.release(100);
        c.release(50);
        assert_eq!((c.buffers(), c.bytes()), (0, 0));
        c.reserve(u64::MAX, None).expect("no budget");
        assert!(c.reserve(1, None).is_err(), "overflow is refused");
    }
}
