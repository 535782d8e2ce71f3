//! The device limits fusedopt works within, and the settings that lower them so that tests can
//! reach the multi-chunk and multi-buffer paths on small data.

use crate::error::{Error, Result};
use crate::kernels::{Grid, LaunchShape};

/// The limits fusedopt works within, read from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Largest storage binding (`max_storage_buffer_binding_size`).
    pub max_binding_bytes: u64,
    /// Largest buffer (`max_buffer_size`), or less if lowered ([`crate::Gpu::set_max_buffer_bytes`]).
    pub max_buffer_bytes: u64,
    /// Workgroups per dispatch dimension (`max_compute_workgroups_per_dimension`).
    pub max_workgroups_per_dimension: u32,
    /// Alignment of storage binding offsets (`min_storage_buffer_offset_alignment`).
    pub storage_offset_alignment: u32,
    /// Alignment of uniform binding offsets (`min_uniform_buffer_offset_alignment`).
    pub uniform_offset_alignment: u32,
    /// Bytes of one chunk: the largest storage binding, at most [`Self::MAX_CHUNK_ELEMENTS`]
    /// f32, rounded down to the alignment (0 on a device whose binding limit is below it:
    /// nothing can be stepped there).
    pub chunk_bytes: u64,
    /// The device's own `max_buffer_size`, above which no setting may go.
    device_max_buffer_bytes: u64,
}

impl DeviceLimits {
    /// Most f32 one chunk binds (8 GiB): the kernels index a binding with a `u32` computed
    /// from a two-dimensional grid, which must not wrap past 2^32 invocations, so a larger
    /// binding is cut into chunks like any other.
    pub const MAX_CHUNK_ELEMENTS: u64 = 1 << 31;

    /// The limits of a device with `limits`.
    pub fn from_wgpu(limits: &wgpu::Limits) -> Self {
        let align = u64::from(limits.min_storage_buffer_offset_alignment).max(4);
        let binding = limits
            .max_storage_buffer_binding_size
            .min(Self::MAX_CHUNK_ELEMENTS * 4);
        Self {
            max_binding_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
            chunk_bytes: binding / align * align,
            device_max_buffer_bytes: limits.max_buffer_size,
        }
    }

    /// Elements of f32 in one chunk.
    pub fn chunk_elements(&self) -> u64 {
        self.chunk_bytes / 4
    }

    /// How ranges are cut into dispatches of kernels in `shape`.
    pub(crate) fn grid(&self, shape: LaunchShape) -> Grid {
        Grid {
            chunk_elements: self.chunk_elements(),
            max_per_dimension: self.max_workgroups_per_dimension,
            shape,
        }
    }

    /// Sets the bytes bound per dispatch: a positive multiple of the storage offset alignment,
    /// at most the device's binding limit.
    pub(super) fn set_chunk_bytes(&mut self, bytes: u64) -> Result<()> {
        let limit = self.max_binding_bytes.min(Self::MAX_CHUNK_ELEMENTS * 4);
        self.check_setting("chunk size", bytes, limit)?;
        self.chunk_bytes = bytes;
        Ok(())
    }

    /// Sets the largest buffer fusedopt creates: a positive multiple of the storage offset
    /// alignment, at most the device's `max_buffer_size`.
    pub(super) fn set_buffer_bytes(&mut self, bytes: u64) -> Result<()> {
        self.check_setting("buffer size", bytes, self.device_max_buffer_bytes)?;
        self.max_buffer_bytes = bytes;
        Ok(())
    }

    fn check_setting(&self, what: &str, bytes: u64, limit: u64) -> Result<()> {
        let align = u64::from(self.storage_offset_alignment).max(4);
        if bytes == 0 || !bytes.is_multiple_of(align) || bytes > limit {
            return Err(Error::InvalidSetting {
                what: what.to_string(),
                message: format!(
                    "{bytes} bytes: must be a positive multiple of {align} and at most {limit}"
                ),
            });
        }
        Ok(())
    }

    /// Fails unless a buffer of `bytes` fits.
    pub(crate) fn check_buffer_size(&self, what: &str, bytes: u64) -> Result<()> {
        if bytes > self.max_buffer_bytes {
            return Err(Error::LimitExceeded {
                what: format!("{what} ({bytes} bytes)"),
                requested: bytes,
                limit: self.max_buffer_bytes,
                limit_name: "max_buffer_size",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a device whose binding limit passes 16 GiB, a chunk still holds no more elements
    /// than the kernels' `u32` indices reach, so its workgroup grid and its indices never
    /// wrap or truncate.
    #[test]
    fn chunks_stay_within_u32_indexing_on_any_device() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 30,
            max_buffer_size: 128 << 30,
            ..wgpu::Limits::default()
        };
        let device = DeviceLimits::from_wgpu(&limits);
        assert!(device.chunk_elements() <= u64::from(u32::MAX));
        assert_eq!(device.chunk_bytes % 256, 0, "aligned");
        let shape = LaunchShape::default();
        let (x, y) = crate::kernels::workgroups(device.chunk_elements(), shape, 65535).unwrap();
        let covered = u64::from(x) * u64::from(y) * shape.elements_per_workgroup();
        assert!(
            covered < 1 << 32,
            "{x} x {y} workgroups index without wrapping"
        );
        let mut lowered = device;
        assert!(
            lowered.set_chunk_bytes(16 << 30).is_err(),
            "past u32 indexing"
        );
        lowered.set_chunk_bytes(1 << 20).unwrap();
        assert_eq!(lowered.chunk_elements(), 1 << 18);
    }
}
