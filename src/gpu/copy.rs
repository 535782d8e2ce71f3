//! The bandwidth roofline: a copy between two f32 ranges through the optimizers' own bindings
//! (1 read-write, 2 read-only), indexing, workgroup size and chunking. Reading 4 bytes and
//! writing 4 per element is the least any elementwise kernel moves, so the copy's bandwidth is
//! what an optimizer step is measured against.

use std::sync::Arc;

use super::Gpu;
use super::range::{BufferRange, Piece, check_pieces};
use crate::error::{Error, Result};
use crate::kernels::{Chunked, GRAD_BINDING, Kernel, PARAM_BINDING, elements};

/// A copy kernel bound to a source and a target range, recorded as one compute pass.
#[derive(Debug)]
pub struct GpuCopy {
    /// The device the copy's bind groups live on.
    device: wgpu::Device,
    kernel: Arc<Kernel>,
    dispatches: Chunked,
    len: usize,
}

impl GpuCopy {
    /// Copies `from` into `to` (same length, two buffers; checked like an optimizer's
    /// gradients and parameters).
    pub fn new(gpu: &Gpu, from: BufferRange<'_>, to: BufferRange<'_>) -> Result<Self> {
        let piece = Piece {
            params: to,
            grads: from,
        };
        check_pieces(gpu, &[piece], ("to", "from"), 4)?;
        let overrides = gpu.launch_shape().overrides();
        let kernel = gpu.pipelines.get_or_build("copy", &overrides, || {
            gpu.scoped("building the copy kernel", || {
                Kernel::copy(gpu.device(), &overrides)
            })
        })?;
        let mut dispatches = Chunked::default();
        gpu.scoped("creating the copy's bind groups", || {
            dispatches.extend(
                gpu.device(),
                &kernel,
                "copy",
                to.len as u64,
                gpu.grid(),
                |start, n| {
                    vec![
                        wgpu::BindGroupEntry {
                            binding: PARAM_BINDING,
                            resource: elements(to.buffer, to.offset + start, n),
                        },
                        wgpu::BindGroupEntry {
                            binding: GRAD_BINDING,
                            resource: elements(from.buffer, from.offset + start, n),
                        },
                    ]
                },
            )
        })??;
        Ok(Self {
            device: gpu.device().clone(),
            kernel,
            dispatches,
            len: to.len,
        })
    }

    /// Elements copied.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is copied (never: creation rejects empty ranges).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records the copy into `encoder` as one compute pass, optionally with timestamps at its
    /// start and end (the device needs `TIMESTAMP_QUERY` then).
    pub fn record(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        if gpu.device() != &self.device {
            return Err(Error::InvalidSetting {
                what: "device context".into(),
                message: "the copy was made on another device than this context's".into(),
            });
        }
        if timestamp_writes.is_some() {
            gpu.require_timestamps()?;
        }
        gpu.check_health()?;
        gpu.capture("recording a copy", || {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("fusedopt/copy"),
                timestamp_writes,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            self.dispatches.record(&mut pass);
        })
    }
}
