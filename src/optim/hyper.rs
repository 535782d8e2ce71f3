//! PyTorch keyword arguments to and from a JSON object, key by key: reading reports a key no
//! optimizer reads instead of silently ignoring it; writing gives the object a reader takes
//! back (a checkpoint's `param_groups`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::error::{Error, Result};

/// Keys PyTorch accepts that select an implementation, not the arithmetic; they are accepted
/// and have no effect here.
const IMPLEMENTATION_KEYS: [&str; 4] = ["foreach", "fused", "capturable", "differentiable"];

/// One visit of a configuration's PyTorch keyword arguments ([`super::rule::Rule::torch_fields`]).
pub(crate) trait HyperFields {
    /// A number (`lr`).
    fn number(&mut self, key: &str, slot: &mut f64) -> Result<()>;
    /// A flag (`amsgrad`).
    fn boolean(&mut self, key: &str, slot: &mut bool) -> Result<()>;
    /// A pair of numbers (`betas`).
    fn pair(&mut self, key: &str, slot: &mut (f64, f64)) -> Result<()>;
}

/// Sets the fields present in a JSON object, refusing wrong types and `null`.
pub(crate) struct HyperReader<'a> {
    optimizer: &'static str,
    map: &'a serde_json::Map<String, Value>,
    unread: BTreeSet<&'a str>,
}

impl<'a> HyperReader<'a> {
    pub(crate) fn new(optimizer: &'static str, hyper: &'a Value) -> Result<Self> {
        let map = hyper.as_object().ok_or_else(|| Error::Unsupported {
            optimizer,
            message: format!("hyperparameters must be a JSON object, got {hyper}"),
        })?;
        let unread = map
            .keys()
            .map(String::as_str)
            .filter(|k| !IMPLEMENTATION_KEYS.contains(k))
            .collect();
        Ok(Self {
            optimizer,
            map,
            unread,
        })
    }

    /// The value of `key`, if present. `null` is refused rather than read as absent: JSON
    /// writers turn a NaN into `null`, and a setting lost that way must not become a default.
    fn take(&mut self, key: &str) -> Result<Option<&'a Value>> {
        self.unread.remove(key);
        match self.map.get(key) {
            Some(Value::Null) => Err(Error::Unsupported {
                optimizer: self.optimizer,
                message: format!(
                    "hyperparameter {key} is null (a NaN written as JSON?): give a value or \
                     leave the key out"
                ),
            }),
            value => Ok(value),
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, got: &Value) -> Error {
        Error::Unsupported {
            optimizer: self.optimizer,
            message: format!("hyperparameter {key} must be {expected}, got {got}"),
        }
    }

    /// Fails if any key was never read.
    pub(crate) fn finish(self) -> Result<()> {
        if self.unread.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = self.unread.into_iter().collect();
        Err(Error::Unsupported {
            optimizer: self.optimizer,
            message: format!("unsupported hyperparameters: {}", keys.join(", ")),
        })
    }
}

impl HyperFields for HyperReader<'_> {
    /// Reads a number into `slot` if the key is present.
    fn number(&mut self, key: &str, slot: &mut f64) -> Result<()> {
        if let Some(v) = self.take(key)? {
            *slot = v
                .as_f64()
                .ok_or_else(|| self.wrong_type(key, "a number", v))?;
        }
        Ok(())
    }

    /// Reads a boolean into `slot` if the key is present.
    fn boolean(&mut self, key: &str, slot: &mut bool) -> Result<()> {
        if let Some(v) = self.take(key)? {
            *slot = v
                .as_bool()
                .ok_or_else(|| self.wrong_type(key, "true or false", v))?;
        }
        Ok(())
    }

    /// Reads a pair of numbers (`betas`) into `slot` if the key is present.
    fn pair(&mut self, key: &str, slot: &mut (f64, f64)) -> Result<()> {
        if let Some(v) = self.take(key)? {
            let pair = v
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
                .ok_or_else(|| self.wrong_type(key, "a pair of numbers", v))?;
            *slot = pair;
        }
        Ok(())
    }
}

/// Copies every field into a JSON object, PyTorch's keyword arguments of the configuration.
#[derive(Default)]
pub(crate) struct HyperWriter {
    pub(crate) map: serde_json::Map<String, Value>,
}

impl HyperWriter {
    fn put(&mut self, key: &str, value: Value) -> Result<()> {
        self.map.insert(key.to_string(), value);
        Ok(())
    }
}

impl HyperFields for HyperWriter {
    fn number(&mut self, key: &str, slot: &mut f64) -> Result<()> {
        self.put(key, Value::from(*slot))
    }

    fn boolean(&mut self, key: &str, slot: &mut bool) -> Result<()> {
        self.put(key, Value::from(*slot))
    }

    fn pair(&mut self, key: &str, slot: &mut (f64, f64)) -> Result<()> {
        self.put(key, Value::from(vec![slot.0, slot.1]))
    }
}
