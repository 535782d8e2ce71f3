//! fusedopt's fused optimizer kernels for Burn models on Burn's wgpu backend.
//!
//! [`FusedOptimizer`] steps a module the way Burn's `ModuleOptimizer` does (`step(lr, module,
//! grads)`), but each parameter is stepped in place, in its own wgpu buffer, by one fusedopt
//! kernel, with the optimizer state in fusedopt's buffers on the same device:
//!
//! 1. Burn and fusedopt share one device: [`init`] lets Burn create its wgpu runtime, and
//!    [`wrap`] hands the device and queue it made to fusedopt (`fusedopt::Gpu::from_device`).
//! 2. For each parameter with a gradient, the parameter's and the gradient's CubeCL tensors
//!    are taken from the Burn tensors, and the wgpu buffer, offset and length behind each
//!    (`client.get_resource`). A parameter whose storage is shared (a clone of the model, a
//!    tensor still held elsewhere) is copied first, never written under another owner; tensors
//!    that are not contiguous are made contiguous; a view at an offset no binding can start at
//!    is copied.
//! 3. Taking the resources submits the work CubeCL has queued for those tensors (the backward
//!    pass); then every parameter's step is recorded into one encoder and submitted once, not
//!    waited for: what Burn records next runs after the steps.
//! 4. On an error nothing is stepped and the module comes back as it was ([`StepError`]).
//!
//! Each parameter keeps one `fusedopt::GpuOptimizer`, rebound to the step's buffers (Burn hands
//! out a new gradient buffer every step); its state and step count are fusedopt's, its numerics
//! PyTorch's. Parameter groups follow Burn's `ParamGroup` (ids or module paths), each with its
//! own configuration, as in PyTorch. Every optimizer and option steps f32 parameters; the
//! 16-bit precisions and the gradient guard are the library's alone.
//!
//! The application's own `burn` dependency must leave Burn's default features off, as this
//! crate does (`default-features = false, features = ["std", "wgpu", "autodiff", ...]`): they
//! bring Burn's fusion backend, whose tensors are no buffers one can step, and with it this
//! crate does not compile (cargo unifies features across the build).
//!
//! Between steps each optimizer keeps a handle on the last buffers it stepped, so CubeCL
//! cannot hand those pages back to the driver until the next step or [`FusedOptimizer::forget`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use burn::backend::Wgpu;
use burn::module::{Module, ModuleMapper, Param, ParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::wgpu::{WgpuBackend, WgpuInitError, WgpuSetup};
use burn::tensor::{Device, Tensor};
use burn_cubecl::tensor::CubeTensor;
use cubecl_wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use fusedopt::{BufferRange, Gpu, GpuOptimizer, Optimizer, Piece};

/// What can go wrong between Burn and fusedopt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Burn's wgpu runtime could not start.
    #[error("Burn's wgpu runtime: {0}")]
    Init(#[from] WgpuInitError),
    /// fusedopt refused a step or a setting.
    #[error(transparent)]
    Fusedopt(#[from] fusedopt::Error),
    /// A tensor is not an f32 tensor of Burn's wgpu backend (another backend, fusion, a
    /// quantized or 16-bit tensor).
    #[error("parameter {param}: {message}")]
    Tensor {
        /// The parameter's path in the module.
        param: String,
        /// What is wrong with it.
        message: String,
    },
    /// CubeCL could not hand out a tensor's buffer.
    #[error("parameter {param}: CubeCL: {message}")]
    Resource {
        /// The parameter's path in the module.
        param: String,
        /// CubeCL's error.
        message: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What [`FusedOptimizer::step`] returns: the stepped module, or the module unstepped with
/// the reason.
pub type StepResult<M> = std::result::Result<M, StepError<M>>;

/// A step that was not taken: why, and the module as it was handed in. No parameter of it
/// was changed (a parameter may come back as a copy or a contiguous version of itself, with
/// the same values); the gradients are spent, as Burn's optimizers spend them.
pub struct StepError<M> {
    /// Why the step was not taken.
    pub error: Error,
    /// The module, with its parameters' values as they were.
    pub module: M,
}

impl<M> std::fmt::Debug for StepError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<M> std::fmt::Display for StepError<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the step was not taken: {}", self.error)
    }
}

impl<M> std::error::Error for StepError<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<M> From<StepError<M>> for Error {
    /// The error alone, the module dropped.
    fn from(error: StepError<M>) -> Self {
        error.error
    }
}

/// Starts Burn's wgpu runtime on the best adapter: the Burn device to build models on, and the
/// wgpu setup it made, whose device and queue [`wrap`] hands to fusedopt. The graphics API is
/// the one `WGPU_BACKEND` names when it names exactly one (`vulkan`, `gl`, `metal`, `dx12`), and
/// Burn's choice otherwise; Burn picks the adapter (`WGPU_ADAPTER_NAME`, which fusedopt's own
/// contexts follow, is not looked at).
pub fn init() -> Result<(Device, WgpuSetup)> {
    let one = |backends| wgpu::Backends::from_env() == Some(backends);
    let api = if one(wgpu::Backends::VULKAN) {
        WgpuBackend::Vulkan
    } else if one(wgpu::Backends::GL) {
        WgpuBackend::Gl
    } else if one(wgpu::Backends::METAL) {
        WgpuBackend::Metal
    } else if one(wgpu::Backends::DX12) {
        WgpuBackend::Dx12
    } else {
        WgpuBackend::Auto
    };
    Ok(Device::wgpu_options().graphics_api(api).init_with_setup()?)
}

/// A fusedopt context on the device and queue of a Burn wgpu setup (as many as wanted: each
/// wraps the same device).
pub fn wrap(setup: &WgpuSetup) -> Gpu {
    Gpu::from_device(setup.device.clone(), setup.queue.clone())
}

/// A Burn module optimizer whose every step is fusedopt's fused kernel on the parameter's own
/// buffer.
#[derive(Debug)]
pub struct FusedOptimizer {
    gpu: Gpu,
    /// Parameter groups, the last matching one applying (the first matches all).
    groups: Vec<(GroupMatcher, Optimizer)>,
    states: HashMap<ParamId, GpuOptimizer>,
    /// Where a gradient that shares its parameter's wgpu buffer is copied first (wgpu refuses
    /// one buffer bound read-write and read-only in one dispatch); as long as the largest such
    /// gradient.
    scratch: Option<wgpu::Buffer>,
    /// Gradients copied into the scratch buffer so far.
    copied: u64,
    /// Parameters whose storage was shared, copied before their step, so far.
    params_copied: u64,
}

/// A [`ParamGroup`] (which has no `Debug`).
struct GroupMatcher(ParamGroup);

impl std::fmt::Debug for GroupMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParamGroup")
    }
}

