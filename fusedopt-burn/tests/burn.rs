//! fusedopt stepping Burn modules: every optimizer variant agrees with fusedopt's CPU reference
//! stepped on the same values and gradients; Adam and AdamW agree with Burn's own over 100
//! steps; a clone of the module keeps its values; parameter groups get their configuration; a
//! gradient in its parameter's wgpu buffer is stepped from a copy; a failed step changes
//! nothing.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::nn::loss::{MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams};
use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::{Device, Tensor, TensorData};
use fusedopt::{Adam, CpuOptimizer, ErrorStats, Gpu, Optimizer, Tolerance};
use fusedopt_burn::FusedOptimizer;
use ndarray::{ArrayView1, ArrayViewMut1};

#[derive(Module, Debug)]
struct Net {
    l1: Linear,
    l2: Linear,
    act: Relu,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(5, 12).init(device),
            l2: LinearConfig::new(12, 1).init(device),
            act: Relu::new(),
        }
    }

    fn loss(&self, x: &Tensor<2>, t: &Tensor<2>) -> Tensor<1> {
        let y = self
            .l2
            .forward(self.act.forward(self.l1.forward(x.clone())));
        MseLoss::new().forward(y, t.clone(), Reduction::Mean)
    }
}

/// Burn's device, shared by every test of this file, and a fusedopt context on it.
fn setup() -> (&'static Device, Gpu) {
    static SETUP: std::sync::OnceLock<(Device, WgpuSetup)> = std::sync::OnceLock::new();
    let (device, setup) = SETUP.get_or_init(|| {
        let (device, setup) = fusedopt_burn::init().expect("Burn's wgpu runtime starts");
        (device.autodiff(), setup)
    });
    (device, fusedopt_burn::wrap(setup))
}

fn data(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..64 * 5)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let t: Vec<f32> = x
        .chunks(5)
        .map(|r| r[0] * r[1] - (r[2] + r[3]).sin())
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [64, 5]), device),
        Tensor::from_data(TensorData::new(t, [64, 1]), device),
    )
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().as_slice::<f32>().expect("f32").to_vec()
}

/// Every float parameter by id: its path, values and rank.
#[derive(Default)]
struct Collect(HashMap<ParamId, (String, Vec<f32>, usize)>, Vec<String>);

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.1.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0
            .insert(param.id, (self.1.join("."), values(&param.val()), D));
    }
}

fn params(net: &Net) -> HashMap<ParamId, (String, Vec<f32>, usize)> {
    let mut c = Collect::default();
    net.visit(&mut c);
    c.0
}

/// Burn's gradients of every parameter, and their values.
fn gradients(
    net: &Net,
    x: &Tensor<2>,
    t: &Tensor<2>,
) -> (HashMap<ParamId, Vec<f32>>, GradientsParams) {
    let grads = GradientsParams::from_grads(net.loss(x, t).backward(), net);
    let by_id = params(net)
        .into_iter()
        .map(|(id, (path, _, rank))| {
            let value = match rank {
                1 => grads.get::<1>(id).map(|g| values(&g)),
                _ => grads.get::<2>(id).map(|g| values(&g)),
            };
            (id, value.unwrap_or_else(|| panic!("{path} has a gradient")))
        })
        .collect();
    (by_id, grads)
}

/// Three steps of `net` by `fused` and, beside them, by fusedopt's CPU reference with
/// `config` from the same values and Burn's gradients: how the two agree.
fn against_cpu(
    mut net: Net,
    fused: &mut FusedOptimizer,
    config: &Optimizer,
    (x, t): (&Tensor<2>, &Tensor<2>),
) -> ErrorStats {
    let mut cpu: HashMap<ParamId, (CpuOptimizer, Vec<f32>)> = params(&net)
        .into_iter()
        .map(|(id, (_, v, _))| (id, (CpuOptimizer::new(config.clone(), v.len()).unwrap(), v)))
        .collect();
    let mut stats = ErrorStats::default();
    for step in 1..=3 {
        let (host_grads, grads) = gradients(&net, x, t);
        net = fused.step(net, grads).unwrap();
        for (id, (_, got, _)) in params(&net) {
            let (opt, want) = cpu.get_mut(&id).unwrap();
            opt.step(
                ArrayViewMut1::from(&mut want[..]),
                ArrayView1::from(&host_grads[&id][..]),
            )
            .unwrap();
            stats.add(&Tolerance::F32, step, &got, want);
        }
    }
    stats
}

