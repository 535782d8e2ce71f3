//! Moving f32 between the host and buffers: uploads and fills through the queue, readback
//! through one bounded staging buffer, so that a multi-GB tensor needs no second multi-GB
//! allocation.

use super::Gpu;
use crate::error::{Error, Result};

/// Offset of one record from the next in a buffer of small uniforms, one per dispatch: the
/// largest uniform offset alignment a device may ask for.
pub(crate) const UNIFORM_STRIDE: u64 = 256;

/// Buffers from this size on are verified after allocation on the GL backend
/// ([`Gpu::zeros`]); below it a failed allocation is rare and the round trip not worth it.
const UNREPORTED_OOM_BYTES: u64 = 16 << 20;

/// Largest staging buffer used for readback and initialization.
const TRANSFER_CHUNK_BYTES: u64 = 64 << 20;

impl Gpu {
    /// Creates a storage buffer of `len` zeros (f32), usable for parameters, gradients or state.
    /// On the GL backend, whose out-of-memory wgpu does not report, a large buffer is proved
    /// to hold what is written to its ends before it is handed out.
    pub fn zeros(&self, label: &str, len: usize) -> Result<wgpu::Buffer> {
        let bytes = (len as u64).saturating_mul(4);
        self.limits.check_buffer_size(label, bytes)?;
        let buffer = self.scoped(&format!("allocating {label}"), || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        if self.adapter_info().backend == wgpu::Backend::Gl && bytes >= UNREPORTED_OOM_BYTES {
            self.verify_allocation(label, &buffer, len as u64)?;
        }
        Ok(buffer)
    }

    /// Writes a sentinel to the first and last element of a new buffer, reads them back and
    /// zeroes them again: a buffer the driver could not back loses the writes, which is
    /// reported as out of memory instead of handed out to lose a model's state.
    fn verify_allocation(&self, label: &str, buffer: &wgpu::Buffer, len: u64) -> Result<()> {
        const SENTINEL: f32 = -1.5;
        let last = len - 1;
        self.write(buffer, 0, &[SENTINEL])?;
        self.write(buffer, last, &[SENTINEL])?;
        let ends = [
            self.download(buffer, 0, 1)?[0],
            self.download(buffer, last, 1)?[0],
        ];
        if ends != [SENTINEL; 2] {
            return Err(Error::OutOfMemory {
                context: format!("allocating {label}"),
                source: wgpu::Error::OutOfMemory {
                    source: format!(
                        "the GL driver did not keep writes to the {} MiB buffer (read back \
                         {ends:?}); the host is likely out of memory",
                        (len * 4) >> 20
                    )
                    .into(),
                },
            });
        }
        self.write(buffer, 0, &[0.0])?;
        self.write(buffer, last, &[0.0])
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
        check_span(buffer, offset, data.len(), "write into")?;
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

    /// A new buffer of `usage` holding `bytes` (a multiple of 4), written at creation: for
    /// small buffers of uniforms and per-step values.
    pub(crate) fn buffer_with(
        &self,
        label: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.scoped(&format!("writing {label}"), || {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.len() as u64,
                usage,
                mapped_at_creation: true,
            });
            buffer
                .get_mapped_range_mut(..)
                .map_err(|e| {
                    self.lost_or(Error::Mapping {
                        what: label.to_string(),
                        source: Box::new(e),
                    })
                })?
                .copy_from_slice(bytes);
            buffer.unmap();
            Ok(buffer)
        })?
    }

    /// A uniform buffer of 16-byte `records`, each at a multiple of [`UNIFORM_STRIDE`] so that
    /// each can be bound on its own.
    pub(crate) fn uniform_records(
        &self,
        label: &str,
        records: &[[u32; 4]],
    ) -> Result<wgpu::Buffer> {
        let mut bytes = vec![0u8; records.len() * UNIFORM_STRIDE as usize];
        for (record, at) in records
            .iter()
            .zip(bytes.chunks_mut(UNIFORM_STRIDE as usize))
        {
            at[..16].copy_from_slice(bytemuck::cast_slice(record));
        }
        self.buffer_with(label, &bytes, wgpu::BufferUsages::UNIFORM)
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
    /// buffer, in as few round trips as that allows. It waits for all work submitted before.
    pub fn download(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        check_span(buffer, offset, len, "read from")?;
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
        let readback = |source: Box<dyn std::error::Error + Send + Sync>| {
            self.lost_or(Error::Mapping {
                what: "a buffer for readback".into(),
                source,
            })
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
        mapped.map_err(|e| readback(Box::new(e)))?;
        {
            let view = staging
                .get_mapped_range(..bytes)
                .map_err(|e| readback(Box::new(e)))?;
            out.extend_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
        Ok(())
    }
}

impl Gpu {
    /// Uploads 16-bit values (bf16 or f16 bits) into a new storage buffer, two to a word (the
    /// first in the low half), the last word's upper half zero when their number is odd.
    pub fn upload_half(&self, label: &str, data: &[u16]) -> Result<wgpu::Buffer> {
        let words = pack_words(data, |_| 0);
        self.upload(label, bytemuck::cast_slice(&words))
    }

    /// Writes 16-bit values into `buffer` from 16-bit element `offset` (even: whole words).
    /// An odd count ends in the lower half of a word whose upper half is read back first and
    /// kept.
    pub fn write_half(&self, buffer: &wgpu::Buffer, offset: u64, data: &[u16]) -> Result<()> {
        if !offset.is_multiple_of(2) {
            return Err(Error::InvalidBuffer {
                what: "write target".into(),
                message: format!("16-bit element {offset} is not at the start of a word"),
            });
        }
        let last = offset / 2 + data.len() as u64 / 2;
        let upper = if data.len() % 2 == 1 {
            let word = self.download(buffer, last, 1)?[0].to_bits();
            (word >> 16) as u16
        } else {
            0
        };
        let words = pack_words(data, |_| upper);
        self.write(buffer, offset / 2, bytemuck::cast_slice(&words))
    }

    /// Reads `len` 16-bit values of `buffer` from 16-bit element `offset` (even).
    pub fn download_half(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u16>> {
        if !offset.is_multiple_of(2) {
            return Err(Error::InvalidBuffer {
                what: "readback source".into(),
                message: format!("16-bit element {offset} is not at the start of a word"),
            });
        }
        let words = self.download(buffer, offset / 2, len.div_ceil(2))?;
        let halves: &[u16] = bytemuck::cast_slice(&words);
        Ok(halves[..len].to_vec())
    }
}

/// 16-bit values two to a word, the first in the low half (little-endian order); an odd last
/// value's word gets `upper(len)` above it.
fn pack_words(data: &[u16], upper: impl Fn(usize) -> u16) -> Vec<u32> {
    data.chunks(2)
        .map(|pair| {
            let high = pair.get(1).copied().unwrap_or_else(|| upper(data.len()));
            u32::from(pair[0]) | u32::from(high) << 16
        })
        .collect()
}

/// Elements `offset..offset + len` must lie inside `buffer`.
fn check_span(buffer: &wgpu::Buffer, offset: u64, len: usize, verb: &str) -> Result<()> {
    let capacity = buffer.size() / 4;
    if offset.saturating_add(len as u64) > capacity {
        return Err(Error::LengthMismatch {
            what: format!("{verb} element {offset} of a buffer of {capacity} elements"),
            expected: capacity.saturating_sub(offset) as usize,
            got: len,
        });
    }
    Ok(())
}
