//! Learning-rate schedules against the sequences recorded from PyTorch
//! (`tests/golden/schedules.json`, from `../shared/golden`, and `schedules_more.json`, the
//! options it leaves out, by `tools/record_schedules.py`): every scheduler class, the rate in
//! force at every optimizer step within 1e-12 relative; and PyTorch's refusals.

use fusedopt::{Schedule, Scheduler};
use serde_json::{Value, json};

/// The shared recording, and the options it leaves out (`tools/record_schedules.py`).
fn cases() -> Vec<Value> {
    let mut cases = Vec::new();
    for file in ["schedules.json", "schedules_more.json"] {
        let path = format!("{}/tests/golden/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        cases.extend(file["cases"].as_array().unwrap().iter().cloned());
    }
    cases
}

/// The case's schedule, SequentialLR's chain given as its `schedulers` argument.
fn schedule_of(case: &Value) -> Schedule {
    let mut args = case["args"].clone();
    if let Some(chain) = case.get("chain") {
        args["schedulers"] = chain.clone();
    }
    Schedule::from_torch(case["scheduler"].as_str().unwrap(), &args).unwrap()
}

#[test]
fn every_schedule_follows_pytorch_to_1e_12() {
    let cases = cases();
    let mut names: Vec<&str> = Vec::new();
    for case in &cases {
        let name = case["scheduler"].as_str().unwrap();
        names.push(name);
        let mut scheduler =
            Scheduler::new(schedule_of(case), case["lr0"].as_f64().unwrap()).unwrap();
        let expected: Vec<f64> = case["lr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let metrics = case.get("metrics").and_then(Value::as_array);
        let mut worst = 0.0f64;
        for (t, want) in expected.iter().enumerate() {
            let got = scheduler.lr();
            let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-12,
                "{name} step {t}: {got} against PyTorch's {want} ({rel:e})"
            );
            match metrics {
                Some(m) => scheduler.step_with_metric(m[t].as_f64().unwrap()).unwrap(),
                None if t + 1 < expected.len() => scheduler.step().unwrap(),
                None => {}
            }
        }
        eprintln!(
            "{name}: {} steps, worst relative difference {worst:e}",
            expected.len()
        );
    }
    for class in [
        "StepLR",
        "MultiStepLR",
        "ExponentialLR",
        "CosineAnnealingLR",
        "LinearLR",
        "SequentialLR",
        "ReduceLROnPlateau",
        "CosineAnnealingWarmRestarts",
        "OneCycleLR",
    ] {
        assert!(names.contains(&class), "{class} is recorded");
    }
}

#[test]
fn what_pytorch_refuses_is_an_error() {
    let refused = [
        ("StepLR", json!({})),
        ("StepLR", json!({"step_size": 0})),
        ("StepLR", json!({"step_size": 3, "gama": 0.5})),
        ("ExponentialLR", json!({"gamma": null})),
        ("LinearLR", json!({"start_factor": 0.0})),
        ("LinearLR", json!({"end_factor": 1.5})),
        ("CosineAnnealingLR", json!({"T_max": 0})),
        (
            "CosineAnnealingWarmRestarts",
            json!({"T_0": 10, "T_mult": 0}),
        ),
        (
            "OneCycleLR",
            json!({"max_lr": 1.0, "total_steps": 50, "anneal_strategy": "sine"}),
        ),
        (
            "OneCycleLR",
            json!({"max_lr": 1.0, "total_steps": 50, "pct_start": 1.5}),
        ),
        (
            "OneCycleLR",
            json!({"max_lr": 1.0, "total_steps": 10, "pct_start": 0.1}),
        ),
        ("ReduceLROnPlateau", json!({"factor": 1.0})),
        ("ReduceLROnPlateau", json!({"mode": "lowest"})),
        (
            "SequentialLR",
            json!({"milestones": [3, 4], "schedulers": [{"scheduler": "ExponentialLR", "args": {"gamma": 0.9}}]}),
        ),
        ("CyclicLR", json!({})),
    ];
    for (name, args) in refused {
        assert!(Schedule::from_torch(name, &args).is_err(), "{name} {args}");
    }
}

#[test]
fn one_cycle_past_its_steps_and_a_metric_where_none_is_taken_are_errors() {
    let cycle =
        Schedule::from_torch("OneCycleLR", &json!({"max_lr": 1.0, "total_steps": 10})).unwrap();
    let mut s = Scheduler::new(cycle, 0.1).unwrap();
    for _ in 0..10 {
        s.step().unwrap();
    }
    let before = s.lr();
    assert!(s.step().is_err());
    assert_eq!(s.lr(), before, "a refused step changes nothing");
    let mut exp = Scheduler::new(Schedule::Exponential { gamma: 0.5 }, 1.0).unwrap();
    assert!(exp.step_with_metric(1.0).is_err());
    let plateau = Schedule::from_torch("ReduceLROnPlateau", &json!({})).unwrap();
    let mut p = Scheduler::new(plateau, 1.0).unwrap();
    assert!(p.step().is_err());
    assert!(p.step_with_metric(f64::NAN).is_err());
}
