//! What every optimizer provides, in its own file: the description of its kernel, the values
//! of the kernel's override constants, the uniform of each step, PyTorch's checks and names, and
//! the option sets the tools run. Code outside `optim` reaches an optimizer only through these
//! traits (by [`Optimizer`]), never by naming it, so adding one touches no other layer.

use std::fmt::Debug;

use super::Optimizer;
use super::hyper::HyperFields;
use crate::error::Result;

/// An optimizer's kernel as the host binds it: `shaders/<name>.wgsl`, compiled after
/// `common.wgsl`, with binding 0 the uniform, 1 the parameters, 2 the gradients and the state
/// tensors from binding 3 on (`crate::kernels`).
#[derive(Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// Name of the kernel: its labels, its key in the pipeline cache, its file stem.
    pub name: &'static str,
    /// The optimizer's own WGSL.
    pub source: &'static str,
    /// The uniform struct at binding 0, as its Rust twin lays it out.
    pub uniform: UniformLayout,
    /// PyTorch's names of the state tensors (`optimizer.state[p]`), which are also the WGSL
    /// bindings' names, in binding order.
    pub state: &'static [&'static str],
}

/// Size and named fields of a uniform struct, from its Rust definition (padding unnamed), so a
/// test can hold the WGSL struct to it.
#[derive(Debug, PartialEq, Eq)]
pub struct UniformLayout {
    /// `size_of` the struct.
    pub size: usize,
    /// Each named field and its byte offset, in declaration order.
    pub fields: &'static [(&'static str, usize)],
}

/// The [`UniformLayout`] of a `#[repr(C)]` struct from the names of its fields; a misspelt
/// field does not compile.
macro_rules! uniform_layout {
    ($t:ty { $($field:ident),* $(,)? }) => {
        $crate::optim::UniformLayout {
            size: ::std::mem::size_of::<$t>(),
            fields: &[$((stringify!($field), ::std::mem::offset_of!($t, $field))),*],
        }
    };
}
pub(crate) use uniform_layout;

/// One optimizer configuration, as the layers above `optim` use it (object-safe: reached
/// through [`Optimizer`] whatever the optimizer).
pub(crate) trait Rule: Debug + Send + Sync {
    /// PyTorch's lower-case class name (`adamw` for decoupled Adam).
    fn name(&self) -> &'static str;
    /// The configured learning rate.
    fn lr(&self) -> f64;
    /// Rejects what PyTorch's constructor rejects.
    fn validate(&self) -> Result<()>;
    /// Hands each of its PyTorch keyword arguments to `fields`, by PyTorch's name: a reader
    /// sets the field from a JSON object, a writer copies it out, so the names are typed once.
    fn torch_fields(&mut self, fields: &mut dyn HyperFields) -> Result<()>;
    /// The options that differ from the defaults, for tables (`momentum=0.9,nesterov`).
    fn describe(&self) -> String;
    /// The kernel that runs this optimizer.
    fn kernel(&self) -> &'static KernelSpec;
    /// Per state tensor of the kernel, the value it starts at, or `None` where this
    /// configuration does not use it (the binding then gets a placeholder).
    fn state_init(&self) -> Vec<Option<f32>>;
    /// Values of the kernel's `override` constants, fixed when the pipeline is built.
    fn overrides(&self) -> Vec<(&'static str, f64)>;
    /// The uniform of step `step` (1-based) at learning rate `lr`.
    fn uniform(&self, step: u64, lr: f64) -> UniformBlock;
    /// Option sets around this configuration that change the arithmetic, with every term
    /// away from zero: what validation runs against the CPU reference.
    fn variants(&self) -> Vec<Optimizer>;
    /// Each option that changes the state this configuration keeps (and so the bytes a step
    /// moves), applied to it, with a short name: what the benchmarks measure besides it.
    fn state_variants(&self) -> Vec<(&'static str, Optimizer)>;
}

/// The CPU mirror of an optimizer's kernel: the same update in f32, in the kernel's order of
/// operations. Implemented in `crate::reference`, one file per optimizer; declared here so that
/// [`Optimizer`] can hand the concrete type to code generic over it.
pub(crate) trait Mirror: Rule {
    /// The kernel's uniform struct, read from the very bytes the GPU receives.
    type Scalars: bytemuck::Pod + Send + Sync;
    /// Updates one block of elements with this step's scalars.
    fn update(&self, scalars: &Self::Scalars, block: Block<'_>);
}

/// Code generic over the optimizer type (the CPU reference's drivers), run by
/// [`Optimizer::visit`] on the configuration inside.
pub(crate) trait Visit {
    /// What the visit returns.
    type Output;
    /// Runs on the concrete configuration.
    fn visit<R: Mirror>(self, config: &R) -> Self::Output;
}

/// Most state tensors a kernel binds (a test holds every kernel to it; raise it for one that
/// binds more).
pub const MAX_STATE: usize = 3;

/// At most a few thousand elements of parameters, gradients and every state slot, all the same
/// length; slots the configuration does not use hold spare zeros the update never touches.
pub(crate) struct Block<'a> {
    pub(crate) param: &'a mut [f32],
    pub(crate) grad: &'a [f32],
    pub(crate) state: [&'a mut [f32]; MAX_STATE],
}

impl<'a> Block<'a> {
    /// The pieces, each sliced to the parameters' length so the compiler can drop the bounds
    /// checks in the loops and vectorize them.
    #[inline(always)]
    pub(crate) fn parts(self) -> (&'a mut [f32], &'a [f32], [&'a mut [f32]; MAX_STATE]) {
        let n = self.param.len();
        let state = self.state.map(|s| &mut s[..n]);
        (self.param, &self.grad[..n], state)
    }
}

/// The bytes of one step's uniform struct, held inline (no host allocation per step).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UniformBlock {
    bytes: [u8; Self::CAPACITY],
    len: usize,
}

impl UniformBlock {
    /// Largest uniform struct of any kernel, in bytes.
    pub(crate) const CAPACITY: usize = 64;

    pub(crate) fn of<T: bytemuck::Pod>(value: &T) -> Self {
        let src = bytemuck::bytes_of(value);
        let mut bytes = [0; Self::CAPACITY];
        bytes[..src.len()].copy_from_slice(src);
        Self {
            bytes,
            len: src.len(),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Every pair of an element of `a` with one of `b`, for building option sets.
pub(crate) fn pairs<A: Copy, B: Copy>(
    a: impl IntoIterator<Item = A>,
    b: impl IntoIterator<Item = B> + Clone,
) -> Vec<(A, B)> {
    a.into_iter()
        .flat_map(|x| b.clone().into_iter().map(move |y| (x, y)))
        .collect()
}
