//! Storage precisions: how parameters, gradients and optimizer state are stored, while every
//! update computes in f32. The 16-bit formats are packed two to a `u32` word on the GPU
//! (`shaders/precision.wgsl`); the conversions here are the CPU side of the same bits, and the
//! kernels' integer conversions are held to them (`tests/half.rs`).

use std::fmt;
use std::str::FromStr;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// A 16-bit floating-point storage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfFormat {
    /// bfloat16: f32's exponent range, 8 bits of significand.
    Bf16,
    /// IEEE binary16: 5 exponent bits, 11 bits of significand, largest finite 65504.
    F16,
}

impl HalfFormat {
    /// The format's name as PyTorch's dtype calls it (`bfloat16`, `float16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// `bits` widened to f32 (exact).
    pub fn widen(self, bits: u16) -> f32 {
        match self {
            Self::Bf16 => bf16::from_bits(bits).to_f32(),
            Self::F16 => f16::from_bits(bits).to_f32(),
        }
    }

    /// `x` rounded to nearest even, overflowing to infinity; a NaN stays a NaN (quieted).
    pub fn round(self, x: f32) -> u16 {
        match self {
            Self::Bf16 => bf16::from_f32(x).to_bits(),
            Self::F16 => f16::from_f32(x).to_bits(),
        }
    }

    /// The distance from `x` to the next representable value of larger magnitude (one unit in
    /// the last place at `|x|`), the tolerance of a 16-bit comparison.
    pub fn ulp(self, x: f32) -> f32 {
        let bits = self.round(x.abs());
        let (this, next) = (self.widen(bits), self.widen(bits.saturating_add(1)));
        if next.is_finite() {
            next - this
        } else {
            this - self.widen(bits - 1)
        }
    }
}

/// How an optimizer stores its tensors. Arithmetic is f32 in every precision; what differs is
/// what is kept between steps and how the result is rounded into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Parameters, gradients and state in f32.
    #[default]
    F32,
    /// Parameters, gradients and state in one 16-bit format, every stored value rounded to
    /// nearest even: PyTorch's fused optimizers on a bf16 or f16 parameter.
    Half(HalfFormat),
    /// 16-bit parameters and gradients, an f32 master copy of the parameters and f32 state: the
    /// master is stepped and the parameters are the master rounded to nearest even (apex O2,
    /// Megatron).
    Master(HalfFormat),
    /// bf16 parameters and gradients, f32 state and no master: the stepped parameter is
    /// rounded stochastically, up with probability equal to the distance below it, so that
    /// small updates survive on average. The random bits are a hash of (`seed`, step, element
    /// index): the same on every run and on the CPU reference.
    Stochastic {
        /// Seed of the rounding's random bits.
        seed: u64,
    },
}

impl Precision {
    /// Every precision, for tools that run them all (stochastic rounding with seed 0).
    pub const ALL: [Precision; 6] = [
        Self::F32,
        Self::Half(HalfFormat::Bf16),
        Self::Half(HalfFormat::F16),
        Self::Master(HalfFormat::Bf16),
        Self::Master(HalfFormat::F16),
        Self::Stochastic { seed: 0 },
    ];

    /// The names [`Precision::from_str`] accepts, in [`Precision::ALL`]'s order.
    pub const NAMES: [&'static str; 6] =
        ["f32", "bf16", "f16", "bf16-master", "f16-master", "bf16-sr"];

    /// Short name (`bf16-master`).
    pub fn name(self) -> &'static str {
        let k = Self::ALL
            .iter()
            .position(|p| p.same_mode(self))
            .expect("every precision is listed");
        Self::NAMES[k]
    }

    /// Same mode, whatever the seed.
    fn same_mode(self, other: Self) -> bool {
        match (self, other) {
            (Self::Stochastic { .. }, Self::Stochastic { .. }) => true,
            (a, b) => a == b,
        }
    }

    /// The 16-bit format of parameters and gradients, `None` for f32.
    pub fn half_format(self) -> Option<HalfFormat> {
        match self {
            Self::F32 => None,
            Self::Half(f) | Self::Master(f) => Some(f),
            Self::Stochastic { .. } => Some(HalfFormat::Bf16),
        }
    }

    /// Bytes of one parameter (and of one gradient) in the caller's buffers.
    pub fn param_bytes(self) -> u64 {
        if self.half_format().is_some() { 2 } else { 4 }
    }

    /// The 16-bit format of the optimizer state, `None` where it is f32.
    pub fn state_format(self) -> Option<HalfFormat> {
        match self {
            Self::Half(f) => Some(f),
            _ => None,
        }
    }

    /// The name with the stochastic rounding's seed (`bf16-sr (seed 7)`), for reports.
    pub fn describe(self) -> String {
        match self {
            Self::Stochastic { seed } => format!("bf16-sr (seed {seed})"),
            p => p.name().into(),
        }
    }

    /// Bytes of one element of one state tensor.
    pub fn state_bytes(self) -> u64 {
        match self {
            Self::Half(_) => 2,
            _ => 4,
        }
    }

