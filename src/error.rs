//! The one error type of the library.

use std::time::Duration;

/// Everything that can go wrong in fusedopt. Every public fallible call returns it; nothing in
/// the library panics on bad input or on a wgpu failure, and a call that fails changes nothing
/// the caller had. wgpu's own errors are kept as the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter outside the range PyTorch accepts.
    #[error("{optimizer}: invalid {name}: {value} ({requirement})")]
    InvalidHyperparameter {
        /// Optimizer whose configuration was rejected.
        optimizer: &'static str,
        /// PyTorch's name of the parameter.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// What a valid value looks like.
        requirement: &'static str,
    },
    /// Options that PyTorch rejects together, an unknown optimizer or keyword, or options
    /// fusedopt does not support.
    #[error("{optimizer}: {message}")]
    Unsupported {
        /// Optimizer the options were given to (`fusedopt` for an unknown name).
        optimizer: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A setting or an argument that cannot be used: a layout that does not fit in memory
    /// arithmetic, a limit set outside what the device allows, a feature the device lacks.
    #[error("invalid {what}: {message}")]
    InvalidSetting {
        /// What was set.
        what: String,
        /// Why it cannot be used.
        message: String,
    },
    /// Two tensors that must have the same number of elements do not.
    #[error("length mismatch for {what}: expected {expected} elements, got {got}")]
    LengthMismatch {
        /// Which tensor had the wrong length.
        what: String,
        /// Elements required.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A buffer handed to fusedopt cannot be used as it is: usage flags, alignment, range,
    /// or ranges that alias or overlap.
    #[error("unusable buffer {what}: {message}")]
    InvalidBuffer {
        /// Which buffer.
        what: String,
        /// Why it cannot be used.
        message: String,
    },
    /// A buffer of another device than the one the call runs on.
    #[error("unusable buffer {what}: it belongs to another device")]
    ForeignBuffer {
        /// Which buffer.
        what: String,
        /// wgpu's report; none where the buffer is another wgpu instance's, unknown to this
        /// device's.
        #[source]
        source: Option<wgpu::Error>,
    },
    /// A request beyond what the device allows.
    #[error("{what} needs {requested} but the device allows at most {limit} ({limit_name})")]
    LimitExceeded {
        /// What was being created.
        what: String,
        /// Amount asked for (bytes, or workgroups for a dispatch).
        requested: u64,
        /// The device's limit.
        limit: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
    },
    /// No adapter matched the request (or none exists).
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device on {adapter}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's report.
        #[source]
        source: wgpu::RequestDeviceError,
    },
    /// The device ran out of memory; nothing was changed.
    #[error("out of GPU memory while {context}")]
    OutOfMemory {
        /// What fusedopt was doing.
        context: String,
        /// wgpu's report.
        #[source]
        source: wgpu::Error,
    },
    /// wgpu reported a validation or internal error.
    #[error("wgpu error while {context}")]
    Wgpu {
        /// What fusedopt was doing.
        context: String,
        /// wgpu's report.
        #[source]
        source: wgpu::Error,
    },
    /// The device was lost (driver reset, removal, destroy).
    #[error("the GPU device was lost ({0}); every later call on it fails for that reason")]
    DeviceLost(String),
    /// Waiting for the GPU timed out. The work that was submitted still runs.
    #[error("timed out after {0:?} waiting for the GPU")]
    Timeout(Duration),
    /// Mapping a buffer into host memory failed (for readback, or to write a step's scalars).
    #[error("mapping {what} failed")]
    Mapping {
        /// Which buffer.
        what: String,
        /// wgpu's report.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A reference-trajectory file that does not follow the format.
    #[error("{path}: {message}")]
    Golden {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint that cannot be read or does not fit the optimizer it is restored into:
    /// truncated, corrupt, foreign, of another format version, or saved from another
    /// optimizer, option set, precision or layout. Nothing was changed.
    #[error("checkpoint {origin}: {message}")]
    Checkpoint {
        /// The file (or `memory`).
        origin: String,
        /// What is wrong or differs.
        message: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<super::Error>();
    }
}
