//! Whole models in flat buffers: a GPT-2-shaped model of 148 tensors in two parameter groups
//! with their own hyperparameters steps in one dispatch per group chunk, matches the CPU
//! reference tensor by tensor, leaves the padding at zero, and records into the caller's
//! encoder after its "backward pass" so that one submit does both.

mod common;

use fusedopt::model::decay_group;
use fusedopt::testing::RandomProblem;
use fusedopt::testing::transformer_tensors;
use fusedopt::{
    Adam, BufferRange, CpuOptimizer, ModelLayout, ModelOptimizer, Optimizer, TensorSpec,
};
use ndarray::{ArrayView1, ArrayViewMut1};

fn adamw_groups() -> Vec<Optimizer> {
    vec![
        Adam {
            lr: 1e-3,
            weight_decay: 0.1,
            ..Adam::adamw()
        }
        .into(),
        Adam {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Adam::adamw()
        }
        .into(),
    ]
}

#[test]
fn a_transformer_steps_in_one_dispatch_per_group_and_matches_the_reference() {
    let Some(gpu) = common::gpu() else { return };
    let tensors = transformer_tensors(64, 12, 1000, 128);
    let align = ModelLayout::device_alignment(gpu);
    let layout = ModelLayout::new(&tensors, 2, decay_group, align).unwrap();
    let n = layout.len();
    let mut problem = RandomProblem::new(layout.params(), 17);
    // Parameters and gradients per tensor, scattered into the flat layout (padding zero).
    let mut cursor = 0;
    let offsets: Vec<usize> = layout
        .segments()
        .iter()
        .map(|s| {
            cursor += s.len;
            cursor - s.len
        })
        .collect();
    let scatter = |dense: &[f32]| {
        layout
            .flatten(|s| {
                let k = layout.segments().iter().position(|t| t == s).unwrap();
                &dense[offsets[k]..offsets[k] + s.len]
            })
            .unwrap()
    };
    let mut expected = scatter(&problem.params);
    let params = gpu.upload("model/params", &expected).unwrap();
    let grads = gpu.zeros("model/grads", n).unwrap();
    let backward = gpu.zeros("model/backward output", n).unwrap();
    let configs = adamw_groups();
    let mut model = ModelOptimizer::new(
        gpu,
        layout.clone(),
        BufferRange::whole(&params),
        BufferRange::whole(&grads),
        &configs,
    )
    .unwrap();
    assert_eq!(
        model.dispatches_per_step(),
        2,
        "one dispatch per group, not one per tensor"
    );
    let mut cpu: Vec<CpuOptimizer> = layout
        .group_ranges()
        .iter()
        .zip(&configs)
        .map(|(&(_, len), c)| CpuOptimizer::new(c.clone(), len).unwrap())
        .collect();
    for _ in 0..3 {
        let g = scatter(&problem.next_grad());
        // The caller's backward pass writes its gradients in the same encoder, before the step.
        gpu.write(&backward, 0, &g).unwrap();
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&backward, 0, &grads, 0, (n * 4) as u64);
        model.record_step(gpu, &mut encoder).unwrap();
        gpu.queue().submit([encoder.finish()]);
        for ((start, len), opt) in layout.group_ranges().iter().zip(&mut cpu) {
            opt.step(
                ArrayViewMut1::from(&mut expected[*start..start + len]),
                ArrayView1::from(&g[*start..start + len]),
            )
            .unwrap();
        }
    }
    let got = gpu.download(&params, 0, n).unwrap();
    for segment in layout.segments() {
        let range = segment.offset..segment.offset + segment.len;
        let stats = common::compare(&got[range.clone()], &expected[range]);
        assert!(stats.passed(), "{}: {stats:?}", segment.tensor.name);
    }
    let mut covered = vec![false; n];
    for s in layout.segments() {
        covered[s.offset..s.offset + s.len].fill(true);
    }
    assert!(
        got.iter().zip(&covered).all(|(x, c)| *c || *x == 0.0),
        "padding stays zero"
    );
    assert_ne!(got, scatter(&problem.params), "the model moved");
}

#[test]
fn group_configurations_must_match_the_layout() {
    let Some(gpu) = common::gpu() else { return };
    let tensors = transformer_tensors(8, 1, 10, 4);
    let layout = ModelLayout::new(&tensors, 2, decay_group, 64).unwrap();
    let params = gpu.zeros("p", layout.len()).unwrap();
    let short = gpu.zeros("g", layout.len() - 1).unwrap();
    let whole = BufferRange::whole;
    let one = &adamw_groups()[..1];
    assert!(ModelOptimizer::new(gpu, layout.clone(), whole(&params), whole(&params), one).is_err());
    assert!(
        ModelOptimizer::new(gpu, layout, whole(&params), whole(&short), &adamw_groups()).is_err()
    );
}

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

/// A timed step of a model with three groups writes the clock at the start of the first
/// group's pass and the end of the last one's, and none in between: the submission goes
/// through and the two timestamps bracket the step.
#[test]
fn a_timed_step_of_three_groups_brackets_all_of_them() {
    let Some(gpu) = common::gpu() else { return };
    let tensors = [
        TensorSpec::new("w", &[100, 4]),
        TensorSpec::new("b", &[100]),
        TensorSpec::new("scale", &[50]),
    ];
    let group = |t: &TensorSpec| match t.name.as_str() {
        "w" => 0,
        "b" => 1,
        _ => 2,
    };
    let layout = ModelLayout::new(&tensors, 3, group, ModelLayout::device_alignment(gpu)).unwrap();
    let start: Vec<f32> = (0..layout.len()).map(|i| (i % 7) as f32 - 3.0).collect();
    let params = gpu.upload("timed/params", &start).unwrap();
    let grads = gpu.upload("timed/grads", &vec![0.5; layout.len()]).unwrap();
    let configs = vec![Optimizer::from(Adam::adamw()); 3];
    let whole = BufferRange::whole;
    let mut model =
        ModelOptimizer::new(gpu, layout, whole(&params), whole(&grads), &configs).unwrap();
    let device = gpu.device();
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("timed/queries"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let writes = wgpu::ComputePassTimestampWrites {
        query_set: &queries,
        beginning_of_pass_write_index: Some(0),
        end_of_pass_write_index: Some(1),
    };
    let mut encoder = device.create_command_encoder(&Default::default());
    if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        let err = model
            .record_step_timed(gpu, &mut encoder, writes)
            .unwrap_err();
        assert!(
            matches!(err, fusedopt::Error::InvalidSetting { .. }),
            "{err}"
        );
        return;
    }
    let resolved = gpu.zeros("timed/resolved", 4).unwrap();
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("timed/resolve"),
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    model.record_step_timed(gpu, &mut encoder, writes).unwrap();
    encoder.resolve_query_set(&queries, 0..2, &resolve, 0);
    encoder.copy_buffer_to_buffer(&resolve, 0, &resolved, 0, 16);
    gpu.submit_and_wait("a timed model step", encoder).unwrap();
    let words = gpu.download(&resolved, 0, 4).unwrap();
    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&words);
    assert!(
        ticks[1] >= ticks[0],
        "the clock stops after it starts: {ticks:?}"
    );
    let counts: Vec<u64> = model.groups().iter().map(|g| g.step_count()).collect();
    assert_eq!(counts, [1, 1, 1], "every group stepped once");
    assert_ne!(model.read_params(gpu).unwrap(), start, "the step ran");
}
