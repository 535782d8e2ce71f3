//! The `fusedopt` command's machinery, apart from its argument parsing (`main.rs`): the
//! benchmark with its report and charts, and the lecture notes' demo. It uses the library's
//! public API only.

#![warn(missing_docs)]

pub mod bench;
mod chart;
pub mod demo;
pub mod error;

pub use error::{Error, Result};
