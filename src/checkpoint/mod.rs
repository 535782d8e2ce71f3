//! Checkpoints of optimizer state: one safetensors file that a resumed run reads back to the
//! same bits, and that PyTorch can read.
//!
//! The tensors are named as PyTorch flattens an optimizer's `state_dict()`, by tensor name:
//! `state.<tensor>.<slot>` (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `momentum_buffer`,
//! `sum`, `square_avg`, `grad_avg`, `acc_delta`), and `state.<tensor>.master_param` for the
//! f32 master copy, each in the tensor's own shape (the padding of flat buffers is not
//! saved). An optimizer without a [`crate::ModelLayout`] holds one tensor named `0`, as
//! PyTorch names its first parameter. The `__metadata__` holds, as text:
//!
//! | key | value |
//! |---|---|
//! | `format` | `fusedopt-optimizer-state` |
//! | `format_version` | `1` (a reader refuses any other) |
//! | `fusedopt_version` | the writer's version |
//! | `precision` | `f32`, `bf16`, `f16`, `bf16-master`, `f16-master`, `bf16-sr` ([`Precision`]'s names) |
//! | `stochastic_seed` | with `bf16-sr`: the rounding's seed, in decimal |
//! | `param_groups` | JSON: per group, `optimizer` (PyTorch's class name), `step` (at most 2^53), `params` (tensor names) and every hyperparameter by PyTorch's name |
//! | `layout` | JSON: `tensors`, each `name`, `shape`, `group` and `offset` in the writer's flat buffers (informative: a reader matches tensors by name) |
//! | `dtypes` | JSON: every tensor's PyTorch dtype (`float32`, `bfloat16`, `float16`) |
//! | `guard` | with a loss scaler or clip: JSON with `grad_scaler` (GradScaler's settings or `null`), `max_grad_norm` (or `null`), `caller_scale`, and the scaler's state `scale` and `growth_tracker` |
//!
//! Tensors under other names than `state.` are the caller's own (model weights, say), and
//! metadata keys under `caller.` the caller's own text (a training loop's position), kept and
//! handed back as they are, so that one file, replaced atomically, holds a whole resumable run.

mod take;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::files::{MAX_HEADER_BYTES, read_safetensors, write_atomic};
use crate::model::TensorSpec;
use crate::optim::{Guard, HalfFormat, LossScaler, Optimizer, Precision, ScalerState};

/// The `format` metadata of a fusedopt checkpoint.
pub const FORMAT: &str = "fusedopt-optimizer-state";

/// The `format_version` this fusedopt writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Most steps a checkpoint holds: past 2^53 a step count is no longer exact in the f64 of
/// the bias corrections (and of PyTorch's).
pub const MAX_STEPS: u64 = 1 << 53;

/// The name of the master copy's tensors (`state.<tensor>.master_param`).
pub const MASTER: &str = "master_param";

/// One tensor's stored values: f32, or the bits of a 16-bit format, with its shape; the
/// byte length always matches them.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    format: Option<HalfFormat>,
    shape: Vec<usize>,
    /// Little-endian bytes, `numel × (4 or 2)`.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?})", torch_dtype(self.format), self.shape)
    }
}

