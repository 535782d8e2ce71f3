//! The GPU host layer. [`Gpu`] is a thin device context, made from the caller's own
//! `wgpu::Device` and `wgpu::Queue` or, for tools and tests, on the best adapter; on it,
//! [`GpuOptimizer`] steps parameter ranges in the caller's buffers, [`BufferSet`] holds sets
//! past one buffer, and [`GpuCopy`] measures the copy bandwidth the optimizers are held to.
//!
//! The context's jobs each have a module: `adapter` (choosing one), `health` (error scopes, the
//! device's health, waiting), `transfer` (uploads and readback), `limits` (the limits fusedopt
//! works within); compiled kernels are cached per context (`crate::kernels`).

mod adapter;
mod buffer_set;
mod copy;
mod guard;
mod health;
mod limits;
mod optimizer;
mod range;
mod sparse;
mod transfer;

pub use adapter::{GpuOptions, describe as describe_adapter, list as list_adapters};
pub use buffer_set::BufferSet;
pub use copy::GpuCopy;
pub use guard::{CallerScale, GradGuard, GuardReport};
pub use limits::DeviceLimits;
pub(crate) use optimizer::GuardSource;
pub use optimizer::{GpuOptimizer, MAX_UNCONFIRMED_STEPS};
pub(crate) use range::check_pieces;
pub use range::{BufferRange, Piece};
pub use sparse::SparseGpuOptimizer;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kernels::{Grid, GuardStage, Kernel, LaunchShape, PipelineCache, SparseKernel};
use crate::optim::{HalfFormat, Optimizer, Precision, SparseOptimizer};
use health::Health;

