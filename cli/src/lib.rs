//! The `fusedopt` command's machinery, apart from its argument parsing (`main.rs`): the
//! benchmark with its report and charts, the lecture notes' demo, and checkpoint inspection. It uses the library's
//! public API only.

#![warn(missing_docs)]

pub mod bench;
mod chart;
pub mod demo;
pub mod error;
pub mod inspect;

pub use error::{Error, Result};