impl FusedOptimizer {
    /// An optimizer of every parameter with `config` (validated here), on `gpu`, which must be
    /// a context on the Burn device's own wgpu device ([`init`], [`wrap`]).
    pub fn new(gpu: Gpu, config: impl Into<Optimizer>) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        Ok(Self {
            gpu,
            groups: vec![(GroupMatcher(ParamGroup::all()), config)],
            states: HashMap::new(),
            scratch: None,
            copied: 0,
            params_copied: 0,
        })
    }

    /// The parameters of `group` get `config` instead (as PyTorch's parameter groups: weight
    /// decay on the weights, none on the biases, another learning rate for a part). Later
    /// groups take precedence; parameters already stepped keep the configuration they had.
    pub fn with_group(mut self, group: ParamGroup, config: impl Into<Optimizer>) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        self.groups.push((GroupMatcher(group), config));
        Ok(self)
    }

    /// The fusedopt context.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Gradients that shared a wgpu buffer with their parameter (CubeCL's memory pool puts
    /// small tensors in shared pages) and were copied into fusedopt's scratch buffer first,
    /// over all steps.
    pub fn gradients_copied(&self) -> u64 {
        self.copied
    }

    /// Parameters stepped as a copy, over all steps: their storage was shared with another
    /// owner (a clone of the module, a tensor the caller holds), which keeps its values, or
    /// they were a view at an offset no binding can start at. Parameters Burn alone holds are
    /// stepped in place and not counted.
    pub fn parameters_copied(&self) -> u64 {
        self.params_copied
    }

    /// The scratch buffer, at least `len` elements long.
    fn scratch(&mut self, len: usize) -> Result<wgpu::Buffer> {
        match &self.scratch {
            Some(buffer) if buffer.size() >= len as u64 * 4 => Ok(buffer.clone()),
            _ => {
                let buffer = self.gpu.zeros("fusedopt-burn/gradient scratch", len)?;
                self.scratch = Some(buffer.clone());
                Ok(buffer)
            }
        }
    }

    /// Steps of the parameter `id` so far (0 before its first).
    pub fn step_count(&self, id: ParamId) -> u64 {
        self.states.get(&id).map_or(0, GpuOptimizer::step_count)
    }

    /// Drops the state and step count of the parameter `id` (a parameter replaced by one of
    /// another size under the same id, or no longer trained): its next step is a first step.
    /// Returns whether it had any.
    pub fn forget(&mut self, id: ParamId) -> bool {
        self.states.remove(&id).is_some()
    }

    /// Every state tensor of the parameter `id`, by PyTorch's name (none before its first
    /// step), read back from the device.
    pub fn read_state(&self, id: ParamId) -> Result<Vec<(&'static str, Vec<f32>)>> {
        match self.states.get(&id) {
            Some(optimizer) => Ok(optimizer.read_state(&self.gpu)?),
            None => Ok(Vec::new()),
        }
    }

    /// One step of every parameter of `module` that has a gradient in `grads`, at each group's
    /// configured learning rate; returns the module with its parameters stepped in place. The
    /// steps are submitted, not waited for: what Burn runs next is queued after them. On an
    /// error no parameter is stepped and the module comes back in the [`StepError`].
    pub fn step<M: Module>(&mut self, module: M, grads: GradientsParams) -> StepResult<M> {
        self.step_with(None, module, grads)
    }

    /// [`Self::step`] at learning rate `lr` for every group (a schedule's value).
    pub fn step_with_lr<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> StepResult<M> {
        self.step_with(Some(lr), module, grads)
    }

    fn step_with<M: Module>(
        &mut self,
        lr: Option<f64>,
        module: M,
        grads: GradientsParams,
    ) -> StepResult<M> {
        let mut encoder =
            self.gpu
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fusedopt-burn/step"),
                });
        let mut mapper = Stepper {
            optimizer: self,
            encoder: &mut encoder,
            grads,
            lr,
            path: Vec::new(),
            recorded: Vec::new(),
            held: Vec::new(),
            copies: 0,
            param_copies: 0,
            error: None,
        };
        let module = module.map(&mut mapper);
        let Stepper {
            recorded,
            held,
            copies,
            param_copies,
            error,
            ..
        } = mapper;
        let error = match error {
            Some(error) => Some(error),
            None => self
                .gpu
                .submit("stepping a Burn module", encoder)
                .err()
                .map(Error::from),
        };
        // Held until the submission: before it, CubeCL could give their memory to another
        // tensor and have it written first. After it, the queue orders every later write to
        // that memory (and the release of a buffer) after the steps.
        drop(held);
        if let Some(error) = error {
            self.undo(&recorded);
            return Err(StepError { error, module });
        }
        self.copied += copies;
        self.params_copied += param_copies;
        Ok(module)
    }

    /// Sets back the step counts of a step that was not submitted; drops the optimizers it
    /// created.
    fn undo(&mut self, recorded: &[(ParamId, Option<u64>)]) {
        for (id, before) in recorded {
            match before {
                Some(count) => {
                    if let Some(optimizer) = self.states.get_mut(id) {
                        optimizer.set_step_count(*count);
                    }
                }
                None => {
                    self.states.remove(id);
                }
            }
        }
    }
}

