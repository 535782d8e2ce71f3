//! Compiled kernels, kept by the device context that built them: each kernel is compiled once
//! per device and set of override values, then shared by every optimizer on that device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::Kernel;

/// A kernel is identified by its name and its override values (as bits, to be hashable).
type Key = (&'static str, Vec<(&'static str, u64)>);

/// The kernels of one device (dense ones, or another kind `K`).
#[derive(Debug)]
pub(crate) struct PipelineCache<K = Kernel> {
    kernels: Mutex<HashMap<Key, Arc<K>>>,
}

impl<K> Default for PipelineCache<K> {
    fn default() -> Self {
        Self {
            kernels: Mutex::default(),
        }
    }
}

impl<K> PipelineCache<K> {
    /// The kernel `name` with `overrides`, built by `build` the first time it is asked for.
    /// A failed build is not remembered.
    pub(crate) fn get_or_build<E>(
        &self,
        name: &'static str,
        overrides: &[(&'static str, f64)],
        build: impl FnOnce() -> Result<K, E>,
    ) -> Result<Arc<K>, E> {
        let key = (
            name,
            overrides.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        );
        if let Some(kernel) = self.lock().get(&key) {
            return Ok(Arc::clone(kernel));
        }
        // Built without the lock held: another thread may build the same kernel meanwhile,
        // and the first one in is kept.
        let kernel = Arc::new(build()?);
        Ok(Arc::clone(self.lock().entry(key).or_insert(kernel)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<K>>> {
        self.kernels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
