//! What guards a step before the optimizer runs: dynamic loss scaling (`torch.amp.GradScaler`)
//! and global-norm clipping (`torch.nn.utils.clip_grad_norm_`), as configurations with
//! PyTorch's defaults and checks, and the reduction order both the GPU pre-pass
//! (`shaders/guard.wgsl`) and its CPU mirror follow, so that the norm is the same bits on both.

use serde_json::Value;

use crate::error::{Error, Result};

/// Lanes of one workgroup of the pre-pass: the width of its sum tree.
pub const GUARD_LANES: usize = 256;

/// Elements each lane squares and adds in order, `GUARD_LANES` apart.
pub const GUARD_PER_LANE: usize = 16;

/// Elements of one block: the gradient is cut into blocks of this many elements (per range,
/// the last one shorter), each summed by a fixed tree, whatever the device's launch shape.
pub const GUARD_BLOCK: usize = GUARD_LANES * GUARD_PER_LANE;

/// `torch.amp.GradScaler`'s settings: gradients arrive multiplied by the scale; a step whose
/// gradients hold an inf or NaN is skipped and the scale shrinks, and after `growth_interval`
/// clean steps in a row it grows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaler {
    /// The scale of the first step (PyTorch: 2^16).
    pub init_scale: f64,
    /// Factor of the scale after `growth_interval` clean steps (PyTorch: 2.0; > 1).
    pub growth_factor: f64,
    /// Factor of the scale after a skipped step (PyTorch: 0.5; in (0, 1)).
    pub backoff_factor: f64,
    /// Clean steps in a row before the scale grows (PyTorch: 2000; ≥ 1).
    pub growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// PyTorch's checks, on the f32 values the device computes with (a factor that rounds to
    /// 1 or 0 in f32 is refused).
    pub fn validate(&self) -> Result<()> {
        let as_f32 = |x: f64| x as f32;
        let init = as_f32(self.init_scale);
        check(
            "init_scale",
            self.init_scale,
            init.is_finite() && init > 0.0,
            "must be a positive finite f32",
        )?;
        let growth = as_f32(self.growth_factor);
        check(
            "growth_factor",
            self.growth_factor,
            growth.is_finite() && growth > 1.0,
            "must be > 1 in f32",
        )?;
        let backoff = as_f32(self.backoff_factor);
        check(
            "backoff_factor",
            self.backoff_factor,
            backoff > 0.0 && backoff < 1.0,
            "must be in (0, 1) in f32",
        )?;
        check(
            "growth_interval",
            f64::from(self.growth_interval),
            self.growth_interval >= 1,
            "must be >= 1",
        )
    }

    /// The settings as a JSON object of GradScaler's argument names, which
    /// [`Self::from_json`] reads back.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "init_scale": self.init_scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        })
    }

    /// Reads the JSON object of a reference trajectory's `grad_scaler` key (GradScaler's
    /// argument names; a missing key keeps PyTorch's default, an unknown one is an error).
    pub fn from_json(value: &Value) -> Result<Self> {
        let bad = |message: String| Error::Unsupported {
            optimizer: "GradScaler",
            message,
        };
        let map = value
            .as_object()
            .ok_or_else(|| bad(format!("settings must be a JSON object, got {value}")))?;
        let mut scaler = Self::default();
        for (key, v) in map {
            if key == "enabled" {
                // GradScaler(enabled=False) scales nothing: no scaler at all, not this one.
                if v.as_bool() == Some(true) {
                    continue;
                }
                return Err(bad(format!("enabled must be true here, got {v}")));
            }
            let number = v
                .as_f64()
                .ok_or_else(|| bad(format!("{key} must be a number, got {v}")))?;
            match key.as_str() {
                "init_scale" => scaler.init_scale = number,
                "growth_factor" => scaler.growth_factor = number,
                "backoff_factor" => scaler.backoff_factor = number,
                "growth_interval" => {
                    scaler.growth_interval = u32::try_from(v.as_u64().unwrap_or(0))
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            bad(format!("growth_interval must be an integer >= 1, got {v}"))
                        })?;
                }
                other => return Err(bad(format!("unsupported setting {other}"))),
            }
        }
        scaler.validate()?;
        Ok(scaler)
    }
}