impl Tensor {
    /// An f32 tensor; an error unless `values` holds one value per element of `shape`.
    pub fn f32(shape: &[usize], values: &[f32]) -> Result<Self> {
        check_numel("tensor", shape, values.len())?;
        Ok(Self {
            format: None,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    /// A 16-bit tensor of `format` from its bits; an error unless `bits` holds one value per
    /// element of `shape`.
    pub fn half(format: HalfFormat, shape: &[usize], bits: &[u16]) -> Result<Self> {
        check_numel("tensor", shape, bits.len())?;
        Ok(Self {
            format: Some(format),
            shape: shape.to_vec(),
            bytes: bits.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }

    /// `None` for f32, else the 16-bit format.
    pub fn format(&self) -> Option<HalfFormat> {
        self.format
    }

    /// The shape (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// `values` stored in `format` (`None`: f32), each rounded to nearest even. Exact for
    /// values the format holds, as a 16-bit optimizer's state always is.
    fn stored(format: Option<HalfFormat>, shape: &[usize], values: &[f32]) -> Result<Self> {
        match format {
            None => Self::f32(shape, values),
            Some(f) => {
                let bits: Vec<u16> = values.iter().map(|&v| f.round(v)).collect();
                Self::half(f, shape, &bits)
            }
        }
    }

    /// The values, widened to f32 (exactly) from a 16-bit format.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.format {
            None => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Some(f) => self.halves().into_iter().map(|b| f.widen(b)).collect(),
        }
    }

    /// The 16-bit values' bits; `None` for an f32 tensor.
    pub fn bits(&self) -> Option<Vec<u16>> {
        self.format.map(|_| self.halves())
    }

    fn halves(&self) -> Vec<u16> {
        self.bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    /// Number of elements (the byte length was checked against it).
    pub fn numel(&self) -> usize {
        self.bytes.len() / if self.format.is_some() { 2 } else { 4 }
    }

    fn dtype(&self) -> Dtype {
        match self.format {
            None => Dtype::F32,
            Some(HalfFormat::Bf16) => Dtype::BF16,
            Some(HalfFormat::F16) => Dtype::F16,
        }
    }
}

/// PyTorch's name of a storage dtype.
fn torch_dtype(format: Option<HalfFormat>) -> &'static str {
    format.map_or("float32", HalfFormat::torch_name)
}

impl safetensors::View for &Tensor {
    fn dtype(&self) -> Dtype {
        Tensor::dtype(self)
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// One parameter group of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The optimizer and its hyperparameters.
    pub optimizer: Optimizer,
    /// Steps taken (PyTorch's `state['step']`; under a guard, the steps not skipped).
    pub step: u64,
}

/// One model tensor of a checkpoint's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Name and shape.
    pub tensor: TensorSpec,
    /// Its parameter group.
    pub group: usize,
    /// Its first element in the writer's flat buffers (informative).
    pub offset: usize,
}

/// The state of an optimizer (one or several parameter groups), read from a file or taken
/// from a live optimizer, fully checked: every state tensor the groups' configurations keep is
/// present, in the precision's dtype and its tensor's shape.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Where it came from, for errors (a path, or `memory`).
    origin: String,
    fusedopt_version: String,
    precision: Precision,
    groups: Vec<Group>,
    layout: Vec<Entry>,
    guard: Option<(Guard, ScalerState)>,
    /// Every tensor by its file name: the optimizer's under `state.`, the caller's others.
    tensors: BTreeMap<String, Tensor>,
    /// The caller's metadata, by key without the `caller.` prefix.
    notes: BTreeMap<String, String>,
}

/// The metadata prefix of the caller's own keys.
const CALLER: &str = "caller.";

/// The file name of a state tensor.
pub fn state_name(tensor: &str, slot: &str) -> String {
    format!("state.{tensor}.{slot}")
}

impl Checkpoint {
    /// Reads and checks a checkpoint file; its header is read and checked before the rest, in
    /// bounded memory. A truncated, corrupt or foreign file is an [`Error::Checkpoint`]
    /// naming what is wrong.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let origin = path.as_ref().display().to_string();
        let bytes = read_safetensors(path.as_ref(), |message| Error::Checkpoint {
            origin: origin.clone(),
            message,
        })?;
        Self::parse(&origin, &bytes)
    }

    /// Parses and checks the bytes of a checkpoint file; `origin` names it in errors.
    pub fn parse(origin: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |message: String| Error::Checkpoint {
            origin: origin.to_string(),
            message,
        };
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let text = |key: &str| {
            meta.get(key)
                .map(String::as_str)
                .ok_or_else(|| bad(format!("metadata lacks `{key}`")))
        };
        let json = |key: &str| -> Result<Value> {
            serde_json::from_str(text(key)?)
                .map_err(|e| bad(format!("metadata `{key}` is not JSON: {e}")))
        };
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "not a fusedopt checkpoint: format `{other}`, expected `{FORMAT}`"
                )));
            }
            None => {
                return Err(bad(
                    "not a fusedopt checkpoint: its metadata has no `format`".into(),
                ));
            }
        }
        let version = text("format_version")?;
        if version.trim().parse::<u32>().ok() != Some(FORMAT_VERSION) {
            return Err(bad(format!(
                "format version {version}; this fusedopt reads version {FORMAT_VERSION}"
            )));
        }
        let precision =
            read_precision(text("precision")?, meta.get("stochastic_seed")).map_err(bad)?;
        let groups_json = json("param_groups")?;
        let (groups, members) = read_groups(&groups_json).map_err(&bad)?;
        let layout = read_layout(&json("layout")?, &members).map_err(&bad)?;
        let guard = match meta.get("guard") {
            Some(_) => Some(read_guard(&json("guard")?).map_err(&bad)?),
            None => None,
        };
        let dtypes = json("dtypes")?;
        let dtypes = dtypes
            .as_object()
            .ok_or_else(|| bad("metadata `dtypes` is not a JSON object".into()))?;

        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let format = match view.dtype() {
                Dtype::F32 => None,
                Dtype::BF16 => Some(HalfFormat::Bf16),
                Dtype::F16 => Some(HalfFormat::F16),
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` is {other:?}; checkpoints hold F32, BF16 and F16"
                    )));
                }
            };
            let listed = dtypes.get(&name).and_then(Value::as_str);
            if listed != Some(torch_dtype(format)) {
                return Err(bad(format!(
                    "tensor `{name}` is {} but `dtypes` lists {}",
                    torch_dtype(format),
                    listed.map_or("nothing".into(), |d| format!("`{d}`"))
                )));
            }
            let width = if format.is_some() { 2 } else { 4 };
            let numel = view
                .shape()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            if numel.and_then(|n| n.checked_mul(width)) != Some(view.data().len()) {
                return Err(bad(format!(
                    "tensor `{name}` of shape {:?} holds {} bytes",
                    view.shape(),
                    view.data().len()
                )));
            }
            let tensor = Tensor {
                format,
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            };
            tensors.insert(name, tensor);
        }
        if dtypes.len() != tensors.len() {
            return Err(bad(format!(
                "`dtypes` lists {} tensors, the file holds {}",
                dtypes.len(),
                tensors.len()
            )));
        }
        let notes = meta
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(CALLER)?.to_string(), v.clone())))
            .collect();
        let checkpoint = Self {
            origin: origin.to_string(),
            notes,
            fusedopt_version: meta.get("fusedopt_version").cloned().unwrap_or_default(),
            precision,
            groups,
            layout,
            guard,
            tensors,
        };
        checkpoint.check_state().map_err(bad)?;
        Ok(checkpoint)
    }

    /// Every state tensor the groups keep is present in its dtype and shape, the master of
    /// every tensor or of none, and no other `state.` tensor.
    fn check_state(&self) -> std::result::Result<(), String> {
        let state_format = self.precision.state_format();
        let mut expected = BTreeSet::new();
        let mut masters = 0;
        for entry in &self.layout {
            let name = &entry.tensor.name;
            let mut slots: Vec<(&str, Option<HalfFormat>)> = self.groups[entry.group]
                .optimizer
                .state_names()
                .into_iter()
                .map(|s| (s, state_format))
                .collect();
            if self.precision.has_master() {
                let master = state_name(name, MASTER);
                masters += usize::from(self.tensors.contains_key(&master));
                if self.tensors.contains_key(&master) {
                    slots.push((MASTER, None));
                }
            }
            for (slot, format) in slots {
                let key = state_name(name, slot);
                let tensor = self
                    .tensors
                    .get(&key)
                    .ok_or_else(|| format!("missing tensor `{key}`"))?;
                if tensor.format != format || tensor.shape != entry.tensor.shape {
                    return Err(format!(
                        "tensor `{key}` is {} {:?}, expected {} {:?}",
                        torch_dtype(tensor.format),
                        tensor.shape,
                        torch_dtype(format),
                        entry.tensor.shape
                    ));
                }
                expected.insert(key);
            }
        }
        if masters != 0 && masters != self.layout.len() {
            return Err(format!(
                "{masters} of {} tensors have a `{MASTER}`: every one or none",
                self.layout.len()
            ));
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|k| k.starts_with("state.") && !expected.contains(*k))
        {
            return Err(format!(
                "tensor `{extra}` is no state of this checkpoint's optimizers"
            ));
        }
        Ok(())
    }

    /// Writes the checkpoint to `path`, replacing any file there atomically
    /// ([`write_atomic`]): a crash at any moment leaves the previous file whole.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, |w| w.write_all(&bytes))
    }

    /// The bytes of the checkpoint file, read back and checked before they are handed out,
    /// so that what is saved can be loaded: a header past the format's size limit or a value
    /// JSON cannot hold (an infinite learning rate, an overflowed scale) is an error here, not
    /// at the resume.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bad = |message: String| Error::Checkpoint {
            origin: self.origin.clone(),
            message,
        };
        let bytes = safetensors::serialize(
            self.tensors.iter().map(|(k, t)| (k.as_str(), t)),
            Some(self.metadata()),
        )
        .map_err(|e| bad(format!("could not serialize: {e}")))?;
        let header = bytes
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        if header > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "its header would be {header} bytes, past the {MAX_HEADER_BYTES} a reader takes \
                 ({} tensors)",
                self.tensors.len()
            )));
        }
        Self::parse(&self.origin, &bytes).map_err(|e| match e {
            Error::Checkpoint { message, .. } => bad(format!("would not read back: {message}")),
            other => other,
        })?;
        Ok(bytes)
    }

    fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut meta = std::collections::HashMap::new();
        let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
        for (key, value) in &self.notes {
            put(&format!("{CALLER}{key}"), value.clone());
        }
        put("format", FORMAT.into());
        put("format_version", FORMAT_VERSION.to_string());
        put("fusedopt_version", self.fusedopt_version.clone());
        put("precision", self.precision.name().into());
        if let Precision::Stochastic { seed } = self.precision {
            put("stochastic_seed", seed.to_string());
        }
        let groups: Vec<Value> = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let mut map = match group.optimizer.to_torch() {
                    Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                };
                let params: Vec<&str> = self
                    .layout
                    .iter()
                    .filter(|e| e.group == g)
                    .map(|e| e.tensor.name.as_str())
                    .collect();
                map.insert("optimizer".into(), group.optimizer.name().into());
                map.insert("step".into(), group.step.into());
                map.insert("params".into(), params.into());
                Value::Object(map)
            })
            .collect();
        put("param_groups", Value::from(groups).to_string());
        let layout: Vec<Value> = self
            .layout
            .iter()
            .map(|e| {
                json!({"name": e.tensor.name, "shape": e.tensor.shape, "group": e.group,
                       "offset": e.offset})
            })
            .collect();
        put("layout", json!({ "tensors": layout }).to_string());
        let dtypes: serde_json::Map<String, Value> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), torch_dtype(t.format).into()))
            .collect();
        put("dtypes", Value::Object(dtypes).to_string());
        if let Some((guard, state)) = &self.guard {
            let value = json!({
                "grad_scaler": guard.scaler.as_ref().map(LossScaler::to_json),
                "max_grad_norm": guard.max_norm,
                "caller_scale": guard.caller_scale,
                "scale": state.scale,
                "growth_tracker": state.growth_tracker,
            });
            put("guard", value.to_string());
        }
        meta
    }

    /// The storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The parameter groups, in order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The model's tensors, in layout order.
    pub fn layout(&self) -> &[Entry] {
        &self.layout
    }

    /// The guard's settings and the scaler's state, where the optimizer had a guard.
    pub fn guard(&self) -> Option<&(Guard, ScalerState)> {
        self.guard.as_ref()
    }

    /// The version of fusedopt that wrote it.
    pub fn fusedopt_version(&self) -> &str {
        &self.fusedopt_version
    }

    /// Every tensor by file name (the optimizer's under `state.`, the caller's others).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// A tensor by file name.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Adds (or replaces) a tensor of the caller's own, saved and loaded with the optimizer's
    /// state in the same file: model weights, a data loader's position. Names under `state.`
    /// are the optimizer's and refused.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<()> {
        let name = name.into();
        if name.starts_with("state.") || name.is_empty() || name == "__metadata__" {
            return Err(Error::InvalidSetting {
                what: "checkpoint tensor name".into(),
                message: format!("`{name}` is reserved for the optimizer's state"),
            });
        }
        self.tensors.insert(name, tensor);
        Ok(())
    }

    /// Sets a metadata entry of the caller's own (stored as `caller.<key>`).
    pub fn set_note(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.notes.insert(key.into(), value.into());
    }

    /// A metadata entry of the caller's own.
    pub fn note(&self, key: &str) -> Option<&str> {
        self.notes.get(key).map(String::as_str)
    }

    /// Every metadata entry of the caller's own.
    pub fn notes(&self) -> &BTreeMap<String, String> {
        &self.notes
    }

    fn mismatch(&self, message: String) -> Error {
        Error::Checkpoint {
            origin: self.origin.clone(),
            message,
        }
    }
}

/// An error unless `shape` holds `len` elements.
fn check_numel(what: &str, shape: &[usize], len: usize) -> Result<()> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel != Some(len) {
        return Err(Error::LengthMismatch {
            what: format!("{what} of shape {shape:?}"),
            expected: numel.unwrap_or(usize::MAX),
            got: len,
        });
    }
    Ok(())
}

fn read_precision(name: &str, seed: Option<&String>) -> std::result::Result<Precision, String> {
    let precision: Precision = name
        .parse()
        .map_err(|e: Error| format!("metadata `precision`: {e}"))?;
    match (precision, seed) {
        (Precision::Stochastic { .. }, Some(seed)) => {
            let seed = seed
                .trim()
                .parse()
                .map_err(|_| format!("metadata `stochastic_seed` `{seed}` is not a u64"))?;
            Ok(Precision::Stochastic { seed })
        }
        (Precision::Stochastic { .. }, None) => {
            Err("metadata lacks `stochastic_seed` for bf16-sr".into())
        }
        (_, Some(_)) => Err(format!("metadata `stochastic_seed` with precision {name}")),
        (p, None) => Ok(p),
    }
}

/// The groups and, per group, the names of its tensors.
#[allow(clippy::type_complexity)]
fn read_groups(value: &Value) -> std::result::Result<(Vec<Group>, Vec<Vec<String>>), String> {
    let list = value
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or("metadata `param_groups` must be a non-empty JSON array")?;
    let mut groups = Vec::new();
    let mut members = Vec::new();
    for (g, group) in list.iter().enumerate() {
        let mut map = group
            .as_object()
            .ok_or_else(|| format!("param_groups[{g}] is not a JSON object"))?
            .clone();
        let mut take = |key: &str| {
            map.remove(key)
                .ok_or_else(|| format!("param_groups[{g}] lacks `{key}`"))
        };
        let name = take("optimizer")?;
        let name = name
            .as_str()
            .ok_or_else(|| format!("param_groups[{g}].optimizer is not a string"))?
            .to_string();
        let step = take("step")?
            .as_u64()
            .filter(|&s| s <= MAX_STEPS)
            .ok_or_else(|| format!("param_groups[{g}].step is not a count of steps up to 2^53"))?;
        let params = take("params")?;
        let params: Vec<String> = params
            .as_array()
            .and_then(|a| a.iter().map(|p| p.as_str().map(String::from)).collect())
            .ok_or_else(|| format!("param_groups[{g}].params is not a list of names"))?;
        let optimizer = Optimizer::from_torch(&name, &Value::Object(map))
            .map_err(|e| format!("param_groups[{g}]: {e}"))?;
        groups.push(Group { optimizer, step });
        members.push(params);
    }
    Ok((groups, members))
}

fn read_layout(value: &Value, members: &[Vec<String>]) -> std::result::Result<Vec<Entry>, String> {
    let list = value
        .get("tensors")
        .and_then(Value::as_array)
        .ok_or("metadata `layout` has no `tensors` list")?;
    let mut names = BTreeSet::new();
    let mut entries = Vec::new();
    for (k, item) in list.iter().enumerate() {
        let field = |key: &str| {
            item.get(key)
                .ok_or_else(|| format!("layout tensor {k} lacks `{key}`"))
        };
        let name = field("name")?
            .as_str()
            .ok_or_else(|| format!("layout tensor {k}: `name` is not a string"))?
            .to_string();
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| format!("layout tensor `{name}`: `shape` is not a list of sizes"))?;
        let number = |key: &str| -> std::result::Result<usize, String> {
            field(key)?
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| format!("layout tensor `{name}`: `{key}` is not an index"))
        };
        let (group, offset) = (number("group")?, number("offset")?);
        let tensor = TensorSpec::new(name.clone(), &shape);
        if tensor.checked_numel().is_none_or(|n| n == 0) {
            return Err(format!("layout tensor `{name}` has shape {shape:?}"));
        }
        if group >= members.len() {
            return Err(format!(
                "layout tensor `{name}` is in group {group} of {}",
                members.len()
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("layout names tensor `{name}` twice"));
        }
        entries.push(Entry {
            tensor,
            group,
            offset,
        });
    }
    for (g, params) in members.iter().enumerate() {
        let listed: Vec<&String> = entries
            .iter()
            .filter(|e| e.group == g)
            .map(|e| &e.tensor.name)
            .collect();
        if listed.len() != params.len() || listed.iter().zip(params).any(|(a, b)| *a != b) {
            return Err(format!(
                "param_groups[{g}].params {params:?} differs from the layout's tensors of \
                 group {g} {listed:?}"
            ));
        }
    }
    Ok(entries)
}

fn read_guard(value: &Value) -> std::result::Result<(Guard, ScalerState), String> {
    let scaler = match value.get("grad_scaler") {
        None | Some(Value::Null) => None,
        Some(v) => Some(LossScaler::from_json(v).map_err(|e| e.to_string())?),
    };
    let max_norm = match value.get("max_grad_norm") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or("guard `max_grad_norm` is not a number")?),
    };
    let caller_scale = value
        .get("caller_scale")
        .and_then(Value::as_bool)
        .ok_or("guard `caller_scale` is not true or false")?;
    let guard = Guard {
        scaler,
        max_norm,
        caller_scale,
    };
    guard.validate().map_err(|e| e.to_string())?;
    let scale = value
        .get("scale")
        .and_then(Value::as_f64)
        .ok_or("guard `scale` is not a number")? as f32;
    let growth_tracker = value
        .get("growth_tracker")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("guard `growth_tracker` is not a count")?;
    let state = ScalerState {
        scale,
        growth_tracker,
    };
    state.validate().map_err(|e| e.to_string())?;
    Ok((guard, state))
}
