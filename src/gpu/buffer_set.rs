//! Parameter sets larger than one buffer may be: f32 elements spread over as many buffers as
//! the device's `max_buffer_size` requires.

use super::{BufferRange, Gpu, Piece};
use crate::error::{Error, Result};

/// `len` f32 elements in consecutive buffers of at most `max_buffer_size` each (a multiple of
/// the storage offset alignment, all but the last full). One buffer when the set fits in one.
#[derive(Debug)]
pub struct BufferSet {
    buffers: Vec<wgpu::Buffer>,
    len: usize,
    /// Elements per buffer (the last may hold fewer).
    per_buffer: usize,
}

impl BufferSet {
    /// A set of `len` zeros (storage buffers, readable and writable by copies).
    pub fn zeros(gpu: &Gpu, label: &str, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidBuffer {
                what: label.to_string(),
                message: "a tensor needs at least one element".into(),
            });
        }
        let limits = gpu.limits();
        let align = u64::from(limits.storage_offset_alignment).max(4);
        let per_buffer = (limits.max_buffer_bytes / align * align / 4) as usize;
        if per_buffer == 0 {
            return Err(Error::LimitExceeded {
                what: label.to_string(),
                requested: align,
                limit: limits.max_buffer_bytes,
                limit_name: "max_buffer_size",
            });
        }
        let count = len.div_ceil(per_buffer);
        let buffers = (0..count)
            .map(|i| {
                let n = (len - i * per_buffer).min(per_buffer);
                gpu.zeros(&format!("{label}#{i}"), n)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            buffers,
            len,
            per_buffer,
        })
    }

    /// A set holding `data`.
    pub fn upload(gpu: &Gpu, label: &str, data: &[f32]) -> Result<Self> {
        let set = Self::zeros(gpu, label, data.len())?;
        set.write(gpu, data)?;
        Ok(set)
    }

    /// Overwrites the whole set with `data` (ordered before later submissions).
    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if data.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "write into a buffer set".into(),
                expected: self.len,
                got: data.len(),
            });
        }
        for (buffer, part) in self.buffers.iter().zip(data.chunks(self.per_buffer)) {
            gpu.write(buffer, 0, part)?;
        }
        Ok(())
    }

    /// Reads the whole set back.
    pub fn download(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len);
        for range in self.ranges() {
            out.extend(gpu.download(range.buffer, range.offset, range.len)?);
        }
        Ok(out)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty (never: creation rejects it).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers, in order.
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }

    /// Each buffer as a range of f32 elements.
    pub fn ranges(&self) -> Vec<BufferRange<'_>> {
        self.buffers.iter().map(BufferRange::whole).collect()
    }

    /// The pieces a [`crate::GpuOptimizer`] steps: these parameters with `grads`, buffer by
    /// buffer. Both sets must have been made for the same length on the same device.
    pub fn pieces<'a>(&'a self, grads: &'a BufferSet) -> Result<Vec<Piece<'a>>> {
        if grads.len != self.len {
            return Err(Error::LengthMismatch {
                what: "grads (buffer set)".into(),
                expected: self.len,
                got: grads.len,
            });
        }
        if grads.per_buffer != self.per_buffer {
            return Err(Error::InvalidBuffer {
                what: "grads (buffer set)".into(),
                message: format!(
                    "{} elements per buffer against the parameters' {}: the sets were made \
                     under different buffer limits",
                    grads.per_buffer, self.per_buffer
                ),
            });
        }
        Ok(self
            .ranges()
            .into_iter()
            .zip(grads.ranges())
            .map(|(params, grads)| Piece { params, grads })
            .collect())
    }
}