/// How long a wait for the GPU may take before it is reported as a [`Error::Timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A wgpu device and queue with what fusedopt keeps per device: its limits, its health, and
/// the kernels compiled on it.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// What the adapter offers; `None` for a borrowed device, whose adapter we never saw.
    adapter_features: Option<wgpu::Features>,
    /// Device-local memory, where known (see [`Gpu::device_memory`]).
    memory: Option<u64>,
    limits: DeviceLimits,
    /// How kernels built on this context cover their ranges.
    launch: LaunchShape,
    health: Health,
    pipelines: PipelineCache,
    sparse_pipelines: PipelineCache<SparseKernel>,
    timeout: Duration,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Creates a device on the best adapter allowed by `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn new() -> Result<Self> {
        Self::new_with(&GpuOptions::from_env())
    }

    /// Creates a device on the best adapter the options allow: discrete GPUs first, software
    /// adapters last. The device gets the adapter's full limits and its timestamp queries.
    pub fn new_with(options: &GpuOptions) -> Result<Self> {
        let adapter = adapter::choose(options)?;
        let info = adapter.get_info();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("fusedopt"),
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|source| {
                Error::RequestDevice {
                    adapter: info.name.clone(),
                    source,
                }
            })?;
        let health = Health::watching(&device);
        Ok(Self {
            adapter_features: Some(adapter.features()),
            memory: adapter::device_memory(&adapter),
            health,
            ..Self::wrap(device, queue, info)
        })
    }

    /// A context on the caller's own device and queue (for example its training engine's;
    /// wgpu's handles are shared, so pass clones). fusedopt creates no device and installs no
    /// handler on it: each of its calls runs inside its own error scopes. The buffers handed to
    /// fusedopt must be this device's.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::wrap(device, queue, info)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self {
            limits: DeviceLimits::from_wgpu(&device.limits()),
            device,
            queue,
            info,
            adapter_features: None,
            memory: None,
            launch: LaunchShape::default(),
            health: Health::default(),
            pipelines: PipelineCache::default(),
            sparse_pipelines: PipelineCache::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter the device runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// Features the adapter offers (known only when fusedopt created the device).
    pub fn adapter_features(&self) -> Option<wgpu::Features> {
        self.adapter_features
    }

    /// Bytes of device-local memory, where the backend says: the sum of the device-local heaps
    /// on Vulkan; `None` on other backends and for devices wrapped with [`Gpu::from_device`].
    /// wgpu itself reports no memory size.
    pub fn device_memory(&self) -> Option<u64> {
        self.memory
    }

    /// The limits fusedopt works within.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// Lowers the bytes bound per dispatch (default: the device's largest storage binding, at
    /// most [`DeviceLimits::MAX_CHUNK_ELEMENTS`] f32), so that the multi-chunk path can be
    /// exercised on small data. Applies to optimizers created afterwards. `bytes` must be a
    /// positive multiple of the storage offset alignment and at most the default.
    pub fn set_max_chunk_bytes(&mut self, bytes: u64) -> Result<()> {
        self.limits.set_chunk_bytes(bytes)
    }

    /// Lowers the largest buffer fusedopt creates (default: the device's `max_buffer_size`), so
    /// that sets spanning several buffers can be exercised on small data. `bytes` must be a
    /// positive multiple of the storage offset alignment and at most the device's limit.
    pub fn set_max_buffer_bytes(&mut self, bytes: u64) -> Result<()> {
        self.limits.set_buffer_bytes(bytes)
    }

    /// How the kernels of optimizers and copies created afterwards cover their ranges (threads
    /// per workgroup, elements per invocation, a cap on workgroups): a tuning knob that never
    /// changes a result. Fails, changing nothing, on a shape the device cannot run.
    pub fn set_launch_shape(&mut self, shape: LaunchShape) -> Result<()> {
        shape.check(&self.device.limits())?;
        self.launch = shape;
        Ok(())
    }

    /// The launch shape of kernels created now (see [`Gpu::set_launch_shape`]).
    pub fn launch_shape(&self) -> LaunchShape {
        self.launch
    }

    /// How ranges are cut into dispatches on this context now.
    pub(crate) fn grid(&self) -> Grid {
        self.limits.grid(self.launch)
    }

    /// How long a wait for the GPU may take before it fails with [`Error::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The kernel of `config` in `precision` (after a guard's `choose` when `guarded`) and the
    /// current launch shape, compiled on this device once per set of override values.
    pub(crate) fn kernel(
        &self,
        config: &Optimizer,
        precision: Precision,
        guarded: bool,
    ) -> Result<Arc<Kernel>> {
        let spec = config.kernel();
        let used: Vec<bool> = config.state_slots().iter().map(Option::is_some).collect();
        let mut overrides = config.overrides();
        overrides.extend(crate::kernels::precision_overrides(
            precision, &used, guarded,
        ));
        overrides.extend(self.launch.overrides());
        self.pipelines.get_or_build(spec.name, &overrides, || {
            self.scoped(&format!("building the {} kernel", spec.name), || {
                Kernel::for_optimizer(&self.device, spec, &overrides)
            })
        })
    }

    /// The row-sparse kernel of `config` with the current launch shape, compiled on this
    /// device once per set of override values.
    pub(crate) fn sparse_kernel(&self, config: &SparseOptimizer) -> Result<Arc<SparseKernel>> {
        let spec = config.kernel();
        let mut overrides = config.overrides();
        overrides.extend(self.launch.overrides());
        self.sparse_pipelines
            .get_or_build(spec.name, &overrides, || {
                self.scoped(&format!("building the sparse {} kernel", spec.name), || {
                    SparseKernel::new(&self.device, spec, &overrides)
                })
            })
    }

    /// The guard's `stage` for gradients in `format` (f32 for `None`), compiled once per
    /// device.
    pub(crate) fn guard_kernel(
        &self,
        stage: GuardStage,
        format: Option<HalfFormat>,
    ) -> Result<Arc<Kernel>> {
        let overrides = stage.overrides(format);
        self.pipelines.get_or_build(stage.entry(), &overrides, || {
            self.scoped(
                &format!("building the guard's {} kernel", stage.entry()),
                || Kernel::guard(&self.device, stage, &overrides),
            )
        })
    }
}
