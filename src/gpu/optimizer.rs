//! Stepping an optimizer on parameters that live in GPU buffers.

use std::sync::Arc;

use super::Gpu;
use super::guard::{CallerScale, GradGuard, buffer_entry};
use super::range::{BufferRange, Piece, check_pieces, check_state_names};
use super::transfer::UNIFORM_STRIDE;
use crate::error::{Error, Result};
use crate::kernels::{
    CHUNK_BINDING, CHUNK_SIZE, Chunked, FIRST_STATE_BINDING, GRAD_BINDING,
    GUARD_CANDIDATES_BINDING, GUARD_COUNTER_BINDING, GUARD_SCALARS_BINDING, GUARD_STATE_BINDING,
    GuardStage, Kernel, MASTER_BINDING, PARAM_BINDING, STEP_BITS_BINDING, STEP_BITS_OFFSET,
    STEP_BITS_SIZE, UNIFORM_BINDING, elements,
};
use crate::optim::{Guard, MAX_STATE, Optimizer, Precision, StateSlot};

/// What the optimizer keeps of one piece: where its parameters are, its state and master.
#[derive(Debug)]
struct PieceState {
    params: wgpu::Buffer,
    offset: u64,
    len: usize,
    /// The gradients bound with the parameters, and their first element.
    grads: (wgpu::Buffer, u64),
    state: Vec<(StateSlot, wgpu::Buffer)>,
    master: Option<wgpu::Buffer>,
    /// Every state binding in order: the configuration's state, or the placeholder.
    bound: Vec<(wgpu::Buffer, Option<StateSlot>)>,
    /// The chunks' records (`chunk_buffer`).
    chunk_info: wgpu::Buffer,
}

/// Most guarded steps recorded before the host learns how many of them ran: each step carries
/// the scalars of every step count the device may have reached by then.
pub const MAX_UNCONFIRMED_STEPS: u64 = 64;

/// Most 16-bit words bound at once, so that a chunk's element count (twice that) fits the
/// kernel's `u32`.
const MAX_CHUNK_WORDS: u64 = 1 << 30;

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
    precision: Precision,
    kernel: Arc<Kernel>,
    len: usize,
    pieces: Vec<PieceState>,
    uniform: wgpu::Buffer,
    /// Bound where an option keeps no state or master.
    placeholder: wgpu::Buffer,
    dispatches: Chunked,
    /// Steps recorded (skipped ones included under a guard).
    step: u64,
    guarded: Option<Guarded>,
}

/// What a guarded optimizer keeps: the guard, and the device's step count with the scalars
/// prepared for each count it may have reached.
#[derive(Debug)]
struct Guarded {
    guard: GradGuard,
    /// Whether this optimizer records the guard's pre-pass (a [`crate::ModelOptimizer`]
    /// records it once for all its groups).
    runs_pass: bool,
    choose: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    /// The device's `Counter` (`shaders/guard.wgsl`).
    counter: wgpu::Buffer,
    /// Where each step's candidate scalars are copied for `choose`.
    candidates: wgpu::Buffer,
    /// Steps run and steps counted on the device when the host last read them.
    confirmed: (u64, u64),
    /// Guarded steps recorded, on the same origin as `confirmed.0`.
    recorded: u64,
}