/// What runs before a guarded step, over the whole gradient (every group and chunk): an
/// optional loss scaler and an optional clip of the global L2 norm.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Guard {
    /// Unscale the gradients and skip steps that overflow.
    pub scaler: Option<LossScaler>,
    /// Clip the unscaled gradient to this global L2 norm (`clip_grad_norm_(max_norm)`).
    pub max_norm: Option<f64>,
    /// The scale and the found-inf flag come from the caller's own loss scaler, as PyTorch's
    /// fused optimizers take `grad_scale` and `found_inf` (with `scaler: None`): the step
    /// unscales by it and skips when the flag is set or a gradient overflows, and the caller
    /// updates its scale.
    pub caller_scale: bool,
}

impl Guard {
    /// The checks of both parts: PyTorch's for the scaler, a positive finite `max_norm`.
    pub fn validate(&self) -> Result<()> {
        if let Some(scaler) = &self.scaler {
            scaler.validate()?;
        }
        if self.caller_scale && self.scaler.is_some() {
            return Err(Error::Unsupported {
                optimizer: "guard",
                message: "a guard that reads the caller's scale keeps no scaler of its own".into(),
            });
        }
        if let Some(max_norm) = self.max_norm {
            check(
                "max_norm",
                max_norm,
                max_norm > 0.0 && max_norm.is_finite() && (max_norm as f32) > 0.0,
                "must be positive and finite",
            )?;
        }
        Ok(())
    }

    /// Whether the guard does anything.
    pub fn is_active(&self) -> bool {
        self.scales() || self.max_norm.is_some()
    }

    /// Whether gradients arrive scaled: by its own scaler or the caller's.
    pub fn scales(&self) -> bool {
        self.scaler.is_some() || self.caller_scale
    }

    /// A short description, as `scale(65536, x2 every 4, x0.5) + clip(1)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.scaler {
            parts.push(format!(
                "scale({}, x{} every {}, x{})",
                s.init_scale, s.growth_factor, s.growth_interval, s.backoff_factor
            ));
        }
        if self.caller_scale {
            parts.push("the caller's scale".into());
        }
        if let Some(max_norm) = self.max_norm {
            parts.push(format!("clip({max_norm})"));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" + ")
        }
    }
}

fn check(name: &'static str, value: f64, ok: bool, requirement: &'static str) -> Result<()> {
    if ok {
        return Ok(());
    }
    Err(Error::InvalidHyperparameter {
        optimizer: "guard",
        name,
        value,
        requirement,
    })
}

/// The scaler's state between steps, as the device keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    /// The scale the next step's gradients carry (1 without a scaler).
    pub scale: f32,
    /// Clean steps in a row since the scale last changed.
    pub growth_tracker: u32,
}

impl ScalerState {
    /// Fails unless the scale is a positive finite number (a restored state's check).
    pub fn validate(&self) -> Result<()> {
        check(
            "scale",
            f64::from(self.scale),
            self.scale.is_finite() && self.scale > 0.0,
            "must be a positive finite f32",
        )
    }
}

/// What the pre-pass decided for one step, as the step applies it: the gradient the optimizer
/// sees is `(g * unscale) * clip`, and nothing changes when `skip` is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardOutcome {
    /// The step was skipped: a gradient held an inf or NaN under the scaler.
    pub skip: bool,
    /// The scale this step's gradients carried.
    pub scale: f32,
    /// `1 / scale`, the factor that unscales them.
    pub unscale: f32,
    /// `min(1, max_norm / (norm + 1e-6))`, or 1 without clipping.
    pub clip: f32,
    /// The global L2 norm of the unscaled gradient (inf or NaN on overflow).
    pub norm: f32,
}

/// Whether the f32 `bits` are an inf or a NaN (all exponent bits set), as the kernel tests it.
pub fn non_finite_bits(bits: u32) -> bool {
    bits & 0x7f80_0000 == 0x7f80_0000
}

