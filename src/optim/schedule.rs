//! Learning-rate schedules with `torch.optim.lr_scheduler`'s names, arguments and arithmetic:
//! each scheduler updates the rate from the previous one the way PyTorch's does (its chainable,
//! recursive forms), in f64, so a schedule here follows PyTorch's to the last bits (checked
//! against sequences recorded from PyTorch 2.15). The rate feeds any optimizer's
//! `step_with_lr` (or a `ModelOptimizer`'s `step_with_lrs`, one scheduler per group).

use serde_json::Value;

use crate::error::{Error, Result};

/// A schedule of the learning rate, as a `torch.optim.lr_scheduler` class and its arguments.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `StepLR`: times `gamma` every `step_size` steps.
    Step {
        /// Steps between decays (≥ 1).
        step_size: u64,
        /// Factor of each decay (PyTorch: 0.1).
        gamma: f64,
    },
    /// `MultiStepLR`: times `gamma` at each milestone (a milestone given twice decays twice).
    MultiStep {
        /// Steps at which the rate decays.
        milestones: Vec<u64>,
        /// Factor of each decay (PyTorch: 0.1).
        gamma: f64,
    },
    /// `ExponentialLR`: times `gamma` every step.
    Exponential {
        /// Factor per step.
        gamma: f64,
    },
    /// `CosineAnnealingLR`: half a cosine from the initial rate to `eta_min` over `t_max`
    /// steps (and back up after, as PyTorch's does).
    CosineAnnealing {
        /// Steps of half a period (≥ 1).
        t_max: u64,
        /// The lowest rate.
        eta_min: f64,
    },
    /// `LinearLR`: the factor of the initial rate moves linearly from `start_factor` to
    /// `end_factor` over `total_iters` steps, then stays.
    Linear {
        /// First factor, in (0, 1] (PyTorch: 1/3).
        start_factor: f64,
        /// Last factor, in [0, 1] (PyTorch: 1).
        end_factor: f64,
        /// Steps of the ramp (PyTorch: 5).
        total_iters: u64,
    },
    /// `CosineAnnealingWarmRestarts`: cosine annealing restarted every `t_0` steps, each period
    /// `t_mult` times the last (SGDR).
    CosineAnnealingWarmRestarts {
        /// Steps of the first period (≥ 1).
        t_0: u64,
        /// Growth of each period (≥ 1; PyTorch: 1).
        t_mult: u64,
        /// The lowest rate (PyTorch: 0).
        eta_min: f64,
    },
    /// `OneCycleLR`: up from `max_lr / div_factor` to `max_lr` over a `pct_start` of the run,
    /// then down to `max_lr / div_factor / final_div_factor` (1cycle). The optimizer's own
    /// rate is not used. Stepping past `total_steps` is an error, as in PyTorch.
    OneCycle {
        /// The peak rate.
        max_lr: f64,
        /// Steps of the whole cycle (≥ 1).
        total_steps: u64,
        /// Fraction of the cycle spent rising, in [0, 1] (PyTorch: 0.3).
        pct_start: f64,
        /// Cosine (PyTorch's default) or linear annealing.
        cos: bool,
        /// Initial rate = `max_lr / div_factor` (PyTorch: 25).
        div_factor: f64,
        /// Final rate = initial rate / `final_div_factor` (PyTorch: 1e4).
        final_div_factor: f64,
        /// Rise, fall back to the initial rate, then anneal to the final one.
        three_phase: bool,
    },
    /// `SequentialLR`: `schedules[i]` runs from `milestones[i - 1]` on, each restarted at its
    /// milestone.
    Sequential {
        /// The schedules, in order.
        schedules: Vec<Schedule>,
        /// One fewer than the schedules: where each after the first takes over.
        milestones: Vec<u64>,
    },
    /// `ReduceLROnPlateau`: times `factor` when the metric handed to
    /// [`Scheduler::step_with_metric`] has not improved for `patience` steps.
    ReduceOnPlateau {
        /// Whether lower (`min`, PyTorch's default) or higher metrics are better.
        maximize: bool,
        /// Factor of each reduction, < 1 (PyTorch: 0.1).
        factor: f64,
        /// Steps without improvement tolerated (PyTorch: 10).
        patience: u64,
        /// The improvement that counts (PyTorch: 1e-4).
        threshold: f64,
        /// `threshold` relative to the best metric (`rel`, PyTorch's default) or absolute.
        relative: bool,
        /// Steps after a reduction before counting again (PyTorch: 0).
        cooldown: u64,
        /// The rate never goes below this (PyTorch: 0).
        min_lr: f64,
        /// Reductions smaller than this are not made (PyTorch: 1e-8).
        eps: f64,
    },
}

