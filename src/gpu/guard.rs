//! The guard of a step on the device: loss scaling and global-norm clipping over every
//! gradient of a model, in one pre-pass whose outcome the steps read from a buffer, so that a
//! skipped step, the scale's update and the clip need no round trip to the host.

use std::sync::Arc;

use super::Gpu;
use super::range::BufferRange;
use super::transfer::UNIFORM_STRIDE;
use crate::error::{Error, Result};
use crate::kernels::{
    Chunked, GUARD_CALLER_FOUND_BINDING, GUARD_CALLER_SCALE_BINDING, GUARD_GRADS_BINDING,
    GUARD_PARTIALS_BINDING, GUARD_RANGE_BINDING, GUARD_SETTINGS_BINDING, GUARD_STATE_BINDING,
    GUARD_STATE_SIZE, Grid, GuardStage, Kernel, LaunchShape, elements,
};
use crate::optim::{GUARD_BLOCK, Guard, HalfFormat, ScalerState, initial_scaler_state};

/// Words of the device's `GuardState` (`shaders/guard.wgsl`).
const STATE_WORDS: usize = GUARD_STATE_SIZE as usize / 4;

/// The guard's state as the host reads it back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardReport {
    /// The scale the next step's gradients must carry (1 without a scaler).
    pub scale: f32,
    /// Clean steps in a row since the scale last changed.
    pub growth_tracker: u32,
    /// Whether the last step was skipped (a gradient was inf or NaN under the scaler).
    pub last_skipped: bool,
    /// The scale the last step's gradients carried.
    pub last_scale: f32,
    /// The global L2 norm of the last step's unscaled gradient (before clipping).
    pub norm: f32,
    /// The factor the last step's unscaled gradient was multiplied by (1 without clipping).
    pub clip: f32,
    /// Steps the guard has run, skipped or not.
    pub steps: u32,
}

impl GuardReport {
    /// The scaler's state, as [`GradGuard::restore`] takes it back.
    pub fn scaler_state(&self) -> ScalerState {
        ScalerState {
            scale: self.scale,
            growth_tracker: self.growth_tracker,
        }
    }
}

/// The loss scaler and norm clip of one model's step, on the device. Made by the optimizer it
/// guards ([`crate::GpuOptimizer::with_guard`], [`crate::ModelOptimizer::with_precision`]), which
/// runs it before every step; cloning shares it.
#[derive(Clone, Debug)]
pub struct GradGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    device: wgpu::Device,
    config: Guard,
    state: wgpu::Buffer,
    /// Under the caller's scale: the `adopt` kernel and its bind group.
    adopt: Option<(Arc<Kernel>, wgpu::BindGroup)>,
    /// The `check` kernel and its dispatches, per gradient range.
    checks: Vec<(Arc<Kernel>, Chunked)>,
    finish: Arc<Kernel>,
    finish_group: wgpu::BindGroup,
}

/// A range of gradients the guard covers, in its storage format (`None`: f32).
pub(crate) type GradRange<'a> = (BufferRange<'a>, Option<HalfFormat>);

/// The caller's own loss scaler on the device, as PyTorch's fused optimizers take it: the
/// buffers' first f32 are the scale the gradients carry (`grad_scale`) and, if given, a flag
/// that is nonzero when the caller found an inf or NaN (`found_inf`). Both need `STORAGE`
/// usage; the caller updates them, fusedopt only reads them, at each step's pre-pass.
#[derive(Clone, Copy, Debug)]
pub struct CallerScale<'a> {
    /// The scale (`grad_scale`).
    pub scale: &'a wgpu::Buffer,
    /// The found-inf flag (`found_inf`); without it the pre-pass's own test decides.
    pub found_inf: Option<&'a wgpu::Buffer>,
}

