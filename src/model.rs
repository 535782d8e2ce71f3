//! Whole models in flat buffers: every tensor of a model as an aligned segment of one
//! parameter buffer (and the same segment of one gradient buffer), parameter groups as
//! contiguous ranges, and one [`GpuOptimizer`] per group, so a step costs one dispatch per
//! chunk of each group however many tensors the model has.

use crate::gpu::{BufferRange, Gpu, GpuOptimizer};
use crate::{Error, Optimizer, Result};

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

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
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
    /// Lays out `tensors` in `groups` parameter groups; `group_of` names the group of each
    /// tensor (like PyTorch's `param_groups`). Tensors keep their order within a group.
    pub fn new(
        tensors: &[TensorSpec],
        groups: usize,
        group_of: impl Fn(&TensorSpec) -> usize,
        align: usize,
    ) -> Result<Self> {
        if groups == 0 || align == 0 {
            return Err(Error::InvalidArgument(
                "a layout needs at least one group and an alignment of at least one".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut segments = Vec::with_capacity(tensors.len());
        let mut ranges = Vec::with_capacity(groups);
        let mut offset = 0usize;
        for group in 0..groups {
            let start = offset;
            for tensor in tensors.iter().filter(|t| group_of(t) == group) {
                if tensor.numel() == 0 {
                    return Err(Error::InvalidArgument(format!(
                        "tensor {} has no elements",
                        tensor.name
                    )));
                }
                if !names.insert(tensor.name.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "tensor {} appears twice",
                        tensor.name
                    )));
                }
                segments.push(Segment {
                    tensor: tensor.clone(),
                    group,
                    offset,
                    len: tensor.numel(),
                });
                offset = (offset + tensor.numel()).next_multiple_of(align);
            }
            ranges.push((start, offset - start));
        }
        if let Some(t) = tensors.iter().find(|t| group_of(t) >= groups) {
            return Err(Error::InvalidArgument(format!(
                "tensor {} is in group {}, but there are {groups} groups",
                t.name,
                group_of(t)
            )));
        }
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

/// One optimizer per parameter group over a model's flat buffers.
#[derive(Debug)]
pub struct ModelOptimizer {
    layout: ModelLayout,
    groups: Vec<GpuOptimizer>,
}

impl ModelOptimizer {
    /// Steps the model laid out by `layout` in `params` and `grads` (each at least
    /// `layout.len()` elements from its offset), with `configs[g]` for group `g`.
    pub fn new(
        gpu: &Gpu,
        layout: ModelLayout,
        params: BufferRange<'_>,
        grads: BufferRange<'_>,
        configs: &[Optimizer],
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
        fn sub<'a>(range: &BufferRange<'a>, start: usize, len: usize) -> BufferRange<'a> {
            BufferRange {
                buffer: range.buffer,
                offset: range.offset + start as u64,
                len,
            }
        }
        let groups = layout
            .groups
            .iter()
            .zip(configs)
            .filter(|((_, len), _)| *len > 0)
            .map(|(&(start, len), config)| {
                GpuOptimizer::new(
                    gpu,
                    config.clone(),
                    sub(&params, start, len),
                    sub(&grads, start, len),
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self { layout, groups })
    }

    /// The layout.
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// The optimizer of each non-empty group.
    pub fn groups(&self) -> &[GpuOptimizer] {
        &self.groups
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
        for group in &mut self.groups {
            group.record_step(gpu, encoder)?;
        }
        Ok(())
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
        let last = self.groups.len() - 1;
        for (g, group) in self.groups.iter_mut().enumerate() {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: timestamps.query_set,
                beginning_of_pass_write_index: timestamps
                    .beginning_of_pass_write_index
                    .filter(|_| g == 0),
                end_of_pass_write_index: timestamps.end_of_pass_write_index.filter(|_| g == last),
            };
            let lr = group.config().lr();
            group.record_step_timed(gpu, encoder, lr, writes)?;
        }
        Ok(())
    }

    /// Takes one step of every group and waits for it.
    pub fn step(&mut self, gpu: &Gpu) -> Result<()> {
        let mut encoder = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fusedopt/model step"),
            });
        self.record_step(gpu, &mut encoder)?;
        gpu.submit_and_wait("running a model step", encoder)
    }
}

