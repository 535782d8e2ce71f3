//! The one error type of the crate.

/// Everything that can go wrong in fusedopt. Every public fallible call returns it; nothing in
/// the library panics on bad input or on a wgpu failure.
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
    /// Options that PyTorch rejects together, or that fusedopt does not support.
    #[error("{optimizer}: {message}")]
    Unsupported {
        /// Optimizer the options were given to.
        optimizer: &'static str,
        /// What is wrong.
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
    /// A buffer handed to fusedopt cannot be used as it is (usage flags, alignment, size).
    #[error("unusable buffer {what}: {message}")]
    InvalidBuffer {
        /// Which buffer.
        what: String,
        /// Why it cannot be used.
        message: String,
    },
    /// A request beyond what the device allows.
    #[error("{what} needs {requested} bytes but the device allows at most {limit} ({limit_name})")]
    LimitExceeded {
        /// What was being created.
        what: String,
        /// Bytes asked for.
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
    #[error("could not create a device on {adapter}: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The device ran out of memory; nothing was changed.
    #[error("out of GPU memory while {0}")]
    OutOfMemory(String),
    /// wgpu reported a validation or internal error.
    #[error("wgpu error while {context}: {message}")]
    Wgpu {
        /// What fusedopt was doing.
        context: String,
        /// wgpu's message.
        message: String,
    },
    /// A shader failed validation (a bug in fusedopt; reported with naga's diagnostic).
    #[error("shader {kernel} is invalid: {diagnostic}")]
    ShaderValidation {
        /// Kernel name.
        kernel: &'static str,
        /// naga's rendered diagnostic.
        diagnostic: String,
    },
    /// The device was lost (driver reset, removal, destroy).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// Waiting for the GPU timed out.
    #[error("timed out after {0:?} waiting for the GPU")]
    Timeout(std::time::Duration),
    /// Mapping a buffer for readback failed.
    #[error("reading back {what} failed: {message}")]
    Readback {
        /// Which buffer.
        what: String,
        /// The cause.
        message: String,
    },
    /// A reference-trajectory file that cannot be read or does not follow the format.
    #[error("{path}: {message}")]
    Golden {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A command-line or benchmark argument that cannot be used.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Drawing a chart of a report failed.
    #[error("drawing {path}: {message}")]
    Chart {
        /// The chart file.
        path: String,
        /// What the plotting library reported.
        message: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
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
