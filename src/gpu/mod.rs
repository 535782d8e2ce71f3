//! Device handling: choosing an adapter, turning wgpu errors into `Result`s, uploads and bulk
//! readback. [`Gpu`] either creates its own device or wraps the caller's.

mod buffer_set;
mod optimizer;

pub use buffer_set::BufferSet;
pub use optimizer::{BufferRange, GpuOptimizer, Piece, STEPS_PER_SUBMISSION};

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::kernels::{Kernel, Shader};
use crate::{Error, Result};

/// Largest staging buffer used for readback and initialization, so that reading a multi-GB
/// tensor back does not need a second multi-GB allocation.
const TRANSFER_CHUNK_BYTES: u64 = 64 << 20;

/// How long a wait for the GPU may take before it is reported as a [`Error::Timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Which adapter [`Gpu::new_with`] picks.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider (wgpu's `WGPU_BACKEND`: `vulkan`, `metal`, `dx12`, `gl`).
    pub backends: wgpu::Backends,
    /// Pick the first adapter whose name contains this (case-insensitive), like wgpu's
    /// `WGPU_ADAPTER_NAME`. Without it, real GPUs come first and software adapters last.
    pub adapter_name: Option<String>,
}

impl GpuOptions {
    /// Options from the environment: `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn from_env() -> Self {
        Self {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// The limits fusedopt works within, read from the device; the chunk size can be lowered to
/// exercise the multi-chunk path on small data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest storage binding (`max_storage_buffer_binding_size`).
    pub max_binding_bytes: u64,
    /// Largest buffer (`max_buffer_size`).
    pub max_buffer_bytes: u64,
    /// Workgroups per dispatch dimension (`max_compute_workgroups_per_dimension`).
    pub max_workgroups_per_dimension: u32,
    /// Alignment of storage binding offsets (`min_storage_buffer_offset_alignment`).
    pub storage_offset_alignment: u32,
    /// Alignment of uniform binding offsets (`min_uniform_buffer_offset_alignment`).
    pub uniform_offset_alignment: u32,
    /// Bytes of one chunk: the largest storage binding, rounded down to the alignment.
    pub chunk_bytes: u64,
}

impl DeviceLimits {
    fn from_wgpu(limits: &wgpu::Limits) -> Self {
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        let max_binding = limits.max_storage_buffer_binding_size;
        Self {
            max_binding_bytes: max_binding,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
            chunk_bytes: max_binding / align * align,
        }
    }

    /// Elements of f32 in one chunk.
    pub fn chunk_elements(&self) -> u64 {
        self.chunk_bytes / 4
    }
}

/// A wgpu device and queue with the bookkeeping fusedopt needs: error capture, device-loss
/// detection and a cache of compiled kernels.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// What the adapter offers; `None` for a borrowed device, whose adapter we never saw.
    adapter_features: Option<wgpu::Features>,
    features: wgpu::Features,
    limits: DeviceLimits,
    /// Memory the device's buffers can use, where known (see [`Gpu::device_memory`]).
    memory: Option<u64>,
    /// Set by the device-lost callback (only on devices fusedopt created).
    lost: Arc<Mutex<Option<String>>>,
    /// Errors that no scope caught (only on devices fusedopt created).
    uncaptured: Arc<Mutex<Option<String>>>,
    kernels: Mutex<HashMap<KernelKey, Arc<Kernel>>>,
    timeout: Duration,
}

