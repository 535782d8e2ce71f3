//! The tool's errors: the library's (file errors among them), and what only the tool does
//! (arguments, demo settings, charts, JSON).

/// Everything the `fusedopt` command can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the library.
    #[error(transparent)]
    Fusedopt(#[from] fusedopt::Error),
    /// A command-line or benchmark argument that cannot be used.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A demo setting or problem that cannot be used.
    #[error("demo: {0}")]
    Demo(String),
    /// Drawing a chart failed.
    #[error("drawing {path}: {message}")]
    Chart {
        /// The chart file.
        path: String,
        /// What the plotting library reported.
        message: String,
    },
    /// Serializing a report failed.
    #[error("writing JSON")]
    Json(#[from] serde_json::Error),
}

/// An error's message and every cause under it, on one line (`a: b: c`), as the command
/// prints errors.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Result with the tool's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