impl GradGuard {
    /// A guard over `ranges` (every gradient of the model, in order), its scale at
    /// `init_scale`. Ranges were checked by the optimizer that asks for the guard.
    pub(crate) fn new(
        gpu: &Gpu,
        config: Guard,
        ranges: &[GradRange<'_>],
        caller: Option<CallerScale<'_>>,
    ) -> Result<Self> {
        config.validate()?;
        if config.caller_scale != caller.is_some() {
            return Err(Error::InvalidSetting {
                what: "guard".into(),
                message: if config.caller_scale {
                    "caller_scale is set but no scale buffer was handed in".into()
                } else {
                    "a scale buffer was handed in but caller_scale is not set".into()
                },
            });
        }
        if let Some(caller) = &caller {
            for (what, buffer) in [
                ("scale", Some(caller.scale)),
                ("found_inf", caller.found_inf),
            ] {
                let Some(buffer) = buffer else { continue };
                if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) || buffer.size() < 4 {
                    return Err(Error::InvalidBuffer {
                        what: what.into(),
                        message: "the caller's scale buffers need STORAGE usage and one f32".into(),
                    });
                }
                super::range::check_owned(gpu, buffer, what)?;
            }
        }
        let start = initial_scaler_state(&config);
        let mut state = [0u32; STATE_WORDS];
        state[0] = start.scale.to_bits();
        state[4] = 1.0f32.to_bits();
        state[5] = 1.0f32.to_bits();
        state[7] = start.scale.to_bits();
        let state = gpu.buffer_with(
            "fusedopt/guard state",
            bytemuck::cast_slice(&state),
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )?;
        let blocks: u64 = ranges
            .iter()
            .map(|(r, _)| (r.len as u64).div_ceil(GUARD_BLOCK as u64))
            .sum();
        let too_many = || Error::LimitExceeded {
            what: "a guard's blocks".into(),
            requested: blocks,
            limit: u64::from(u32::MAX),
            limit_name: "u32 block index",
        };
        let blocks32 = u32::try_from(blocks).map_err(|_| too_many())?;
        let scaler = config.scaler.unwrap_or_default();
        let settings: [u32; 8] = [
            u32::from(config.scales()),
            u32::from(config.max_norm.is_some()),
            (scaler.growth_factor as f32).to_bits(),
            (scaler.backoff_factor as f32).to_bits(),
            scaler.growth_interval,
            (config.max_norm.unwrap_or(1.0) as f32).to_bits(),
            blocks32,
            u32::from(config.scaler.is_some()),
        ];
        let settings = gpu.buffer_with(
            "fusedopt/guard settings",
            bytemuck::cast_slice(&settings),
            wgpu::BufferUsages::UNIFORM,
        )?;
        let partials = gpu.zeros("fusedopt/guard partials", blocks as usize)?;
        let grid = gpu.grid();
        let mut checks = Vec::with_capacity(ranges.len());
        let mut first_block = 0u64;
        for (index, (range, format)) in ranges.iter().enumerate() {
            let kernel = gpu.guard_kernel(GuardStage::Check, *format)?;
            let per_word = if format.is_some() { 2 } else { 1 };
            let block_words = GUARD_BLOCK as u64 / per_word;
            // Chunks of whole blocks, never split: at least one block, at most the binding,
            // and at most 2^31 elements so that the kernel's `u32` counts never wrap.
            let most_words = grid.chunk_elements.min((1 << 31) / per_word);
            let chunk_words = (most_words / block_words).max(1) * block_words;
            let len = range.len as u64;
            let words = len.div_ceil(per_word);
            let word_offset = range.offset / per_word;
            let records: Vec<[u32; 4]> = (0..words.div_ceil(chunk_words))
                .map(|c| {
                    let first = c * chunk_words * per_word;
                    let count = (len - first).min(chunk_words * per_word);
                    let block = first_block + first / GUARD_BLOCK as u64;
                    [count as u32, block as u32, 0, 0]
                })
                .collect();
            let ranges_buffer =
                gpu.uniform_records(&format!("fusedopt/guard ranges#{index}"), &records)?;
            let mut dispatches = Chunked::default();
            let mut chunk = 0u64;
            gpu.scoped("creating the guard's bind groups", || {
                dispatches.extend(
                    gpu.device(),
                    &kernel,
                    &format!("guard#{index}"),
                    words,
                    Grid {
                        chunk_elements: chunk_words,
                        max_per_dimension: grid.max_per_dimension,
                        // One workgroup of 256 lanes per block.
                        shape: LaunchShape {
                            workgroup_size: 256,
                            elements_per_invocation: block_words as u32 / 256,
                            max_workgroups: None,
                        },
                    },
                    |start, n| {
                        let entries = vec![
                            buffer_entry(GUARD_STATE_BINDING, &state, 0, None),
                            buffer_entry(GUARD_SETTINGS_BINDING, &settings, 0, None),
                            buffer_entry(GUARD_PARTIALS_BINDING, &partials, 0, None),
                            wgpu::BindGroupEntry {
                                binding: GUARD_GRADS_BINDING,
                                resource: elements(range.buffer, word_offset + start, n),
                            },
                            buffer_entry(
                                GUARD_RANGE_BINDING,
                                &ranges_buffer,
                                chunk * UNIFORM_STRIDE,
                                Some(16),
                            ),
                        ];
                        chunk += 1;
                        entries
                    },
                )
            })??;
            checks.push((kernel, dispatches));
            first_block += len.div_ceil(GUARD_BLOCK as u64);
        }
        let adopt = match caller {
            Some(caller) => {
                let kernel = gpu.guard_kernel(GuardStage::Adopt, None)?;
                let never = gpu.zeros("fusedopt/no found_inf", 1)?;
                let found = caller.found_inf.unwrap_or(&never);
                let group = gpu.scoped("creating the guard's bind groups", || {
                    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("guard/adopt"),
                        layout: &kernel.layout,
                        entries: &[
                            buffer_entry(GUARD_STATE_BINDING, &state, 0, None),
                            buffer_entry(GUARD_CALLER_SCALE_BINDING, caller.scale, 0, Some(4)),
                            buffer_entry(GUARD_CALLER_FOUND_BINDING, found, 0, Some(4)),
                        ],
                    })
                })?;
                Some((kernel, group))
            }
            None => None,
        };
        let finish = gpu.guard_kernel(GuardStage::Finish, None)?;
        let finish_group = gpu.scoped("creating the guard's bind groups", || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("guard/finish"),
                layout: &finish.layout,
                entries: &[
                    buffer_entry(GUARD_STATE_BINDING, &state, 0, None),
                    buffer_entry(GUARD_SETTINGS_BINDING, &settings, 0, None),
                    buffer_entry(GUARD_PARTIALS_BINDING, &partials, 0, None),
                ],
            })
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                device: gpu.device().clone(),
                config,
                state,
                adopt,
                checks,
                finish,
                finish_group,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Guard {
        &self.inner.config
    }

    /// Records the pre-pass into `pass`: every chunk's check, then the finish.
    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if let Some((kernel, group)) = &self.inner.adopt {
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        for (kernel, dispatches) in &self.inner.checks {
            pass.set_pipeline(&kernel.pipeline);
            dispatches.record(pass);
        }
        pass.set_pipeline(&self.inner.finish.pipeline);
        pass.set_bind_group(0, &self.inner.finish_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }

    /// The device buffer whose first four bytes hold the f32 scale the next gradients must
    /// carry: a backward pass binds it (read-only storage) and multiplies by it, so that the
    /// scale never goes through the host (`GradScaler.scale(loss)`). fusedopt writes it in its
    /// own passes only.
    pub fn scale_buffer(&self) -> &wgpu::Buffer {
        &self.inner.state
    }

    /// The buffer of the device's state, which each guarded optimizer's `choose` reads.
    pub(crate) fn state_buffer(&self) -> &wgpu::Buffer {
        &self.inner.state
    }

    /// Sets the scaler's scale and count of clean steps, as `GradScaler.load_state_dict` does
    /// when a run resumes; ordered after the work submitted before and before the next
    /// submission. An error for a scale that is not a positive finite number, changing
    /// nothing.
    pub fn restore(&self, gpu: &Gpu, state: ScalerState) -> Result<()> {
        self.check_device(gpu)?;
        state.validate()?;
        let words = [state.scale, f32::from_bits(state.growth_tracker)];
        gpu.write(&self.inner.state, 0, &words)
    }

    fn check_device(&self, gpu: &Gpu) -> Result<()> {
        if gpu.device() == &self.inner.device {
            return Ok(());
        }
        Err(Error::InvalidSetting {
            what: "device context".into(),
            message: "the guard was made on another device than this context's".into(),
        })
    }

    /// Reads the scaler's state and the last step's outcome back (waits for the GPU).
    pub fn read(&self, gpu: &Gpu) -> Result<GuardReport> {
        self.check_device(gpu)?;
        let words: Vec<u32> = gpu
            .download(&self.inner.state, 0, STATE_WORDS)?
            .into_iter()
            .map(f32::to_bits)
            .collect();
        Ok(GuardReport {
            scale: f32::from_bits(words[0]),
            growth_tracker: words[1],
            last_skipped: words[3] != 0,
            clip: f32::from_bits(words[5]),
            norm: f32::from_bits(words[6]),
            last_scale: f32::from_bits(words[7]),
            steps: words[8],
        })
    }
}

/// `size` bytes of `buffer` from `offset` (the rest of it for `None`) at `binding`.
pub(crate) fn buffer_entry(
    binding: u32,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: Option<u64>,
) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset,
            size: size.and_then(std::num::NonZeroU64::new),
        }),
    }
}
