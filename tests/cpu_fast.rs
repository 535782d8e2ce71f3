//! The fast CPU path (threads, wide vectors) gives the reference's numbers bit for bit, for
//! every option set and every instruction set the CPU runs, at sizes that cross its block and
//! task boundaries.

use fusedopt::reference::{BLOCK, CpuOptimizer, Execution, FAST_TASK_ELEMENTS, InstructionSet};
use fusedopt::testing::{RandomProblem, schedule, variants};
use fusedopt::{Optimizer, Result};
use ndarray::{Array1, ArrayView1, s};

/// One element; one past a block; blocks and a ragged tail.
const SIZES: [usize; 3] = [1, BLOCK + 1, 17 * BLOCK + 5];
const STEPS: u64 = 3;

/// Index and values of the first element where the two differ in their bits.
fn first_difference(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>) -> Option<(usize, f32, f32)> {
    a.iter()
        .zip(b.iter())
        .enumerate()
        .find(|(_, (x, y))| x.to_bits() != y.to_bits())
        .map(|(i, (x, y))| (i, *x, *y))
}

/// Steps the reference and the fast path, once per instruction set the CPU runs, from the same
/// data, comparing every tensor bit for bit after every step.
fn run_both(config: &Optimizer, len: usize) -> Result<()> {
    let mut problem = RandomProblem::new(len, 7);
    let mut reference = CpuOptimizer::new(config.clone(), len)?;
    let mut p_ref = Array1::from(problem.params.clone());
    let mut fast = Vec::new();
    for isa in InstructionSet::available() {
        let opt = CpuOptimizer::new(config.clone(), len)?
            .with_execution(Execution::Fast)
            .with_instruction_set(isa)?;
        assert_eq!(opt.execution(), Execution::Fast);
        fast.push((isa, opt, p_ref.clone()));
    }
    for t in 1..=STEPS {
        let grad = Array1::from(problem.next_grad());
        let lr = schedule(config.lr(), t);
        reference.step_with_lr(p_ref.view_mut(), grad.view(), lr)?;
        for (isa, opt, p_fast) in &mut fast {
            opt.step_with_lr(p_fast.view_mut(), grad.view(), lr)?;
            let mut tensors = vec![("params", p_ref.view(), p_fast.view())];
            for ((name, a), (_, b)) in reference.state().into_iter().zip(opt.state()) {
                tensors.push((name, a, b));
            }
            for (name, a, b) in tensors {
                if let Some((i, x, y)) = first_difference(a, b) {
                    panic!(
                        "{} ({}), {len} elements, step {t}, {isa:?}: {name}[{i}] \
                         reference {x:e}, fast {y:e}",
                        config.name(),
                        config.describe()
                    );
                }
            }
        }
    }
    // The data moved: a step that wrote nothing would compare equal too.
    for (_, _, p_fast) in &fast {
        assert_ne!(p_fast.as_slice(), Some(&problem.params[..]));
    }
    Ok(())
}

#[test]
fn fast_path_matches_the_reference_bit_for_bit() -> Result<()> {
    let mut cases = 0;
    for name in Optimizer::NAMES {
        for config in variants(name)? {
            for len in SIZES {
                run_both(&config, len)?;
                cases += 1;
            }
        }
    }
    assert!(
        cases >= 300,
        "every option set at every size ({cases} runs)"
    );
    Ok(())
}

#[test]
fn fast_path_matches_across_task_borders() -> Result<()> {
    // Two whole tasks, a block and a ragged tail, for each kernel with all its state on.
    let len = 2 * FAST_TASK_ELEMENTS + BLOCK + 5;
    for name in ["sgd", "adagrad", "rmsprop", "adadelta", "adam"] {
        let fullest = variants(name)?
            .into_iter()
            .max_by_key(|c| c.state_names().len())
            .expect("every optimizer has variants");
        run_both(&fullest, len)?;
    }
    Ok(())
}

#[test]
fn strided_parameters_are_stepped_in_place() -> Result<()> {
    let len = 10_001;
    let config = Optimizer::default_for("adam")?;
    let backing = Array1::from_shape_fn(2 * len, |i| i as f32 * 1e-3);
    let contiguous_start = backing.slice(s![..;2]).to_owned();
    let grad = Array1::from_shape_fn(len, |i| ((i % 13) as f32 - 6.0) * 0.1);
    for execution in [Execution::Reference, Execution::Fast] {
        let mut strided = backing.clone();
        let mut contiguous = contiguous_start.clone();
        let mut a = CpuOptimizer::new(config.clone(), len)?.with_execution(execution);
        let mut b = CpuOptimizer::new(config.clone(), len)?;
        a.step(strided.slice_mut(s![..;2]), grad.view())?;
        b.step(contiguous.view_mut(), grad.view())?;
        assert_eq!(
            first_difference(strided.slice(s![..;2]), contiguous.view()),
            None,
            "{execution:?}: a strided view steps like a contiguous one"
        );
        assert_eq!(
            strided.slice(s![1..;2]),
            backing.slice(s![1..;2]),
            "{execution:?}: elements between the strides are untouched"
        );
    }
    Ok(())
}
