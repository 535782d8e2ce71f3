//! What a caller hands the optimizers: ranges of f32 in its own buffers, and the checks that
//! make a bad range an error before anything is created: usage, bounds, alignment, the device
//! the buffer belongs to, and ranges that alias or overlap.

use std::ops::Range;

use super::Gpu;
use crate::error::{Error, Result};
use crate::kernels::storage_entry;

/// `len` f32 elements of a buffer, starting at element `offset`.
#[derive(Clone, Copy, Debug)]
pub struct BufferRange<'a> {
    /// The buffer; it needs `STORAGE` usage (and `COPY_SRC` to be read back).
    pub buffer: &'a wgpu::Buffer,
    /// First element; `offset * 4` must be a multiple of the device's storage offset alignment.
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
}

impl<'a> BufferRange<'a> {
    /// The whole buffer as f32 elements.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            len: (buffer.size() / 4) as usize,
        }
    }

    /// Bytes of the buffer the range covers (after [`check_range`], this cannot overflow).
    fn bytes(&self) -> Range<u64> {
        self.offset * 4..(self.offset + self.len as u64) * 4
    }
}

impl<'a> From<&'a wgpu::Buffer> for BufferRange<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

/// One buffer's share of a parameter set: parameters and their gradients, of equal length.
/// A set larger than `max_buffer_size` (or than 4 GiB) is several pieces, stepped together by
/// one [`crate::GpuOptimizer`] ([`crate::GpuOptimizer::with_pieces`], [`crate::BufferSet`]).
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    /// The parameters.
    pub params: BufferRange<'a>,
    /// Their gradients.
    pub grads: BufferRange<'a>,
}

/// Checks the pieces of one parameter set: every range usable on `gpu`, gradients as long as
/// their parameters, no two ranges of a piece in one buffer, and no range overlapping a
/// parameter range of another piece (it would be stepped twice, or read while written).
pub(crate) fn check_pieces(gpu: &Gpu, pieces: &[Piece<'_>]) -> Result<()> {
    if pieces.is_empty() {
        return Err(Error::InvalidBuffer {
            what: "params".into(),
            message: "a parameter set needs at least one piece".into(),
        });
    }
    for piece in pieces {
        check_range(gpu, "params", &piece.params)?;
        check_range(gpu, "grads", &piece.grads)?;
        if piece.grads.len != piece.params.len {
            return Err(Error::LengthMismatch {
                what: "grads".into(),
                expected: piece.params.len,
                got: piece.grads.len,
            });
        }
    }
    check_device(gpu, pieces)?;
    for (k, piece) in pieces.iter().enumerate() {
        // One dispatch binds both as storage, read-write and read-only: wgpu refuses that for
        // one buffer even where the ranges are disjoint.
        if piece.params.buffer == piece.grads.buffer {
            return Err(Error::InvalidBuffer {
                what: "grads".into(),
                message: format!(
                    "piece {k}: parameters and gradients are in the same buffer; \
                     they need two buffers"
                ),
            });
        }
        for (j, other) in pieces.iter().enumerate().skip(k + 1) {
            for (what, a, b) in [
                ("params", &piece.params, &other.params),
                ("grads", &piece.grads, &other.params),
                ("params", &piece.params, &other.grads),
            ] {
                if overlap(a, b) {
                    return Err(Error::InvalidBuffer {
                        what: what.into(),
                        message: format!(
                            "pieces {k} and {j} overlap: elements {:?} and {:?} of one buffer",
                            a.bytes().start / 4..a.bytes().end / 4,
                            b.bytes().start / 4..b.bytes().end / 4
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A range must be non-empty, inside its buffer, aligned, and a storage buffer.
fn check_range(gpu: &Gpu, what: &str, range: &BufferRange<'_>) -> Result<()> {
    let invalid = |message: String| Error::InvalidBuffer {
        what: what.to_string(),
        message,
    };
    if range.len == 0 {
        return Err(invalid("a tensor needs at least one element".into()));
    }
    let usage = wgpu::BufferUsages::STORAGE;
    if !range.buffer.usage().contains(usage) {
        return Err(invalid(format!("the buffer lacks {usage:?} usage")));
    }
    let capacity = range.buffer.size() / 4;
    let end = range.offset.saturating_add(range.len as u64);
    if end > capacity {
        return Err(invalid(format!(
            "elements {}..{end} lie outside a buffer of {capacity} elements",
            range.offset,
        )));
    }
    let align = u64::from(gpu.limits().storage_offset_alignment);
    if !(range.offset * 4).is_multiple_of(align) {
        return Err(invalid(format!(
            "offset {} bytes is not a multiple of the storage offset alignment {align}",
            range.offset * 4
        )));
    }
    Ok(())
}

/// Binds each buffer once on `gpu`, so that wgpu names one of another device before anything
/// is made of it. (wgpu can tell only devices of one instance apart: fusedopt's own devices
/// share one; a borrowed device's buffers must come from that device.)
fn check_device(gpu: &Gpu, pieces: &[Piece<'_>]) -> Result<()> {
    let layout = gpu.scoped("checking buffers", || {
        gpu.device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("fusedopt/device check"),
                entries: &[storage_entry(0, true)],
            })
    })?;
    let ranges = pieces
        .iter()
        .flat_map(|p| [("params", p.params), ("grads", p.grads)]);
    for (what, range) in ranges {
        let probe = gpu.scoped("checking buffers", || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fusedopt/device check"),
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: crate::kernels::elements(range.buffer, 0, 1),
                }],
            })
        });
        match probe {
            Ok(_) => {}
            Err(Error::Wgpu { source, .. }) if is_device_mismatch(&source) => {
                return Err(Error::ForeignBuffer {
                    what: what.into(),
                    source,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether wgpu refused a bind group for a resource of another device.
fn is_device_mismatch(error: &wgpu::Error) -> bool {
    use wgpu::wgc::binding_model::CreateBindGroupError;
    use wgpu::wgc::device::DeviceError;
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(CreateBindGroupError::Device(DeviceError::DeviceMismatch(_))) = e.downcast_ref()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether two ranges share an element of one buffer.
fn overlap(a: &BufferRange<'_>, b: &BufferRange<'_>) -> bool {
    let (a_bytes, b_bytes) = (a.bytes(), b.bytes());
    a.buffer == b.buffer && a_bytes.start < b_bytes.end && b_bytes.start < a_bytes.end
}