#[test]
fn every_variant_matches_the_cpu_reference_on_burn_parameters() {
    let device = setup().0;
    let (x, t) = data(device);
    for name in Optimizer::NAMES {
        for config in fusedopt::testing::variants(name).unwrap() {
            let mut fused = FusedOptimizer::new(setup().1, config.clone()).unwrap();
            let stats = against_cpu(Net::new(device), &mut fused, &config, (&x, &t));
            assert!(stats.compared > 0);
            assert!(
                stats.passed(),
                "{} [{}]: {stats:?}",
                config.name(),
                config.describe()
            );
        }
    }
}

#[test]
fn adam_and_adamw_agree_with_burns_own_over_100_steps() {
    let device = setup().0;
    let (x, t) = data(device);
    let cases: [(Optimizer, burn::optim::ModuleOptimizer); 2] = [
        (
            Adam {
                lr: 1e-2,
                ..Adam::default()
            }
            .into(),
            AdamConfig::new().with_epsilon(1e-8).init(),
        ),
        (
            Adam {
                lr: 1e-2,
                weight_decay: 1e-2,
                ..Adam::adamw()
            }
            .into(),
            AdamWConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(1e-2)
                .init(),
        ),
    ];
    for (config, mut theirs) in cases {
        let start = Net::new(device);
        let mut fused = FusedOptimizer::new(setup().1, config.clone()).unwrap();
        let (mut ours_net, mut their_net) = (start.clone(), start.clone());
        for _ in 0..100 {
            let (_, grads) = gradients(&ours_net, &x, &t);
            ours_net = fused.step(ours_net, grads).unwrap();
            let (_, grads) = gradients(&their_net, &x, &t);
            their_net = theirs.step(1e-2, their_net, grads);
        }
        let (ours, theirs) = (params(&ours_net), params(&their_net));
        let mut largest = 0.0f32;
        for (id, (path, value, _)) in &ours {
            let other = &theirs[id].1;
            for (a, b) in value.iter().zip(other) {
                largest = largest.max((a - b).abs());
            }
            assert_ne!(value, &params(&start)[id].1, "{path} moved");
        }
        // The same update in another order of f32 operations, over 100 steps of lr 1e-2.
        assert!(largest < 1e-3, "{}: {largest}", config.name());
    }
}

#[test]
fn a_clone_keeps_its_values_and_groups_get_their_configuration() {
    let device = setup().0;
    let (x, t) = data(device);
    let net = Net::new(device);
    let kept = net.clone();
    let before = params(&net);
    // The biases at lr 0: they stay where they are, the weights move.
    let mut fused = FusedOptimizer::new(setup().1, Adam::default())
        .unwrap()
        .with_group(
            ParamGroup::from_predicate("bias"),
            Adam {
                lr: 0.0,
                ..Adam::default()
            },
        )
        .unwrap();
    let (_, grads) = gradients(&net, &x, &t);
    let net = fused.step(net, grads).unwrap();
    let after = params(&net);
    for (id, (path, value, _)) in &after {
        if path.contains("bias") {
            assert_eq!(value, &before[id].1, "{path}: lr 0");
        } else {
            assert_ne!(value, &before[id].1, "{path}: stepped");
        }
        assert_eq!(fused.step_count(*id), 1);
    }
    // The clone shared the storage; the step went to a copy.
    for (id, (path, value, _)) in params(&kept) {
        assert_eq!(value, before[&id].1, "{path} of the clone");
    }
    assert_eq!(fused.parameters_copied(), after.len() as u64);
    // Once the clone is gone the parameters are Burn's alone: stepped in place.
    drop(kept);
    let (_, grads) = gradients(&net, &x, &t);
    let _net = fused.step(net, grads).unwrap();
    assert_eq!(fused.parameters_copied(), after.len() as u64, "no copy");
    // The copies went where Burn keeps weights, apart from the gradients' pages.
    assert_eq!(fused.gradients_copied(), 0);
}

/// Sets every parameter to a computed copy of itself, which CubeCL allocates in the pages
/// where gradients come and go (parameters Burn initializes live apart from them).
struct Recompute;

impl burn::module::ModuleMapper for Recompute {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        // Computed from a second handle, so that CubeCL cannot reuse the storage in place.
        let inner = tensor.inner();
        let computed = Tensor::from_inner(inner.clone().mul_scalar(1.0)).require_grad();
        drop(inner);
        Param::from_mapped_value(id, computed, mapper)
    }
}

#[test]
fn a_gradient_in_its_parameters_buffer_is_stepped_from_a_copy() {
    let device = setup().0;
    let (x, t) = data(device);
    let net = Net::new(device).map(&mut Recompute);
    let config: Optimizer = Adam {
        lr: 1e-2,
        ..Adam::default()
    }
    .into();
    let mut fused = FusedOptimizer::new(setup().1, config.clone()).unwrap();
    let stats = against_cpu(net, &mut fused, &config, (&x, &t));
    assert!(fused.gradients_copied() > 0, "the path this test is for");
    assert_eq!(fused.parameters_copied(), 0);
    assert!(stats.compared > 0 && stats.passed(), "{stats:?}");
}

