//! Row-sparse steps of an embedding table held in a GPU buffer (`shaders/sparse.wgsl`).

use std::sync::Arc;

use super::Gpu;
use super::range::{BufferRange, check_owned, check_range, check_state_names};
use super::transfer::UNIFORM_STRIDE;
use crate::error::{Error, Result};
use crate::kernels::{
    LaunchShape, SPARSE_INDICES_BINDING, SPARSE_KEYS_BINDING, SPARSE_LOOKUPS_BINDING,
    SPARSE_RECORD_SIZE, SPARSE_SKIPPED_BINDING, SPARSE_STAGE_BINDING, SPARSE_STATE_BINDING,
    SPARSE_TABLE_BINDING, SPARSE_VALUES_BINDING, SparseKernel, elements, sort_stages, workgroups,
};
use crate::optim::SparseOptimizer;

/// Most elements of the table, and most lookups times `dim`: the kernel's `u32` indices never
/// wrap below this.
const MAX_ELEMENTS: u64 = 1 << 31;

/// An optimizer bound to an embedding table `[rows, dim]` (row-major f32 in the caller's
/// buffer) and to the buffers in which the caller's backward pass leaves each step's sparse
/// gradient: up to `capacity` row indices and one gradient row of `dim` f32 per index.
///
/// The indices are `u32`. An `i32` index buffer reads the same for rows below 2^31 (and a
/// negative index lands outside the table), but PyTorch's `int64` indices do not: read as
/// `u32` each would be two lookups, so convert them (`indices.to(torch.int32)`) before they
/// reach the buffer.
///
/// A step sums the gradient rows of duplicate indices (in lookup order, the same sum on every
/// run), then updates only the rows looked up and their state; its cost grows with the number
/// of lookups, not with the table. Lookups outside the table cannot be found before the step
/// without a round trip: the step skips them, writes nothing for them, and counts them in a
/// counter the host reads with [`Self::read_skipped`].
#[derive(Debug)]
pub struct SparseGpuOptimizer {
    /// The device everything below lives on; calls with a context of another are refused.
    device: wgpu::Device,
    config: SparseOptimizer,
    kernel: Arc<SparseKernel>,
    rows: usize,
    dim: usize,
    capacity: usize,
    table: wgpu::Buffer,
    table_offset: u64,
    state: Vec<(&'static str, wgpu::Buffer)>,
    skipped: wgpu::Buffer,
    /// The optimizer's scalars at 0, `Lookups` at [`UNIFORM_STRIDE`].
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    shape: LaunchShape,
    max_per_dimension: u32,
    step: u64,
}

impl SparseGpuOptimizer {
    /// Creates the optimizer for `table` (`rows × dim` elements), whose gradients arrive in
    /// `indices` (`capacity` elements) and `values` (`capacity × dim` elements). Allocates the
    /// state (`rows × dim` values per tensor, `rows` for row-wise Adagrad) and the sort's keys
    /// (8 bytes per lookup, to the next power of two).
    pub fn new<'a>(
        gpu: &Gpu,
        config: impl Into<SparseOptimizer>,
        table: impl Into<BufferRange<'a>>,
        dim: usize,
        indices: impl Into<BufferRange<'a>>,
        values: impl Into<BufferRange<'a>>,
    ) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        let (table, indices, values) = (table.into(), indices.into(), values.into());
        let (rows, capacity) = check_shapes(gpu, &table, dim, &indices, &values)?;
        for (what, range) in [
            ("table", &table),
            ("indices", &indices),
            ("values", &values),
        ] {
            check_range(gpu, what, range, 4)?;
            check_owned(gpu, range.buffer, what)?;
        }
        for (what, range) in [("indices", &indices), ("values", &values)] {
            // The table is bound read-write and these read-only: wgpu refuses one buffer as
            // both, even where the ranges are disjoint.
            if range.buffer == table.buffer {
                return Err(Error::InvalidBuffer {
                    what: what.into(),
                    message: "in the table's buffer; it needs a buffer of its own".into(),
                });
            }
        }