/// The tensors of a GPT-2-style transformer: token and position embeddings, `layers` blocks of
/// layer norms, attention (fused QKV and projection) and MLP (4× width) weights and biases, and
/// a final layer norm; 12 layers give 148 tensors. GPT-2 small is `(768, 12, 50257, 1024)`.
pub fn transformer_tensors(
    d_model: usize,
    layers: usize,
    vocab: usize,
    context: usize,
) -> Vec<TensorSpec> {
    let d = d_model;
    let mut t = vec![
        TensorSpec::new("wte.weight", &[vocab, d]),
        TensorSpec::new("wpe.weight", &[context, d]),
    ];
    for l in 0..layers {
        let p = |s: &str| format!("h.{l}.{s}");
        t.extend([
            TensorSpec::new(p("ln_1.weight"), &[d]),
            TensorSpec::new(p("ln_1.bias"), &[d]),
            TensorSpec::new(p("attn.qkv.weight"), &[3 * d, d]),
            TensorSpec::new(p("attn.qkv.bias"), &[3 * d]),
            TensorSpec::new(p("attn.proj.weight"), &[d, d]),
            TensorSpec::new(p("attn.proj.bias"), &[d]),
            TensorSpec::new(p("ln_2.weight"), &[d]),
            TensorSpec::new(p("ln_2.bias"), &[d]),
            TensorSpec::new(p("mlp.fc.weight"), &[4 * d, d]),
            TensorSpec::new(p("mlp.fc.bias"), &[4 * d]),
            TensorSpec::new(p("mlp.proj.weight"), &[d, 4 * d]),
            TensorSpec::new(p("mlp.proj.bias"), &[d]),
        ]);
    }
    t.extend([
        TensorSpec::new("ln_f.weight", &[d]),
        TensorSpec::new("ln_f.bias", &[d]),
    ]);
    t
}

/// The transformer of [`transformer_tensors`] (12 layers, 8192-token vocabulary, 1024
/// positions) whose width, a multiple of 64, brings its parameter count closest to `params`.
pub fn transformer_near(params: usize) -> Vec<TensorSpec> {
    let count = |d: usize| {
        transformer_tensors(d, 12, 8192, 1024)
            .iter()
            .map(TensorSpec::numel)
            .sum::<usize>()
    };
    let d = (1..=256)
        .map(|k| 64 * k)
        .min_by_key(|&d| count(d).abs_diff(params))
        .expect("a non-empty range");
    transformer_tensors(d, 12, 8192, 1024)
}

/// The usual AdamW grouping: matrices decay (group 0), biases and norms do not (group 1).
pub fn decay_group(tensor: &TensorSpec) -> usize {
    usize::from(tensor.shape.len() < 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_aligned_grouped_and_disjoint() {
        let tensors = transformer_tensors(64, 12, 1000, 128);
        assert_eq!(tensors.len(), 148, "GPT-2's tensor count");
        let layout = ModelLayout::new(&tensors, 2, decay_group, 64).unwrap();
        assert_eq!(layout.segments().len(), 148);
        let mut end = 0;
        for s in layout.segments() {
            assert_eq!(s.offset % 64, 0, "{} aligned", s.tensor.name);
            assert!(s.offset >= end, "{} after the previous", s.tensor.name);
            end = s.offset + s.len;
        }
        let [(s0, l0), (s1, l1)] = layout.group_ranges() else {
            panic!("two groups")
        };
        assert_eq!((*s0, s0 + l0), (0, *s1), "groups are back to back");
        assert_eq!(s1 + l1, layout.len());
        for s in layout.segments() {
            let (start, len) = layout.group_ranges()[s.group];
            assert!(s.offset >= start && s.offset + s.len <= start + len);
            assert_eq!(s.group, decay_group(&s.tensor));
        }
        let params = tensors.iter().map(TensorSpec::numel).sum::<usize>();
        assert_eq!(layout.params(), params);
        assert!(layout.len() < params + 148 * 64);
    }

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
