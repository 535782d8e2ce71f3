//! Stepping an optimizer on parameters that live in GPU buffers.

use std::num::NonZeroU64;
use std::sync::Arc;

use super::Gpu;
use crate::kernels::{FIRST_STATE_BINDING, Kernel, workgroups};
use crate::optim::{Optimizer, StateSlot, UniformBlock};
use crate::{Error, Result};

/// Uniform slots per optimizer: each recorded step writes its scalars to the next slot, so up
/// to this many steps can be recorded into command buffers before one submission without
/// overwriting each other (`queue.write_buffer` lands before the submission, not in order
/// with the recorded passes).
pub const STEPS_PER_SUBMISSION: u64 = 64;

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
}

impl<'a> From<&'a wgpu::Buffer> for BufferRange<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

/// One buffer's share of a parameter set: parameters and their gradients, of equal length.
/// A set larger than `max_buffer_size` (or than 4 GiB) is several pieces, stepped together by
/// one [`GpuOptimizer`] ([`GpuOptimizer::with_pieces`], [`crate::gpu::BufferSet`]).
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    /// The parameters.
    pub params: BufferRange<'a>,
    /// Their gradients.
    pub grads: BufferRange<'a>,
}

/// One dispatch: a bind group over one chunk of every tensor, and its workgroup counts.
#[derive(Debug)]
struct Chunk {
    bind_group: wgpu::BindGroup,
    groups: (u32, u32),
}

/// What the optimizer keeps of one piece: where its parameters are, and its state.
#[derive(Debug)]
struct PieceState {
    params: wgpu::Buffer,
    offset: u64,
    len: usize,
    state: Vec<(StateSlot, wgpu::Buffer)>,
}

/// An optimizer bound to a parameter set and its gradients: it owns the optimizer state on the
/// GPU and steps all elements with one fused kernel, one dispatch per chunk.
///
/// Like a `torch.optim` optimizer it is created for its parameters; the bind groups are made
/// once, so a step only writes a few bytes of scalars and records the dispatches.
#[derive(Debug)]
pub struct GpuOptimizer {
    config: Optimizer,
    kernel: Arc<Kernel>,
    len: usize,
    pieces: Vec<PieceState>,
    uniform: wgpu::Buffer,
    uniform_stride: u64,
    chunks: Vec<Chunk>,
    step: u64,
}