/// Which guard an optimizer gets.
pub(crate) enum GuardSource<'a> {
    None,
    /// Its own, over its gradients (reading the caller's scale where given).
    Own(Guard, Option<CallerScale<'a>>),
    /// A model's, shared by its groups; the flag is set for the one group that records the
    /// pre-pass, before its step.
    Shared(GradGuard, bool),
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
        Self::with_pieces_in(gpu, config, Precision::F32, pieces)
    }

    /// Creates the optimizer in `precision` for `params` and `grads`, which hold 16-bit
    /// values (two to a word, the first in the low half) when the precision is 16-bit: give
    /// their length in 16-bit elements ([`BufferRange::half`]; `&buffer` counts 4-byte ones).
    /// A master copy starts as the parameters widened ([`Self::write_master`] sets another),
    /// read back once, so the parameters then need `COPY_SRC` usage.
    pub fn with_precision<'a>(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        precision: Precision,
        params: impl Into<BufferRange<'a>>,
        grads: impl Into<BufferRange<'a>>,
    ) -> Result<Self> {
        let piece = Piece {
            params: params.into(),
            grads: grads.into(),
        };
        Self::with_pieces_in(gpu, config, precision, &[piece])
    }

    /// [`Self::with_pieces`] in `precision` (see [`Self::with_precision`]).
    pub fn with_pieces_in(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        precision: Precision,
        pieces: &[Piece<'_>],
    ) -> Result<Self> {
        Self::build(gpu, config.into(), precision, pieces, GuardSource::None)
    }

    /// [`Self::with_pieces_in`] with a guard run before every step, over these gradients:
    /// loss scaling (the gradients arrive multiplied by [`GradGuard::read`]'s `scale`; a step
    /// whose gradients hold an inf or NaN is skipped, parameters, master and state left
    /// bit for bit and the step not counted) and clipping of the global L2 norm, all on the
    /// device with no round trip. See [`Self::guard`] for the scaler's state.
    pub fn with_guard(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        precision: Precision,
        pieces: &[Piece<'_>],
        guard: Guard,
    ) -> Result<Self> {
        Self::build(
            gpu,
            config.into(),
            precision,
            pieces,
            GuardSource::Own(guard, None),
        )
    }

    /// [`Self::with_guard`] under the caller's own loss scaler (`guard.caller_scale` set,
    /// `guard.scaler` none): each step unscales by the scale in `caller.scale` and is skipped
    /// when `caller.found_inf` is nonzero or a gradient overflows, as PyTorch's fused
    /// optimizers do with `grad_scale` and `found_inf`; the caller updates both.
    pub fn with_caller_scale(
        gpu: &Gpu,
        config: impl Into<Optimizer>,
        precision: Precision,
        pieces: &[Piece<'_>],
        guard: Guard,
        caller: CallerScale<'_>,
    ) -> Result<Self> {
        Self::build(
            gpu,
            config.into(),
            precision,
            pieces,
            GuardSource::Own(guard, Some(caller)),
        )
    }

    pub(crate) fn build(
        gpu: &Gpu,
        config: Optimizer,
        precision: Precision,
        pieces: &[Piece<'_>],
        guard: GuardSource<'_>,
    ) -> Result<Self> {
        config.validate()?;
        if let GuardSource::Own(guard, _) = &guard {
            guard.validate()?;
        }
        check_pieces(gpu, pieces, ("params", "grads"), precision.param_bytes())?;
        let guard = match guard {
            GuardSource::None => None,
            GuardSource::Own(guard, caller) => {
                let format = precision.half_format();
                let ranges: Vec<_> = pieces.iter().map(|p| (p.grads, format)).collect();
                Some((GradGuard::new(gpu, guard, &ranges, caller)?, true))
            }
            GuardSource::Shared(guard, runs_pass) => Some((guard, runs_pass)),
        };
        let kernel = gpu.kernel(&config, precision, guard.is_some())?;
        let spec = config.kernel();
        let name = config.name();
        let slots = config.state_slots();
        let storage = if guard.is_some() {
            wgpu::BufferUsages::STORAGE
        } else {
            wgpu::BufferUsages::empty()
        };
        let uniform = gpu.scoped("allocating the uniform", || {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("{name}/scalars")),
                size: STEP_BITS_OFFSET + STEP_BITS_SIZE,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST | storage,
                mapped_at_creation: false,
            })
        })?;
        let guarded = match guard {
            Some((guard, runs_pass)) => Some(Guarded::new(
                gpu,
                guard,
                runs_pass,
                &uniform,
                spec.uniform.size as u64,
            )?),
            None => None,
        };
        let placeholder = gpu.zeros(&format!("{name}/unused"), 1)?;
        let mut states = Vec::with_capacity(pieces.len());
        let mut base = 0u64;
        for (index, piece) in pieces.iter().enumerate() {
            let params = piece.params;
            let len = params.len as u64;
            // Per state binding: the state the configuration keeps, or, where it uses none
            // (and past the kernel's own), the placeholder the override constants keep the
            // kernel from touching.
            let mut bound = Vec::with_capacity(MAX_STATE);
            for slot in slots
                .iter()
                .copied()
                .chain(std::iter::repeat(None))
                .take(MAX_STATE)
            {
                bound.push(match slot {
                    Some(slot) => {
                        let label = format!("{name}/{}#{index}", slot.name);
                        (
                            state_buffer(gpu, &label, precision, len, slot.init)?,
                            Some(slot),
                        )
                    }
                    None => (placeholder.clone(), None),
                });
            }
            let master = if precision.has_master() {
                let format = precision
                    .half_format()
                    .expect("a master has 16-bit parameters");
                let widened: Vec<f32> = gpu
                    .download_half(params.buffer, params.offset, params.len)?
                    .into_iter()
                    .map(|bits| format.widen(bits))
                    .collect();
                Some(gpu.upload(&format!("{name}/master#{index}"), &widened)?)
            } else {
                None
            };
            let (chunk_units, per_unit) = chunking(gpu, precision);
            let chunks = len.div_ceil(per_unit).div_ceil(chunk_units);
            let chunk_info = chunk_buffer(
                gpu,
                &format!("{name}/chunks#{index}"),
                len,
                base,
                chunks,
                chunk_units * per_unit,
            )?;
            let state = bound
                .iter()
                .filter_map(|(buffer, slot)| Some(((*slot)?, buffer.clone())))
                .collect();
            states.push(PieceState {
                params: params.buffer.clone(),
                offset: params.offset,
                len: params.len,
                grads: (piece.grads.buffer.clone(), piece.grads.offset),
                state,
                master,
                bound,
                chunk_info,
            });
            base += len;
        }
        let dispatches = bind_pieces(
            gpu,
            &kernel,
            &config,
            precision,
            &uniform,
            &placeholder,
            pieces,
            &states,
        )?;

        Ok(Self {
            device: gpu.device().clone(),
            config,
            precision,
            kernel,
            len: states.iter().map(|p| p.len).sum(),
            pieces: states,
            uniform,
            placeholder,
            dispatches,
            step: 0,
            guarded,
        })
    }

    /// Binds the optimizer to other buffers for its parameters and gradients, keeping its
    /// state, master and step count: for a pipeline whose tensors move between steps (Burn
    /// hands out a new gradient buffer every step, and may move a parameter). The pieces must
    /// be as many and as long as those the optimizer was made for, and pass the same checks;
    /// on an `Err` the optimizer keeps its old buffers. A rebind to where it is bound skips the
    /// checks and bind groups. An optimizer with a guard cannot be rebound (the guard reads the
    /// gradients it was made for).
    pub fn rebind(&mut self, gpu: &Gpu, pieces: &[Piece<'_>]) -> Result<()> {
        self.check_device(gpu)?;
        if self.guarded.is_some() {
            return Err(Error::InvalidSetting {
                what: "rebind".into(),
                message: format!(
                    "the {} optimizer has a guard, which reads the gradients it was made for",
                    self.config.name()
                ),
            });
        }
        let lengths: Vec<usize> = pieces.iter().map(|p| p.params.len).collect();
        let own: Vec<usize> = self.pieces.iter().map(|p| p.len).collect();
        if lengths != own {
            return Err(Error::InvalidSetting {
                what: "rebind".into(),
                message: format!(
                    "pieces of {lengths:?} elements for an optimizer made for {own:?}"
                ),
            });
        }
        // Bound there already (a framework's pool often hands out the same places each step):
        // the checks passed for these very ranges, and the bind groups hold them.
        let unchanged = self.pieces.iter().zip(pieces).all(|(state, piece)| {
            state.params == *piece.params.buffer
                && state.offset == piece.params.offset
                && state.grads.0 == *piece.grads.buffer
                && state.grads.1 == piece.grads.offset
                && piece.grads.len == piece.params.len
        });
        if unchanged {
            return Ok(());
        }
        check_pieces(
            gpu,
            pieces,
            ("params", "grads"),
            self.precision.param_bytes(),
        )?;
        self.dispatches = bind_pieces(
            gpu,
            &self.kernel,
            &self.config,
            self.precision,
            &self.uniform,
            &self.placeholder,
            pieces,
            &self.pieces,
        )?;
        for (state, piece) in self.pieces.iter_mut().zip(pieces) {
            state.params = piece.params.buffer.clone();
            state.offset = piece.params.offset;
            state.grads = (piece.grads.buffer.clone(), piece.grads.offset);
        }
        Ok(())
    }

    /// The guard run before each step, if the optimizer was made with one: its
    /// [`GradGuard::read`] gives the scale and whether the last step was skipped.
    pub fn guard(&self) -> Option<&GradGuard> {
        self.guarded.as_ref().map(|g| &g.guard)
    }

    /// The steps counted so far, as PyTorch's `state['step']`: without a guard, the steps
    /// recorded ([`Self::step_count`]); with one, the steps that ran and were not skipped,
    /// read from the device (waiting for the steps submitted before).
    pub fn read_step_count(&mut self, gpu: &Gpu) -> Result<u64> {
        self.check_device(gpu)?;
        match &mut self.guarded {
            Some(guarded) => Ok(guarded.confirm(gpu)?.1),
            None => Ok(self.step),
        }
    }

    /// Fails if guarded steps were recorded that have not run (not submitted): a checkpoint
    /// taken or restored then would not match what the device does next. Without a guard
    /// the device keeps no count to compare with, and the caller keeps this order.
    pub(crate) fn require_settled(&mut self, gpu: &Gpu) -> Result<()> {
        self.check_device(gpu)?;
        if let Some(guarded) = &mut self.guarded {
            let (run, _) = guarded.confirm(gpu)?;
            if guarded.recorded > run {
                return Err(Error::InvalidSetting {
                    what: "checkpoint".into(),
                    message: format!(
                        "{} guarded steps are recorded and not submitted: submit them first",
                        guarded.recorded - run
                    ),
                });
            }
        }
        Ok(())
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
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
    /// whether or not the caller has submitted it yet. Under a guard, skipped steps are
    /// counted here too; [`Self::read_step_count`] gives the device's count. [`Self::step`] takes back a step whose
    /// submission is refused; a caller that submits its own encoders does so with
    /// [`Self::set_step_count`].
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the step count: the next step is `step + 1`, with that step's bias corrections
    /// and schedule terms. For a caller whose own submission of recorded steps was refused
    /// (the steps did not run), or that restores an optimizer's state. Under a guard the
    /// device keeps the count: this only takes back steps recorded that never ran, and
    /// [`Self::restore_step_count`] restores one.
    pub fn set_step_count(&mut self, step: u64) {
        if let Some(guarded) = &mut self.guarded {
            let back = self.step.saturating_sub(step);
            let forward = step.saturating_sub(self.step);
            guarded.recorded = guarded.recorded.saturating_sub(back) + forward;
        }
        self.step = step;
    }

    /// Restores the count of steps taken (PyTorch's `state['step']`, from a checkpoint): the
    /// next step is `step + 1`. Under a guard it is written to the device, ordered after the
    /// work submitted before; steps recorded and not yet submitted must not be pending. An
    /// error, changing nothing, for a count past the device's `u32`.
    pub fn restore_step_count(&mut self, gpu: &Gpu, step: u64) -> Result<()> {
        self.check_device(gpu)?;
        if let Some(guarded) = &mut self.guarded {
            let count = u32::try_from(step).map_err(|_| Error::InvalidSetting {
                what: "step count".into(),
                message: format!("{step} steps: a guarded optimizer counts at most 2^32 - 1"),
            })?;
            gpu.write(&guarded.counter, 0, &[f32::from_bits(count), 0.0, 0.0, 0.0])?;
            guarded.confirmed = (0, step);
            guarded.recorded = 0;
        }
        self.step = step;
        Ok(())
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
    /// checked and the scalars are written into a buffer of their own (under a guard, those of
    /// every step count the device may have reached). Nothing is recorded.
    pub(crate) fn stage(&mut self, gpu: &Gpu, lr: f64) -> Result<StagedStep> {
        self.check_device(gpu)?;
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        let step = crate::optim::next_step(self.config.name(), self.step)?;
        let scalars = |t: u64| (self.config.uniform(t, lr), self.precision.step_key(t));
        let bytes = match &mut self.guarded {
            None => {
                let (uniform, key) = scalars(step);
                uniform_bytes(uniform.as_bytes(), key)
            }
            Some(guarded) => {
                let (base, count) = guarded.window(gpu)?;
                let words = self.config.kernel().uniform.size / 4;
                let mut bytes = Vec::new();
                let header = [base as u32, count as u32, words as u32, 0];
                bytes.extend_from_slice(bytemuck::cast_slice(&header));
                for t in base + 1..=base + count {
                    let (uniform, key) = scalars(t);
                    bytes.extend_from_slice(uniform.as_bytes());
                    bytes.extend_from_slice(bytemuck::cast_slice(&key));
                }
                bytes
            }
        };
        let source = gpu.buffer_with(
            "fusedopt/step scalars",
            &bytes,
            wgpu::BufferUsages::COPY_SRC,
        )?;
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
            let size = staged.source.size();
            let target = match &self.guarded {
                Some(guarded) => &guarded.candidates,
                None => &self.uniform,
            };
            encoder.copy_buffer_to_buffer(&staged.source, 0, target, 0, size);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(self.config.name()),
                timestamp_writes,
            });
            if let Some(guarded) = &self.guarded {
                if guarded.runs_pass {
                    guarded.guard.record(&mut pass);
                }
                pass.set_pipeline(&guarded.choose.pipeline);
                pass.set_bind_group(0, &guarded.bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            pass.set_pipeline(&self.kernel.pipeline);
            self.dispatches.record(&mut pass);
        })?;
        self.step = staged.step;
        if let Some(guarded) = &mut self.guarded {
            guarded.recorded += 1;
        }
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

    /// Reads the parameters back (all pieces, in order), widened to f32 in a 16-bit
    /// precision (exactly).
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.check_device(gpu)?;
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            match self.precision.half_format() {
                Some(format) => out.extend(
                    gpu.download_half(&piece.params, piece.offset, piece.len)?
                        .into_iter()
                        .map(|bits| format.widen(bits)),
                ),
                None => out.extend(gpu.download(&piece.params, piece.offset, piece.len)?),
            }
        }
        Ok(out)
    }

    /// Reads the f32 master copy back (all pieces, in order); an error without one.
    pub fn read_master(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.check_device(gpu)?;
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            out.extend(gpu.download(self.master_of(piece)?, 0, piece.len)?);
        }
        Ok(out)
    }

    /// Sets the f32 master copy (all pieces, in order), as a run that starts from an f32
    /// checkpoint does; the parameters stay as they are until the next step rounds the
    /// master into them. An error without a master or for a wrong length, changing nothing.
    pub fn write_master(&self, gpu: &Gpu, values: &[f32]) -> Result<()> {
        self.check_device(gpu)?;
        if values.len() != self.len {
            return Err(Error::LengthMismatch {
                what: "master".into(),
                expected: self.len,
                got: values.len(),
            });
        }
        let mut rest = values;
        for piece in &self.pieces {
            let (head, tail) = rest.split_at(piece.len);
            gpu.write(self.master_of(piece)?, 0, head)?;
            rest = tail;
        }
        Ok(())
    }

    fn master_of<'p>(&self, piece: &'p PieceState) -> Result<&'p wgpu::Buffer> {
        piece.master.as_ref().ok_or_else(|| Error::InvalidSetting {
            what: "master".into(),
            message: format!("the {} precision keeps no master copy", self.precision),
        })
    }

    /// Reads every state tensor back (all pieces, in order), by PyTorch's state name, in
    /// binding order, widened to f32 where it is 16-bit.
    pub fn read_state(&self, gpu: &Gpu) -> Result<Vec<(&'static str, Vec<f32>)>> {
        self.check_device(gpu)?;
        let slots = self.pieces.first().map_or(0, |p| p.state.len());
        (0..slots)
            .map(|k| {
                let mut values = Vec::with_capacity(self.len);
                for piece in &self.pieces {
                    let buffer = &piece.state[k].1;
                    match self.precision.state_format() {
                        Some(format) => values.extend(
                            gpu.download_half(buffer, 0, piece.len)?
                                .into_iter()
                                .map(|bits| format.widen(bits)),
                        ),
                        _ => values.extend(gpu.download(buffer, 0, piece.len)?),
                    }
                }
                Ok((self.pieces[0].state[k].0.name, values))
            })
            .collect()
    }

    /// Sets every state tensor (all pieces, in order) by PyTorch's state name, as
    /// [`Self::read_state`] gives them, rounded to nearest even where the state is 16-bit
    /// (exact for values of the format). Each tensor this configuration keeps must be given
    /// once, with one value per parameter; an error otherwise, writing nothing. The writes are
    /// ordered after the work submitted before and before the next submission.
    pub fn write_state(&self, gpu: &Gpu, state: &[(&str, &[f32])]) -> Result<()> {
        self.check_device(gpu)?;
        let slots: Vec<&str> = self
            .pieces
            .first()
            .map(|p| p.state.iter().map(|(slot, _)| slot.name).collect())
            .unwrap_or_default();
        check_state_names(self.config.name(), &slots, state)?;
        for (name, values) in state {
            if values.len() != self.len {
                return Err(Error::LengthMismatch {
                    what: format!("state {name}"),
                    expected: self.len,
                    got: values.len(),
                });
            }
        }
        for (name, values) in state {
            let k = slots.iter().position(|s| s == name).unwrap_or_default();
            let mut rest = *values;
            for piece in &self.pieces {
                let (head, tail) = rest.split_at(piece.len);
                let buffer = &piece.state[k].1;
                match self.precision.state_format() {
                    Some(format) => {
                        let bits: Vec<u16> = head.iter().map(|&v| format.round(v)).collect();
                        gpu.write_half(buffer, 0, &bits)?;
                    }
                    _ => gpu.write(buffer, 0, head)?,
                }
                rest = tail;
            }
        }
        Ok(())
    }
}

