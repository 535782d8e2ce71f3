//! Choosing an adapter for a device fusedopt creates: real GPUs first, software adapters last,
//! all found once per process.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Which adapter [`crate::Gpu::new_with`] picks.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to consider (wgpu's `WGPU_BACKEND`: `vulkan`, `metal`, `dx12`, `gl`), among
    /// those the environment's `WGPU_BACKEND` lets the process start.
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

/// Every adapter of the backends `WGPU_BACKEND` allows (all without it), found once per
/// process with one wgpu instance, in fusedopt's order of preference. Every device fusedopt
/// creates comes from them: wgpu names buffers by an index per instance, so only devices of one
/// instance can tell each other's buffers apart (and refuse them); and on GL, devices of one
/// adapter share its context and the lock that guards it. Backends outside `WGPU_BACKEND` are
/// never started, so it still keeps a backend whose start fails out of the process.
fn adapters() -> Vec<wgpu::Adapter> {
    static FOUND: OnceLock<Vec<wgpu::Adapter>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            // WGPU_BACKEND and wgpu's other settings, from the environment.
            let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            // fusedopt never dispatches indirectly; without this flag wgpu caps buffers at
            // 4 GiB.
            descriptor
                .flags
                .remove(wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
            let backends = descriptor.backends;
            let instance = wgpu::Instance::new(descriptor);
            let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
            adapters.sort_by_key(|a| rank(&a.get_info()));
            adapters
        })
        .clone()
}

/// The adapters of `backends`, in order of preference.
fn adapters_of(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    adapters()
        .into_iter()
        .filter(|a| backends.contains(wgpu::Backends::from(a.get_info().backend)))
        .collect()
}

/// The adapter the options ask for: by name, else the most capable kind.
pub(super) fn choose(options: &GpuOptions) -> Result<wgpu::Adapter> {
    if options.backends.is_empty() {
        let set = std::env::var("WGPU_BACKEND").unwrap_or_default();
        return Err(Error::NoAdapter(format!(
            "WGPU_BACKEND={set:?} names no backend wgpu knows: give one or more of vulkan, \
             metal, dx12, gl, webgpu (comma-separated), or leave it unset for all"
        )));
    }
    let adapters = adapters_of(options.backends);
    let names: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
    match &options.adapter_name {
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
                })
        }
        None => adapters.into_iter().next().ok_or_else(|| {
            Error::NoAdapter(format!(
                "wgpu found no adapter for backends {:?}. Without a GPU, install a software \
                 driver: `apt-get install mesa-vulkan-drivers` (Vulkan lavapipe), or use \
                 WGPU_BACKEND=gl with Mesa's llvmpipe",
                options.backends
            ))
        }),
    }
}

/// Adapters in order of preference: discrete, integrated, virtual, other, CPU; native APIs
/// before GL within each kind.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
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
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {})", info.name, info.device_type, info.backend)
}

/// Every adapter wgpu finds for the backends, in fusedopt's order of preference.
pub fn list(backends: wgpu::Backends) -> Vec<wgpu::AdapterInfo> {
    adapters_of(backends)
        .iter()
        .map(wgpu::Adapter::get_info)
        .collect()
}

/// Device-local memory of `adapter` where the backend says: the sum of the device-local heaps
/// on Vulkan; `None` elsewhere (wgpu itself reports no memory size).
pub(super) fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(not(any(target_vendor = "apple", target_arch = "wasm32")))]
    if adapter.get_info().backend == wgpu::Backend::Vulkan {
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