impl GpuOptimizer {
    /// Creates the optimizer for `params`, whose gradients the caller keeps in `grads`.
    /// Allocates exactly the state the configuration needs, initialized as PyTorch does.
    pub fn new<'a>(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        params: impl Into<BufferRange<'a>>,
        grads: impl Into<BufferRange<'a>>,
    ) -> Result<Self> {
        let piece = Piece {
            params: params.into(),
            grads: grads.into(),
        };
        Self::with_pieces(gpu, config, &[piece])
    }

    /// Creates one optimizer for a parameter set held in several buffers (pieces, in order),
    /// as a set past `max_buffer_size` must be. Each piece gets its own state buffers; a step
    /// dispatches over every chunk of every piece.
    pub fn with_pieces(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        pieces: &[Piece<'_>],
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if pieces.is_empty() {
            return Err(Error::InvalidBuffer {
                what: "params".into(),
                message: "a parameter set needs at least one piece".into(),
            });
        }
        for piece in pieces {
            check_range(gpu, "params", &piece.params, wgpu::BufferUsages::STORAGE)?;
            check_range(gpu, "grads", &piece.grads, wgpu::BufferUsages::STORAGE)?;
            if piece.grads.len != piece.params.len {
                return Err(Error::LengthMismatch {
                    what: "grads".into(),
                    expected: piece.params.len,
                    got: piece.grads.len,
                });
            }
        }
        let rule = config.rule();
        let kernel = gpu.kernel(rule.shader(), &rule.overrides())?;
        let name = config.name();

        // Bound but never touched: the override constant disables their code path.
        let placeholders = rule
            .state_slots()
            .iter()
            .filter(|s| s.is_none())
            .map(|_| gpu.zeros(&format!("{name}/unused"), 1))
            .collect::<Result<Vec<_>>>()?;

        let uniform_size = rule.shader().uniform_struct().1 as u64;
        let uniform_stride =
            uniform_size.next_multiple_of(u64::from(gpu.limits().uniform_offset_alignment));
        let uniform = gpu.scoped("allocating the uniform ring", || {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{name}/scalars")),
                size: uniform_stride * STEPS_PER_SUBMISSION,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;

        let mut chunks = Vec::new();
        let mut states = Vec::with_capacity(pieces.len());
        for (index, piece) in pieces.iter().enumerate() {
            let (params, grads) = (piece.params, piece.grads);
            let mut state = Vec::new();
            for slot in rule.state_slots() {
                state.push(match slot {
                    Some(slot) => {
                        let label = format!("{name}/{}#{index}", slot.name);
                        let buffer = gpu.zeros(&label, params.len)?;
                        if slot.init != 0.0 {
                            gpu.fill(&buffer, 0, params.len as u64, slot.init)?;
                        }
                        Some((slot, buffer))
                    }
                    None => None,
                });
            }

            let chunk_elements = gpu.limits().chunk_elements();
            let mut start = 0u64;
            while start < params.len as u64 {
                let n = (params.len as u64 - start).min(chunk_elements);
                let mut placeholder = placeholders.iter();
                let mut entries = vec![
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &uniform,
                            offset: 0,
                            size: NonZeroU64::new(uniform_size),
                        }),
                    },
                    entry(1, elements(params.buffer, params.offset + start, n)),
                    entry(2, elements(grads.buffer, grads.offset + start, n)),
                ];
                for (k, slot) in state.iter().enumerate() {
                    let binding = match slot {
                        Some((_, buffer)) => elements(buffer, start, n),
                        // One placeholder per unused binding, in order.
                        None => elements(
                            placeholder.next().expect("one placeholder per unused slot"),
                            0,
                            1,
                        ),
                    };
                    entries.push(entry(FIRST_STATE_BINDING + k as u32, binding));
                }
                let bind_group = gpu.scoped("creating bind groups", || {
                    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some(&format!("{name}#{index}/chunk@{start}")),
                        layout: &kernel.layout,
                        entries: &entries,
                    })
                })?;
                let groups = workgroups(n as u32, gpu.limits().max_workgroups_per_dimension);
                chunks.push(Chunk { bind_group, groups });
                start += n;
            }
            states.push(PieceState {
                params: params.buffer.clone(),
                offset: params.offset,
                len: params.len,
                state: state.into_iter().flatten().collect(),
            });
        }

        Ok(Self {
            config,
            kernel,
            len: states.iter().map(|p| p.len).sum(),
            pieces: states,
            uniform,
            uniform_stride,
            chunks,
            step: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Optimizer {
        &self.config
    }

    /// Number of parameters stepped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no parameters (never true: creation rejects empty ranges).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps taken so far (PyTorch's `state['step']`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Dispatches per step (one per chunk of the largest storage binding).
    pub fn dispatches_per_step(&self) -> usize {
        self.chunks.len()
    }

    /// Records one step at the configured learning rate into the caller's encoder.
    pub fn record_step(&mut self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.record_step_with_lr(gpu, encoder, self.config.lr())
    }

    /// Records one step at learning rate `lr` (a schedule's value) into the caller's encoder.
    /// The step's scalars are written with `queue.write_buffer`; up to
    /// [`STEPS_PER_SUBMISSION`] steps may be recorded before the encoder is submitted.
    pub fn record_step_with_lr(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lr: f64,
    ) -> Result<()> {
        self.record(gpu, encoder, lr, None)
    }

    /// Records one step like [`Self::record_step_with_lr`], with the GPU's clock written at
    /// the start and end of its compute pass (all of the step's dispatches), for timing. The
    /// device needs [`wgpu::Features::TIMESTAMP_QUERY`].
    pub fn record_step_timed(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lr: f64,
        timestamps: wgpu::ComputePassTimestampWrites<'_>,
    ) -> Result<()> {
        if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Unsupported {
                optimizer: self.config.name(),
                message: "timed steps need the TIMESTAMP_QUERY feature, which this device lacks"
                    .into(),
            });
        }
        self.record(gpu, encoder, lr, Some(timestamps))
    }

    fn record(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lr: f64,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        let step = self.step + 1;
        let scalars: UniformBlock = self.config.rule().uniform(step, lr);
        let slot_offset = (step % STEPS_PER_SUBMISSION) * self.uniform_stride;
        gpu.scoped("recording an optimizer step", || {
            gpu.queue()
                .write_buffer(&self.uniform, slot_offset, scalars.as_bytes());
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(self.config.name()),
                timestamp_writes,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            for chunk in &self.chunks {
                pass.set_bind_group(0, &chunk.bind_group, &[slot_offset as u32]);
                pass.dispatch_workgroups(chunk.groups.0, chunk.groups.1, 1);
            }
        })?;
        self.step = step;
        Ok(())
    }

    /// Takes one step at the configured learning rate and waits for it.
    pub fn step(&mut self, gpu: &Gpu) -> Result<()> {
        self.step_with_lr(gpu, self.config.lr())
    }

    /// Takes one step at learning rate `lr` and waits for it. If it fails, the step count is
    /// left as it was.
    pub fn step_with_lr(&mut self, gpu: &Gpu, lr: f64) -> Result<()> {
        let before = self.step;
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/step"),
            });
        self.record_step_with_lr(gpu, &mut encoder, lr)?;
        gpu.submit_and_wait("running an optimizer step", encoder)
            .inspect_err(|_| self.step = before)
    }

    /// Reads the parameters back (all pieces, in order).
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            out.extend(gpu.download(&piece.params, piece.offset, piece.len)?);
        }
        Ok(out)
    }

    /// Reads every state tensor back (all pieces, in order), by PyTorch's state name, in
    /// binding order.
    pub fn read_state(&self, gpu: &Gpu) -> Result<Vec<(&'static str, Vec<f32>)>> {
        let slots = self.pieces.first().map_or(0, |p| p.state.len());
        (0..slots)
            .map(|k| {
                let mut values = Vec::with_capacity(self.len);
                for piece in &self.pieces {
                    values.extend(gpu.download(&piece.state[k].1, 0, piece.len)?);
                }
                Ok((self.pieces[0].state[k].0.name, values))
            })
            .collect()
    }
}

fn elements(buffer: &wgpu::Buffer, offset: u64, len: u64) -> wgpu::BufferBinding<'_> {
    wgpu::BufferBinding {
        buffer,
        offset: offset * 4,
        size: NonZeroU64::new(len * 4),
    }
}

fn entry(binding: u32, buffer: wgpu::BufferBinding<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(buffer),
    }
}

/// A range must be non-empty, inside its buffer, aligned, and have the usage the kernel needs.
fn check_range(
    gpu: &Gpu,
    what: &str,
    range: &BufferRange<'_>,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    let invalid = |message: String| Error::InvalidBuffer {
        what: what.to_string(),
        message,
    };
    if range.len == 0 {
        return Err(invalid("a tensor needs at least one element".into()));
    }
    if !range.buffer.usage().contains(usage) {
        return Err(invalid(format!("the buffer lacks {usage:?} usage")));
    }
    let capacity = range.buffer.size() / 4;
    if range.offset.saturating_add(range.len as u64) > capacity {
        return Err(invalid(format!(
            "elements {}..{} lie outside a buffer of {capacity} elements",
            range.offset,
            range.offset.saturating_add(range.len as u64)
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