#[test]
fn a_failed_step_changes_nothing_and_hands_the_module_back() {
    let device = setup().0;
    let (x, t) = data(device);
    let net = Net::new(device);
    let before = params(&net);
    let config = Adam {
        lr: 1e-2,
        ..Adam::default()
    };
    let mut fused = FusedOptimizer::new(setup().1, config.clone()).unwrap();
    let (&bias, _) = before
        .iter()
        .find(|(_, (path, _, _))| path == "l2.bias")
        .unwrap();
    // Burn's gradients, but the last parameter visited gets one of another shape: the three
    // before it are recorded when the step fails. The module comes back as it was, and every
    // count as it was (`count`: 0 before a first step, 1 after it).
    let fail = |fused: &mut FusedOptimizer, net: Net, count: u64| -> Net {
        let before = params(&net);
        let (_, mut grads) = gradients(&net, &x, &t);
        grads.remove::<1>(bias).unwrap();
        let wrong = TensorData::new(vec![1.0f32, 2.0], [2]);
        grads.register::<1>(bias, Tensor::from_data(wrong, &device.clone().inner()));
        let failed = fused.step(net, grads).unwrap_err();
        assert!(
            matches!(&failed.error, fusedopt_burn::Error::Tensor { param, .. } if param == "l2.bias"),
            "{failed}"
        );
        let net = failed.module;
        for (id, (path, value, _)) in params(&net) {
            assert_eq!(value, before[&id].1, "{path} unchanged");
            assert_eq!(fused.step_count(id), count, "{path}: {count} steps");
        }
        net
    };
    let net = fail(&mut fused, net, 0);
    // The optimizer then takes the first step as if the failed one had not been asked for.
    let (host_grads, grads) = gradients(&net, &x, &t);
    let net = fused.step(net, grads).unwrap();
    let mut stats = ErrorStats::default();
    for (id, (_, got, _)) in params(&net) {
        let mut want = before[&id].1.clone();
        CpuOptimizer::new(config.clone(), want.len())
            .unwrap()
            .step(
                ArrayViewMut1::from(&mut want[..]),
                ArrayView1::from(&host_grads[&id][..]),
            )
            .unwrap();
        stats.add(&Tolerance::F32, 1, &got, &want);
        assert_eq!(fused.step_count(id), 1);
    }
    assert!(stats.compared > 0 && stats.passed(), "{stats:?}");
    // A failure after a step sets the counts back to that step's.
    let net = fail(&mut fused, net, 1);

    // A forgotten parameter starts over; the others go on.
    assert!(fused.forget(bias));
    assert!(!fused.forget(bias), "nothing left to forget");
    let (_, grads) = gradients(&net, &x, &t);
    let net = fused.step(net, grads).unwrap();
    for (id, (path, _, _)) in params(&net) {
        let want = if id == bias { 1 } else { 2 };
        assert_eq!(fused.step_count(id), want, "{path}");
    }
}

#[test]
fn burn_and_fusedopt_run_on_the_graphics_api_wgpu_backend_names() {
    let (_, gpu) = setup();
    let backend = wgpu::Backends::from(gpu.adapter_info().backend);
    match wgpu::Backends::from_env() {
        // One API named: Burn started on it, not on another it prefers.
        Some(named) if named.iter().count() == 1 => assert_eq!(backend, named),
        _ => assert!(!backend.is_empty()),
    }
}

#[test]
fn a_step_right_after_the_backward_pass_sees_its_gradients() {
    let device = setup().0;
    let (x, t) = data(device);
    // Two nets of the same values in storage of their own.
    let start = Net::new(device);
    let (mut eager, mut waited) = (start.clone().map(&mut Recompute), start.map(&mut Recompute));
    let config = Adam {
        lr: 1e-2,
        ..Adam::default()
    };
    let mut eager_fused = FusedOptimizer::new(setup().1, config.clone()).unwrap();
    let mut waited_fused = FusedOptimizer::new(setup().1, config).unwrap();
    for _ in 0..3 {
        // Stepped while the backward pass may still be queued: taking the gradients' buffers
        // has to put it on the queue first.
        let grads = GradientsParams::from_grads(eager.loss(&x, &t).backward(), &eager);
        eager = eager_fused.step(eager, grads).unwrap();
        // Stepped after the gradients were read back, so the backward pass had run.
        let (_, grads) = gradients(&waited, &x, &t);
        waited = waited_fused.step(waited, grads).unwrap();
    }
    let (eager, waited) = (params(&eager), params(&waited));
    for (id, (path, value, _)) in &waited {
        assert_eq!(&eager[id].1, value, "{path}");
    }
}
