//! Taking a checkpoint from a live optimizer and restoring one into it: on the GPU
//! ([`GpuOptimizer`], [`ModelOptimizer`]) and the CPU ([`CpuOptimizer`] with its [`CpuGuard`]).
//! A restore checks everything against the live optimizer before it writes anything.

use super::{Checkpoint, Entry, Group, MASTER, Tensor, state_name};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptimizer, GradGuard};
use crate::model::{ModelLayout, ModelOptimizer, TensorSpec};
use crate::optim::{Guard, Optimizer, Precision, ScalerState};
use crate::reference::{CpuGuard, CpuOptimizer};

/// The name of the one tensor of an optimizer made without a layout (PyTorch's index of its
/// first parameter).
const FLAT: &str = "0";

/// One group of a live optimizer, as a checkpoint stores it.
struct Taken<'a> {
    group: Group,
    /// Its tensors and where each starts in the group's range.
    tensors: Vec<(&'a TensorSpec, usize)>,
    /// Where the group starts in the flat buffers.
    start: usize,
    /// Every state tensor over the group's range, by PyTorch's name.
    state: Vec<(&'static str, Vec<f32>)>,
    master: Option<Vec<f32>>,
}

impl Checkpoint {
    fn take(
        precision: Precision,
        guard: Option<(Guard, ScalerState)>,
        taken: Vec<Taken<'_>>,
    ) -> Result<Self> {
        let state_format = precision.state_format();
        let mut layout = Vec::new();
        let mut tensors = std::collections::BTreeMap::new();
        let mut groups = Vec::new();
        for (g, group) in taken.into_iter().enumerate() {
            for &(spec, at) in &group.tensors {
                let len = spec.numel();
                let mut slots: Vec<(&str, &[f32], _)> = group
                    .state
                    .iter()
                    .map(|(slot, values)| (*slot, &values[at..at + len], state_format))
                    .collect();
                if let Some(master) = &group.master {
                    slots.push((MASTER, &master[at..at + len], None));
                }
                for (slot, values, format) in slots {
                    let tensor = Tensor::stored(format, &spec.shape, values)?;
                    tensors.insert(state_name(&spec.name, slot), tensor);
                }
                layout.push(Entry {
                    tensor: spec.clone(),
                    group: g,
                    offset: group.start + at,
                });
            }
            groups.push(group.group);
        }
        let checkpoint = Self {
            origin: "memory".into(),
            fusedopt_version: env!("CARGO_PKG_VERSION").into(),
            precision,
            groups,
            layout,
            guard,
            tensors,
            notes: Default::default(),
        };
        let names: std::collections::BTreeSet<&str> = checkpoint
            .layout
            .iter()
            .map(|e| e.tensor.name.as_str())
            .collect();
        if names.len() != checkpoint.layout.len() {
            return Err(Error::InvalidSetting {
                what: "checkpoint".into(),
                message: "two tensors of the layout have one name".into(),
            });
        }
        Ok(checkpoint)
    }

    /// Fails, naming the first difference, unless this checkpoint was taken from an optimizer
    /// like the live one: precision, guard, groups with the same optimizer and options (the
    /// learning rate aside: a step's rate is the caller's, a schedule's), the same tensors
    /// (names, shapes) in each group in any order, and step counts and a scaler state the
    /// live optimizer can take.
    fn check_fits(
        &self,
        precision: Precision,
        guard: Option<&Guard>,
        groups: &[(&Optimizer, Vec<&TensorSpec>)],
    ) -> Result<()> {
        if self.precision != precision {
            return Err(self.mismatch(format!(
                "precision: the checkpoint's is {}, the optimizer's {}",
                self.precision.describe(),
                precision.describe()
            )));
        }
        let saved_guard = self.guard.as_ref().map(|(g, _)| g);
        if saved_guard != guard {
            let show = |g: Option<&Guard>| g.map_or("none".into(), Guard::describe);
            return Err(self.mismatch(format!(
                "guard: the checkpoint's is {}, the optimizer's {}",
                show(saved_guard),
                show(guard)
            )));
        }
        if let Some((_, state)) = &self.guard {
            state.validate().map_err(|e| self.mismatch(e.to_string()))?;
        }
        if self.groups.len() != groups.len() {
            return Err(self.mismatch(format!(
                "{} parameter groups in the checkpoint, {} in the optimizer",
                self.groups.len(),
                groups.len()
            )));
        }
        for (g, (saved, (live, tensors))) in self.groups.iter().zip(groups).enumerate() {
            if saved.optimizer.name() != live.name() {
                return Err(self.mismatch(format!(
                    "group {g}: the checkpoint's optimizer is {}, the optimizer's {}",
                    saved.optimizer.name(),
                    live.name()
                )));
            }
            let differences = option_differences(&saved.optimizer, live);
            if !differences.is_empty() {
                return Err(self.mismatch(format!(
                    "group {g} ({}): options differ: {differences}",
                    live.name()
                )));
            }
            let by_name = |t: &mut Vec<&TensorSpec>| t.sort_by(|a, b| a.name.cmp(&b.name));
            let mut listed: Vec<&TensorSpec> = self
                .layout
                .iter()
                .filter(|e| e.group == g)
                .map(|e| &e.tensor)
                .collect();
            let mut live_tensors = tensors.clone();
            by_name(&mut listed);
            by_name(&mut live_tensors);
            if listed != live_tensors {
                let show = |t: &[&TensorSpec]| {
                    t.iter()
                        .map(|t| format!("{} {:?}", t.name, t.shape))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(self.mismatch(format!(
                    "group {g}: the checkpoint holds tensors [{}], the optimizer steps [{}]",
                    show(&listed),
                    show(&live_tensors)
                )));
            }
            if guard.is_some() && saved.step >= u64::from(u32::MAX) {
                return Err(self.mismatch(format!(
                    "group {g}: {} steps; a guarded optimizer counts fewer than 2^32 - 1",
                    saved.step
                )));
            }
        }
        Ok(())
    }

    /// Copies the checkpoint's `slot` of each of the live `tensors` (found by name) into
    /// `values` at the tensor's start; what lies between tensors keeps its value.
    fn overwrite(&self, tensors: &[(&TensorSpec, usize)], slot: &str, values: &mut [f32]) {
        for &(spec, at) in tensors {
            if let Some(tensor) = self.tensors.get(&state_name(&spec.name, slot)) {
                let saved = tensor.to_f32();
                values[at..at + saved.len()].copy_from_slice(&saved);
            }
        }
    }

    /// Whether the master copy was saved (a CPU optimizer before its first step has none).
    fn has_master(&self) -> bool {
        self.layout.first().is_some_and(|e| {
            self.tensors
                .contains_key(&state_name(&e.tensor.name, MASTER))
        })
    }
}

/// The keyword arguments whose values differ (`betas is [0.9,0.99] in the checkpoint, ...`),
/// the learning rate aside; empty when none does.
fn option_differences(saved: &Optimizer, live: &Optimizer) -> String {
    let (a, b) = (saved.to_torch(), live.to_torch());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| *k != "lr" && a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("absent".into(), |v| v.to_string());
            format!(
                "{k} is {} in the checkpoint, {} in the optimizer",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The guard's settings and the scaler's state as the device holds them, where there is a
/// guard.
fn guard_state(guard: Option<&GradGuard>, gpu: &Gpu) -> Result<Option<(Guard, ScalerState)>> {
    guard
        .map(|guard| Ok((*guard.config(), guard.read(gpu)?.scaler_state())))
        .transpose()
}

impl GpuOptimizer {
    /// Takes a checkpoint of the optimizer's state (every state tensor, the master copy, the
    /// step count and the guard's scaler), waiting for the work submitted before. Under a
    /// guard, steps recorded and not submitted are an error; without one, take it after
    /// submitting them. Its one tensor is named `0` (pieces are saved as one).
    pub fn checkpoint(&mut self, gpu: &Gpu) -> Result<Checkpoint> {
        self.require_settled(gpu)?;
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        let guard = guard_state(self.guard(), gpu)?;
        let taken = take_gpu(self, gpu, vec![(&spec, 0)], 0)?;
        Checkpoint::take(self.precision(), guard, vec![taken])
    }

    /// Restores a checkpoint taken from an optimizer of the same configuration, precision,
    /// guard and length: the state, the master, the step count and the scaler's state, so the
    /// next step is the one the saved run would have taken, bit for bit. Anything that
    /// differs is an [`Error::Checkpoint`] naming it, and nothing is written. Restore the
    /// parameters before: a checkpoint without a master (a CPU one before its first step)
    /// makes the master the parameters as they are.
    pub fn restore(&mut self, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<()> {
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        checkpoint.check_fits(
            self.precision(),
            self.guard().map(|g| g.config()),
            &[(self.config(), vec![&spec])],
        )?;
        self.require_settled(gpu)?;
        let current = read_group(self, gpu, checkpoint)?;
        restore_guard(self.guard(), gpu, checkpoint)?;
        restore_gpu(self, gpu, checkpoint, 0, &[(&spec, 0)], current)
    }
}

impl ModelOptimizer {
    /// Takes a checkpoint of every group (see [`GpuOptimizer::checkpoint`]), one entry per
    /// model tensor by its name (the padding between tensors is not saved).
    pub fn checkpoint(&mut self, gpu: &Gpu) -> Result<Checkpoint> {
        for group in self.groups_mut() {
            group.require_settled(gpu)?;
        }
        let layout = self.layout().clone();
        let guard = guard_state(self.guard(), gpu)?;
        let (precision, configs) = (self.precision(), self.configs().to_vec());
        let indices = self.group_indices().to_vec();
        let mut taken = Vec::new();
        for (g, config) in configs.iter().enumerate() {
            let (start, tensors) = tensors_of_group(&layout, g);
            match indices.iter().position(|&i| i == g) {
                Some(k) => taken.push(take_gpu(&mut self.groups_mut()[k], gpu, tensors, start)?),
                None => taken.push(Taken {
                    group: Group {
                        optimizer: config.clone(),
                        step: 0,
                    },
                    tensors,
                    start,
                    state: Vec::new(),
                    master: None,
                }),
            }
        }
        Checkpoint::take(precision, guard, taken)
    }

    /// Restores a checkpoint of a model with the same tensors (names and shapes) in the same
    /// groups, optimizers, options, precision and guard (see [`GpuOptimizer::restore`]); the
    /// tensors may lie in another order and at other offsets (another device's alignment).
    /// Nothing is written unless everything matches.
    pub fn restore(&mut self, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<()> {
        let layout = self.layout().clone();
        let configs = self.configs().to_vec();
        let live: Vec<(&Optimizer, Vec<&TensorSpec>)> = configs
            .iter()
            .enumerate()
            .map(|(g, config)| {
                (
                    config,
                    tensors_of_group(&layout, g).1.iter().map(|t| t.0).collect(),
                )
            })
            .collect();
        checkpoint.check_fits(self.precision(), self.guard().map(|g| g.config()), &live)?;
        let indices = self.group_indices().to_vec();
        for group in self.groups_mut() {
            group.require_settled(gpu)?;
        }
        // Read every group before writing any, so that a failed read writes nothing.
        let current = self
            .groups()
            .iter()
            .map(|group| read_group(group, gpu, checkpoint))
            .collect::<Result<Vec<_>>>()?;
        restore_guard(self.guard(), gpu, checkpoint)?;
        for ((group, &g), current) in self.groups_mut().iter_mut().zip(&indices).zip(current) {
            let (_, tensors) = tensors_of_group(&layout, g);
            restore_gpu(group, gpu, checkpoint, g, &tensors, current)?;
        }
        Ok(())
    }
}

/// Where group `g` starts in the flat buffers, and each of its tensors with its start in the
/// group's range.
fn tensors_of_group(layout: &ModelLayout, g: usize) -> (usize, Vec<(&TensorSpec, usize)>) {
    let start = layout.group_ranges()[g].0;
    let tensors = layout
        .segments()
        .iter()
        .filter(|s| s.group == g)
        .map(|s| (&s.tensor, s.offset - start))
        .collect();
    (start, tensors)
}

/// What a GPU group holds now: its state, its master, its parameters widened (read before
/// anything is written, so that padding keeps its values and a failed read changes nothing).
struct Current {
    state: Vec<(&'static str, Vec<f32>)>,
    master: Option<Vec<f32>>,
    /// Only where a master is kept and the checkpoint has none.
    params: Option<Vec<f32>>,
}

fn read_group(opt: &GpuOptimizer, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<Current> {
    let has_master = opt.precision().has_master();
    let from_params = has_master && !checkpoint.has_master();
    Ok(Current {
        state: opt.read_state(gpu)?,
        master: has_master.then(|| opt.read_master(gpu)).transpose()?,
        params: from_params.then(|| opt.read_params(gpu)).transpose()?,
    })
}

/// One GPU group as a checkpoint stores it.
fn take_gpu<'a>(
    opt: &mut GpuOptimizer,
    gpu: &Gpu,
    tensors: Vec<(&'a TensorSpec, usize)>,
    start: usize,
) -> Result<Taken<'a>> {
    let step = opt.read_step_count(gpu)?;
    let master = if opt.precision().has_master() {
        Some(opt.read_master(gpu)?)
    } else {
        None
    };
    Ok(Taken {
        group: Group {
            optimizer: opt.config().clone(),
            step,
        },
        tensors,
        start,
        state: opt.read_state(gpu)?,
        master,
    })
}

/// Writes group `g` of the checkpoint into a GPU group: `current` with every tensor's part
/// replaced, the master, the step count.
fn restore_gpu(
    opt: &mut GpuOptimizer,
    gpu: &Gpu,
    checkpoint: &Checkpoint,
    g: usize,
    tensors: &[(&TensorSpec, usize)],
    current: Current,
) -> Result<()> {
    let mut state = current.state;
    for (slot, values) in &mut state {
        checkpoint.overwrite(tensors, slot, values);
    }
    let views: Vec<(&str, &[f32])> = state.iter().map(|(n, v)| (*n, &v[..])).collect();
    opt.write_state(gpu, &views)?;
    if let Some(mut master) = current.master {
        match (checkpoint.has_master(), current.params) {
            (true, _) => checkpoint.overwrite(tensors, MASTER, &mut master),
            // Saved before the first step (on the CPU): the master is the parameters widened.
            (false, Some(params)) => master = params,
            (false, None) => {}
        }
        opt.write_master(gpu, &master)?;
    }
    let step = checkpoint.groups[g].step;
    match opt.guard() {
        Some(_) => opt.restore_step_count(gpu, step),
        None => {
            opt.set_step_count(step);
            Ok(())
        }
    }
}

/// Restores the scaler's state where both sides have a guard (`check_fits` made sure they
/// agree).
fn restore_guard(guard: Option<&GradGuard>, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<()> {
    match (guard, &checkpoint.guard) {
        (Some(guard), Some((_, state))) => guard.restore(gpu, *state),
        _ => Ok(()),
    }
}

impl CpuOptimizer {
    /// Takes a checkpoint of the optimizer's state, with `guard`'s scaler where its steps are
    /// guarded. Its one tensor is named `0`.
    pub fn checkpoint(&self, guard: Option<&CpuGuard>) -> Result<Checkpoint> {
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        let state = self
            .state()
            .into_iter()
            .map(|(name, values)| (name, values.to_vec()))
            .collect();
        let taken = Taken {
            group: Group {
                optimizer: self.config().clone(),
                step: self.step_count(),
            },
            tensors: vec![(&spec, 0)],
            start: 0,
            state,
            master: self.master().map(<[f32]>::to_vec),
        };
        let guard = guard.map(|g| (*g.guard(), g.state()));
        Checkpoint::take(self.precision(), guard, vec![taken])
    }

    /// Restores a checkpoint (see [`GpuOptimizer::restore`]; one taken on the GPU restores
    /// here too), with the scaler's state into `guard` where the steps are guarded. Nothing
    /// changes unless everything matches.
    pub fn restore(&mut self, guard: Option<&mut CpuGuard>, checkpoint: &Checkpoint) -> Result<()> {
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        let tensors = [(&spec, 0)];
        checkpoint.check_fits(
            self.precision(),
            guard.as_ref().map(|g| g.guard()),
            &[(self.config(), vec![&spec])],
        )?;
        if let (Some(guard), Some((_, state))) = (guard, &checkpoint.guard) {
            guard.restore(*state)?;
        }
        for (slot, values) in self.state_mut() {
            checkpoint.overwrite(&tensors, slot, values);
        }
        if checkpoint.has_master() {
            let mut master = vec![0.0; self.len()];
            checkpoint.overwrite(&tensors, MASTER, &mut master);
            self.set_master(&master)?;
        } else {
            self.clear_master();
        }
        self.set_step_count(checkpoint.groups[0].step);
        Ok(())
    }
}
