//! Taking a checkpoint from a live optimizer and restoring one into it: on the GPU
//! ([`GpuOptimizer`], [`ModelOptimizer`]) and the CPU ([`CpuOptimizer`] with its [`CpuGuard`]).
//! A restore checks everything against the live optimizer before it writes anything.

use super::{Checkpoint, Entry, Group, MASTER, Tensor, state_name};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptimizer};
use crate::model::{ModelOptimizer, TensorSpec};
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
        let state_format = match precision {
            Precision::Half(f) => Some(f),
            _ => None,
        };
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
    /// like the live one: precision, guard, groups with the same optimizer and options, the
    /// same tensors (names, shapes) in each group, step counts it can hold.
    fn check_fits(
        &self,
        precision: Precision,
        guard: Option<&Guard>,
        groups: &[(&Optimizer, Vec<&TensorSpec>)],
    ) -> Result<()> {
        if self.precision != precision {
            return Err(self.mismatch(format!(
                "precision: the checkpoint's is {}, the optimizer's {}",
                describe_precision(self.precision),
                describe_precision(precision)
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
            if &saved.optimizer != *live {
                return Err(self.mismatch(format!(
                    "group {g} ({}): options differ: {}",
                    live.name(),
                    option_differences(&saved.optimizer, live)
                )));
            }
            let listed: Vec<&TensorSpec> = self
                .layout
                .iter()
                .filter(|e| e.group == g)
                .map(|e| &e.tensor)
                .collect();
            if listed != *tensors {
                let show = |t: &[&TensorSpec]| {
                    t.iter()
                        .map(|t| format!("{} {:?}", t.name, t.shape))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(self.mismatch(format!(
                    "group {g}: the checkpoint holds tensors [{}], the optimizer steps [{}]",
                    show(&listed),
                    show(tensors)
                )));
            }
            if guard.is_some() && u32::try_from(saved.step).is_err() {
                return Err(self.mismatch(format!(
                    "group {g}: {} steps; a guarded optimizer counts at most 2^32 - 1",
                    saved.step
                )));
            }
        }
        Ok(())
    }

    /// The state of group `g` over a range of `len` elements whose tensors start where
    /// `starts` says (in layout order): `current` (the live values, by name) with every
    /// tensor's part replaced by the checkpoint's, so that padding keeps what it had.
    fn state_of(
        &self,
        g: usize,
        starts: &[usize],
        current: Vec<(&'static str, Vec<f32>)>,
    ) -> Vec<(&'static str, Vec<f32>)> {
        current
            .into_iter()
            .map(|(slot, mut values)| {
                self.overwrite(g, starts, slot, &mut values);
                (slot, values)
            })
            .collect()
    }

    /// Copies the checkpoint's `slot` of each tensor of group `g` into `values` at its start.
    fn overwrite(&self, g: usize, starts: &[usize], slot: &str, values: &mut [f32]) {
        let entries = self.layout.iter().filter(|e| e.group == g);
        for (entry, &at) in entries.zip(starts) {
            if let Some(tensor) = self.tensors.get(&state_name(&entry.tensor.name, slot)) {
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

fn describe_precision(precision: Precision) -> String {
    match precision {
        Precision::Stochastic { seed } => format!("bf16-sr (seed {seed})"),
        p => p.name().into(),
    }
}

/// The keyword arguments whose values differ (`lr: 0.001 here, 0.01 there`).
fn option_differences(saved: &Optimizer, live: &Optimizer) -> String {
    let (a, b) = (saved.to_torch(), live.to_torch());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
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

impl GpuOptimizer {
    /// Takes a checkpoint of the optimizer's state (every state tensor, the master copy, the
    /// step count and the guard's scaler), waiting for the work submitted before. Take it
    /// between steps, with every recorded step submitted. Its one tensor is named `0`.
    pub fn checkpoint(&mut self, gpu: &Gpu) -> Result<Checkpoint> {
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        let guard = match self.guard() {
            Some(guard) => {
                let report = guard.read(gpu)?;
                Some((*guard.config(), report.scaler_state()))
            }
            None => None,
        };
        let taken = take_gpu(self, gpu, vec![(&spec, 0)], 0)?;
        Checkpoint::take(self.precision(), guard, vec![taken])
    }

    /// Restores a checkpoint taken from an optimizer of the same configuration, precision,
    /// guard and length: the state, the master, the step count and the scaler's state, so the
    /// next step is the one the saved run would have taken, bit for bit. Anything that
    /// differs is an [`Error::Checkpoint`] naming it, and nothing is written. Steps recorded
    /// and not submitted must not be pending.
    pub fn restore(&mut self, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<()> {
        let spec = TensorSpec::new(FLAT, &[self.len()]);
        checkpoint.check_fits(
            self.precision(),
            self.guard().map(|g| g.config()),
            &[(self.config(), vec![&spec])],
        )?;
        let current = read_group(self, gpu)?;
        restore_gpu(self, gpu, checkpoint, 0, &[0], current)?;
        restore_guard(self.guard(), gpu, checkpoint)
    }
}

impl ModelOptimizer {
    /// Takes a checkpoint of every group (see [`GpuOptimizer::checkpoint`]), one entry per
    /// model tensor by its name (the padding between tensors is not saved).
    pub fn checkpoint(&mut self, gpu: &Gpu) -> Result<Checkpoint> {
        let layout = self.layout().clone();
        let guard = match self.guard() {
            Some(guard) => {
                let report = guard.read(gpu)?;
                Some((*guard.config(), report.scaler_state()))
            }
            None => None,
        };
        let (precision, configs) = (self.precision(), self.configs().to_vec());
        let indices = self.group_indices().to_vec();
        let mut taken = Vec::new();
        for (g, (&(start, _), config)) in layout.group_ranges().iter().zip(&configs).enumerate() {
            let tensors: Vec<(&TensorSpec, usize)> = layout
                .segments()
                .iter()
                .filter(|s| s.group == g)
                .map(|s| (&s.tensor, s.offset - start))
                .collect();
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
    /// tensors may lie at other offsets (another device's alignment). Nothing is written
    /// unless everything matches.
    pub fn restore(&mut self, gpu: &Gpu, checkpoint: &Checkpoint) -> Result<()> {
        let layout = self.layout().clone();
        let configs = self.configs().to_vec();
        let live: Vec<(&Optimizer, Vec<&TensorSpec>)> = configs
            .iter()
            .enumerate()
            .map(|(g, config)| {
                let tensors = layout.segments().iter().filter(|s| s.group == g);
                (config, tensors.map(|s| &s.tensor).collect())
            })
            .collect();
        checkpoint.check_fits(self.precision(), self.guard().map(|g| g.config()), &live)?;
        let indices = self.group_indices().to_vec();
        // Read every group before writing any, so that a failed read writes nothing.
        let current = self
            .groups()
            .iter()
            .map(|group| read_group(group, gpu))
            .collect::<Result<Vec<_>>>()?;
        for ((group, &g), current) in self.groups_mut().iter_mut().zip(&indices).zip(current) {
            let start = layout.group_ranges()[g].0;
            let starts: Vec<usize> = layout
                .segments()
                .iter()
                .filter(|s| s.group == g)
                .map(|s| s.offset - start)
                .collect();
            restore_gpu(group, gpu, checkpoint, g, &starts, current)?;
        }
        restore_guard(self.guard(), gpu, checkpoint)
    }
}

/// What a GPU group holds now: its state, its master, its parameters widened.
struct Current {
    state: Vec<(&'static str, Vec<f32>)>,
    master: Option<Vec<f32>>,
    params: Option<Vec<f32>>,
}

fn read_group(opt: &GpuOptimizer, gpu: &Gpu) -> Result<Current> {
    let has_master = opt.precision().has_master();
    Ok(Current {
        state: opt.read_state(gpu)?,
        master: has_master.then(|| opt.read_master(gpu)).transpose()?,
        params: has_master.then(|| opt.read_params(gpu)).transpose()?,
    })
}

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

fn restore_gpu(
    opt: &mut GpuOptimizer,
    gpu: &Gpu,
    checkpoint: &Checkpoint,
    g: usize,
    starts: &[usize],
    current: Current,
) -> Result<()> {
    let state = checkpoint.state_of(g, starts, current.state);
    let views: Vec<(&str, &[f32])> = state.iter().map(|(n, v)| (*n, &v[..])).collect();
    opt.write_state(gpu, &views)?;
    if let Some(mut master) = current.master {
        match checkpoint.has_master() {
            true => checkpoint.overwrite(g, starts, MASTER, &mut master),
            // Saved before the first step (on the CPU): the master is the parameters widened.
            false => master = current.params.unwrap_or(master),
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

fn restore_guard(
    guard: Option<&crate::gpu::GradGuard>,
    gpu: &Gpu,
    checkpoint: &Checkpoint,
) -> Result<()> {
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
        checkpoint.check_fits(
            self.precision(),
            guard.as_ref().map(|g| g.guard()),
            &[(self.config(), vec![&spec])],
        )?;
        if let (Some(guard), Some((_, state))) = (guard, &checkpoint.guard) {
            guard.restore(*state)?;
        }
        for (slot, values) in self.state_mut() {
            checkpoint.overwrite(0, &[0], slot, values);
        }
        if checkpoint.has_master() {
            let mut master = vec![0.0; self.len()];
            checkpoint.overwrite(0, &[0], MASTER, &mut master);
            self.set_master(&master)?;
        } else {
            self.clear_master();
        }
        self.set_step_count(checkpoint.groups[0].step);
        Ok(())
    }
}