/// A state tensor of `len` elements in `precision`'s state storage, every element `init`
/// (rounded to the 16-bit format where the state is 16-bit).
fn state_buffer(
    gpu: &Gpu,
    label: &str,
    precision: Precision,
    len: u64,
    init: f32,
) -> Result<wgpu::Buffer> {
    match precision.state_format() {
        Some(format) => {
            let words = len.div_ceil(2);
            let buffer = gpu.zeros(label, words as usize)?;
            let bits = u32::from(format.round(init));
            if bits != 0 {
                gpu.fill(&buffer, 0, words, f32::from_bits(bits | bits << 16))?;
            }
            Ok(buffer)
        }
        _ => {
            let buffer = gpu.zeros(label, len as usize)?;
            if init != 0.0 {
                gpu.fill(&buffer, 0, len, init)?;
            }
            Ok(buffer)
        }
    }
}

/// The `Chunk` uniforms of a piece of `len` elements starting at element `base` of the whole
/// set, cut into `chunks` chunks of `per_chunk` elements (the last one shorter), each at a
/// multiple of [`UNIFORM_STRIDE`].
fn chunk_buffer(
    gpu: &Gpu,
    label: &str,
    len: u64,
    base: u64,
    chunks: u64,
    per_chunk: u64,
) -> Result<wgpu::Buffer> {
    let records: Vec<[u32; 4]> = (0..chunks)
        .map(|c| {
            let first = c * per_chunk;
            let at = base + first;
            [
                (len - first).min(per_chunk) as u32,
                at as u32,
                (at >> 32) as u32,
                0,
            ]
        })
        .collect();
    gpu.uniform_records(label, &records)
}

