//! `fusedopt demo`: the lecture notes' optimizer experiments, run through fusedopt's own GPU
//! kernels. This part holds the test problems and the exact f64 arithmetic they are judged by.

mod quadratic;

pub use quadratic::{Eigen, ExactCheck, ExactGd, Quadratic, check_against_exact};