        let kernel = gpu.sparse_kernel(&config)?;
        let per_tensor = if config.row_state() { rows } else { rows * dim };
        let mut state = Vec::new();
        for (name, init) in config.state_init() {
            let buffer = gpu.zeros(&format!("fusedopt/sparse state {name}"), per_tensor)?;
            if init != 0.0 {
                gpu.fill(&buffer, 0, per_tensor as u64, init)?;
            }
            state.push((name, buffer));
        }
        let placeholder = gpu.zeros("fusedopt/sparse placeholder", 1)?;
        let padded = (capacity as u64).next_power_of_two();
        let keys = gpu.zeros("fusedopt/sparse keys", (padded * 2) as usize)?;
        let skipped = gpu.zeros("fusedopt/sparse skipped lookups", 1)?;
        let stage_records: Vec<[u32; 4]> = sort_stages(padded)
            .into_iter()
            .map(|[size, stride]| [size, stride, 0, 0])
            .collect();
        // A sort of one key has no stage; the binding still needs a record.
        let stages = gpu.uniform_records(
            "fusedopt/sparse sort stages",
            if stage_records.is_empty() {
                &[[0; 4]]
            } else {
                &stage_records
            },
        )?;
        let uniform = gpu.scoped("allocating the sparse uniform", || {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("fusedopt/sparse uniform"),
                size: UNIFORM_STRIDE + SPARSE_RECORD_SIZE,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let state_binding = |k: usize| state.get(k).map_or(&placeholder, |(_, b)| b);
        let record = |buffer, offset| {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer,
                offset,
                size: wgpu::BufferSize::new(SPARSE_RECORD_SIZE),
            })
        };
        let scalars_size = config.kernel().uniform.size as u64;
        let entries = [
            (
                0,
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniform,
                    offset: 0,
                    size: wgpu::BufferSize::new(scalars_size),
                }),
            ),
            (SPARSE_TABLE_BINDING, range(&table)),
            (SPARSE_VALUES_BINDING, range(&values)),
            (SPARSE_STATE_BINDING, whole(state_binding(0))),
            (SPARSE_STATE_BINDING + 1, whole(state_binding(1))),
            (SPARSE_INDICES_BINDING, range(&indices)),
            (SPARSE_KEYS_BINDING, whole(&keys)),
            (SPARSE_LOOKUPS_BINDING, record(&uniform, UNIFORM_STRIDE)),
            (SPARSE_STAGE_BINDING, record(&stages, 0)),
            (SPARSE_SKIPPED_BINDING, whole(&skipped)),
        ];
        let bind_group = gpu.scoped("binding the sparse optimizer", || {
            gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("fusedopt/sparse"),
                layout: &kernel.layout,
                entries: &entries
                    .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
            })
        })?;
        let grid = gpu.grid();
        Ok(Self {
            device: gpu.device().clone(),
            config,
            kernel,
            rows,
            dim,
            capacity,
            table: table.buffer.clone(),
            table_offset: table.offset,
            state,
            skipped,
            uniform,
            bind_group,
            shape: grid.shape,
            max_per_dimension: grid.max_per_dimension,
            step: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseOptimizer {
        &self.config
    }

    /// Rows of the table.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Most lookups one step takes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Steps recorded (those of no lookup included: PyTorch counts them too).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Sets the step count, as after restoring state with [`Self::write_state`] (the next
    /// step is `step + 1`).
    pub fn set_step_count(&mut self, step: u64) {
        self.step = step;
    }

    /// Sets every state tensor by PyTorch's name, as [`Self::read_state`] gives them
    /// (`rows × dim` values each, `rows` for row-wise Adagrad): with the table and
    /// [`Self::set_step_count`], a run resumes where it was saved. Each tensor this optimizer
    /// keeps must be given once at its length; an error otherwise, writing nothing. The
    /// writes are ordered after the work submitted before and before the next submission.
    pub fn write_state(&self, gpu: &Gpu, state: &[(&str, &[f32])]) -> Result<()> {
        self.check_device(gpu)?;
        let kept: Vec<&str> = self.state.iter().map(|(name, _)| *name).collect();
        check_state_names(self.config.name(), &kept, state)?;
        let mut writes = Vec::with_capacity(state.len());
        for (name, values) in state {
            let (_, buffer) = self
                .state
                .iter()
                .find(|(kept, _)| kept == name)
                .expect("checked above");
            let expected = (buffer.size() / 4) as usize;
            if values.len() != expected {
                return Err(Error::LengthMismatch {
                    what: format!("state {name}"),
                    expected,
                    got: values.len(),
                });
            }
            writes.push((buffer, *values));
        }
        for (buffer, values) in writes {
            gpu.write(buffer, 0, values)?;
        }
        Ok(())
    }

    /// Records one step of the first `lookups` indices and gradient rows, at the configured
    /// learning rate, into the caller's encoder.
    pub fn record_step(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lookups: usize,
    ) -> Result<()> {
        self.record_step_with_lr(gpu, encoder, lookups, self.config.lr())
    }

    /// Records one step of the first `lookups` indices and gradient rows at learning rate
    /// `lr` (a schedule's value) into the caller's encoder, which must come from the same
    /// device (wgpu cannot tell, and fails the submission). On an `Err` nothing is recorded
    /// and the step is not counted.
    pub fn record_step_with_lr(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lookups: usize,
        lr: f64,
    ) -> Result<()> {
        self.record(gpu, encoder, lookups, lr, None)
    }

    /// Records one step like [`Self::record_step_with_lr`], with the GPU's clock written at
    /// the start and end of its compute pass (all of its passes), for timing. The device needs
    /// [`wgpu::Features::TIMESTAMP_QUERY`]; a step of no lookup records no pass to time.
    pub fn record_step_timed(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lookups: usize,
        lr: f64,
        timestamps: wgpu::ComputePassTimestampWrites<'_>,
    ) -> Result<()> {
        gpu.require_timestamps()?;
        self.record(gpu, encoder, lookups, lr, Some(timestamps))
    }

    fn record(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lookups: usize,
        lr: f64,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        self.check_device(gpu)?;
        crate::optim::non_negative(self.config.name(), "lr", lr)?;
        if lookups > self.capacity {
            return Err(Error::LengthMismatch {
                what: format!(
                    "lookups of one step (the index buffer holds {})",
                    self.capacity
                ),
                expected: self.capacity,
                got: lookups,
            });
        }
        let step = crate::optim::next_step(self.config.name(), self.step)?;
        let k = lookups as u64;
        let padded = k.next_power_of_two();
        let mut bytes = vec![0u8; (UNIFORM_STRIDE + SPARSE_RECORD_SIZE) as usize];
        let scalars = self.config.uniform(step, lr);
        bytes[..scalars.as_bytes().len()].copy_from_slice(scalars.as_bytes());
        let counts = [k as u32, padded as u32, self.rows as u32, self.dim as u32];
        bytes[UNIFORM_STRIDE as usize..].copy_from_slice(bytemuck::cast_slice(&counts));
        let source = gpu.buffer_with(
            "fusedopt/sparse step scalars",
            &bytes,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        let simple = LaunchShape {
            elements_per_invocation: 1,
            max_workgroups: None,
            ..self.shape
        };
        let covering = |n: u64| workgroups(n, simple, self.max_per_dimension);
        let keys_grid = covering(padded)?;
        let sort_grid = covering(padded / 2)?;
        // One workgroup of the row sums per sorted lookup.
        let rows_grid = workgroups(
            k,
            LaunchShape {
                workgroup_size: 1,
                ..simple
            },
            self.max_per_dimension,
        )?;
        let update_grid = workgroups(k * self.dim as u64, self.shape, self.max_per_dimension)?;
        let stages = (padded.trailing_zeros() * (padded.trailing_zeros() + 1) / 2) as usize;
        gpu.capture("recording a sparse optimizer step", || {
            encoder.copy_buffer_to_buffer(&source, 0, &self.uniform, 0, source.size());
            if k == 0 {
                return;
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(self.config.name()),
                timestamp_writes,
            });
            let kernel = &self.kernel;
            pass.set_bind_group(0, &self.bind_group, &[0]);
            pass.set_pipeline(&kernel.make_keys);
            pass.dispatch_workgroups(keys_grid.0, keys_grid.1, 1);
            pass.set_pipeline(&kernel.sort);
            for s in 0..stages {
                let offset = (s as u64 * UNIFORM_STRIDE) as u32;
                pass.set_bind_group(0, &self.bind_group, &[offset]);
                pass.dispatch_workgroups(sort_grid.0, sort_grid.1, 1);
            }
            pass.set_bind_group(0, &self.bind_group, &[0]);
            if self.config.row_state() {
                pass.set_pipeline(&kernel.row_sums);
                pass.dispatch_workgroups(rows_grid.0, rows_grid.1, 1);
            }
            pass.set_pipeline(&kernel.update);
            pass.dispatch_workgroups(update_grid.0, update_grid.1, 1);
        })?;
        self.step = step;
        Ok(())
    }

    /// Takes one step of the first `lookups` lookups at the configured learning rate and
    /// waits for it.
    pub fn step(&mut self, gpu: &Gpu, lookups: usize) -> Result<()> {
        self.step_with_lr(gpu, lookups, self.config.lr())
    }

    /// Takes one step at learning rate `lr` and waits for it. A step that could not be
    /// submitted is not counted.
    pub fn step_with_lr(&mut self, gpu: &Gpu, lookups: usize, lr: f64) -> Result<()> {
        let before = self.step;
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/sparse step"),
            });
        self.record_step_with_lr(gpu, &mut encoder, lookups, lr)?;
        let submission = gpu
            .submit("running a sparse optimizer step", encoder)
            .inspect_err(|_| self.step = before)?;
        gpu.wait(submission)
    }

    /// Reads the table back (`rows × dim`, row-major).
    pub fn read_table(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.check_device(gpu)?;
        gpu.download(&self.table, self.table_offset, self.rows * self.dim)
    }

    /// Reads every state tensor back by PyTorch's name (`rows × dim` values each; `rows`
    /// for row-wise Adagrad).
    pub fn read_state(&self, gpu: &Gpu) -> Result<Vec<(&'static str, Vec<f32>)>> {
        self.check_device(gpu)?;
        self.state
            .iter()
            .map(|(name, buffer)| {
                Ok((
                    *name,
                    gpu.download(buffer, 0, (buffer.size() / 4) as usize)?,
                ))
            })
            .collect()
    }

    /// Lookups skipped so far because their index lay outside the table (counted modulo
    /// 2^32), read after the work submitted before.
    pub fn read_skipped(&self, gpu: &Gpu) -> Result<u64> {
        self.check_device(gpu)?;
        let word = gpu.download(&self.skipped, 0, 1)?[0];
        Ok(u64::from(word.to_bits()))
    }

    /// Fails unless `gpu` is a context on the device this optimizer was made on.
    fn check_device(&self, gpu: &Gpu) -> Result<()> {
        if gpu.device() == &self.device {
            return Ok(());
        }
        Err(Error::InvalidSetting {
            what: "device context".into(),
            message: format!(
                "the sparse {} optimizer was made on another device than this context's",
                self.config.name()
            ),
        })
    }
}