/// The bytes of a step's uniform buffer: the optimizer's scalars at 0, the step's `StepBits`
/// at [`STEP_BITS_OFFSET`] (its random key; not skipped, gradient factors 1).
fn uniform_bytes(scalars: &[u8], key: [u32; 2]) -> Vec<u8> {
    let mut bytes = vec![0u8; (STEP_BITS_OFFSET + STEP_BITS_SIZE) as usize];
    bytes[..scalars.len()].copy_from_slice(scalars);
    let one = 1.0f32.to_bits();
    let bits = [key[0], key[1], 0, one, one, 0, 0, 0];
    let at = STEP_BITS_OFFSET as usize;
    bytes[at..].copy_from_slice(bytemuck::cast_slice(&bits));
    bytes
}

impl Guarded {
    fn new(
        gpu: &Gpu,
        guard: GradGuard,
        runs_pass: bool,
        uniform: &wgpu::Buffer,
        scalar_bytes: u64,
    ) -> Result<Self> {
        let choose = gpu.guard_kernel(GuardStage::Choose, None)?;
        let counter = gpu.zeros("fusedopt/step counter", 4)?;
        let candidates = gpu.zeros(
            "fusedopt/candidate scalars",
            (4 + MAX_UNCONFIRMED_STEPS * (scalar_bytes / 4 + 2)) as usize,
        )?;
        let bind_group = gpu.scoped("creating the guard's bind groups", || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("guard/choose"),
                layout: &choose.layout,
                entries: &[
                    buffer_entry(GUARD_STATE_BINDING, guard.state_buffer(), 0, None),
                    buffer_entry(GUARD_COUNTER_BINDING, &counter, 0, None),
                    buffer_entry(GUARD_CANDIDATES_BINDING, &candidates, 0, None),
                    buffer_entry(GUARD_SCALARS_BINDING, uniform, 0, None),
                ],
            })
        })?;
        Ok(Self {
            guard,
            runs_pass,
            choose,
            bind_group,
            counter,
            candidates,
            confirmed: (0, 0),
            recorded: 0,
        })
    }

    /// Reads the device's counts: steps run and steps counted. An error if the device ever
    /// met a step the host had prepared no scalars for.
    fn confirm(&mut self, gpu: &Gpu) -> Result<(u64, u64)> {
        let words: Vec<u32> = gpu
            .download(&self.counter, 0, 4)?
            .into_iter()
            .map(f32::to_bits)
            .collect();
        if words[2] != 0 {
            return Err(Error::InvalidSetting {
                what: "guarded step".into(),
                message: format!(
                    "{} steps ran without scalars for their step count and were skipped",
                    words[2]
                ),
            });
        }
        self.confirmed = (u64::from(words[1]), u64::from(words[0]));
        Ok(self.confirmed)
    }

    /// The step counts the next step's scalars must cover: from the last count read back,
    /// one more per step recorded since (any of them may be skipped). Reads the counts back
    /// when there would be more than [`MAX_UNCONFIRMED_STEPS`].
    fn window(&mut self, gpu: &Gpu) -> Result<(u64, u64)> {
        let recorded = self.recorded;
        let pending = |confirmed: (u64, u64)| recorded.saturating_sub(confirmed.0) + 1;
        if pending(self.confirmed) > MAX_UNCONFIRMED_STEPS {
            self.confirm(gpu)?;
        }
        let count = pending(self.confirmed);
        if count > MAX_UNCONFIRMED_STEPS {
            return Err(Error::InvalidSetting {
                what: "guarded step".into(),
                message: format!(
                    "{} guarded steps are recorded that have not run; submit them before \
                     recording more (at most {MAX_UNCONFIRMED_STEPS})",
                    count - 1
                ),
            });
        }
        Ok((self.confirmed.1, count))
    }
}