impl Schedule {
    /// The schedule called `name` (PyTorch's class name) with PyTorch's keyword arguments as
    /// a JSON object; `SequentialLR` takes its schedules as `schedulers`, a list of
    /// `{"scheduler": name, "args": {...}}`. Absent keys keep PyTorch's defaults; unknown keys
    /// and values PyTorch refuses are errors.
    pub fn from_torch(name: &str, args: &Value) -> Result<Self> {
        let mut a = Args::new(name, args)?;
        let schedule = match name {
            "StepLR" => Self::Step {
                step_size: a.count("step_size", None)?,
                gamma: a.number("gamma", Some(0.1))?,
            },
            "MultiStepLR" => Self::MultiStep {
                milestones: a.counts("milestones")?,
                gamma: a.number("gamma", Some(0.1))?,
            },
            "ExponentialLR" => Self::Exponential {
                gamma: a.number("gamma", None)?,
            },
            "CosineAnnealingLR" => Self::CosineAnnealing {
                t_max: a.count("T_max", None)?,
                eta_min: a.number("eta_min", Some(0.0))?,
            },
            "LinearLR" => Self::Linear {
                start_factor: a.number("start_factor", Some(1.0 / 3.0))?,
                end_factor: a.number("end_factor", Some(1.0))?,
                total_iters: a.count("total_iters", Some(5))?,
            },
            "CosineAnnealingWarmRestarts" => Self::CosineAnnealingWarmRestarts {
                t_0: a.count("T_0", None)?,
                t_mult: a.count("T_mult", Some(1))?,
                eta_min: a.number("eta_min", Some(0.0))?,
            },
            "OneCycleLR" => Self::OneCycle {
                max_lr: a.number("max_lr", None)?,
                total_steps: a.count("total_steps", None)?,
                pct_start: a.number("pct_start", Some(0.3))?,
                cos: match a.text("anneal_strategy", "cos")?.as_str() {
                    "cos" => true,
                    "linear" => false,
                    other => return Err(a.bad(format!("anneal_strategy {other:?}"))),
                },
                div_factor: a.number("div_factor", Some(25.0))?,
                final_div_factor: a.number("final_div_factor", Some(1e4))?,
                three_phase: a.boolean("three_phase", false)?,
            },
            "SequentialLR" => {
                let list = a.remove("schedulers")?.and_then(|v| v.as_array().cloned());
                let list = list.ok_or_else(|| a.bad("needs `schedulers`, a list".into()))?;
                let schedules = list
                    .iter()
                    .map(|item| {
                        let name = item.get("scheduler").and_then(Value::as_str);
                        let name =
                            name.ok_or_else(|| a.bad("a scheduler without a name".into()))?;
                        let args = item.get("args").cloned().unwrap_or(Value::Null);
                        let args = if args.is_null() {
                            Value::Object(Default::default())
                        } else {
                            args
                        };
                        Self::from_torch(name, &args)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Self::Sequential {
                    schedules,
                    milestones: a.counts("milestones")?,
                }
            }
            "ReduceLROnPlateau" => Self::ReduceOnPlateau {
                maximize: match a.text("mode", "min")?.as_str() {
                    "min" => false,
                    "max" => true,
                    other => return Err(a.bad(format!("mode {other:?}"))),
                },
                factor: a.number("factor", Some(0.1))?,
                patience: a.count("patience", Some(10))?,
                threshold: a.number("threshold", Some(1e-4))?,
                relative: match a.text("threshold_mode", "rel")?.as_str() {
                    "rel" => true,
                    "abs" => false,
                    other => return Err(a.bad(format!("threshold_mode {other:?}"))),
                },
                cooldown: a.count("cooldown", Some(0))?,
                min_lr: a.number("min_lr", Some(0.0))?,
                eps: a.number("eps", Some(1e-8))?,
            },
            other => {
                return Err(Error::Unsupported {
                    optimizer: "lr_scheduler",
                    message: format!(
                        "unknown scheduler {other:?}; known: StepLR, MultiStepLR, \
                         ExponentialLR, CosineAnnealingLR, LinearLR, SequentialLR, \
                         CosineAnnealingWarmRestarts, OneCycleLR, ReduceLROnPlateau"
                    ),
                });
            }
        };
        a.finish()?;
        schedule.validate()?;
        Ok(schedule)
    }

    /// PyTorch's class name.
    pub fn torch_name(&self) -> &'static str {
        match self {
            Self::Step { .. } => "StepLR",
            Self::MultiStep { .. } => "MultiStepLR",
            Self::Exponential { .. } => "ExponentialLR",
            Self::CosineAnnealing { .. } => "CosineAnnealingLR",
            Self::Linear { .. } => "LinearLR",
            Self::CosineAnnealingWarmRestarts { .. } => "CosineAnnealingWarmRestarts",
            Self::OneCycle { .. } => "OneCycleLR",
            Self::Sequential { .. } => "SequentialLR",
            Self::ReduceOnPlateau { .. } => "ReduceLROnPlateau",
        }
    }

    /// OneCycleLR's phases from an initial rate: each phase's last step, its first rate and
    /// its last rate (empty for the other schedules).
    fn one_cycle_phases(&self, initial: f64) -> Vec<(f64, f64, f64)> {
        let Self::OneCycle {
            max_lr,
            total_steps,
            pct_start,
            final_div_factor,
            three_phase,
            ..
        } = *self
        else {
            return Vec::new();
        };
        let total = total_steps as f64;
        let min_lr = initial / final_div_factor;
        let rise = pct_start * total - 1.0;
        if three_phase {
            vec![
                (rise, initial, max_lr),
                (2.0 * pct_start * total - 2.0, max_lr, initial),
                (total - 1.0, initial, min_lr),
            ]
        } else {
            vec![(rise, initial, max_lr), (total - 1.0, max_lr, min_lr)]
        }
    }

    /// Refuses what PyTorch refuses, and what would divide by zero.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Unsupported {
                optimizer: "lr_scheduler",
                message: format!("{}: {message}", self.torch_name()),
            })
        };
        let finite = |x: f64| x.is_finite();
        match self {
            Self::Step { step_size: 0, .. } => bad("step_size must be >= 1".into()),
            Self::CosineAnnealing { t_max: 0, .. } => bad("T_max must be >= 1".into()),
            Self::Step { gamma, .. }
            | Self::MultiStep { gamma, .. }
            | Self::Exponential { gamma }
                if !finite(*gamma) =>
            {
                bad(format!("gamma {gamma} is not finite"))
            }
            Self::CosineAnnealing { eta_min, .. } if !finite(*eta_min) => {
                bad(format!("eta_min {eta_min} is not finite"))
            }
            Self::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if !(*start_factor > 0.0 && *start_factor <= 1.0) {
                    bad(format!("start_factor {start_factor} must be in (0, 1]"))
                } else if !(0.0..=1.0).contains(end_factor) {
                    bad(format!("end_factor {end_factor} must be in [0, 1]"))
                } else if *total_iters == 0 {
                    bad("total_iters must be >= 1".into())
                } else {
                    Ok(())
                }
            }
            Self::CosineAnnealingWarmRestarts {
                t_0,
                t_mult,
                eta_min,
            } => {
                if *t_0 == 0 || *t_mult == 0 || !finite(*eta_min) {
                    bad(format!(
                        "T_0 {t_0} and T_mult {t_mult} must be >= 1, eta_min finite"
                    ))
                } else {
                    Ok(())
                }
            }
            Self::OneCycle {
                max_lr,
                total_steps,
                pct_start,
                div_factor,
                final_div_factor,
                ..
            } => {
                let phases = self.one_cycle_phases(1.0);
                let mut starts = std::iter::once(0.0).chain(phases.iter().map(|p| p.0));
                if !(finite(*max_lr) && *max_lr >= 0.0) || *total_steps == 0 {
                    bad(format!(
                        "max_lr {max_lr} >= 0 and total_steps {total_steps} >= 1"
                    ))
                } else if !(0.0..=1.0).contains(pct_start) {
                    bad(format!("pct_start {pct_start} must be in [0, 1]"))
                } else if !(*div_factor > 0.0 && *final_div_factor > 0.0) {
                    bad("div_factor and final_div_factor must be > 0".into())
                } else if phases.iter().any(|p| Some(p.0) == starts.next()) {
                    // PyTorch divides by the length of each phase.
                    bad(format!(
                        "pct_start {pct_start} of {total_steps} steps leaves a phase empty"
                    ))
                } else {
                    Ok(())
                }
            }
            Self::Sequential {
                schedules,
                milestones,
            } => {
                if schedules.is_empty() || milestones.len() + 1 != schedules.len() {
                    bad(format!(
                        "{} schedules need {} milestones, got {}",
                        schedules.len(),
                        schedules.len().saturating_sub(1),
                        milestones.len()
                    ))
                } else if schedules
                    .iter()
                    .any(|s| matches!(s, Self::ReduceOnPlateau { .. }))
                {
                    bad("ReduceLROnPlateau cannot be chained".into())
                } else {
                    schedules.iter().try_for_each(Self::validate)
                }
            }
            Self::ReduceOnPlateau {
                factor,
                threshold,
                min_lr,
                eps,
                ..
            } => {
                if !(*factor < 1.0 && *factor >= 0.0) {
                    bad(format!("factor {factor} must be in [0, 1)"))
                } else if ![*threshold, *min_lr, *eps].iter().all(|x| finite(*x)) {
                    bad("threshold, min_lr and eps must be finite".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// A schedule in progress: the rate in force, and what the schedule keeps between steps.
#[derive(Clone, Debug)]
pub struct Scheduler {
    node: Node,
    /// The rate of the next optimizer step (PyTorch's `param_group['lr']`).
    lr: f64,
}

impl Scheduler {
    /// Starts `schedule` on an optimizer whose rate is `lr0`, as constructing the PyTorch
    /// scheduler does (its first step included): [`Self::lr`] is then the rate of the first
    /// optimizer step.
    pub fn new(schedule: Schedule, lr0: f64) -> Result<Self> {
        schedule.validate()?;
        if !lr0.is_finite() {
            return Err(Error::InvalidHyperparameter {
                optimizer: "lr_scheduler",
                name: "lr",
                value: lr0,
                requirement: "must be finite",
            });
        }
        let mut lr = lr0;
        let node = Node::start(schedule, lr0, &mut lr);
        Ok(Self { node, lr })
    }

    /// The rate of the next optimizer step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Steps the schedule after an optimizer step (PyTorch's `scheduler.step()`). An error for
    /// `ReduceLROnPlateau` (it needs the metric: [`Self::step_with_metric`]) and for
    /// `OneCycleLR` past its `total_steps`; the schedule is then unchanged.
    pub fn step(&mut self) -> Result<()> {
        let mut next = self.clone();
        next.node.step(&mut next.lr)?;
        *self = next;
        Ok(())
    }

    /// Steps `ReduceLROnPlateau` with this step's metric (a validation loss, say); an error
    /// for the other schedules, and for a NaN metric.
    pub fn step_with_metric(&mut self, metric: f64) -> Result<()> {
        let Kind::Plateau(plateau) = &mut self.node.kind else {
            return Err(Error::Unsupported {
                optimizer: "lr_scheduler",
                message: format!(
                    "{} takes no metric: use step()",
                    self.node.schedule.torch_name()
                ),
            });
        };
        if metric.is_nan() {
            return Err(Error::InvalidHyperparameter {
                optimizer: "lr_scheduler",
                name: "metric",
                value: metric,
                requirement: "must be a number",
            });
        }
        plateau.step(&self.node.schedule, metric, &mut self.lr);
        Ok(())
    }
}

/// One scheduler's state: PyTorch's `last_epoch`, `_step_count` and `base_lrs`, and what its
/// kind keeps.
#[derive(Clone, Debug)]
struct Node {
    schedule: Schedule,
    base: f64,
    last_epoch: i64,
    step_count: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Plain,
    /// Steps since the last restart and the length of this period.
    Restarts {
        t_cur: u64,
        t_i: u64,
    },
    Sequential(Vec<Node>),
    Plateau(Plateau),
}

#[derive(Clone, Debug)]
struct Plateau {
    best: f64,
    bad_steps: u64,
    cooldown_left: u64,
}

impl Node {
    /// The scheduler as its constructor leaves it, having set `lr` by its first step.
    fn start(schedule: Schedule, lr0: f64, lr: &mut f64) -> Self {
        let kind = match &schedule {
            Schedule::CosineAnnealingWarmRestarts { .. } => Kind::Restarts { t_cur: 0, t_i: 1 },
            Schedule::ReduceOnPlateau { maximize, .. } => Kind::Plateau(Plateau {
                best: if *maximize {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                },
                bad_steps: 0,
                cooldown_left: 0,
            }),
            Schedule::Sequential { schedules, .. } => {
                // Each scheduler is made in turn, each moving the shared rate...
                let mut children: Vec<Node> = schedules
                    .iter()
                    .map(|s| Node::start(s.clone(), lr0, lr))
                    .collect();
                // ...then the rate goes back to the initial one, every scheduler one step back,
                // and the first redoes its first step.
                *lr = lr0;
                for child in &mut children {
                    child.undo();
                }
                children[0].initial_step(lr);
                let node = Self {
                    schedule,
                    base: lr0,
                    last_epoch: 0,
                    step_count: 1,
                    kind: Kind::Sequential(children),
                };
                return node;
            }
            _ => Kind::Plain,
        };
        let base = match &schedule {
            Schedule::OneCycle {
                max_lr, div_factor, ..
            } => max_lr / div_factor,
            _ => lr0,
        };
        let mut node = Self {
            schedule,
            base,
            last_epoch: -1,
            step_count: 0,
            kind,
        };
        if !matches!(node.kind, Kind::Plateau(_)) {
            node.initial_step(lr);
        } else {
            node.last_epoch = 0;
        }
        node
    }

    /// The constructor's step: counted from zero again, in "initial" mode.
    fn initial_step(&mut self, lr: &mut f64) {
        self.step_count = 0;
        self.advance(lr, true);
    }

    /// One step back (SequentialLR's undo), through nested sequences.
    fn undo(&mut self) {
        if let Kind::Sequential(children) = &mut self.kind {
            for child in children {
                child.undo();
            }
        } else {
            self.last_epoch -= 1;
        }
    }

    fn step(&mut self, lr: &mut f64) -> Result<()> {
        match &mut self.kind {
            Kind::Plateau(_) => Err(Error::Unsupported {
                optimizer: "lr_scheduler",
                message: "ReduceLROnPlateau needs the metric: use step_with_metric".into(),
            }),
            Kind::Sequential(children) => {
                let Schedule::Sequential { milestones, .. } = &self.schedule else {
                    unreachable!("a sequential node holds a sequential schedule")
                };
                self.last_epoch += 1;
                let epoch = self.last_epoch as u64;
                let idx = milestones.partition_point(|&m| m <= epoch);
                let child = &mut children[idx];
                if idx > 0 && milestones[idx - 1] == epoch {
                    child.restart(lr);
                    Ok(())
                } else {
                    child.step(lr)
                }
            }
            _ => {
                if let Schedule::OneCycle { total_steps, .. } = self.schedule
                    && self.last_epoch + 1 > total_steps as i64
                {
                    return Err(Error::Unsupported {
                        optimizer: "lr_scheduler",
                        message: format!(
                            "OneCycleLR stepped {} times: its total_steps is {total_steps}",
                            self.last_epoch + 1
                        ),
                    });
                }
                self.step_count += 1;
                self.advance(lr, false);
                Ok(())
            }
        }
    }

    /// SequentialLR's hand-over at a milestone: `last_epoch = 0` and the closed form where
    /// the schedule has one.
    fn restart(&mut self, lr: &mut f64) {
        self.last_epoch = 0;
        *lr = match self.closed_form() {
            Some(value) => value,
            None => self.get_lr(*lr, false),
        };
    }

    /// One scheduler step: the epoch advances and the rate follows.
    fn advance(&mut self, lr: &mut f64, initial: bool) {
        if initial {
            self.step_count += 1;
        }
        if let Kind::Restarts { t_cur, t_i } = &mut self.kind {
            let Schedule::CosineAnnealingWarmRestarts { t_0, t_mult, .. } = self.schedule else {
                unreachable!("restarts belong to CosineAnnealingWarmRestarts")
            };
            if self.last_epoch < 0 {
                (*t_cur, *t_i) = (0, t_0);
            } else {
                *t_cur += 1;
                if *t_cur >= *t_i {
                    *t_cur %= *t_i;
                    *t_i *= t_mult;
                }
            }
        }
        self.last_epoch += 1;
        *lr = self.get_lr(*lr, initial);
    }

    /// The rate after this epoch from the rate before it (PyTorch's `get_lr`).
    fn get_lr(&self, lr: f64, initial: bool) -> f64 {
        use std::f64::consts::PI;
        let (base, epoch) = (self.base, self.last_epoch);
        let e = epoch as f64;
        match &self.schedule {
            Schedule::Step { step_size, gamma } => {
                if epoch == 0 || epoch % *step_size as i64 != 0 {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::MultiStep { milestones, gamma } => {
                let hits = milestones.iter().filter(|&&m| m as i64 == epoch).count();
                if hits == 0 {
                    lr
                } else {
                    lr * gamma.powf(hits as f64)
                }
            }
            Schedule::Exponential { gamma } => {
                if initial {
                    lr
                } else {
                    lr * gamma
                }
            }
            Schedule::CosineAnnealing { t_max, eta_min } => {
                let t = *t_max as f64;
                if initial {
                    lr
                } else if self.step_count == 1 && epoch > 0 {
                    eta_min + (base - eta_min) * (1.0 + (e * PI / t).cos()) / 2.0
                } else if (epoch - 1 - *t_max as i64).rem_euclid(2 * *t_max as i64) == 0 {
                    lr + (base - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos()) * (lr - eta_min)
                        + eta_min
                }
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if epoch == 0 {
                    lr * start_factor
                } else if initial || epoch > *total_iters as i64 {
                    lr
                } else {
                    let slope = end_factor - start_factor;
                    lr * (1.0 + slope / (*total_iters as f64 * start_factor + (e - 1.0) * slope))
                }
            }
            Schedule::CosineAnnealingWarmRestarts { eta_min, .. } => {
                let Kind::Restarts { t_cur, t_i } = self.kind else {
                    unreachable!("restarts keep their period")
                };
                eta_min + (base - eta_min) * (1.0 + (PI * t_cur as f64 / t_i as f64).cos()) / 2.0
            }
            Schedule::OneCycle { .. } => self.one_cycle(),
            Schedule::Sequential { .. } | Schedule::ReduceOnPlateau { .. } => lr,
        }
    }

    /// The rate at this epoch from the initial rate alone, for the schedules PyTorch gives
    /// one (`_get_closed_form_lr`).
    fn closed_form(&self) -> Option<f64> {
        use std::f64::consts::PI;
        let (base, e) = (self.base, self.last_epoch as f64);
        Some(match &self.schedule {
            Schedule::Step { step_size, gamma } => {
                base * gamma.powf((self.last_epoch.div_euclid(*step_size as i64)) as f64)
            }
            Schedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m as i64 <= self.last_epoch);
                base * gamma.powf(passed.count() as f64)
            }
            Schedule::Exponential { gamma } => base * gamma.powf(e),
            Schedule::CosineAnnealing { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (PI * e / *t_max as f64).cos()) / 2.0
            }
            Schedule::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                let done = (*total_iters as f64).min(e);
                base * (start_factor + (end_factor - start_factor) * done / *total_iters as f64)
            }
            _ => return None,
        })
    }

    /// OneCycleLR's rate at this epoch: the phase it falls in, interpolated.
    fn one_cycle(&self) -> f64 {
        let cos = matches!(self.schedule, Schedule::OneCycle { cos: true, .. });
        let phases = self.schedule.one_cycle_phases(self.base);
        let step = self.last_epoch as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, from, to)) in phases.iter().enumerate() {
            if step <= end_step || i == phases.len() - 1 {
                let pct = (step - start_step) / (end_step - start_step);
                return if cos {
                    to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
                } else {
                    (to - from) * pct + from
                };
            }
            start_step = end_step;
        }
        self.base
    }
}