/// All of `buffer` as a binding.
fn whole(buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
    elements(buffer, 0, buffer.size() / 4)
}

/// A caller's range as a binding.
fn range<'a>(r: &BufferRange<'a>) -> wgpu::BindingResource<'a> {
    elements(r.buffer, r.offset, r.len as u64)
}

/// The table's rows and the lookups' capacity, from the ranges' lengths, within what the
/// kernel indexes and what one binding holds.
fn check_shapes(
    gpu: &Gpu,
    table: &BufferRange<'_>,
    dim: usize,
    indices: &BufferRange<'_>,
    values: &BufferRange<'_>,
) -> Result<(usize, usize)> {
    let invalid = |message: String| Error::InvalidSetting {
        what: "embedding table".into(),
        message,
    };
    if dim == 0 || table.len == 0 || !table.len.is_multiple_of(dim) {
        return Err(invalid(format!(
            "a table of {} elements is no whole number of rows of dim {dim}",
            table.len
        )));
    }
    let rows = table.len / dim;
    let capacity = indices.len;
    let expected = capacity.checked_mul(dim);
    if expected != Some(values.len) {
        return Err(Error::LengthMismatch {
            what: format!("gradient values ({capacity} lookups of dim {dim})"),
            expected: expected.unwrap_or(usize::MAX),
            got: values.len,
        });
    }
    let limits = gpu.limits();
    let binding = limits.max_binding_bytes / 4;
    let within = |what: &str, requested: u64, limit: u64, limit_name: &'static str| {
        if requested > limit {
            return Err(Error::LimitExceeded {
                what: what.into(),
                requested,
                limit,
                limit_name,
            });
        }
        Ok(())
    };
    let elements = "2^31, and max_storage_buffer_binding_size";
    within(
        "table elements",
        table.len as u64,
        MAX_ELEMENTS.min(binding),
        elements,
    )?;
    within(
        "lookups times dim",
        values.len as u64,
        MAX_ELEMENTS.min(binding),
        elements,
    )?;
    // Below 2^31 lookups now, so the power of two does not overflow.
    let padded = (capacity as u64).next_power_of_two();
    within(
        "sort keys (lookups to a power of two, 8 bytes each)",
        padded * 2,
        binding.min(limits.max_buffer_bytes / 4),
        "max_storage_buffer_binding_size",
    )?;
    Ok((rows, capacity))
}
