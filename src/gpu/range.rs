//! What a caller hands the optimizers: ranges of f32 (or 16-bit values) in its own buffers,
//! and the checks that
//! make a bad range an error before anything is created: usage, bounds, alignment, the device
//! the buffer belongs to, and ranges that alias or overlap.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::Gpu;
use crate::error::{Error, Result};
use crate::kernels::storage_entry;

/// `len` elements of a buffer, starting at element `offset`: f32, or for an optimizer in a
/// 16-bit [`crate::Precision`], 16-bit values two to a word.
#[derive(Clone, Copy, Debug)]
pub struct BufferRange<'a> {
    /// The buffer; it needs `STORAGE` usage (and `COPY_SRC` to be read back).
    pub buffer: &'a wgpu::Buffer,
    /// First element; its byte offset must be a multiple of the device's storage offset
    /// alignment.
    pub offset: u64,
    /// Number of elements.
    pub len: usize,
}

impl<'a> BufferRange<'a> {
    /// The whole buffer as f32 elements (also what `&buffer` converts to).
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            len: (buffer.size() / 4) as usize,
        }
    }

    /// The first `len` 16-bit elements of a buffer, for an optimizer in a 16-bit precision
    /// (a whole buffer as [`BufferRange::whole`] counts 4-byte elements, half as many).
    pub fn half(buffer: &'a wgpu::Buffer, len: usize) -> Self {
        Self {
            buffer,
            offset: 0,
            len,
        }
    }

    /// Bytes of the buffer the range binds with elements of `size` bytes, to the end of its
    /// last word (after [`check_range`], this cannot overflow).
    fn bytes(&self, size: u64) -> Range<u64> {
        self.offset * size..((self.offset + self.len as u64) * size).next_multiple_of(4)
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
/// `names` calls the two ranges in errors (`params` and `grads` for an optimizer); elements
/// are `size` bytes (4 or 2).
pub(crate) fn check_pieces(
    gpu: &Gpu,
    pieces: &[Piece<'_>],
    (written, read): (&str, &str),
    size: u64,
) -> Result<()> {
    if pieces.is_empty() {
        return Err(Error::InvalidBuffer {
            what: written.into(),
            message: "a parameter set needs at least one piece".into(),
        });
    }
    for piece in pieces {
        check_range(gpu, written, &piece.params, size)?;
        check_range(gpu, read, &piece.grads, size)?;
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
                if overlap(a, b, size) {
                    return Err(Error::InvalidBuffer {
                        what: what.into(),
                        message: format!(
                            "pieces {k} and {j} overlap: bytes {:?} and {:?} of one buffer",
                            a.bytes(size),
                            b.bytes(size)
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A range of `size`-byte elements must be non-empty, inside its buffer (to the end of its last
/// word), aligned, and a storage buffer.
pub(crate) fn check_range(gpu: &Gpu, what: &str, range: &BufferRange<'_>, size: u64) -> Result<()> {
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
    let capacity = range.buffer.size() / size;
    let end = range.offset.saturating_add(range.len as u64);
    let words_end = end.saturating_mul(size).next_multiple_of(4);
    if end > capacity || words_end > range.buffer.size() {
        return Err(invalid(format!(
            "elements {}..{end} of {size} bytes (to the end of the last 4-byte word) lie \
             outside a buffer of {} bytes",
            range.offset,
            range.buffer.size()
        )));
    }
    let align = u64::from(gpu.limits().storage_offset_alignment);
    if !(range.offset * size).is_multiple_of(align) {
        return Err(invalid(format!(
            "offset {} bytes is not a multiple of the storage offset alignment {align}",
            range.offset * size
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
    let ranges = pieces
        .iter()
        .flat_map(|p| [(written, p.params), (read, p.grads)]);
    for (what, range) in ranges {
        check_owned(gpu, range.buffer, what)?;
    }
    Ok(())
}

/// Fails with [`Error::ForeignBuffer`] unless `buffer` (with `STORAGE` usage) is `gpu`'s, as
/// [`check_device`] tells.
pub(crate) fn check_owned(gpu: &Gpu, buffer: &wgpu::Buffer, what: &str) -> Result<()> {
    let layout = gpu.scoped("checking buffers", || {
        gpu.device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("fusedopt/device check"),
                entries: &[storage_entry(0, true)],
            })
    })?;
    let probe = catch_unwind(AssertUnwindSafe(|| {
        gpu.scoped("checking buffers", || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fusedopt/device check"),
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: crate::kernels::elements(buffer, 0, 1),
                }],
            })
        })
    }));
    let foreign = |source| Error::ForeignBuffer {
        what: what.into(),
        source,
    };
    match probe {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(Error::Wgpu { source, .. })) if is_device_mismatch(&source) => {
            Err(foreign(Some(source)))
        }
        Ok(Err(e)) => Err(e),
        // This instance has no buffer of that index: the buffer is another instance's.
        Err(_) => Err(foreign(None)),
    }
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

/// Whether two ranges of `size`-byte elements share a word of one buffer.
fn overlap(a: &BufferRange<'_>, b: &BufferRange<'_>, size: u64) -> bool {
    let (a_bytes, b_bytes) = (a.bytes(size), b.bytes(size));
    a.buffer == b.buffer && a_bytes.start < b_bytes.end && b_bytes.start < a_bytes.end
}

/// Checks that `given` names each state tensor an optimizer keeps (`kept`) exactly once, and no
/// other, before any of them is written.
pub(crate) fn check_state_names(
    optimizer: &str,
    kept: &[&str],
    given: &[(&str, &[f32])],
) -> Result<()> {
    let mut names: Vec<&str> = given.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    let mut wanted = kept.to_vec();
    wanted.sort_unstable();
    if names != wanted {
        return Err(Error::InvalidSetting {
            what: "optimizer state".into(),
            message: format!("the {optimizer} optimizer keeps {wanted:?}, got {names:?}"),
        });
    }
    Ok(())
}
