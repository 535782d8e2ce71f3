#!/usr/bin/env python3
"""PyTorch's own optimizer steps and copy bandwidth, timed the way `fusedopt bench` times its own.

Reads the `results.json` that `fusedopt bench --out DIR` wrote in the same run and, for every
GPU row there, steps the matching `torch.optim` optimizer on the same device: the same size,
the same number of rotated parameter sets (so that neither side finds its data in a cache the
other side misses), and for the transformer-layout rows the same list of tensors in the same two
parameter groups. `fused=True` where PyTorch has it for the device, else `foreach=True`; the
row says which.

Timing: each sample is one pair of CUDA events around a batch of consecutive steps (the host
clock after a synchronize on the CPU), divided by the batch's length, so the GPU is kept busy
as a training loop keeps it and no sample includes the wait for one step to be launched; the
median of the samples after warm-up is reported. fusedopt's rows are timestamps around each
step's compute pass, also back to back in one submission. The copy bandwidth is `dst.copy_(src)`
over the size of fusedopt's roofline copy, counted like fusedopt's (4 bytes read, 4 written).

    python3 torch_bench.py --fusedopt results.json --out torch.json [--device cuda]
"""

import argparse
import gc
import json
import math
import statistics
import sys
import time

import torch

# fusedopt's bench cases (optimizer, variant) -> torch.optim class and keyword arguments. The
# hyperparameters are each optimizer's defaults in both, so the arithmetic matches too.
CASES = {
    ("sgd", "default"): ("SGD", {"lr": 1e-3}),
    ("sgd", "momentum"): ("SGD", {"lr": 1e-3, "momentum": 0.9}),
    ("adagrad", "default"): ("Adagrad", {"lr": 1e-2}),
    ("rmsprop", "default"): ("RMSprop", {"lr": 1e-2}),
    ("rmsprop", "centered"): ("RMSprop", {"lr": 1e-2, "centered": True}),
    ("rmsprop", "momentum"): ("RMSprop", {"lr": 1e-2, "momentum": 0.9}),
    ("rmsprop", "centered+momentum"): ("RMSprop", {"lr": 1e-2, "centered": True, "momentum": 0.9}),
    ("adadelta", "default"): ("Adadelta", {"lr": 1.0}),
    ("adam", "default"): ("Adam", {"lr": 1e-3}),
    ("adam", "amsgrad"): ("Adam", {"lr": 1e-3, "amsgrad": True}),
    ("adamw", "default"): ("AdamW", {"lr": 1e-3}),
    ("adamw", "amsgrad"): ("AdamW", {"lr": 1e-3, "amsgrad": True}),
    # The whole-model rows step AdamW, as fusedopt's do.
    ("adamw", "transformer-layout"): ("AdamW", {"lr": 1e-3}),
    ("adamw", "flat-same-size"): ("AdamW", {"lr": 1e-3}),
}


class Clock:
    """Per-step times in seconds: CUDA events on a CUDA device, else the host clock."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, work, warmup, min_samples, max_samples, target_s):
        """Per-step seconds of `work`: `min_samples` to `max_samples` batches, until `target_s`
        of timed work, each batch long enough (about a millisecond, at most 64 steps) that
        launching it is hidden behind the GPU's work."""
        for _ in range(warmup):
            work()
        self.sync()
        start = time.perf_counter()
        work()
        self.sync()
        estimate = max(time.perf_counter() - start, 1e-7)
        batch = max(1, min(64, int(1e-3 / estimate)))
        times = []
        while len(times) < min_samples or (
            len(times) < max_samples and sum(times) * batch < target_s
        ):
            if self.cuda:
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(batch):
                    work()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end) * 1e-3 / batch)
            else:
                begin = time.perf_counter()
                for _ in range(batch):
                    work()
                times.append((time.perf_counter() - begin) / batch)
        return {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "samples": len(times),
            "steps_per_sample": batch,
        }


# Out of memory is not a reason to try another implementation: it ends the row.
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def make_optimizer(device, class_name, kwargs, groups):
    """The optimizer over `groups` with fused=True if PyTorch takes it here, else foreach=True.
    A first step is taken to find out, since some refuse only when stepping."""
    cls = getattr(torch.optim, class_name)
    for flavour in ("fused", "foreach"):
        try:
            opt = cls(groups, **kwargs, **{flavour: True})
            opt.step()
            return opt, flavour
        except OUT_OF_MEMORY:
            raise
        except (RuntimeError, ValueError, TypeError) as e:
            last = e
    raise RuntimeError(f"{class_name} runs neither fused nor foreach on {device}: {last}")


