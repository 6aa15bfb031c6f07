//! Adapter and device acquisition, error capture, pipeline cache, submission and read-back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::buffer::{MemoryCounters, TrackedBuffer};
use crate::error::{Error, Result};
use crate::shaders::Shader;

/// How to pick the GPU adapter.
///
/// The defaults follow SPEC §0: a hardware adapter when there is one; a software adapter
/// (device type `Cpu`: lavapipe, llvmpipe, WARP) only when asked for, either here
/// (`allow_software`) or through the standard wgpu variables `WGPU_BACKEND` /
/// `WGPU_ADAPTER_NAME`, which always take precedence over these fields when set.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Backends to consider (`None`: all, or `WGPU_BACKEND` when set).
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring the adapter name must contain (or `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Accept a software adapter. Implied when either environment variable is set.
    pub allow_software: bool,
    /// Most device bytes the context's live buffers may hold together (`None`, the default:
    /// no budget beyond the device's own limits). A buffer that would pass it is refused with
    /// [`Error::DeviceMemory`] before anything is allocated. Software adapters (lavapipe,
    /// llvmpipe) allocate host memory, where the kernel's out-of-memory killer ends the process
    /// before wgpu reports anything: set a budget there. See [`GpuContext::live_bytes`].
    pub memory_budget: Option<u64>,
    /// Limits to open the device with instead of the adapter's own (`None`, the default).
    /// Each must be within what the adapter supports; lower ones let a large device behave
    /// like a small one.
    pub limits: Option<wgpu::Limits>,
    /// Whether kernels with an `f64` variant (the band-pass filter) use it, where the device
    /// has `SHADER_F64`. `None`, the default: on CPU adapters (lavapipe: native `f64`, twice
    /// as fast as the double-single `f32` form) and not on GPUs, where `f64` runs at 1/16 to
    /// 1/64 of the `f32` rate on most consumer parts; `Some(true)` for GPUs with full-rate
    /// `f64` (data-centre parts).
    pub f64_kernels: Option<bool>,
}

impl GpuOptions {
    /// Options that accept a software adapter (what tests and CI use).
    pub fn software_ok() -> Self {
        GpuOptions {
            allow_software: true,
            ..Default::default()
        }
    }

    /// These options with a device-memory budget of `bytes` (see
    /// [`GpuOptions::memory_budget`]).
    pub fn with_memory_budget(self, bytes: u64) -> Self {
        GpuOptions {
            memory_budget: Some(bytes),
            ..self
        }
    }
}

/// Key of a compiled pipeline: shader name, entry point, and its override constants.
type PipelineKey = (&'static str, &'static str, String);

/// One opened GPU device with everything the operators share on it.
///
/// Cheap to share: wrap it in an `Arc` (the [`crate::Engine`] does). Each WGSL module is
/// parsed, validated and compiled once per context, whatever the number of calls.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    staging: Mutex<Option<(TrackedBuffer, u64)>>,
    memory: Arc<MemoryCounters>,
    /// The memory budget in bytes (`u64::MAX`: none).
    budget: AtomicU64,
    /// Kernels with an `f64` variant use it ([`GpuOptions::f64_kernels`]).
    f64_kernels: bool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("device_type", &self.info.device_type)
            .finish()
    }
}

/// Rank of a device type when choosing among several: hardware first.
fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// Opens the best adapter allowed by `options` and the environment.
    ///
    /// Returns [`Error::NoAdapter`] when none matches (never panics on a name mismatch, unlike
    /// wgpu's own `initialize_adapter_from_env`).
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let env_backends = std::env::var("WGPU_BACKEND").ok().filter(|s| !s.is_empty());
        let env_name = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|s| !s.is_empty());
        let backends = match &env_backends {
            Some(s) => wgpu::Backends::from_comma_list(s),
            None => options.backends.unwrap_or(wgpu::Backends::all()),
        };
        let name = env_name.clone().or_else(|| options.adapter_name.clone());
        let allow_software = options.allow_software || env_backends.is_some() || env_name.is_some();

        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| {
                let i = a.get_info();
                let name_ok = name
                    .as_ref()
                    .is_none_or(|n| i.name.to_lowercase().contains(&n.to_lowercase()));
                let type_ok = allow_software || i.device_type != wgpu::DeviceType::Cpu;
                name_ok && type_ok
            })
            .collect();
        candidates.sort_by_key(|a| type_rank(a.get_info().device_type));
        let adapter = candidates.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(format!(
                "backends {backends:?}, name filter {name:?}, software allowed: {allow_software}; adapters seen: [{}]",
                seen.join(", ")
            ))
        })?;
        Self::open(adapter, options)
    }

    /// Opens a device on `adapter`, asking for the adapter's own limits (not the downlevel
    /// defaults), so storage bindings and workgroup storage are as large as the hardware allows.
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        Self::open(adapter, &GpuOptions::default())
    }

    /// Opens a device on `adapter` with the limits and memory budget of `options` (the
    /// adapter-choosing fields are not looked at).
    pub fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Self> {
        let info = adapter.get_info();
        let limits = options.limits.clone().unwrap_or_else(|| adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("neurokernels"),
            // f64 where the adapter has it: kernels with an f64 variant use it there.
            required_features: adapter.features() & wgpu::Features::SHADER_F64,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::RequestDevice(e.to_string()))?;

        let f64_kernels = device.features().contains(wgpu::Features::SHADER_F64)
            && options
                .f64_kernels
                .unwrap_or(info.device_type == wgpu::DeviceType::Cpu);
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let unc = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut u) = unc.lock() {
                u.get_or_insert_with(|| e.to_string());
            }
        }));
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            staging: Mutex::new(None),
            memory: Arc::new(MemoryCounters::default()),
            budget: AtomicU64::new(options.memory_budget.unwrap_or(u64::MAX)),
            f64_kernels,
        })
    }

    /// The adapter's name, backend, device type and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The wgpu device the operators run on.
    ///
    /// For applications that embed the crate in their own GPU work: create buffers, pipelines
    /// and bind groups on it and share [`DeviceArray`](crate::DeviceArray)s with your own
    /// kernels. Validation errors from work recorded outside this crate's calls are caught by
    /// the context's uncaptured-error handler and returned as [`Error::Validation`] by the
    /// crate's next call on this context; wrap your own calls in error scopes to see them
    /// yourself.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue of [`GpuContext::device`]. The crate submits all its work on it, so your
    /// submissions and the crate's execute in the order they were made.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether the device runs `f64` in shaders (`SHADER_F64`: most Vulkan and DX12 devices,
    /// lavapipe included; not the GL backend or Metal).
    pub fn has_f64(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F64)
    }

    /// Whether kernels with an `f64` variant use it: the device has `f64` and
    /// [`GpuOptions::f64_kernels`] (or its default for this device type) asks for it.
    pub fn uses_f64_kernels(&self) -> bool {
        self.f64_kernels
    }

    /// Device buffers of this context alive now: those the crate's operators and device arrays
    /// hold (streaming state, reused scratch and outputs, the read-back staging buffer), each
    /// counted from its creation until its last holder drops it. A steady stream of equal
    /// chunks leaves it flat after the first chunks.
    pub fn live_buffers(&self) -> u64 {
        self.memory.buffers()
    }

    /// Bytes of the buffers counted by [`GpuContext::live_buffers`] (their allocated sizes,
    /// padding included). Buffers you create yourself on [`GpuContext::device`] are not counted.
    pub fn live_bytes(&self) -> u64 {
        self.memory.bytes()
    }

    /// The budget that [`GpuContext::live_bytes`] may not pass ([`GpuOptions::memory_budget`]).
    pub fn memory_budget(&self) -> Option<u64> {
        Some(self.budget.load(Ordering::Relaxed)).filter(|&b| b != u64::MAX)
    }

    /// Sets the budget of [`GpuOptions::memory_budget`] (`None`: none) from now on. Buffers
    /// alive already stay, even past a lower budget; only new ones are refused.
    pub fn set_memory_budget(&self, bytes: Option<u64>) {
        self.budget
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Creates a buffer counted in the live totals, after checking it against the device's
    /// `max_buffer_size` ([`Error::DeviceLimit`]) and the memory budget
    /// ([`Error::DeviceMemory`]); nothing is allocated when either check fails.
    pub(crate) fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> Result<TrackedBuffer> {
        if desc.size > self.limits.max_buffer_size {
            return Err(Error::DeviceLimit {
                limit: "max_buffer_size",
                requested: desc.size,
                max: self.limits.max_buffer_size,
            });
        }
        self.memory.reserve(desc.size, self.memory_budget())?;
        Ok(TrackedBuffer::new(
            self.device.create_buffer(desc),
            self.memory.clone(),
        ))
    }

    /// Largest byte size of one storage binding.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Blocks until every submitted command has finished on the device.
    ///
    /// # Errors
    /// [`Error::DeviceLost`] when the device is lost.
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check_alive()
    }

    /// Errors out if the device was lost or an uncaptured error was reported.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if let Some(m) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(m));
        }
        if let Some(m) = self.uncaptured.lock().ok().and_then(|mut u| u.take()) {
            return Err(Error::Validation(m));
        }
        Ok(())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns what they caught
    /// into typed errors.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let val_err = pollster::block_on(val.pop());
        let oom_err = pollster::block_on(oom.pop());
        // A lost device makes every later call fail validation: report the loss itself.
        if val_err.is_some() || oom_err.is_some() {
            let _ = self.device.poll(wgpu::PollType::Poll);
            self.check_alive()?;
        }
        if let Some(e) = oom_err {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = val_err {
            return Err(Error::Validation(e.to_string()));
        }
        self.check_alive()?;
        out
    }

    /// The compute pipeline for `entry` of `shader`, compiled once per (shader, entry,
    /// override constants). Group 0's layout is `layout` (binding `i` is `layout[i]`), shared by
    /// every entry point of the shader, so one list of resources binds any of them.
    pub(crate) fn pipeline(
        &self,
        shader: &Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        layout: &[Binding],
    ) -> Result<wgpu::ComputePipeline> {
        let key = (shader.name, entry, format!("{constants:?}"));
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(p);
        }
        let pipeline = self.scoped(|| {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = layout
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match b {
                            Binding::Uniform => wgpu::BufferBindingType::Uniform,
                            Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                            Binding::ReadWrite => {
                                wgpu::BufferBindingType::Storage { read_only: false }
                            }
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let bgl = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(shader.name),
                    entries: &entries,
                });
            let pl = self
                .device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(shader.name),
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
            Ok(self
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                }))
        })?;
        if let Ok(mut m) = self.pipelines.lock() {
            m.insert(key, pipeline.clone());
        }
        Ok(pipeline)
    }

    /// A bind group for group 0 of `pipeline`, binding `buffers` at bindings 0, 1, 2, …
    pub(crate) fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Creates a storage buffer of `size` bytes (at least 16) that can be copied to and from.
    pub(crate) fn storage(&self, size: u64, label: &str) -> Result<TrackedBuffer> {
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Whether a buffer of `size` bytes may serve a need of `need` bytes bound whole: not when
    /// the need fits one storage binding but the buffer does not.
    pub(crate) fn bindable_for(&self, size: u64, need: u64) -> bool {
        let binding = self.max_binding();
        need > binding || size <= binding
    }

    /// A storage buffer of at least `need` bytes (a multiple of 4), rounded up to the next
    /// power of two (for geometric growth) where the device's limits and the memory budget
    /// allow, else `need` itself. A need that fits one storage binding gets a buffer that
    /// does too, so kernels may bind it whole.
    pub(crate) fn storage_rounded(&self, need: u64, label: &str) -> Result<TrackedBuffer> {
        let binding = self.max_binding() / 4 * 4;
        let cap = if need <= binding {
            binding
        } else {
            self.limits.max_buffer_size
        };
        let size = need
            .checked_next_power_of_two()
            .unwrap_or(need)
            .min(cap)
            .max(need);
        match self.storage(size, label) {
            Err(Error::DeviceMemory { .. }) if size > need => self.storage(need, label),
            made => made,
        }
    }

    /// Creates a buffer of `usage` (plus `COPY_DST`) holding `data`, at least 16 bytes and
    /// padded to a multiple of 4.
    pub(crate) fn filled(
        &self,
        data: &[u8],
        label: &str,
        usage: wgpu::BufferUsages,
    ) -> Result<TrackedBuffer> {
        let buf = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (data.len() as u64).max(16).next_multiple_of(4),
            usage: usage | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        super::write_padded(self, &buf, 0, data);
        Ok(buf)
    }

    /// Creates a uniform buffer of `size` bytes (at least 16) that can be written to.
    pub(crate) fn uniform(&self, size: u64, label: &str) -> Result<TrackedBuffer> {
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Submits `encoder`; with `read` given, also copies `(buffer, offset, bytes)` ranges into
    /// the context's staging buffer and returns their bytes, concatenated, after the GPU is done.
    ///
    /// The staging buffer is kept and grown geometrically, so a steady stream of equal chunks
    /// allocates nothing after the first.
    pub(crate) fn submit_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        read: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<u8>> {
        self.submit_all_and_read(Vec::new(), encoder, read)
    }

    /// [`GpuContext::submit_and_read`] with the command buffers `before` submitted ahead of
    /// `encoder`, in order, in the same submission: one round trip for them all.
    pub(crate) fn submit_all_and_read(
        &self,
        before: Vec<wgpu::CommandBuffer>,
        mut encoder: wgpu::CommandEncoder,
        read: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<u8>> {
        let total: u64 = read.iter().map(|r| r.2.next_multiple_of(4)).sum();
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| Error::Readback("staging lock poisoned".into()))?;
        if total > self.limits.max_buffer_size {
            return Err(Error::DeviceLimit {
                limit: "max_buffer_size",
                requested: total,
                max: self.limits.max_buffer_size,
            });
        }
        if total > 0 && staging.as_ref().is_none_or(|s| s.1 < total) {
            // Geometric growth for small read-backs; big ones get (about) their own size, as
            // doubling 1 GiB would pass the largest buffer some devices can make (2 GiB − 1 on
            // lavapipe / llvmpipe) or have memory for.
            const BIG: u64 = 256 << 20;
            let cap = if total <= BIG {
                total.next_power_of_two().max(4096)
            } else {
                total.next_multiple_of(16 << 20)
            }
            .min(self.limits.max_buffer_size)
            .max(total);
            // The old buffer goes first, so the budget sees only the new one.
            *staging = None;
            let buf = self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: cap,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })?;
            *staging = Some((buf, cap));
        }
        if total > 0 {
            let (stage, _) = staging
                .as_ref()
                .ok_or_else(|| Error::Readback("no staging buffer".into()))?;
            let mut at = 0;
            for &(buf, off, len) in read {
                let len4 = len.next_multiple_of(4);
                if len4 > 0 {
                    encoder.copy_buffer_to_buffer(buf, off, stage, at, len4);
                }
                at += len4;
            }
        }
        let index = self
            .queue
            .submit(before.into_iter().chain(Some(encoder.finish())));
        if total == 0 {
            self.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(index),
                    timeout: None,
                })
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
            self.check_alive()?;
            return Ok(Vec::new());
        }
        let (stage, _) = staging
            .as_ref()
            .ok_or_else(|| Error::Readback("no staging buffer".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        stage.map_async(wgpu::MapMode::Read, 0..total, move |r| {
            let _ = tx.send(r);
        });
        let result = self.read_mapped(stage, index, &rx, read, total);
        if result.is_err() {
            // The staging buffer may still be mapped, or its mapping pending: drop it, or every
            // later read-back on this context would fail with "still mapped".
            *staging = None;
        }
        result
    }

    /// The second half of [`GpuContext::submit_and_read`]: waits for submission `index` and the
    /// mapping of `stage`, then unpacks the `read` ranges from it and unmaps it.
    fn read_mapped(
        &self,
        stage: &wgpu::Buffer,
        index: wgpu::SubmissionIndex,
        rx: &std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
        read: &[(&wgpu::Buffer, u64, u64)],
        total: u64,
    ) -> Result<Vec<u8>> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check_alive()?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| Error::Readback(e.to_string()))?;
        let bytes = {
            let view = stage
                .get_mapped_range(0..total)
                .map_err(|e| Error::Readback(e.to_string()))?;
            // Pack the ranges back to their exact lengths.
            let mut out = Vec::with_capacity(total as usize);
            let mut at = 0usize;
            for &(_, _, len) in read {
                out.extend_from_slice(&view[at..at + len as usize]);
                at += len.next_multiple_of(4) as usize;
            }
            out
        };
        stage.unmap();
        Ok(bytes)
    }

    /// Drops the read-back staging buffer, grown to the largest read-back so far (the next
    /// read-back makes one of its own size).
    pub(crate) fn release_staging(&self) {
        if let Ok(mut s) = self.staging.lock() {
            *s = None;
        }
    }

    /// A new command encoder.
    pub(crate) fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }
}

/// The kind of one buffer binding in a shader's group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// Workgroups per dimension allowed by WebGPU's minimum limit (and every adapter here).
pub const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// Splits `groups` workgroups into an `(x, y, 1)` grid with `x ≤ 65 535`, so any 1-D problem
/// size dispatches. Kernels recover the linear group index as `wid.x + wid.y * nwg.x` and
/// skip indices past their problem size.
pub fn grid(groups: u32) -> (u32, u32, u32) {
    if groups <= MAX_GROUPS_PER_DIM {
        (groups.max(1), 1, 1)
    } else {
        (MAX_GROUPS_PER_DIM, groups.div_ceil(MAX_GROUPS_PER_DIM), 1)
    }
}

/// A storage buffer that grows (geometrically) to fit, and is otherwise reused: streaming
/// state and per-chunk scratch live in these so a long stream allocates nothing per chunk.
#[derive(Debug, Default)]
pub(crate) struct GrowBuffer {
    buf: Option<TrackedBuffer>,
    label: &'static str,
}

impl GrowBuffer {
    /// An empty buffer slot named `label`.
    pub(crate) fn new(label: &'static str) -> Self {
        GrowBuffer { buf: None, label }
    }

    /// The buffer, if one was made.
    pub(crate) fn get(&self) -> Option<&wgpu::Buffer> {
        self.buf.as_deref()
    }

    /// Drops the buffer (the next [`GrowBuffer::ensure`] makes a new one).
    pub(crate) fn release(&mut self) {
        self.buf = None;
    }

    /// The buffer (a cheap handle), grown to at least `bytes` (contents are lost when it grows).
    ///
    /// # Errors
    /// [`Error::DeviceMemory`] or [`Error::DeviceLimit`] when it cannot grow; then it holds no
    /// buffer (the next call makes one).
    pub(crate) fn ensure(&mut self, ctx: &GpuContext, bytes: u64) -> Result<wgpu::Buffer> {
        let need = bytes.max(16).next_multiple_of(4);
        if self
            .buf
            .as_ref()
            .is_some_and(|b| !ctx.bindable_for(b.size(), need))
        {
            self.buf = None;
        }
        let label = self.label;
        super::grow_slot(&mut self.buf, need, || ctx.storage_rounded(need, label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_splits_past_the_dimension_limit() {
        assert_eq!(grid(0), (1, 1, 1));
        assert_eq!(grid(10), (10, 1, 1));
        assert_eq!(grid(65_535), (65_535, 1, 1));
        let (x, y, _) = grid(200_000);
        assert_eq!(x, 65_535);
        assert!(x as u64 * y as u64 >= 200_000);
    }
}
