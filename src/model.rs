//! Whole models in flat buffers: every tensor of a model as an aligned segment of one
//! parameter buffer (and the same segment of one gradient buffer), parameter groups as
//! contiguous ranges, and one [`GpuOptimizer`] per group, so a step costs one dispatch per
//! chunk of each group however many tensors the model has.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::gpu::{BufferRange, GpuOptimizer, GradGuard, GuardSource, Piece, check_pieces};
use crate::optim::{Guard, Optimizer, Precision};

/// Most parameter groups a layout may have (PyTorch models have a handful).
pub const MAX_GROUPS: usize = 1 << 16;

/// A tensor of a model: its name and shape (row-major; the optimizer only needs its size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, such as `h.0.attn.qkv.weight`.
    pub name: String,
    /// Shape; a scalar is `[]` and holds one element.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A tensor named `name` of `shape`.
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// Number of elements; `usize::MAX` where the product overflows (a layout refuses such
    /// a tensor).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }

    /// Number of elements, or `None` where the product of the shape overflows.
    pub fn checked_numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

/// Where one tensor lives in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The tensor.
    pub tensor: TensorSpec,
    /// Parameter group (index into the groups the layout was made with).
    pub group: usize,
    /// First element in the flat buffers; a multiple of the layout's alignment.
    pub offset: usize,
    /// Elements (`tensor.numel()`).
    pub len: usize,
}

/// A model's tensors laid out in one flat f32 buffer: each tensor starts on `align` elements
/// (the device's storage offset alignment, so a tensor can also be bound or copied on its own),
/// and the tensors of each parameter group are contiguous, so that a group is one range. The
/// padding between tensors is stepped with the rest and holds zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLayout {
    segments: Vec<Segment>,
    /// Per group: first element and length of its range (padding included).
    groups: Vec<(usize, usize)>,
    len: usize,
    align: usize,
}

impl ModelLayout {
    /// Lays out `tensors` in `groups` parameter groups (at most [`MAX_GROUPS`]); `group_of`
    /// names the group of each tensor (like PyTorch's `param_groups`). Tensors keep their order
    /// within a group. A layout whose size does not fit the address space is an error.
    pub fn new(
        tensors: &[TensorSpec],
        groups: usize,
        group_of: impl Fn(&TensorSpec) -> usize,
        align: usize,
    ) -> Result<Self> {
        let invalid = |message: String| Error::InvalidSetting {
            what: "model layout".into(),
            message,
        };
        if groups == 0 || groups > MAX_GROUPS || align == 0 {
            return Err(invalid(format!(
                "{groups} groups with an alignment of {align}: a layout needs 1 to \
                 {MAX_GROUPS} groups and an alignment of at least one element"
            )));
        }
        let mut names = std::collections::HashSet::new();
        let mut placed = Vec::with_capacity(tensors.len());
        for tensor in tensors {
            let group = group_of(tensor);
            if group >= groups {
                return Err(invalid(format!(
                    "tensor {} is in group {group}, but there are {groups} groups",
                    tensor.name
                )));
            }
            match tensor.checked_numel() {
                Some(0) => return Err(invalid(format!("tensor {} has no elements", tensor.name))),
                None => {
                    return Err(invalid(format!(
                        "tensor {} of shape {:?} has more elements than a usize counts",
                        tensor.name, tensor.shape
                    )));
                }
                Some(_) => {}
            }
            if !names.insert(tensor.name.as_str()) {
                return Err(invalid(format!("tensor {} appears twice", tensor.name)));
            }
            placed.push((group, tensor));
        }
        // Group by group, each in the order given.
        placed.sort_by_key(|(group, _)| *group);
        let too_large = || invalid("the layout has more elements than memory can address".into());
        let mut segments = Vec::with_capacity(tensors.len());
        let mut ranges = vec![(0, 0); groups];
        let mut offset = 0usize;
        let mut placed = placed.into_iter().peekable();
        for (group, range) in ranges.iter_mut().enumerate() {
            let start = offset;
            while let Some((_, tensor)) = placed.next_if(|(g, _)| *g == group) {
                let len = tensor.numel();
                segments.push(Segment {
                    tensor: tensor.clone(),
                    group,
                    offset,
                    len,
                });
                offset = offset
                    .checked_add(len)
                    .and_then(|end| end.checked_next_multiple_of(align))
                    .ok_or_else(too_large)?;
            }
            *range = (start, offset - start);
        }
        // Bytes of the flat buffers must be countable too.
        offset.checked_mul(4).ok_or_else(too_large)?;
        Ok(Self {
            segments,
            groups: ranges,
            len: offset,
            align,
        })
    }