/// The configuration of the parameter `id` at `path`: that of the last group it matches (the
/// first group matches all).
fn config_of<'a>(
    groups: &'a [(GroupMatcher, Optimizer)],
    id: &ParamId,
    path: &str,
) -> &'a Optimizer {
    let (_, config) = groups
        .iter()
        .rev()
        .find(|(group, _)| group.0.matches(id, Some(path)))
        .unwrap_or(&groups[0]);
    config
}

/// The autodiff state a parameter carries, put back onto the stepped value as Burn's own
/// optimizers put it back: whether it requires gradients, its gradient-checkpointing strategy
/// (a forward pass refuses tensors of two strategies), and whether it is distributed (its
/// gradients all-reduced).
struct Context {
    require_grad: bool,
    distributed: bool,
    checkpointing: Option<burn::tensor::GradientCheckpointingStrategy>,
}

impl Context {
    fn capture<const D: usize>(parameter: &Tensor<D>) -> Self {
        Self {
            require_grad: parameter.is_require_grad(),
            distributed: parameter.is_distributed(),
            checkpointing: parameter.gradient_checkpointing_strategy(),
        }
    }

    fn restore<const D: usize>(self, stepped: Tensor<D>, id: ParamId) -> Tensor<D> {
        let mut parameter = Tensor::from_inner(stepped);
        if let Some(strategy) = self.checkpointing {
            parameter = parameter.with_gradient_checkpointing_strategy(strategy);
        }
        if self.require_grad {
            parameter = parameter.require_grad();
        }
        if self.distributed {
            parameter = parameter.set_distributed(id);
        }
        parameter
    }
}

