"""Records learning-rate sequences from torch.optim.lr_scheduler for the options the shared
recording (tests/golden/schedules.json) leaves out, in the same format:
tests/golden/schedules_more.json. Run with torch installed:
    python3 tools/record_schedules.py > tests/golden/schedules_more.json
"""
import json
import math

import torch

CASES = [
    ("StepLR", {"step_size": 1, "gamma": 0.97}, 0.5, 30, None, None),
    ("MultiStepLR", {"milestones": [3, 3, 9, 20], "gamma": 0.5}, 0.1, 25, None, None),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.01}, 0.3, 40, None, None),
    ("LinearLR", {"start_factor": 1.0, "end_factor": 0.05, "total_iters": 12}, 0.2, 20, None, None),
    ("LinearLR", {}, 0.1, 10, None, None),
    ("CosineAnnealingWarmRestarts", {"T_0": 4, "T_mult": 1, "eta_min": 0.0}, 0.1, 30, None, None),
    ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 3}, 1.0, 50, None, None),
    ("OneCycleLR", {"max_lr": 0.5, "total_steps": 40, "anneal_strategy": "linear"}, 0.1, 40, None, None),
    ("OneCycleLR", {"max_lr": 2.0, "total_steps": 30, "three_phase": True, "pct_start": 0.25,
                    "div_factor": 10.0, "final_div_factor": 100.0}, 0.1, 30, None, None),
    ("ReduceLROnPlateau", {"mode": "max", "threshold_mode": "abs", "threshold": 0.01,
                           "patience": 2, "factor": 0.3, "min_lr": 0.0}, 1.0, 40,
     [math.sin(t / 3.0) + t / 40.0 for t in range(40)], None),
    ("SequentialLR", {"milestones": [5, 15]}, 0.1, 40, None, [
        {"scheduler": "ExponentialLR", "args": {"gamma": 0.9}},
        {"scheduler": "StepLR", "args": {"step_size": 4, "gamma": 0.5}},
        {"scheduler": "CosineAnnealingWarmRestarts", "args": {"T_0": 6, "T_mult": 2, "eta_min": 0.001}},
    ]),
    ("SequentialLR", {"milestones": [6]}, 0.1, 30, None, [
        {"scheduler": "MultiStepLR", "args": {"milestones": [2, 4], "gamma": 0.5}},
        {"scheduler": "LinearLR", "args": {"start_factor": 0.5, "total_iters": 10}},
    ]),
]


def scheduler(optimizer, name, args):
    return getattr(torch.optim.lr_scheduler, name)(optimizer, **args)


def record(name, args, lr0, steps, metrics, chain):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr0)
    if chain:
        inner = [scheduler(optimizer, c["scheduler"], c["args"]) for c in chain]
        sched = torch.optim.lr_scheduler.SequentialLR(optimizer, inner, **args)
    else:
        sched = scheduler(optimizer, name, args)
    lrs = []
    for t in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if metrics is not None:
            sched.step(metrics[t])
        elif t + 1 < steps:
            sched.step()
    case = {"scheduler": name, "args": args, "lr0": lr0, "steps": steps, "lr": lrs}
    if metrics is not None:
        case["metrics"] = metrics
    if chain:
        case["chain"] = chain
    return case


if __name__ == "__main__":
    print(json.dumps({"framework": f"torch {torch.__version__}",
                      "cases": [record(*c) for c in CASES]}, indent=1))