    /// One group holding every tensor, aligned for `gpu`.
    pub fn single_group(gpu: &Gpu, tensors: &[TensorSpec]) -> Result<Self> {
        Self::new(tensors, 1, |_| 0, Self::device_alignment(gpu))
    }

    /// The alignment in elements that makes every segment a valid binding offset on `gpu`.
    pub fn device_alignment(gpu: &Gpu) -> usize {
        (gpu.limits().storage_offset_alignment as usize / 4).max(1)
    }

    /// Elements of the flat buffers, padding included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the layout holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Parameters of the model (padding excluded).
    pub fn params(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The segments, group by group.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment of the tensor called `name`.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.tensor.name == name)
    }

    /// First element and length of each group's range.
    pub fn group_ranges(&self) -> &[(usize, usize)] {
        &self.groups
    }

    /// Alignment of the segments, in elements.
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// Scatters per-tensor values into a flat vector (padding zero), in the layout's order.
    /// `values(segment)` returns the tensor's `len` elements.
    pub fn flatten<'v>(&self, values: impl Fn(&Segment) -> &'v [f32]) -> Result<Vec<f32>> {
        let mut flat = vec![0.0; self.len];
        for segment in &self.segments {
            let v = values(segment);
            if v.len() != segment.len {
                return Err(Error::LengthMismatch {
                    what: segment.tensor.name.clone(),
                    expected: segment.len,
                    got: v.len(),
                });
            }
            flat[segment.offset..segment.offset + segment.len].copy_from_slice(v);
        }
        Ok(flat)
    }
}

/// One optimizer per parameter group over a model's flat buffers. A step steps every group or
/// none: when it fails before running, no group's step count moves.
#[derive(Debug)]
pub struct ModelOptimizer {
    layout: ModelLayout,
    /// The optimizer of each non-empty group.
    groups: Vec<GpuOptimizer>,
    /// The index in the layout of each of `groups`.
    indices: Vec<usize>,
    /// Every group's configuration, empty groups included.
    configs: Vec<Optimizer>,
    precision: Precision,
}

