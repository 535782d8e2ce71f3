//! The benchmark machinery on the adapter at hand: every row is filled, both GPU clocks work,
//! timestamps agree with the wall clock around them, the report folder and the JSON schema are
//! as documented, and bad options are errors.

use std::time::{Duration, Instant};

use fusedopt_cli::bench::{
    self, BenchOptions, Clock, GpuSteps, GpuTimer, Implementation, Sampling, cases,
};
use fusedopt_cli::{Error, Result};

fn quick(names: &[&str], gpu: Option<&fusedopt::Gpu>) -> Result<BenchOptions> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut options = BenchOptions::defaults(&names, gpu)?;
    options.sizes = vec![5_000, 70_001];
    options.sampling = Sampling {
        warmup_steps: 1,
        min_samples: 3,
        max_samples: 5,
        target_time: Duration::from_millis(1),
    };
    options.rotation_bytes = 1 << 20;
    options.roofline_size = 1 << 20;
    Ok(options)
}

#[test]
fn every_row_is_measured_with_both_clocks() -> Result<()> {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return Ok(());
    };
    for force_wall_clock in [false, true] {
        let mut options = quick(&["sgd", "adam"], Some(gpu))?;
        options.force_wall_clock = force_wall_clock;
        let report = bench::run(Some(gpu), &options, |_| {})?;
        let steps: Vec<_> = report
            .rows
            .iter()
            .filter(|r| r.optimizer != "copy")
            .collect();
        // sgd, sgd/momentum, adam, adam/amsgrad at two sizes, three implementations each.
        assert_eq!(steps.len(), 4 * 2 * 3);
        assert_eq!(
            report.rows.len(),
            steps.len() + 2,
            "one roofline row per device"
        );
        for row in &report.rows {
            assert!(row.min_s > 0.0 && row.min_s <= row.median_s && row.median_s <= row.max_s);
            assert!(row.samples >= 3, "{row:?}");
            assert!(row.roofline_fraction.is_finite() && row.roofline_fraction > 0.0);
            let want = (row.size * row.bytes_per_element) as f64 / row.median_s;
            assert!((row.bytes_per_s - want).abs() <= 1e-9 * want);
            assert!(!row.adapter.is_empty());
            if row.implementation == Implementation::Gpu {
                let expected = if force_wall_clock
                    || !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY)
                {
                    Clock::Wall
                } else {
                    Clock::Timestamp
                };
                assert_eq!(row.clock, expected, "{row:?}");
            }
        }
        let rotated = steps
            .iter()
            .find(|r| r.size == 5_000 && r.optimizer == "sgd")
            .unwrap();
        assert!(
            rotated.rotation_sets > 1,
            "small sizes rotate over several sets"
        );
    }
    Ok(())
}

#[test]
fn timestamps_fit_inside_the_wall_clock_around_them() -> Result<()> {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return Ok(());
    };
    if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        eprintln!("adapter has no timestamp queries: only the wall clock is used");
        return Ok(());
    }
    let timer = GpuTimer::new(gpu, false)?;
    assert_eq!(timer.clock(), Clock::Timestamp);
    let adam = cases(&["adam".into()])?.remove(0);
    let mut steps = GpuSteps::new(gpu, &adam.config, 1 << 20, 1)?;
    timer.time_batch(gpu, 2, |e, t| steps.record_step(gpu, e, t))?;
    let start = Instant::now();
    let times = timer.time_batch(gpu, 8, |e, t| steps.record_step(gpu, e, t))?;
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(times.len(), 8, "one time per step");
    let total: f64 = times.iter().sum();
    assert!(times.iter().all(|&t| t > 0.0), "{times:?}");
    assert!(
        total <= wall,
        "GPU passes took {total} s inside a wall time of {wall} s"
    );
    Ok(())
}

#[test]
fn the_report_folder_and_json_follow_the_documented_schema() -> Result<()> {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return Ok(());
    };
    let report = bench::run(Some(gpu), &quick(&["rmsprop"], Some(gpu))?, |_| {})?;
    let json: serde_json::Value = serde_json::from_str(&bench::report::json(&report)?).unwrap();
    let rows = json.as_array().expect("one JSON array");
    assert!(!rows.is_empty());
    for row in rows {
        for field in [
            "optimizer",
            "variant",
            "size",
            "implementation",
            "median_s",
            "min_s",
            "max_s",
            "elements_per_s",
            "bytes_per_s",
            "roofline_fraction",
            "adapter",
        ] {
            assert!(row.get(field).is_some(), "{field} missing in {row}");
        }
        let implementation = row["implementation"].as_str().unwrap();
        assert!(["cpu-reference", "cpu-fast", "gpu"].contains(&implementation));
    }
    let dir = std::env::temp_dir().join(format!("fusedopt-bench-test-{}", std::process::id()));
    let files = bench::report::write(&report, &dir, "test")?;
    for name in [
        "report.md",
        "results.json",
        "throughput-rmsprop.svg",
        "gpu-vs-cpu.svg",
        "roofline.svg",
    ] {
        let path = dir.join(name);
        assert!(files.contains(&path), "{name} written");
        let text = std::fs::read_to_string(&path).unwrap();
        if name.ends_with(".svg") {
            assert!(text.starts_with("<svg"), "{name} is an SVG");
            assert!(
                text.contains("<polyline") || text.contains("<path"),
                "{name} has lines"
            );
        }
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("rmsprop/centered+momentum") && md.contains("roofline.svg"));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn bad_options_are_errors() -> Result<()> {
    let mut options = quick(&["sgd"], None)?;
    assert!(
        !options.implementations.contains(&Implementation::Gpu),
        "no GPU row without a device"
    );
    options.implementations.push(Implementation::Gpu);
    assert!(matches!(
        bench::run(None, &options, |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    let mut options = quick(&["sgd"], None)?;
    options.sizes = vec![0];
    assert!(matches!(
        bench::run(None, &options, |_| {}),
        Err(Error::InvalidArgument(_))
    ));
    assert!(cases(&["adamax".into()]).is_err());
    Ok(())
}

#[test]
fn the_transformer_layout_is_measured_against_a_flat_tensor_of_its_size() -> Result<()> {
    let Some(gpu) = fusedopt::testing::gpu() else {
        return Ok(());
    };
    let mut options = quick(&["adamw"], Some(gpu))?;
    options.sizes = vec![bench::MODEL_LAYOUT_MIN_SIZE];
    options.implementations = vec![Implementation::Gpu];
    assert!(options.model_layouts, "on by default with a GPU");
    let report = bench::run(Some(gpu), &options, |_| {})?;
    let model: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.variant == bench::MODEL_VARIANT || r.variant == bench::FLAT_VARIANT)
        .collect();
    assert_eq!(model.len(), 2, "one layout row and one flat row");
    assert_eq!(model[0].size, model[1].size, "the same number of elements");
    assert!(model[0].size >= bench::MODEL_LAYOUT_MIN_SIZE / 2);
    assert_eq!(bench::report::layout_comparisons(&report).len(), 1);
    Ok(())
}