/// A kernel is identified by its shader and its override values (as bits, to be hashable).
type KernelKey = (Shader, Vec<(&'static str, u64)>);

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
    /// adapters last. The device gets the adapter's full limits.
    pub fn new_with(options: &GpuOptions) -> Result<Self> {
        let adapter = choose_adapter(options)?;
        let info = adapter.get_info();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("fusedopt"),
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| {
                Error::RequestDevice {
                    adapter: info.name.clone(),
                    message: e.to_string(),
                }
            })?;
        let mut gpu = Self::wrap(device, queue, info);
        gpu.adapter_features = Some(adapter.features());
        gpu.memory = device_memory(&adapter);
        let lost = Arc::clone(&gpu.lost);
        gpu.device.set_device_lost_callback(move |reason, message| {
            let text = format!("{reason:?}: {message}");
            *lost.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
        });
        let uncaptured = Arc::clone(&gpu.uncaptured);
        gpu.device
            .on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
                let mut slot = uncaptured.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert_with(|| error.to_string());
            }));
        Ok(gpu)
    }

    /// Wraps a device and queue the caller already has (for example its training engine's).
    /// fusedopt installs no handlers on it: every call runs inside its own error scopes.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        Self::wrap(device, queue, info)
    }

    fn wrap(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        Self {
            limits: DeviceLimits::from_wgpu(&device.limits()),
            features: device.features(),
            device,
            queue,
            info,
            adapter_features: None,
            memory: None,
            lost: Arc::default(),
            uncaptured: Arc::default(),
            kernels: Mutex::default(),
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
        self.features
    }

    /// Features the adapter offers (known only when fusedopt created the device).
    pub fn adapter_features(&self) -> Option<wgpu::Features> {
        self.adapter_features
    }

    /// Bytes of memory the device's buffers can use, where the backend says: the sum of the
    /// device-local heaps on Vulkan, the host's available memory for a software (CPU) adapter;
    /// `None` on other backends and for devices wrapped with [`Gpu::from_device`]. wgpu itself
    /// reports no memory size.
    pub fn device_memory(&self) -> Option<u64> {
        self.memory
    }

    /// The limits fusedopt works within.
    pub fn limits(&self) -> &DeviceLimits {
        &self.limits
    }

    /// Lowers the bytes bound per dispatch (default: the device's largest storage binding), so
    /// that the multi-chunk path can be exercised on small data. Applies to optimizers created
    /// afterwards. `bytes` must be a positive multiple of the storage offset alignment and at
    /// most the device's limit.
    pub fn set_max_chunk_bytes(&mut self, bytes: u64) -> Result<()> {
        let align = u64::from(self.limits.storage_offset_alignment);
        if bytes == 0 || !bytes.is_multiple_of(align) || bytes > self.limits.max_binding_bytes {
            return Err(Error::Unsupported {
                optimizer: "fusedopt",
                message: format!(
                    "chunk size {bytes} must be a positive multiple of {align} bytes and at most {}",
                    self.limits.max_binding_bytes
                ),
            });
        }
        self.limits.chunk_bytes = bytes;
        Ok(())
    }

    /// Lowers the largest buffer fusedopt creates (default: the device's `max_buffer_size`), so
    /// that sets spanning several buffers can be exercised on small data. `bytes` must be a
    /// positive multiple of the storage offset alignment and at most the device's limit.
    pub fn set_max_buffer_bytes(&mut self, bytes: u64) -> Result<()> {
        let align = u64::from(self.limits.storage_offset_alignment);
        if bytes == 0
            || !bytes.is_multiple_of(align)
            || bytes > self.device.limits().max_buffer_size
        {
            return Err(Error::Unsupported {
                optimizer: "fusedopt",
                message: format!(
                    "buffer size {bytes} must be a positive multiple of {align} bytes and at most {}",
                    self.device.limits().max_buffer_size
                ),
            });
        }
        self.limits.max_buffer_bytes = bytes;
        Ok(())
    }

    /// How long a wait for the GPU may take before it fails with [`Error::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Fails if the device was lost or an error escaped every scope.
    fn check_health(&self) -> Result<()> {
        if let Some(reason) = self
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(Error::DeviceLost(reason));
        }
        if let Some(message) = self
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(Error::Wgpu {
                context: "an earlier operation".into(),
                message,
            });
        }
        Ok(())
    }

    /// Runs `f` inside out-of-memory, validation and internal error scopes and turns what they
    /// catch into an `Err` (dropping whatever `f` made).
    pub(crate) fn scoped<T>(&self, context: &str, f: impl FnOnce() -> T) -> Result<T> {
        self.check_health()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let value = f();
        let internal = pollster::block_on(internal.pop());
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        if oom.is_some() {
            return Err(Error::OutOfMemory(context.to_string()));
        }
        if let Some(error) = validation.or(internal) {
            return Err(Error::Wgpu {
                context: context.to_string(),
                message: error.to_string(),
            });
        }
        self.check_health()?;
        Ok(value)
    }

    /// Waits until the submission has run, with the timeout; a lost device is an `Err`, not a
    /// panic.
    pub(crate) fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: Some(self.timeout),
        })
    }

    /// `Device::poll`, with a panic inside wgpu (a lost device) turned into an `Err`.
    fn poll(&self, poll_type: wgpu::PollType) -> Result<()> {
        let poll = catch_unwind(AssertUnwindSafe(|| self.device.poll(poll_type)));
        match poll {
            Ok(Ok(_)) => self.check_health(),
            Ok(Err(wgpu::PollError::Timeout)) => Err(Error::Timeout(self.timeout)),
            Ok(Err(e)) => Err(Error::DeviceLost(e.to_string())),
            Err(_) => Err(Error::DeviceLost(
                "the device panicked while polling".into(),
            )),
        }
    }

    /// Submits the encoder's commands and waits for them.
    pub(crate) fn submit_and_wait(
        &self,
        context: &str,
        encoder: wgpu::CommandEncoder,
    ) -> Result<()> {
        let submission = self.scoped(context, || self.queue.submit([encoder.finish()]))?;
        self.wait(submission)
    }

    /// The kernel for `shader` with these overrides, compiled once per device.
    pub(crate) fn kernel(
        &self,
        shader: Shader,
        overrides: &[(&'static str, f64)],
    ) -> Result<Arc<Kernel>> {
        let key = (
            shader,
            overrides.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        if let Some(kernel) = self
            .kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(kernel));
        }
        let kernel = Arc::new(Kernel::build(self, shader, overrides)?);
        self.kernels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&kernel));
        Ok(kernel)
    }

    /// Checks that a buffer of `bytes` fits the device.
    pub(crate) fn check_buffer_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.limits.max_buffer_bytes {
            return Err(Error::LimitExceeded {
                what: what.to_string(),
                requested: bytes,
                limit: self.limits.max_buffer_bytes,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }

    /// Creates a storage buffer of `len` zeros (f32), usable for parameters, gradients or state.
    pub fn zeros(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        let bytes = (len as u64).saturating_mul(4);
        self.check_buffer_size(label, bytes)?;
        self.scoped(&format!("allocating {label}"), || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Uploads `data` into a new storage buffer (usable as parameters or gradients).
    pub fn upload(&self, label: &str, data: &[f32]) -> Result<wgpu::Buffer> {
        if data.is_empty() {
            return Err(Error::InvalidBuffer {
                what: label.to_string(),
                message: "a tensor needs at least one element".into(),
            });
        }
        let buffer = self.zeros(label, data.len())?;
        self.write(&buffer, 0, data)?;
        Ok(buffer)
    }

    /// Writes `data` into `buffer` starting at element `offset`. The write is ordered before
    /// any later submission, like `wgpu::Queue::write_buffer`.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, data: &[f32]) -> Result<()> {
        let capacity = buffer.size() / 4;
        if offset.saturating_add(data.len() as u64) > capacity {
            return Err(Error::LengthMismatch {
                what: format!("write at element {offset} into a buffer of {capacity} elements"),
                expected: capacity.saturating_sub(offset) as usize,
                got: data.len(),
            });
        }
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_DST) {
            return Err(Error::InvalidBuffer {
                what: "write target".into(),
                message: "the buffer lacks COPY_DST usage".into(),
            });
        }
        self.scoped("writing a buffer", || {
            self.queue
                .write_buffer(buffer, offset * 4, bytemuck::cast_slice(data));
        })
    }

    /// Fills `len` elements of `buffer` from element `offset` with `value`, in bounded pieces.
    pub(crate) fn fill(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: u64,
        value: f32,
    ) -> Result<()> {
        let piece = (TRANSFER_CHUNK_BYTES / 4).min(len) as usize;
        let values = vec![value; piece];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(piece as u64) as usize;
            self.write(buffer, offset + done, &values[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Reads `len` f32 elements of `buffer` from element `offset`, through a bounded staging
    /// buffer, in as few round trips as that allows.
    pub fn download(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        let capacity = buffer.size() / 4;
        if offset.saturating_add(len as u64) > capacity {
            return Err(Error::LengthMismatch {
                what: format!("read at element {offset} from a buffer of {capacity} elements"),
                expected: capacity.saturating_sub(offset) as usize,
                got: len,
            });
        }
        if !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::InvalidBuffer {
                what: "readback source".into(),
                message: "the buffer lacks COPY_SRC usage".into(),
            });
        }
        let total = len as u64 * 4;
        let staging_size = total.clamp(4, TRANSFER_CHUNK_BYTES);
        let staging = self.scoped("allocating a readback buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fusedopt/readback"),
                size: staging_size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut out = Vec::with_capacity(len);
        let mut done = 0;
        while done < total {
            let n = (total - done).min(staging_size);
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, offset * 4 + done, &staging, 0, n);
            self.submit_and_wait("copying for readback", encoder)?;
            self.map_read(&staging, n, &mut out)?;
            done += n;
        }
        Ok(out)
    }

    /// Maps the first `bytes` of `staging`, appends them to `out` as f32, and unmaps.
    fn map_read(&self, staging: &wgpu::Buffer, bytes: u64, out: &mut Vec<f32>) -> Result<()> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let index = self.scoped("mapping for readback", || {
            staging.map_async(wgpu::MapMode::Read, ..bytes, move |result| {
                // The receiver outlives the wait below; a failed send only means it is gone.
                let _ = sender.send(result);
            });
            self.queue.submit([])
        })?;
        self.wait(index)?;
        let readback = |message: String| Error::Readback {
            what: "buffer".into(),
            message,
        };
        // Another thread polling the same device may be the one to run the callback, a moment
        // after our wait returned: keep polling until it arrives or the timeout passes.
        let deadline = std::time::Instant::now() + self.timeout;
        let mapped = loop {
            match receiver.try_recv() {
                Ok(result) => break result,
                Err(_) if std::time::Instant::now() > deadline => {
                    return Err(Error::Timeout(self.timeout));
                }
                Err(_) => {
                    self.poll(wgpu::PollType::Poll)?;
                    std::thread::yield_now();
                }
            }
        };
        mapped.map_err(|e| readback(e.to_string()))?;
        {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| readback(e.to_string()))?;
            out.extend_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        Ok(())
    }
}