impl Plateau {
    fn step(&mut self, schedule: &Schedule, metric: f64, lr: &mut f64) {
        let Schedule::ReduceOnPlateau {
            maximize,
            factor,
            patience,
            threshold,
            relative,
            cooldown,
            min_lr,
            eps,
        } = *schedule
        else {
            unreachable!("a plateau node holds ReduceLROnPlateau")
        };
        let better = match (maximize, relative) {
            (false, true) => metric < self.best * (1.0 - threshold),
            (false, false) => metric < self.best - threshold,
            (true, true) => metric > self.best * (threshold + 1.0),
            (true, false) => metric > self.best + threshold,
        };
        if better {
            self.best = metric;
            self.bad_steps = 0;
        } else {
            self.bad_steps += 1;
        }
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.bad_steps = 0;
        }
        if self.bad_steps > patience {
            let reduced = (*lr * factor).max(min_lr);
            if *lr - reduced > eps {
                *lr = reduced;
            }
            self.cooldown_left = cooldown;
            self.bad_steps = 0;
        }
    }
}

/// Reading a scheduler's keyword arguments key by key; a key never read is an error.
struct Args {
    name: String,
    map: serde_json::Map<String, Value>,
}

impl Args {
    fn new(name: &str, args: &Value) -> Result<Self> {
        let map = args
            .as_object()
            .cloned()
            .ok_or_else(|| Error::Unsupported {
                optimizer: "lr_scheduler",
                message: format!("{name}: arguments must be a JSON object, got {args}"),
            })?;
        Ok(Self {
            name: name.to_string(),
            map,
        })
    }