impl ModelOptimizer {
    /// Steps the model laid out by `layout` in `params` and `grads` (each at least
    /// `layout.len()` elements from its offset), with `configs[g]` for group `g`.
    pub fn new<'a>(
        gpu: &Gpu,
        layout: ModelLayout,
        params: BufferRange<'a>,
        grads: BufferRange<'a>,
        configs: &[Optimizer],
    ) -> Result<Self> {
        Self::build(gpu, layout, params, grads, configs, Precision::F32, None)
    }

    /// [`Self::new`] with the tensors stored in `precision` (the same for every group) and,
    /// optionally, one guard over the whole gradient, every group and chunk (see
    /// [`GpuOptimizer::with_guard`]): one pre-pass unscales, tests for overflow and takes the
    /// global norm, then every group steps or every group skips. In a 16-bit precision
    /// `params` and `grads` count 16-bit elements ([`BufferRange::half`]) and each group must
    /// start at a storage offset alignment (lay the model out with twice the f32 alignment).
    /// Under a guard the padding between tensors must hold finite gradients (zeros), as a
    /// zeroed buffer does.
    pub fn with_precision<'a>(
        gpu: &Gpu,
        layout: ModelLayout,
        params: BufferRange<'a>,
        grads: BufferRange<'a>,
        configs: &[Optimizer],
        precision: Precision,
        guard: Option<Guard>,
    ) -> Result<Self> {
        Self::build(gpu, layout, params, grads, configs, precision, guard)
    }

    fn build<'a>(
        gpu: &Gpu,
        layout: ModelLayout,
        params: BufferRange<'a>,
        grads: BufferRange<'a>,
        configs: &[Optimizer],
        precision: Precision,
        guard: Option<Guard>,
    ) -> Result<Self> {
        if configs.len() != layout.groups.len() {
            return Err(Error::LengthMismatch {
                what: "parameter group configurations".into(),
                expected: layout.groups.len(),
                got: configs.len(),
            });
        }
        for (what, range) in [("params", &params), ("grads", &grads)] {
            if range.len < layout.len {
                return Err(Error::LengthMismatch {
                    what: what.into(),
                    expected: layout.len,
                    got: range.len,
                });
            }
        }
        let sub = |range: &BufferRange<'a>, start: usize, len: usize| BufferRange {
            buffer: range.buffer,
            offset: range.offset + start as u64,
            len,
        };
        for config in configs {
            config.validate()?;
        }
        let guard = match guard {
            Some(guard) => {
                guard.validate()?;
                check_pieces(
                    gpu,
                    &[Piece {
                        params,
                        grads: sub(&grads, 0, layout.len),
                    }],
                    ("params", "grads"),
                    precision.param_bytes(),
                )?;
                let whole = (sub(&grads, 0, layout.len), precision.half_format());
                Some(GradGuard::new(gpu, guard, &[whole], None)?)
            }
            None => None,
        };
        let mut groups = Vec::new();
        let mut indices = Vec::new();
        for (g, (&(start, len), config)) in layout.groups.iter().zip(configs).enumerate() {
            if len > 0 {
                let piece = Piece {
                    params: sub(&params, start, len),
                    grads: sub(&grads, start, len),
                };
                // The first group's pass runs the guard's pre-pass for all of them.
                let source = match &guard {
                    Some(guard) => GuardSource::Shared(guard.clone(), groups.is_empty()),
                    None => GuardSource::None,
                };
                groups.push(GpuOptimizer::build(
                    gpu,
                    config.clone(),
                    precision,
                    &[piece],
                    source,
                )?);
                indices.push(g);
            }
        }
        Ok(Self {
            layout,
            groups,
            indices,
            configs: configs.to_vec(),
            precision,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// Every group's configuration (one per group of the layout, empty groups included).
    pub fn configs(&self) -> &[Optimizer] {
        &self.configs
    }

    /// The storage precision of every group.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The index in the layout of each of [`Self::groups`].
    pub fn group_indices(&self) -> &[usize] {
        &self.indices
    }

    /// The optimizer of each non-empty group, in group order, mutable (a checkpoint restores
    /// each one's state and count).
    pub(crate) fn groups_mut(&mut self) -> &mut [GpuOptimizer] {
        &mut self.groups
    }

    /// The optimizer of each non-empty group, in group order.
    pub fn groups(&self) -> &[GpuOptimizer] {
        &self.groups
    }

    /// The steps each non-empty group has taken ([`GpuOptimizer::read_step_count`]: read
    /// from the device under a guard, where skipped steps are not counted).
    pub fn read_step_counts(&mut self, gpu: &Gpu) -> Result<Vec<u64>> {
        self.groups
            .iter_mut()
            .map(|group| group.read_step_count(gpu))
            .collect()
    }

    /// The guard run before each step, if the model was made with one.
    pub fn guard(&self) -> Option<&GradGuard> {
        self.groups.first().and_then(GpuOptimizer::guard)
    }

    /// Dispatches per step: the chunks of every group, not one per tensor.
    pub fn dispatches_per_step(&self) -> usize {
        self.groups
            .iter()
            .map(GpuOptimizer::dispatches_per_step)
            .sum()
    }

    /// Records one step of every group at its configured learning rate.
    pub fn record_step(&mut self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.record(gpu, encoder, None, None)
    }

    /// Records one step with learning rate `lrs[g]` for group `g` (one per group of the
    /// layout, empty groups included), as a scheduler sets each `param_group['lr']`.
    pub fn record_step_with_lrs(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lrs: &[f64],
    ) -> Result<()> {
        self.record(gpu, encoder, Some(lrs), None)
    }

    /// Records one step like [`Self::record_step`], with the GPU's clock written at the start
    /// of the first group's pass and the end of the last one's (the writes' indices are taken
    /// from `timestamps`). The device needs [`wgpu::Features::TIMESTAMP_QUERY`].
    pub fn record_step_timed(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: wgpu::ComputePassTimestampWrites<'_>,
    ) -> Result<()> {
        self.record(gpu, encoder, None, Some(timestamps))
    }

    /// Takes one step of every group at its configured learning rate and waits for it.
    pub fn step(&mut self, gpu: &Gpu) -> Result<()> {
        let lrs = self.configured_lrs();
        self.step_with_lrs(gpu, &lrs)
    }

    /// Takes one step with learning rate `lrs[g]` for group `g` and waits for it. A step that
    /// could not be recorded or submitted changes no step count; one that was submitted is
    /// counted in every group even if the wait fails, since the GPU runs it anyway.
    ///
    /// The `record_step*` methods count the steps they record into the caller's encoder; if
    /// the caller's submission is refused, it sets the counts back
    /// ([`Self::set_step_count`]).
    pub fn step_with_lrs(&mut self, gpu: &Gpu, lrs: &[f64]) -> Result<()> {
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/model step"),
            });
        let before = self.step_counts();
        self.record_step_with_lrs(gpu, &mut encoder, lrs)?;
        let submission = gpu
            .submit("running a model step", encoder)
            .inspect_err(|_| self.rewind(&before))?;
        gpu.wait(submission)
    }

    /// Reads the flat parameters back (`layout.len()` elements, padding included).
    pub fn read_params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.layout.len);
        for group in &self.groups {
            out.extend(group.read_params(gpu)?);
        }
        Ok(out)
    }

    fn configured_lrs(&self) -> Vec<f64> {
        let mut lrs = vec![0.0; self.layout.groups.len()];
        for (&g, group) in self.indices.iter().zip(&self.groups) {
            lrs[g] = group.config().lr();
        }
        lrs
    }

    /// Sets every group's step count (see [`GpuOptimizer::set_step_count`]).
    pub fn set_step_count(&mut self, step: u64) {
        for group in &mut self.groups {
            group.set_step_count(step);
        }
    }

    fn step_counts(&self) -> Vec<u64> {
        self.groups.iter().map(GpuOptimizer::step_count).collect()
    }

    fn rewind(&mut self, counts: &[u64]) {
        for (group, &count) in self.groups.iter_mut().zip(counts) {
            group.set_step_count(count);
        }
    }

    /// Records every group or none: what can fail short of the encoder (learning rates,
    /// scalars, the device's health) is done for every group before anything is recorded; an
    /// error wgpu reported at once while recording would have made the encoder invalid, so
    /// then every group's count is set back.
    fn record(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        lrs: Option<&[f64]>,
        timestamps: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) -> Result<()> {
        let lrs = match lrs {
            Some(lrs) if lrs.len() != self.layout.groups.len() => {
                return Err(Error::LengthMismatch {
                    what: "learning rates (one per parameter group)".into(),
                    expected: self.layout.groups.len(),
                    got: lrs.len(),
                });
            }
            Some(lrs) => lrs.to_vec(),
            None => self.configured_lrs(),
        };
        if timestamps.is_some() {
            gpu.require_timestamps()?;
        }
        let staged = self
            .indices
            .iter()
            .zip(&mut self.groups)
            .map(|(&g, group)| group.stage(gpu, lrs[g]))
            .collect::<Result<Vec<_>>>()?;
        let before = self.step_counts();
        let last = self.groups.len().saturating_sub(1);
        let mut failure = None;
        for (k, (group, staged)) in self.groups.iter_mut().zip(staged).enumerate() {
            // The first group's pass starts the clock and the last one's stops it; the passes
            // between write none (wgpu refuses timestamp writes without an index).
            let writes = timestamps
                .as_ref()
                .map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: t.query_set,
                    beginning_of_pass_write_index: t
                        .beginning_of_pass_write_index
                        .filter(|_| k == 0),
                    end_of_pass_write_index: t.end_of_pass_write_index.filter(|_| k == last),
                })
                .filter(|w| {
                    w.beginning_of_pass_write_index.is_some() || w.end_of_pass_write_index.is_some()
                });
            if let Err(e) = group.commit(gpu, encoder, staged, writes) {
                failure = Some(e);
                break;
            }
        }
        match failure {
            Some(e) => {
                self.rewind(&before);
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// The usual AdamW grouping: matrices decay (group 0), biases and norms do not (group 1).
pub fn decay_group(tensor: &TensorSpec) -> usize {
    usize::from(tensor.shape.len() < 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_layouts_are_errors() {
        let t = vec![TensorSpec::new("a", &[3]), TensorSpec::new("a", &[2])];
        assert!(ModelLayout::new(&t, 1, |_| 0, 4).is_err(), "duplicate name");
        let t = vec![TensorSpec::new("a", &[0, 3])];
        assert!(ModelLayout::new(&t, 1, |_| 0, 4).is_err(), "empty tensor");
        let t = vec![TensorSpec::new("a", &[3])];
        assert!(
            ModelLayout::new(&t, 1, |_| 1, 4).is_err(),
            "group out of range"
        );
        assert!(ModelLayout::new(&t, 0, |_| 0, 4).is_err(), "no groups");
    }

    #[test]
    fn flatten_puts_each_tensor_at_its_offset() {
        let t = vec![TensorSpec::new("a", &[3]), TensorSpec::new("b", &[2, 2])];
        let layout = ModelLayout::new(&t, 1, |_| 0, 4).unwrap();
        let a = [1.0, 2.0, 3.0];
        let b = [4.0, 5.0, 6.0, 7.0];
        let flat = layout
            .flatten(|s| if s.tensor.name == "a" { &a[..] } else { &b[..] })
            .unwrap();
        assert_eq!(flat, [1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 7.0]);
    }
}