/// Memory available to buffers on `adapter` (see [`Gpu::device_memory`]).
fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    let info = adapter.get_info();
    if info.device_type == wgpu::DeviceType::Cpu {
        return Some(host_available_memory()).filter(|&m| m > 0);
    }
    #[cfg(not(any(target_vendor = "apple", target_arch = "wasm32")))]
    if info.backend == wgpu::Backend::Vulkan {
        // SAFETY: the adapter is alive for the whole block and only its physical device's
        // memory properties are read, which Vulkan allows at any time.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
        let instance = hal.shared_instance().raw_instance();
        // SAFETY: the physical device belongs to this instance.
        let memory =
            unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
        let heaps = &memory.memory_heaps[..memory.memory_heap_count as usize];
        let local: u64 = heaps
            .iter()
            .filter(|h| h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .sum();
        return Some(local).filter(|&m| m > 0);
    }
    None
}

/// Host memory available now, in bytes (0 where the system does not say).
pub fn host_available_memory() -> u64 {
    sysinfo::System::new().map_or(0, |mut system| {
        system.refresh_memory();
        system.available_memory()
    })
}

/// Adapters in order of preference: discrete, integrated, virtual, other, CPU; native APIs
/// before GL within each kind.
fn choose_adapter(options: &GpuOptions) -> Result<wgpu::Adapter> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = options.backends;
    // fusedopt never dispatches indirectly; without this flag wgpu caps buffers at 4 GiB.
    descriptor
        .flags
        .remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
    let instance = wgpu::Instance::new(descriptor);
    let mut adapters = pollster::block_on(instance.enumerate_adapters(options.backends));
    adapters.sort_by_key(|a| adapter_rank(&a.get_info()));
    let names: Vec<String> = adapters
        .iter()
        .map(|a| describe_adapter(&a.get_info()))
        .collect();
    let chosen = match &options.adapter_name {
        Some(wanted) => {
            let wanted_lower = wanted.to_lowercase();
            adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lower))
                .ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "no adapter name contains {wanted:?} (WGPU_ADAPTER_NAME); found: [{}]",
                        names.join("; ")
                    ))
                })?
        }
        None => adapters.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(format!(
                "wgpu found no adapter for backends {:?}. Without a GPU, install a software \
                 driver: `apt-get install mesa-vulkan-drivers` (Vulkan lavapipe), or use \
                 WGPU_BACKEND=gl with Mesa's llvmpipe",
                options.backends
            ))
        })?,
    };
    Ok(chosen)
}

fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (kind, u8::from(info.backend == wgpu::Backend::Gl))
}

/// One line naming an adapter: name, type and backend.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {})", info.name, info.device_type, info.backend)
}

/// Every adapter wgpu finds for the backends, in fusedopt's order of preference.
pub fn list_adapters(backends: wgpu::Backends) -> Vec<wgpu::AdapterInfo> {
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);
    let mut infos: Vec<_> = pollster::block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(wgpu::Adapter::get_info)
        .collect();
    infos.sort_by_key(adapter_rank);
    infos
}