    fn bad(&self, message: String) -> Error {
        Error::Unsupported {
            optimizer: "lr_scheduler",
            message: format!("{}: {message}", self.name),
        }
    }

    /// The value of `key`, taken out (so that [`Self::finish`] sees what was never read);
    /// `null` is refused, not read as absent.
    fn remove(&mut self, key: &str) -> Result<Option<Value>> {
        match self.map.remove(key) {
            Some(Value::Null) => Err(self.bad(format!("{key} is null"))),
            value => Ok(value),
        }
    }

    fn number(&mut self, key: &str, default: Option<f64>) -> Result<f64> {
        match self.remove(key)? {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(format!("{key} must be a number, got {v}"))),
            None => default.ok_or_else(|| self.bad(format!("needs {key}"))),
        }
    }

    fn count(&mut self, key: &str, default: Option<u64>) -> Result<u64> {
        match self.remove(key)? {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.bad(format!("{key} must be a whole number >= 0, got {v}"))),
            None => default.ok_or_else(|| self.bad(format!("needs {key}"))),
        }
    }

    fn counts(&mut self, key: &str) -> Result<Vec<u64>> {
        let value = self
            .remove(key)?
            .ok_or_else(|| self.bad(format!("needs {key}")))?;
        value
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| {
                self.bad(format!(
                    "{key} must be a list of whole numbers, got {value}"
                ))
            })
    }

    fn boolean(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.remove(key)? {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("{key} must be true or false"))),
            None => Ok(default),
        }
    }

    fn text(&mut self, key: &str, default: &str) -> Result<String> {
        match self.remove(key)? {
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| self.bad(format!("{key} must be a string, got {v}"))),
            None => Ok(default.to_string()),
        }
    }

    fn finish(self) -> Result<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(_) => {
                let keys: Vec<&str> = self.map.keys().map(String::as_str).collect();
                Err(self.bad(format!("unsupported arguments: {}", keys.join(", "))))
            }
        }
    }
}