def parameter_set(device, shapes, generator):
    """Tensors of `shapes` with random parameters and gradients (never zeros)."""
    params = []
    for shape in shapes:
        p = torch.randn(shape, device=device, generator=generator) * 0.1
        p.requires_grad_(True)
        p.grad = torch.randn(shape, device=device, generator=generator) * 0.01
        params.append(p)
    return params


def groups_of(params, group_ids, class_name, kwargs):
    """Two parameter groups like fusedopt's layout rows: weight decay 0.01 (AdamW's default) on
    group 0 (matrices), none on group 1 (biases, norms). Flat rows have one group."""
    if group_ids is None:
        return [{"params": params}]
    decay = kwargs.get("weight_decay", 1e-2 if class_name == "AdamW" else 0.0)
    out = []
    for g in (0, 1):
        members = [p for p, gid in zip(params, group_ids) if gid == g]
        if members:
            out.append({"params": members, "weight_decay": decay if g == 0 else 0.0})
    return out


def measure_row(device, clock, row, layouts, args):
    key = (row["optimizer"], row["variant"])
    class_name, kwargs = CASES[key]
    size = row["size"]
    if row["variant"] == "transformer-layout":
        layout = layouts.get(size)
        if layout is None:
            return None
        shapes = [t["shape"] for t in layout["tensors"]]
        group_ids = [t["group"] for t in layout["tensors"]]
        numel = sum(math.prod(s) for s in shapes)
    else:
        shapes, group_ids, numel = [[size]], None, size
    sets = max(1, row.get("rotation_sets", 1))
    generator = torch.Generator(device=device).manual_seed(size)
    optimizers = []
    flavour = None
    for _ in range(sets):
        params = parameter_set(device, shapes, generator)
        opt, flavour = make_optimizer(device, class_name, kwargs, groups_of(params, group_ids, class_name, kwargs))
        optimizers.append((opt, params))
    turn = [0]

    def step():
        opt = optimizers[turn[0]][0]
        turn[0] = (turn[0] + 1) % len(optimizers)
        opt.step()

    summary = clock.time(step, args.warmup + sets, args.min_samples, args.max_samples, args.target_s)
    return {
        "optimizer": row["optimizer"],
        "variant": row["variant"],
        "size": size,
        "numel": numel,
        "tensors": len(shapes),
        "torch_class": class_name,
        "torch_kwargs": kwargs,
        "implementation": flavour,
        "rotation_sets": sets,
        **summary,
    }


def copy_bandwidth(device, clock, size, args):
    src = torch.randn(size, device=device)
    dst = torch.empty_like(src)
    summary = clock.time(lambda: dst.copy_(src), args.warmup, args.min_samples, args.max_samples, args.target_s)
    return {"size": size, "bytes_per_element": 8, "bytes_per_s": 8 * size / summary["median_s"], **summary}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusedopt", required=True, help="results.json of `fusedopt bench --out`")
    parser.add_argument("--out", required=True, help="where to write PyTorch's rows (JSON)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-samples", type=int, default=7)
    parser.add_argument("--max-samples", type=int, default=50)
    parser.add_argument("--target-s", type=float, default=0.3, help="seconds of timed steps per row")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_bench.py: CUDA is not available to this PyTorch (use --device cpu)")
    with open(args.fusedopt) as f:
        fusedopt = json.load(f)
    layouts = {l["size"]: l for l in fusedopt.get("layouts", [])}
    rows = [r for r in fusedopt["rows"] if r["implementation"] == "gpu" and r["optimizer"] != "copy"]
    clock = Clock(device)

    out = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "copy": copy_bandwidth(device, clock, fusedopt["roofline"]["size"], args),
        "rows": [],
        "skipped": [],
    }
    print(f"torch {out['torch']} on {out['device']}: copy {out['copy']['bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
    for row in rows:
        name = f"{row['optimizer']}/{row['variant']} at {row['size']}"
        try:
            measured = measure_row(device, clock, row, layouts, args)
        except Exception as e:  # one row that cannot run never stops the others
            out["skipped"].append(f"{name}: {type(e).__name__}: {e}")
            print(f"{name}: skipped ({type(e).__name__})", flush=True)
            measured = None
        # The row's tensors are garbage now: give their memory back before the next row.
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if measured is not None:
            out["rows"].append(measured)
            print(
                f"{row['optimizer']}/{row['variant']:<18} {row['size']:>11} {measured['implementation']:<8} "
                f"{measured['median_s'] * 1e3:9.3f} ms",
                flush=True,
            )
        # Written after every row, so that a crash keeps what was measured.
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