    /// Whether an f32 master copy of the parameters is kept.
    pub fn has_master(self) -> bool {
        matches!(self, Self::Master(_))
    }

    /// Bytes a step moves per parameter with `state` state tensors: gradients read, each state
    /// tensor read and written, and the parameters read and written, or with a master, the
    /// master read and written and the parameters only written.
    pub fn bytes_per_element(self, state: usize) -> u64 {
        let params = if self.has_master() {
            8 + self.param_bytes()
        } else {
            2 * self.param_bytes()
        };
        params + self.param_bytes() + 2 * self.state_bytes() * state as u64
    }

    /// Bytes the optimizer keeps per parameter besides the parameters and gradients
    /// themselves: its state and the master.
    pub fn kept_bytes(self, state: usize) -> u64 {
        let master = if self.has_master() { 4 } else { 0 };
        self.state_bytes() * state as u64 + master
    }

    /// The random key of step `step`, from which each element's bits follow
    /// ([`random_bits`]); zero outside stochastic rounding.
    pub fn step_key(self, step: u64) -> [u32; 2] {
        match self {
            Self::Stochastic { seed } => step_key(seed, step),
            _ => [0, 0],
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// One of [`Precision::NAMES`] (stochastic rounding with seed 0).
    fn from_str(s: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .position(|name| *name == s)
            .map(|k| Self::ALL[k])
            .ok_or_else(|| Error::InvalidSetting {
                what: "precision".into(),
                message: format!("`{s}` is none of {}", Self::NAMES.join(", ")),
            })
    }
}

/// A 32-bit integer hash with full avalanche (the `lowbias32` construction from Chris
/// Wellons' hash-prospector, with its improved constants): the generator of stochastic
/// rounding. `hash32` in `shaders/half.wgsl` is the same function.
pub fn hash32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x21f0_aaad);
    h ^= h >> 15;
    h = h.wrapping_mul(0x735a_2d97);
    h ^ (h >> 15)
}

/// The key of one step: (seed, step) hashed into two words.
pub fn step_key(seed: u64, step: u64) -> [u32; 2] {
    let lo = |x: u64| x as u32;
    let hi = |x: u64| (x >> 32) as u32;
    let a = hash32(lo(seed) ^ hash32(hi(seed) ^ hash32(lo(step) ^ hash32(hi(step)))));
    [a, hash32(a ^ 0x9e37_79b9)]
}

/// 16 random bits for element `index` under `key` (a counter-based generator: any element of
/// any step, in any order). `random_bits` in `shaders/half.wgsl`.
pub fn random_bits(key: [u32; 2], index: u64) -> u32 {
    hash32(hash32(index as u32 ^ key[0]) ^ (index >> 32) as u32 ^ key[1]) >> 16
}

/// `x` rounded to bf16 stochastically with the 16 random bits `r`: the bits below bf16's are
/// added to `r` and cut, so `x` rounds up with probability (its distance from the value below)
/// / (the gap). NaN as [`HalfFormat::round`].
pub fn round_bf16_stochastic(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return HalfFormat::Bf16.round(x);
    }
    ((b + (r & 0xffff)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (p, name) in Precision::ALL.iter().zip(Precision::NAMES) {
            assert_eq!(p.name(), name);
            assert_eq!(name.parse::<Precision>().unwrap(), *p);
        }
        assert!("bf32".parse::<Precision>().is_err());
    }

    #[test]
    fn bytes_follow_the_design_table() {
        // Adam: two state tensors.
        assert_eq!(Precision::F32.bytes_per_element(2), 28);
        assert_eq!(Precision::Half(HalfFormat::Bf16).bytes_per_element(2), 14);
        assert_eq!(Precision::Master(HalfFormat::Bf16).bytes_per_element(2), 28);
        assert_eq!(Precision::Stochastic { seed: 0 }.bytes_per_element(2), 22);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 1 + 2^-10 lies an eighth of the way from 1 to bf16's next value, 1 + 2^-7: the mean
        // of many roundings must land there, where rounding to nearest gives 1.
        let x = 1.0f32 + 2f32.powi(-10);
        let key = step_key(7, 3);
        let n = 200_000u64;
        let sum: f64 = (0..n)
            .map(|i| {
                f64::from(HalfFormat::Bf16.widen(round_bf16_stochastic(x, random_bits(key, i))))
            })
            .sum();
        let mean = sum / n as f64;
        let gap = 2f64.powi(-7);
        assert!(
            (mean - f64::from(x)).abs() < 0.01 * gap,
            "mean {mean} against {x}"
        );
        assert_eq!(
            HalfFormat::Bf16.widen(HalfFormat::Bf16.round(x)),
            1.0,
            "nearest is 1"
        );
    }

    #[test]
    fn ulp_is_the_gap_at_the_value() {
        assert_eq!(HalfFormat::Bf16.ulp(1.0), 2f32.powi(-7));
        assert_eq!(HalfFormat::F16.ulp(1.0), 2f32.powi(-10));
        assert_eq!(HalfFormat::F16.ulp(65504.0), 32.0);
        assert_eq!(HalfFormat::F16.ulp(0.0), 2f32.powi(-24));
    }
}
