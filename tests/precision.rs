//! The 16-bit precisions on the GPU: the kernels' integer conversions against the `half`
//! crate on every boundary, and every optimizer variant in every precision against the CPU
//! reference, bit for bit, at odd lengths and across chunk borders.

mod common;

use fusedopt::kernels::{self, ENTRY_POINT};
use fusedopt::optim::{random_bits, round_bf16_stochastic, step_key};
use fusedopt::testing::{gpu_against_cpu_in, variants};
use fusedopt::{HalfFormat, Optimizer, Precision, Tolerance};

/// Runs `half.wgsl`'s conversions on `inputs` (f32 bit patterns, or 16-bit patterns for the
/// widening): per input, bf16 rounding, f16 rounding, f16 widened, bf16 stochastic rounding
/// with the input's index as the random bits' counter.
fn gpu_conversions(gpu: &fusedopt::Gpu, inputs: &[u32], key: [u32; 2]) -> Vec<[u32; 4]> {
    let source = format!(
        "{}\n{}",
        kernels::HALF_WGSL,
        r#"
@group(0) @binding(0) var<storage, read> inputs: array<u32>;
@group(0) @binding(1) var<storage, read_write> outputs: array<vec4<u32>>;
@group(0) @binding(2) var<uniform> key: vec4<u32>;

@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * 65535u * 64u;
    if i >= arrayLength(&inputs) {
        return;
    }
    let x = inputs[i];
    let f = bitcast<f32>(x);
    outputs[i] = vec4(
        f32_to_bf16(f),
        f32_to_f16(f),
        bitcast<u32>(f16_to_f32(x & 0xffffu)),
        f32_to_bf16_stochastic(f, random_bits(key.xy, i, 0u)),
    );
}
"#
    );
    common::run_kernel(gpu, &source, ENTRY_POINT, inputs, inputs.len(), key)
}

/// f32 patterns around every 16-bit value of both formats: the value, its f32 neighbours, the
/// midpoint to the next value and its neighbours; plus every 16-bit pattern as is (for the
/// widening), infinities, NaNs of each kind, f32 subnormals and a spread of random patterns.
fn boundary_patterns() -> Vec<u32> {
    let mut out = Vec::new();
    for format in [HalfFormat::Bf16, HalfFormat::F16] {
        for h in 0..=u16::MAX {
            let x = format.widen(h);
            let next = format.widen(h.wrapping_add(1));
            let b = x.to_bits();
            out.extend([b, b.wrapping_add(1), b.wrapping_sub(1)]);
            if x.is_finite() && next.is_finite() && (h & 0x7fff) != 0x7fff {
                let mid = ((f64::from(x) + f64::from(next)) / 2.0) as f32;
                let m = mid.to_bits();
                out.extend([m, m.wrapping_add(1), m.wrapping_sub(1)]);
            }
        }
    }
    out.extend(0..=u32::from(u16::MAX));
    out.extend([
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffbf_ffff,
        0x0000_0001,
        0x007f_ffff,
        0x8000_0001,
    ]);
    let mut state = 0x1234_5678u32;
    out.extend((0..1 << 18).map(|_| {
        state = fusedopt::optim::hash32(state);
        state
    }));
    out
}