/// Units (f32 elements, or words of two 16-bit ones) per chunk, and elements per unit.
fn chunking(gpu: &Gpu, precision: Precision) -> (u64, u64) {
    let chunk_elements = gpu.grid().chunk_elements;
    match precision.half_format() {
        Some(_) => (chunk_elements.min(MAX_CHUNK_WORDS), 2),
        None => (chunk_elements, 1),
    }
}

/// The dispatches of every piece: `pieces`' ranges with the state, master and chunk records
/// `states` keeps for them (the same count, in order).
#[allow(clippy::too_many_arguments)]
fn bind_pieces(
    gpu: &Gpu,
    kernel: &Kernel,
    config: &Optimizer,
    precision: Precision,
    uniform: &wgpu::Buffer,
    placeholder: &wgpu::Buffer,
    pieces: &[Piece<'_>],
    states: &[PieceState],
) -> Result<Chunked> {
    let name = config.name();
    let scalars = config.kernel().uniform.size as u64;
    let (chunk_units, per_unit) = chunking(gpu, precision);
    let grid = gpu.grid();
    let mut dispatches = Chunked::default();
    for (index, (piece, kept)) in pieces.iter().zip(states).enumerate() {
        let (params, grads) = (piece.params, piece.grads);
        let len = params.len as u64;
        let units = len.div_ceil(per_unit);
        // Word offsets of the ranges (their byte offsets are aligned, so whole words).
        let word = |range: &BufferRange<'_>| range.offset * precision.param_bytes() / 4;
        let (param_word, grad_word) = (word(&params), word(&grads));
        let mut chunk_index = 0;
        gpu.scoped("creating bind groups", || {
            dispatches.extend(
                gpu.device(),
                kernel,
                &format!("{name}#{index}"),
                units,
                crate::kernels::Grid {
                    chunk_elements: chunk_units,
                    ..grid
                },
                |start, n| {
                    let first = start * per_unit;
                    let count = (n * per_unit).min(len - first);
                    let mut entries = vec![
                        entry(UNIFORM_BINDING, uniform_range(uniform, 0, scalars)),
                        entry(
                            PARAM_BINDING,
                            elements(params.buffer, param_word + start, n),
                        ),
                        entry(GRAD_BINDING, elements(grads.buffer, grad_word + start, n)),
                        entry(
                            CHUNK_BINDING,
                            uniform_range(
                                &kept.chunk_info,
                                chunk_index * UNIFORM_STRIDE,
                                CHUNK_SIZE,
                            ),
                        ),
                        entry(
                            STEP_BITS_BINDING,
                            uniform_range(uniform, STEP_BITS_OFFSET, STEP_BITS_SIZE),
                        ),
                        entry(
                            MASTER_BINDING,
                            match &kept.master {
                                Some(m) => elements(m, first, count),
                                None => elements(placeholder, 0, 1),
                            },
                        ),
                    ];
                    chunk_index += 1;
                    let state = (FIRST_STATE_BINDING..).zip(&kept.bound);
                    entries.extend(state.map(|(binding, (buffer, slot))| match slot {
                        Some(_) if precision.state_bytes() == 2 => {
                            entry(binding, elements(buffer, start, n))
                        }
                        Some(_) => entry(binding, elements(buffer, first, count)),
                        None => entry(binding, elements(buffer, 0, 1)),
                    }));
                    entries
                },
            )
        })??;
    }
    Ok(dispatches)
}

/// `size` bytes of a uniform buffer from `offset`.
fn uniform_range(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: std::num::NonZeroU64::new(size),
    })
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