/// The module mapper of one step.
struct Stepper<'a> {
    optimizer: &'a mut FusedOptimizer,
    encoder: &'a mut wgpu::CommandEncoder,
    grads: GradientsParams,
    lr: Option<f64>,
    /// The module path of the parameter being visited.
    path: Vec<String>,
    /// Parameters stepped, with their step count before (`None`: a new optimizer).
    recorded: Vec<(ParamId, Option<u64>)>,
    /// The tensors and resources the recorded steps use, kept until they are submitted.
    held: Vec<Held>,
    /// Gradients copied into the scratch buffer.
    copies: u64,
    /// Parameters stepped as a copy.
    param_copies: u64,
    /// The first error; later parameters are left alone.
    error: Option<Error>,
}

/// What keeps one stepped parameter's buffers in place until its step is submitted.
#[allow(dead_code)]
struct Held {
    grad: CubeTensor,
    params: Resource,
    grads: Resource,
}

/// `len` f32 elements of a CubeCL resource (its offset is in bytes).
fn range(resource: &WgpuResource, len: usize) -> BufferRange<'_> {
    BufferRange {
        buffer: &resource.buffer,
        offset: resource.offset / 4,
        len,
    }
}

/// A wgpu buffer range CubeCL keeps in place (not freed, reused or moved) while it is held.
type Resource = cubecl_runtime::storage::ManagedResource<WgpuResource>;

/// The CubeCL tensor behind `tensor`, which must be an f32 tensor of Burn's wgpu backend.
fn into_cube<const D: usize>(tensor: Tensor<D>, path: &str, what: &str) -> Result<CubeTensor> {
    let invalid = |message| Error::Tensor {
        param: path.to_string(),
        message,
    };
    let tensor = tensor.try_into_primitive::<Wgpu>().map_err(|e| {
        invalid(format!(
            "its {what} is not a tensor of Burn's wgpu backend: {e:?}"
        ))
    })?;
    if tensor.dtype != burn::tensor::DType::F32 {
        let dtype = tensor.dtype;
        return Err(invalid(format!(
            "its {what} is {dtype:?}; fusedopt-burn steps f32"
        )));
    }
    Ok(tensor)
}

/// Whether a CubeCL tensor is one flat range of its buffer (not tiled, strided, broadcast or a
/// view of more memory than its elements).
fn is_flat(tensor: &CubeTensor) -> bool {
    !tensor.meta.is_tiled() && tensor.is_contiguous() && tensor.is_contiguous_buffer()
}

/// `make(param)` (a copy of it, with the same values), allocated where CubeCL keeps weights:
/// its persistent pool, apart from the pages where gradients come and go. (A copy in those
/// pages would share a wgpu buffer with later gradients, each then copied before its step.)
fn as_weight(param: &CubeTensor, make: impl FnOnce(CubeTensor) -> CubeTensor + Send) -> CubeTensor {
    param
        .client
        .memory_persistent_allocation(param.clone(), make)
}

impl ModuleMapper for Stepper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let context = Context::capture(&tensor);
        let path = self.path.join(".");
        // The tensor is moved, not cloned: a second handle would make its storage look shared
        // and every step a copy.
        let value = match self.step_one(id, &path, tensor.inner(), grad) {
            Ok(stepped) => stepped,
            Err(failed) => {
                let (error, value) = *failed;
                self.error = Some(error);
                value
            }
        };
        Param::from_mapped_value(id, context.restore(value, id), mapper)
    }
}