#[test]
fn the_kernels_conversions_are_the_half_crates_bit_for_bit() {
    let Some(gpu) = common::gpu() else { return };
    let inputs = boundary_patterns();
    let key = step_key(3, 17);
    let got = gpu_conversions(gpu, &inputs, key);
    let mut failures = Vec::new();
    for (i, (&x, out)) in inputs.iter().zip(&got).enumerate() {
        let f = f32::from_bits(x);
        let want = [
            u32::from(HalfFormat::Bf16.round(f)),
            u32::from(HalfFormat::F16.round(f)),
            HalfFormat::F16.widen(x as u16).to_bits(),
            u32::from(round_bf16_stochastic(f, random_bits(key, i as u64))),
        ];
        if *out != want && failures.len() < 10 {
            failures.push(format!("{x:#010x}: got {out:x?}, half gives {want:x?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} patterns:\n{}",
        inputs.len(),
        failures.join("\n")
    );
}

/// Every precision, with stochastic rounding on a seed of its own.
fn precisions() -> Vec<Precision> {
    let mut all = Precision::ALL.to_vec();
    all.push(Precision::Stochastic { seed: 0xdead_beef });
    all
}

#[test]
fn every_variant_in_every_precision_matches_the_reference_bit_for_bit() {
    let Some(gpu) = common::gpu() else { return };
    for precision in precisions() {
        for name in Optimizer::NAMES {
            for (k, config) in variants(name).unwrap().iter().enumerate() {
                // Odd lengths: the last word holds one element.
                let size = [1, 1001, 4099][k % 3];
                let report = gpu_against_cpu_in(
                    gpu,
                    config,
                    precision,
                    size,
                    3,
                    7 + k as u64,
                    &Tolerance::EXACT,
                )
                .unwrap();
                let all = report.overall();
                assert!(
                    all.failures == 0,
                    "{name} {} in {precision}, {size} elements: {:?}",
                    config.describe(),
                    report.tensors
                );
            }
        }
    }
}

#[test]
fn chunk_borders_never_split_a_word() {
    // Chunks of 512 words: 16-bit chunks hold 1024 elements, so 3001 elements make three
    // chunks, the last one odd (f32 ones six).
    let Some(mut gpu) = common::own_gpu() else {
        return;
    };
    gpu.set_max_chunk_bytes(2048).unwrap();
    for precision in precisions() {
        let config = Optimizer::default_for("adam").unwrap();
        let report =
            gpu_against_cpu_in(&gpu, &config, precision, 3001, 3, 5, &Tolerance::EXACT).unwrap();
        assert_eq!(
            report.overall().failures,
            0,
            "{precision}: {:?}",
            report.tensors
        );
    }
}

#[test]
fn an_odd_range_writes_its_last_half_word_and_keeps_the_other_half() {
    let Some(gpu) = common::gpu() else { return };
    // Seven 16-bit parameters in a buffer of eight: the eighth (upper half of the last word)
    // belongs to someone else and holds a sentinel.
    let sentinel = 0xabcd;
    for precision in precisions() {
        let format = precision.half_format().unwrap_or(HalfFormat::Bf16);
        if precision == Precision::F32 {
            continue;
        }
        let mut values: Vec<u16> = (0..7).map(|i| format.round(i as f32)).collect();
        values.push(sentinel);
        let params = gpu.upload_half("params", &values).unwrap();
        let grads = gpu.upload_half("grads", &[format.round(1.0); 8]).unwrap();
        let sgd = fusedopt::Sgd {
            lr: 1.0,
            ..fusedopt::Sgd::default()
        };
        let mut opt = fusedopt::GpuOptimizer::with_precision(
            gpu,
            sgd,
            precision,
            fusedopt::BufferRange::half(&params, 7),
            fusedopt::BufferRange::half(&grads, 7),
        )
        .unwrap();
        opt.step(gpu).unwrap();
        let after = gpu.download_half(&params, 0, 8).unwrap();
        let stepped: Vec<f32> = after[..7].iter().map(|&b| format.widen(b)).collect();
        let expected: Vec<f32> = (0..7).map(|i| i as f32 - 1.0).collect();
        assert_eq!(
            stepped, expected,
            "{precision}: every element stepped by -1"
        );
        assert_eq!(
            after[7], sentinel,
            "{precision}: the neighbour's half is kept"
        );
    }
}

#[test]
fn bad_precision_input_is_a_typed_error_that_changes_nothing() {
    use fusedopt::{BufferRange, CpuOptimizer, Error, GpuOptimizer, Sgd};
    // The CPU reference: the wrong step for the precision, wrong lengths, a master where none is.
    let mut f32_opt = CpuOptimizer::new(Sgd::default(), 3).unwrap();
    assert!(matches!(
        f32_opt.step_half(&mut [0; 3], &[0; 3], 0.1),
        Err(Error::InvalidSetting { .. })
    ));
    assert!(matches!(
        f32_opt.set_master(&[0.0; 3]),
        Err(Error::InvalidSetting { .. })
    ));
    let master = Precision::Master(HalfFormat::Bf16);
    let mut cpu = CpuOptimizer::with_precision(Sgd::default(), master, 3).unwrap();
    let mut params = [0x3f80u16; 3];
    assert!(matches!(
        cpu.step_half(&mut params[..2], &[0; 2], 0.1),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        cpu.step_half(&mut params, &[0; 3], -1.0),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert_eq!(
        (params, cpu.step_count(), cpu.master()),
        ([0x3f80; 3], 0, None)
    );

    let Some(gpu) = common::gpu() else { return };
    // Three 16-bit values take two words (8 bytes); five would need a third word the buffer
    // lacks.
    let p = gpu.upload_half("p", &[0x3f80; 3]).unwrap();
    let g = gpu.upload_half("g", &[0; 3]).unwrap();
    let beyond = GpuOptimizer::with_precision(
        gpu,
        Sgd::default(),
        master,
        BufferRange::half(&p, 5),
        BufferRange::half(&g, 5),
    );
    assert!(
        matches!(beyond, Err(Error::InvalidBuffer { .. })),
        "{beyond:?}"
    );
    let opt = GpuOptimizer::with_precision(
        gpu,
        Sgd::default(),
        master,
        BufferRange::half(&p, 3),
        BufferRange::half(&g, 3),
    )
    .unwrap();
    assert!(matches!(
        opt.write_master(gpu, &[2.0; 2]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(
        opt.read_master(gpu).unwrap(),
        [1.0; 3],
        "the master is untouched"
    );
}
