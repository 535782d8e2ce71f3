//! What a caller hands the optimizers: ranges of f32 in its own buffers, and the checks that
//! make a bad range an error before anything is created: usage, bounds, alignment, the device
//! the buffer belongs to, and ranges that alias or overlap.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

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
/// A set larger than the device's `max_buffer_size` is several pieces, stepped together by
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
/// `names` calls the two ranges in errors (`params` and `grads` for an optimizer).
pub(crate) fn check_pieces(
    gpu: &Gpu,
    pieces: &[Piece<'_>],
    (written, read): (&str, &str),
) -> Result<()> {
    if pieces.is_empty() {
        return Err(Error::InvalidBuffer {
            what: written.into(),
            message: "a parameter set needs at least one piece".into(),
        });
    }
    for piece in pieces {
        check_range(gpu, written, &piece.params)?;
        check_range(gpu, read, &piece.grads)?;
        if piece.grads.len != piece.params.len {
            return Err(Error::LengthMismatch {
                what: read.into(),
                expected: piece.params.len,
                got: piece.grads.len,
            });
        }
    }
    check_device(gpu, pieces, (written, read))?;
    for (k, piece) in pieces.iter().enumerate() {
        // One dispatch binds both as storage, read-write and read-only: wgpu refuses that for
        // one buffer even where the ranges are disjoint.
        if piece.params.buffer == piece.grads.buffer {
            return Err(Error::InvalidBuffer {
                what: read.into(),
                message: format!(
                    "piece {k}: {written} and {read} are in the same buffer; they need two"
                ),
            });
        }
        for (j, other) in pieces.iter().enumerate().skip(k + 1) {
            for (what, a, b) in [
                (written, &piece.params, &other.params),
                (read, &piece.grads, &other.params),
                (written, &piece.params, &other.grads),
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
/// is made of it. wgpu names buffers by an index per instance: among devices of one instance
/// (all of fusedopt's own) it tells each device's buffers apart; a buffer of another instance
/// may be unknown to this one (wgpu panics, caught here, though not in a program built with
/// `panic = "abort"`) or share its index with one of this device's, which no check can see.
fn check_device(gpu: &Gpu, pieces: &[Piece<'_>], (written, read): (&str, &str)) -> Result<()> {
    let layout = gpu.scoped("checking buffers", || {
        gpu.device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("fusedopt/device check"),
                entries: &[storage_entry(0, true)],
            })
    })?;
    let ranges = pieces
        .iter()
        .flat_map(|p| [(written, p.params), (read, p.grads)]);
    for (what, range) in ranges {
        let probe = catch_unwind(AssertUnwindSafe(|| {
            gpu.scoped("checking buffers", || {
                gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fusedopt/device check"),
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: crate::kernels::elements(range.buffer, 0, 1),
                    }],
                })
            })
        }));
        let foreign = |source| Error::ForeignBuffer {
            what: what.into(),
            source,
        };
        match probe {
            Ok(Ok(_)) => {}
            Ok(Err(Error::Wgpu { source, .. })) if is_device_mismatch(&source) => {
                return Err(foreign(Some(source)));
            }
            Ok(Err(e)) => return Err(e),
            // This instance has no buffer of that index: the buffer is another instance's.
            Err(_) => return Err(foreign(None)),
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
