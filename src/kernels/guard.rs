//! The guard's kernels (`shaders/guard.wgsl`): the pre-pass over the gradients, its finish,
//! and the choice of an optimizer's scalars by the device's step count. Each stage is its own
//! entry point with its own bind-group layout.

use super::{Kernel, sized_storage_entry, storage_entry, uniform_entry};
use crate::optim::HalfFormat;

/// The guard's kernel, compiled after `half.wgsl`.
pub const GUARD_WGSL: &str = include_str!("../../shaders/guard.wgsl");

/// Bytes of the device's `GuardState`.
pub const GUARD_STATE_SIZE: u64 = 48;

/// Bytes of an optimizer's `Counter`.
pub const GUARD_COUNTER_SIZE: u64 = 16;

/// Binding of the state the device keeps between steps (`GuardState`, read-write).
pub const GUARD_STATE_BINDING: u32 = 0;
/// Binding of the guard's settings (`Settings`, uniform).
pub const GUARD_SETTINGS_BINDING: u32 = 1;
/// Binding of the blocks' sums of squares.
pub const GUARD_PARTIALS_BINDING: u32 = 2;
/// Binding of one chunk of gradients (`check`).
pub const GUARD_GRADS_BINDING: u32 = 3;
/// Binding of the chunk's length and first block (`Range`, uniform; `check`).
pub const GUARD_RANGE_BINDING: u32 = 4;
/// Binding of an optimizer's step counts (`Counter`; `choose`).
pub const GUARD_COUNTER_BINDING: u32 = 5;
/// Binding of the scalars the host prepared for each step count (`choose`).
pub const GUARD_CANDIDATES_BINDING: u32 = 6;
/// Binding of the optimizer's uniform buffer, written as storage (`choose`).
pub const GUARD_SCALARS_BINDING: u32 = 7;

/// Binding of the caller's scale (`adopt`).
pub const GUARD_CALLER_SCALE_BINDING: u32 = 8;
/// Binding of the caller's found-inf flag (`adopt`).
pub const GUARD_CALLER_FOUND_BINDING: u32 = 9;

/// The guard's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardStage {
    /// Once, under the caller's scaler: take its scale and found-inf flag.
    Adopt,
    /// Per chunk of gradients: overflow test and the blocks' sums of squares.
    Check,
    /// Once: the norm, the clip factor, the skip and the scaler's update.
    Finish,
    /// Per optimizer: count the step and copy its scalars.
    Choose,
}

impl GuardStage {
    /// The entry point's name in `guard.wgsl`.
    pub fn entry(self) -> &'static str {
        match self {
            Self::Adopt => "adopt",
            Self::Check => "check",
            Self::Finish => "finish",
            Self::Choose => "choose",
        }
    }

    /// The bindings the stage reads and writes.
    fn entries(self) -> Vec<wgpu::BindGroupLayoutEntry> {
        let state = sized_storage_entry(GUARD_STATE_BINDING, false, GUARD_STATE_SIZE);
        match self {
            Self::Adopt => vec![
                state,
                storage_entry(GUARD_CALLER_SCALE_BINDING, true),
                storage_entry(GUARD_CALLER_FOUND_BINDING, true),
            ],
            Self::Check => vec![
                state,
                uniform_entry(GUARD_SETTINGS_BINDING, 32),
                storage_entry(GUARD_PARTIALS_BINDING, false),
                storage_entry(GUARD_GRADS_BINDING, true),
                uniform_entry(GUARD_RANGE_BINDING, 16),
            ],
            Self::Finish => vec![
                state,
                uniform_entry(GUARD_SETTINGS_BINDING, 32),
                storage_entry(GUARD_PARTIALS_BINDING, false),
            ],
            Self::Choose => vec![
                state,
                sized_storage_entry(GUARD_COUNTER_BINDING, false, GUARD_COUNTER_SIZE),
                storage_entry(GUARD_CANDIDATES_BINDING, true),
                storage_entry(GUARD_SCALARS_BINDING, false),
            ],
        }
    }

    /// The override constants of `stage` for gradients stored in `format` (f32 for `None`).
    pub fn overrides(self, format: Option<HalfFormat>) -> Vec<(&'static str, f64)> {
        match self {
            Self::Check => vec![
                ("HALF", if format.is_some() { 1.0 } else { 0.0 }),
                (
                    "BF16",
                    if format == Some(HalfFormat::F16) {
                        0.0
                    } else {
                        1.0
                    },
                ),
            ],
            Self::Adopt | Self::Finish | Self::Choose => Vec::new(),
        }
    }
}

/// The guard's complete module: `half.wgsl` followed by `guard.wgsl`.
pub fn guard_source() -> String {
    format!("{}\n{GUARD_WGSL}", super::HALF_WGSL)
}

impl Kernel {
    /// The guard's `stage`, with `constants` from [`GuardStage::overrides`].
    pub(crate) fn guard(
        device: &wgpu::Device,
        stage: GuardStage,
        constants: &[(&'static str, f64)],
    ) -> Self {
        Self::compile(
            device,
            stage.entry(),
            &guard_source(),
            stage.entry(),
            &stage.entries(),
            constants,
        )
    }
}