/// The end of the pre-pass, in f32 exactly as `finish` in `shaders/guard.wgsl` computes it:
/// the norm from the sum of squares, the clip factor, whether to skip, and the scaler's update.
pub fn finish_guard(
    guard: &Guard,
    state: &mut ScalerState,
    found_non_finite: bool,
    sum_of_squares: f32,
) -> GuardOutcome {
    let scale = state.scale;
    let norm = sum_of_squares.sqrt();
    let clip = match guard.max_norm {
        Some(max_norm) => {
            // `max_norm / (norm + 1e-6)` as PyTorch evaluates a float over a tensor
            // (`Tensor.__rtruediv__`): the reciprocal, then the product.
            let coef = (1.0 / (norm + 1e-6)) * max_norm as f32;
            // NaN stays NaN, as torch.clamp(max=1) keeps it.
            if coef > 1.0 { 1.0 } else { coef }
        }
        None => 1.0,
    };
    let skip = guard.scales() && found_non_finite;
    if let Some(scaler) = &guard.scaler {
        if found_non_finite {
            state.scale = scale * scaler.backoff_factor as f32;
            state.growth_tracker = 0;
        } else if state.growth_tracker + 1 == scaler.growth_interval {
            let grown = scale * scaler.growth_factor as f32;
            if grown.is_finite() {
                state.scale = grown;
            }
            state.growth_tracker = 0;
        } else {
            state.growth_tracker += 1;
        }
    }
    GuardOutcome {
        skip,
        scale,
        unscale: unscale_of(guard, scale),
        clip,
        norm,
    }
}

/// The factor that unscales gradients carrying `scale`: `1 / scale` in f32 (GradScaler's
/// `inv_scale`), exactly 1 without a scaler.
pub fn unscale_of(guard: &Guard, scale: f32) -> f32 {
    if guard.scales() { 1.0 / scale } else { 1.0 }
}

/// The scaler's state before the first step.
pub fn initial_scaler_state(guard: &Guard) -> ScalerState {
    ScalerState {
        scale: guard.scaler.map_or(1.0, |s| s.init_scale as f32),
        growth_tracker: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(interval: u32) -> Guard {
        Guard {
            scaler: Some(LossScaler {
                growth_interval: interval,
                ..LossScaler::default()
            }),
            max_norm: None,
            caller_scale: false,
        }
    }

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_clean_steps() {
        let guard = scaler(2);
        let mut state = initial_scaler_state(&guard);
        let mut scales = Vec::new();
        for found in [false, false, true, false, true, false, false, false] {
            let out = finish_guard(&guard, &mut state, found, 1.0);
            assert_eq!(out.skip, found);
            scales.push(out.scale);
        }
        assert_eq!(
            scales,
            [
                65536.0, 65536.0, 131072.0, 65536.0, 65536.0, 32768.0, 32768.0, 65536.0
            ]
        );
    }

    #[test]
    fn the_clip_factor_is_torchs() {
        let guard = Guard {
            scaler: None,
            max_norm: Some(1.0),
            caller_scale: false,
        };
        let mut state = initial_scaler_state(&guard);
        let out = finish_guard(&guard, &mut state, false, 16.0);
        assert_eq!(out.norm, 4.0);
        assert_eq!(out.clip, 1.0f32 / (4.0 + 1e-6) * 1.0);
        assert_eq!(finish_guard(&guard, &mut state, false, 0.25).clip, 1.0);
        assert!(
            finish_guard(&guard, &mut state, true, f32::NAN)
                .clip
                .is_nan()
        );
        assert!(!finish_guard(&guard, &mut state, true, f32::NAN).skip);
    }

    #[test]
    fn settings_pytorch_rejects_are_errors() {
        for bad in [
            LossScaler {
                growth_factor: 1.0,
                ..LossScaler::default()
            },
            LossScaler {
                backoff_factor: 1.0,
                ..LossScaler::default()
            },
            LossScaler {
                init_scale: f64::NAN,
                ..LossScaler::default()
            },
            LossScaler {
                init_scale: 1e39,
                ..LossScaler::default()
            },
            LossScaler {
                growth_interval: 0,
                ..LossScaler::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        for max_norm in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let guard = Guard {
                max_norm: Some(max_norm),
                ..Guard::default()
            };
            assert!(guard.validate().is_err(), "{max_norm}");
        }
        let json: Value = serde_json::json!({"init_scale": 8.0, "growth_interval": 4});
        let read = LossScaler::from_json(&json).unwrap();
        assert_eq!((read.init_scale, read.growth_interval), (8.0, 4));
        assert!(LossScaler::from_json(&serde_json::json!({"hysteresis": 2})).is_err());
        assert!(LossScaler::from_json(&serde_json::json!({"enabled": true})).is_ok());
        assert!(LossScaler::from_json(&serde_json::json!({"enabled": false})).is_err());
        let tiny = LossScaler {
            backoff_factor: 1e-50,
            ..LossScaler::default()
        };
        assert!(tiny.validate().is_err(), "rounds to 0 in f32");
    }
}
