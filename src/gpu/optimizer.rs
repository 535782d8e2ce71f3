//! Stepping an optimizer on parameters that live in GPU buffers.

use std::sync::Arc;

use super::Gpu;
use super::range::{BufferRange, Piece, check_pieces};
use crate::error::{Error, Result};
use crate::kernels::{
    Chunked, FIRST_STATE_BINDING, GRAD_BINDING, Kernel, PARAM_BINDING, UNIFORM_BINDING, elements,
};
use crate::optim::{Optimizer, StateSlot};

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
/// once. A step records, into the caller's encoder, a copy of its few bytes of scalars into the
/// kernel's uniform and then the dispatches, so any number of steps may be recorded before one
/// submission, each with its own scalars.
#[derive(Debug)]
pub struct GpuOptimizer {
    /// The device everything below lives on; calls with a context of another are refused.
    device: wgpu::Device,
    config: Optimizer,
    kernel: Arc<Kernel>,
    len: usize,
    pieces: Vec<PieceState>,
    uniform: wgpu::Buffer,
    dispatches: Chunked,
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
    /// dispatches over every chunk of every piece. Pieces may share buffers but not elements;
    /// parameters and gradients of one piece need two buffers.
    pub fn with_pieces(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        pieces: &[Piece<'_>],
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        check_pieces(gpu, pieces, ("params", "grads"))?;
        let kernel = gpu.kernel(&config)?;
        let spec = config.kernel();
        let name = config.name();
        let slots = config.state_slots();
        let uniform = gpu.scoped("allocating the uniform", || {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{name}/scalars")),
                size: spec.uniform.size as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;

        // Per state binding: the state the configuration keeps, or, where it uses none, a
        // one-element placeholder that the override constants keep the kernel from touching.
        let bindings = slots
            .iter()
            .map(|slot| match slot {
                Some(slot) => Ok(Binding::State(*slot)),
                None => gpu.zeros(&format!("{name}/unused"), 1).map(Binding::Unused),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut dispatches = Chunked::default();
        let mut states = Vec::with_capacity(pieces.len());
        for (index, piece) in pieces.iter().enumerate() {
            let (params, grads) = (piece.params, piece.grads);
            let bound = bindings
                .iter()
                .map(|binding| match binding {
                    Binding::State(slot) => {
                        let label = format!("{name}/{}#{index}", slot.name);
                        let buffer = gpu.zeros(&label, params.len)?;
                        if slot.init != 0.0 {
                            gpu.fill(&buffer, 0, params.len as u64, slot.init)?;
                        }
                        Ok((buffer, Some(*slot)))
                    }
                    Binding::Unused(placeholder) => Ok((placeholder.clone(), None)),
                })
                .collect::<Result<Vec<_>>>()?;
            gpu.scoped("creating bind groups", || {
                dispatches.extend(
                    gpu.device(),
                    &kernel,
                    &format!("{name}#{index}"),
                    params.len as u64,
                    gpu.grid(),
                    |start, n| {
                        let mut entries = vec![
                            entry(UNIFORM_BINDING, uniform.as_entire_binding()),
                            entry(
                                PARAM_BINDING,
                                elements(params.buffer, params.offset + start, n),
                            ),
                            entry(
                                GRAD_BINDING,
                                elements(grads.buffer, grads.offset + start, n),
                            ),
                        ];
                        let state = (FIRST_STATE_BINDING..).zip(&bound);
                        entries.extend(state.map(|(binding, (buffer, slot))| match slot {
                            Some(_) => entry(binding, elements(buffer, start, n)),
                            None => entry(binding, elements(buffer, 0, 1)),
                        }));
                        entries
                    },
                )
            })??;
            let state = bound
                .into_iter()
                .filter_map(|(buffer, slot)| Some((slot?, buffer)))
                .collect();
            states.push(PieceState {
                params: params.buffer.clone(),
                offset: params.offset,
                len: params.len,
                state,
            });
        }

        Ok(Self {
            device: gpu.device().clone(),
            config,
            kernel,
            len: states.iter().map(|p| p.len).sum(),
            pieces: states,
            uniform,
            dispatches,
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

    /// Steps taken so far (PyTorch's `state['step']`): every step recorded into an encoder,
    /// whether or not the caller has submitted it yet. [`Self::step`] takes back a step whose
    /// submission is refused; a caller that submits its own encoders does so with
    /// [`Self::set_step_count`].
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the step count: the next step is `step + 1`, with that step's bias corrections
    /// and schedule terms. For a caller whose own submission of recorded steps was refused
    /// (the steps did not run), or that restores an optimizer's state.
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// Dispatches per step (one per chunk of the largest storage binding).
    pub fn dispatches_per_step(&self) -> usize {
        self.dispatches.len()
    }

    /// Records one step at the configured learning rate into the caller's encoder.
    pub fn record_step(&mut self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.record_step_with_lr(gpu, encoder, self.config.lr())
    }

    /// Records one step at learning rate `lr` (a schedule's value) into the caller's encoder.
    /// On an `Err` nothing is recorded and the step is not counted. wgpu reports an error
    /// inside an encoder when it is submitted: if the caller's submission is refused, the
    /// steps in it did not run, and the caller sets the count back ([`Self::set_step_count`]).
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
        gpu.require_timestamps()?;
        self.record(gpu, encoder, lr, Some(timestamps))
    }

    fn record(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lr: f64,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let staged = self.stage(gpu, lr)?;
        self.commit(gpu, encoder, staged, timestamp_writes)
    }

    /// Everything of the next step that can fail short of the encoder: the learning rate is
    /// checked and the scalars are written into a buffer of their own. Nothing is recorded.
    pub(crate) fn stage(&self, gpu: &Gpu, lr: f64) -> Result<StagedStep> {
        self.check_device(gpu)?;
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        let step = self.step + 1;
        let scalars = self.config.uniform(step, lr);
        let source = gpu.scoped("writing a step's scalars", || {
            let source = gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("fusedopt/step scalars"),
                size: self.uniform.size(),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            source
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Mapping {
                    what: "a step's scalars".into(),
                    source: Box::new(e),
                })?
                .copy_from_slice(scalars.as_bytes());
            source.unmap();
            Ok(source)
        })??;
        Ok(StagedStep { step, source })
    }

    /// Records a staged step: the copy of its scalars into the uniform, then the pass, and
    /// counts it. The scalars travel in the encoder, ahead of the pass that reads them (a
    /// queue write would land before the whole submission, and the next step recorded would
    /// overwrite it). The device's health was checked when the step was staged. wgpu keeps
    /// errors inside an encoder until it is submitted; one it reported at once here would
    /// have made the encoder invalid, and fails the call uncounted.
    pub(crate) fn commit(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        staged: StagedStep,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        gpu.capture("recording an optimizer step", || {
            let size = self.uniform.size();
            encoder.copy_buffer_to_buffer(&staged.source, 0, &self.uniform, 0, size);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(self.config.name()),
                timestamp_writes,
            });
            pass.set_pipeline(&self.kernel.pipeline);
            self.dispatches.record(&mut pass);
        })?;
        self.step = staged.step;
        Ok(())
    }

    /// Takes one step at the configured learning rate and waits for it.
    pub fn step(&mut self, gpu: &Gpu) -> Result<()> {
        self.step_with_lr(gpu, self.config.lr())
    }

    /// Takes one step at learning rate `lr` and waits for it. A step that could not be
    /// submitted is not counted; one that was submitted is, even if the wait then fails (a
    /// timeout), since the GPU runs it anyway.
    pub fn step_with_lr(&mut self, gpu: &Gpu, lr: f64) -> Result<()> {
        let before = self.step;
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/step"),
            });
        self.record_step_with_lr(gpu, &mut encoder, lr)?;
        let submission = gpu
            .submit("running an optimizer step", encoder)
            .inspect_err(|_| self.step = before)?;
        gpu.wait(submission)
    }

    /// Fails unless `gpu` is a context on the device this optimizer was made on.
    fn check_device(&self, gpu: &Gpu) -> Result<()> {
        if gpu.device() == &self.device {
            return Ok(());
        }
        Err(Error::InvalidSetting {
            what: "device context".into(),
            message: format!(
                "the {} optimizer was made on another device than this context's",
                self.config.name()
            ),
        })
    }

    /// Reads the parameters back (all pieces, in order).
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.check_device(gpu)?;
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            out.extend(gpu.download(&piece.params, piece.offset, piece.len)?);
        }
        Ok(out)
    }

    /// Reads every state tensor back (all pieces, in order), by PyTorch's state name, in
    /// binding order.
    pub fn read_state(&self, gpu: &Gpu) -> Result<Vec<(&'static str, Vec<f32>)>> {
        self.check_device(gpu)?;
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

/// What a state binding of the kernel is bound to.
enum Binding {
    /// A state tensor, allocated per piece.
    State(StateSlot),
    /// The optimizer's one-element placeholder.
    Unused(wgpu::Buffer),
}

/// The scalars of one step in a buffer of their own, not yet recorded.
#[derive(Debug)]
pub(crate) struct StagedStep {
    step: u64,
    source: wgpu::Buffer,
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry { binding, resource }
}
