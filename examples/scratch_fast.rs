use fusedopt::Optimizer;
use fusedopt::reference::{CpuOptimizer, Execution};
use ndarray::ArrayViewMut1;
use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1 << 24);
    let shift: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0);
    let cfg = Optimizer::default_for("adam").unwrap();
    let mut pbuf = vec![0.5f32; n + 64];
    let gbuf: Vec<f32> = (0..n + 64).map(|i| (i % 7) as f32 * 0.01 - 0.03).collect();
    let po = pbuf.as_ptr().align_offset(64) + shift;
    let go = gbuf.as_ptr().align_offset(64) + shift;
    println!(
        "param addr mod 64 = {}",
        (pbuf.as_ptr() as usize + po * 4) % 64
    );
    let mut o = CpuOptimizer::new(cfg, n)
        .unwrap()
        .with_execution(Execution::Fast);
    let st = o.state();
    println!(
        "state addr mod 64 = {:?}",
        st.iter()
            .map(|(_, a)| a.as_ptr() as usize % 64)
            .collect::<Vec<_>>()
    );
    let mut ts = vec![];
    for _ in 0..21 {
        let t = Instant::now();
        o.step(
            ArrayViewMut1::from(&mut pbuf[po..po + n]),
            gbuf[go..go + n].into(),
        )
        .unwrap();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    println!("adam fast shift {shift}: median {:.2} ms", ts[10] * 1e3);
}