impl Stepper<'_> {
    /// Records the step of one parameter and returns its tensor: the same storage, or a copy
    /// where the storage was shared or could not be bound as it was. On an error the tensor
    /// comes back with its values unchanged.
    fn step_one<const D: usize>(
        &mut self,
        id: ParamId,
        path: &str,
        param: Tensor<D>,
        grad: Tensor<D>,
    ) -> std::result::Result<Tensor<D>, Box<(Error, Tensor<D>)>> {
        // (Boxed: a Burn tensor is hundreds of bytes.)
        let invalid = |message| Error::Tensor {
            param: path.to_string(),
            message,
        };
        if grad.shape() != param.shape() {
            let (got, want) = (grad.shape(), param.shape());
            let error = invalid(format!(
                "its gradient has shape {got:?}, the parameter {want:?}"
            ));
            return Err(Box::new((error, param)));
        }
        if grad.device() != param.device() {
            let (got, want) = (grad.device(), param.device());
            let error = invalid(format!(
                "its gradient is on {got:?}, the parameter on {want:?}"
            ));
            return Err(Box::new((error, param)));
        }
        // Nothing to step (and no buffer range to bind).
        if param.shape().num_elements() == 0 {
            return Ok(param);
        }
        // Converted through a second handle, the first dropped once that worked: a tensor of
        // another backend comes back as it was.
        let mut cube = match into_cube(param.clone(), path, "value") {
            Ok(cube) => {
                drop(param);
                cube
            }
            Err(error) => return Err(Box::new((error, param))),
        };
        let recorded = self.record(id, path, &mut cube, grad);
        let param = Tensor::from_primitive::<Wgpu>(cube);
        match recorded {
            Ok(()) => Ok(param),
            Err(error) => Err(Box::new((error, param))),
        }
    }

    /// Records the step of `param` (replaced by a copy with the same values where it cannot
    /// be stepped in place) from `grad`.
    fn record<const D: usize>(
        &mut self,
        id: ParamId,
        path: &str,
        param: &mut CubeTensor,
        grad: Tensor<D>,
    ) -> Result<()> {
        let grad = into_cube(grad, path, "gradient")?;
        let grad = if is_flat(&grad) {
            grad
        } else {
            burn_cubecl::kernel::into_contiguous(grad)
        };
        if !is_flat(param) {
            *param = as_weight(param, burn_cubecl::kernel::into_contiguous);
        }
        // Another owner (a clone of the module, a tensor kept by the caller) must not see the
        // step: it keeps the old values, and the step goes to a copy.
        if !param.can_mut() {
            *param = as_weight(param, |p| p.copy());
            self.param_copies += 1;
        }
        let len = param.meta.shape().num_elements();
        let align = u64::from(self.optimizer.gpu.limits().storage_offset_alignment).max(4);
        // Asking CubeCL for a resource submits what the calling thread's stream and the
        // tensor's own stream have queued (its `execute_streams`): the backward pass and any
        // copy above reach the queue before the steps.
        let resource = |tensor: &CubeTensor| {
            tensor
                .client
                .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
                .map_err(|e| Error::Resource {
                    param: path.to_string(),
                    message: format!("{e:?}"),
                })
        };
        let mut params_resource = resource(param)?;
        if !params_resource.resource().offset.is_multiple_of(align) {
            // A view at an offset no binding can start at: its copy is fresh, aligned memory.
            drop(params_resource);
            *param = as_weight(param, |p| p.copy());
            self.param_copies += 1;
            params_resource = resource(param)?;
        }
        let grads_resource = resource(&grad)?;
        let (params_at, grads_at) = (params_resource.resource(), grads_resource.resource());
        // One buffer cannot be bound read-write and read-only in one dispatch, and a binding
        // starts at the storage offset alignment: a gradient in its parameter's buffer, or at
        // another offset, is stepped from a copy (ordered by the encoder after the steps
        // recorded before, which may read the scratch buffer).
        let scratch =
            if params_at.buffer == grads_at.buffer || !grads_at.offset.is_multiple_of(align) {
                let scratch = self.optimizer.scratch(len)?;
                self.encoder.copy_buffer_to_buffer(
                    &grads_at.buffer,
                    grads_at.offset,
                    &scratch,
                    0,
                    len as u64 * 4,
                );
                Some(scratch)
            } else {
                None
            };
        let piece = Piece {
            params: range(params_at, len),
            grads: match &scratch {
                Some(buffer) => BufferRange {
                    buffer,
                    offset: 0,
                    len,
                },
                None => range(grads_at, len),
            },
        };
        // One lookup: the parameter's optimizer rebound to this step's buffers, or a new one.
        let FusedOptimizer {
            gpu,
            groups,
            states,
            ..
        } = &mut *self.optimizer;
        let (optimizer, before) = match states.entry(id) {
            Entry::Occupied(entry) => {
                let optimizer = entry.into_mut();
                optimizer.rebind(gpu, &[piece])?;
                let count = optimizer.step_count();
                (optimizer, Some(count))
            }
            Entry::Vacant(entry) => {
                let config = config_of(groups, &id, path).clone();
                let optimizer = GpuOptimizer::with_pieces(gpu, config, &[piece])?;
                (entry.insert(optimizer), None)
            }
        };
        let lr = self.lr.unwrap_or_else(|| optimizer.config().lr());
        if let Err(error) = optimizer.record_step_with_lr(gpu, self.encoder, lr) {
            if before.is_none() {
                states.remove(&id);
            }
            return Err(error.into());
        }
        self.recorded.push((id, before));
        self.copies += u64::from(scratch.is_some());
        self.held.push(Held {
            grad,
            params: params_resource,
            grads: grads_resource,
        });
        Ok(())
    }
}
