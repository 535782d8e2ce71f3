#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod compare;
mod error;
pub mod files;
pub mod golden;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod reference;
#[cfg(feature = "testing")]
pub mod testing;

pub use checkpoint::Checkpoint;
pub use compare::{ErrorStats, Tolerance};
pub use error::{Error, Result};
pub use gpu::{
    BufferRange, BufferSet, CallerScale, Gpu, GpuCopy, GpuOptimizer, GpuOptions, GradGuard,
    GuardReport, Piece, SparseGpuOptimizer,
};
pub use model::{ModelLayout, ModelOptimizer, Segment, TensorSpec};
pub use optim::{
    Adadelta, Adagrad, Adam, Guard, HalfFormat, LossScaler, Optimizer, Precision, Rmsprop,
    Schedule, Scheduler, Sgd, SparseAdam, SparseOptimizer,
};
pub use reference::{CpuGuard, CpuOptimizer, CpuSparse};
