#!/usr/bin/env python3
"""The GPU evaluation's report: the launch-shape sweep, fusedopt beside PyTorch, the targets.

    python3 report.py pick-shape DIR   prints the flags of the fastest launch shape in DIR/*.json
    python3 report.py report DIR       writes DIR/report.md and DIR/sidebyside.json from
                                       DIR/results.json, DIR/torch.json, DIR/tune/ and the logs

Standard library only, so it runs wherever the benchmark ran.
"""

import json
import os
import re
import sys

# The targets of the GPU evaluation (README, "Results"; issue 9), at these sizes.
TARGET_SIZES = (1 << 26, 1 << 28)
COPY_FRACTION = 0.90  # every variant, of fusedopt's own copy kernel
COPY_VS_TORCH = 0.95  # fusedopt's copy kernel, of PyTorch's device-to-device copy
ADAM_FLAT = 0.95  # Adam and AdamW, times PyTorch's fused step on one flat tensor
ADAM_LIST = 0.80  # the same on the transformer-shaped list
FOREACH = 0.50  # RMSprop, Adadelta, Adagrad, times PyTorch's foreach step
LAYOUT_VS_FLAT = 0.05  # the transformer layout's extra time over one flat tensor
SMALL_SIZE = 1 << 20
SMALL_VS_FUSED = 2.0  # at 2^20, times PyTorch fused
HOST_RECORD_S = 20e-6  # host time to record one whole-model step


def load(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def tune_rows(tune_dir):
    """(name, flags, adam median, copy bytes/s) of every sweep run that produced rows."""
    out = []
    for file in sorted(os.listdir(tune_dir)):
        if not file.endswith(".json"):
            continue
        try:
            rows = load(os.path.join(tune_dir, file))
        except json.JSONDecodeError:
            continue
        if not rows:
            continue
        m = re.match(r"wg(\d+)-e(\d+)(?:-max(\d+))?\.json$", file)
        if not m:
            continue
        flags = ["--workgroup-size", m[1], "--elements-per-invocation", m[2]]
        if m[3]:
            flags += ["--max-workgroups", m[3]]
        adam = next((r for r in rows if r["optimizer"] == "adam" and r["variant"] == "default"), None)
        copy = next((r for r in rows if r["optimizer"] == "copy" and r["implementation"] == "gpu"), None)
        amsgrad = next((r for r in rows if r["optimizer"] == "adam" and r["variant"] == "amsgrad"), None)
        if adam and copy:
            out.append(
                {
                    "shape": file[:-5],
                    "flags": flags,
                    "adam_median_s": adam["median_s"],
                    "amsgrad_median_s": amsgrad["median_s"] if amsgrad else None,
                    "copy_bytes_per_s": copy["bytes_per_s"],
                    "adam_roofline_fraction": adam["roofline_fraction"],
                    "size": adam["size"],
                }
            )
    return out


def pick_shape(tune_dir):
    """The flags of the shape with the fastest Adam step at the largest size swept (the default
    shape when nothing was measured)."""
    rows = tune_rows(tune_dir)
    if not rows:
        return ["--workgroup-size", "256", "--elements-per-invocation", "1"]
    size = max(r["size"] for r in rows)
    best = min((r for r in rows if r["size"] == size), key=lambda r: r["adam_median_s"])
    return best["flags"]


def ms(s):
    return "—" if s is None else f"{s * 1e3:.3f}"


def pct(x):
    return "—" if x is None else f"{100 * x:.0f} %"


def label(optimizer, variant):
    return optimizer if variant == "default" else f"{optimizer}/{variant}"


def side_by_side(fused, torch):
    """One entry per fusedopt GPU step row, with PyTorch's matching row where there is one."""
    copy_fo = fused["roofline"]["gpu_bytes_per_s"]
    copy_pt = torch["copy"]["bytes_per_s"] if torch else None
    by_key = {}
    for r in (torch or {}).get("rows", []):
        by_key[(r["optimizer"], r["variant"], r["size"])] = r
    out = []
    for r in fused["rows"]:
        if r["implementation"] != "gpu" or r["optimizer"] == "copy":
            continue
        t = by_key.get((r["optimizer"], r["variant"], r["size"]))
        moved = r["size"] * r["bytes_per_element"]
        out.append(
            {
                "optimizer": r["optimizer"],
                "variant": r["variant"],
                "size": r["size"],
                "bytes_per_element": r["bytes_per_element"],
                "fusedopt_s": r["median_s"],
                "torch_s": t["median_s"] if t else None,
                "torch_implementation": t["implementation"] if t else None,
                "ratio": r["median_s"] / t["median_s"] if t else None,
                "of_fusedopt_copy": moved / r["median_s"] / copy_fo if copy_fo else None,
                "of_torch_copy": moved / r["median_s"] / copy_pt if copy_pt else None,
                "torch_of_torch_copy": moved / t["median_s"] / copy_pt if t and copy_pt else None,
            }
        )
    return out


def layout_rows(rows, fused, size):
    """The transformer-layout rows of the layout asked for at `size` (its own size is the
    nearest a transformer of whole widths comes to it)."""
    sizes = {l["size"] for l in fused.get("layouts", []) if l.get("requested") == size}
    return [r for r in rows if r["variant"] == "transformer-layout" and r["size"] in sizes]


def targets(fused, torch, rows):
    """(target, measured, verdict) lines."""
    out = []

    def verdict(ok):
        return "met" if ok else "MISSED"

    step_rows = [r for r in rows if r["variant"] not in ("transformer-layout", "flat-same-size")]
    for size in TARGET_SIZES:
        at = [r for r in step_rows if r["size"] == size]
        if not at:
            out.append((f"every variant ≥ {COPY_FRACTION:.2f} of the copy kernel at 2^{size.bit_length() - 1}", "not measured", "—"))
            continue
        worst = min(at, key=lambda r: r["of_fusedopt_copy"])
        out.append(
            (
                f"every variant ≥ {COPY_FRACTION:.2f} of fusedopt's copy kernel at 2^{size.bit_length() - 1}",
                f"worst {label(worst['optimizer'], worst['variant'])} {worst['of_fusedopt_copy']:.3f}",
                verdict(worst["of_fusedopt_copy"] >= COPY_FRACTION),
            )
        )
    if torch:
        ratio = fused["roofline"]["gpu_bytes_per_s"] / torch["copy"]["bytes_per_s"]
        out.append(
            (
                f"fusedopt's copy kernel ≥ {COPY_VS_TORCH:.2f} of PyTorch's copy",
                f"{fused['roofline']['gpu_bytes_per_s'] / 1e9:.0f} / {torch['copy']['bytes_per_s'] / 1e9:.0f} GB/s = {ratio:.3f}",
                verdict(ratio >= COPY_VS_TORCH),
            )
        )
        for size in TARGET_SIZES:
            p = f"2^{size.bit_length() - 1}"
            for name in ("adam", "adamw"):
                r = next((r for r in rows if (r["optimizer"], r["variant"], r["size"]) == (name, "default", size)), None)
                if r and r["ratio"] is not None:
                    out.append((f"{name} ≤ {ADAM_FLAT:.2f} × PyTorch {r['torch_implementation']} at {p}, one flat tensor", f"{r['ratio']:.3f}", verdict(r["ratio"] <= ADAM_FLAT)))
            for r in layout_rows(rows, fused, size):
                if r["ratio"] is not None:
                    out.append((f"adamw ≤ {ADAM_LIST:.2f} × PyTorch {r['torch_implementation']} on the transformer list near {p} ({r['size']})", f"{r['ratio']:.3f}", verdict(r["ratio"] <= ADAM_LIST)))
            foreach = [r for r in step_rows if r["size"] == size and r["optimizer"] in ("rmsprop", "adadelta", "adagrad") and r["ratio"] is not None]
            if foreach:
                worst = max(foreach, key=lambda r: r["ratio"])
                out.append((f"RMSprop, Adadelta, Adagrad ≤ {FOREACH:.2f} × PyTorch's step at {p}", f"worst {label(worst['optimizer'], worst['variant'])} {worst['ratio']:.3f} (PyTorch {worst['torch_implementation']})", verdict(worst["ratio"] <= FOREACH)))
        small = [r for r in rows if r["optimizer"] == "adamw" and (r["variant"] == "default" and r["size"] == SMALL_SIZE)]
        small += layout_rows(rows, fused, SMALL_SIZE)
        for r in small:
            if r["ratio"] is not None:
                out.append((f"at 2^20, adamw ({r['variant']}) ≤ {SMALL_VS_FUSED:.0f} × PyTorch {r['torch_implementation']}", f"{r['ratio']:.3f}", verdict(r["ratio"] <= SMALL_VS_FUSED)))
    model = {r["size"]: r for r in rows if r["variant"] == "transformer-layout"}
    flat = {r["size"]: r for r in rows if r["variant"] == "flat-same-size"}
    for size in sorted(model):
        if size in flat:
            change = model[size]["fusedopt_s"] / flat[size]["fusedopt_s"] - 1
            out.append((f"transformer layout within {LAYOUT_VS_FLAT:.0%} of one flat tensor at {size}", f"{change:+.1%}", verdict(change <= LAYOUT_VS_FLAT)))
    for layout in fused.get("layouts", []):
        median = layout["host_record"]["median_s"]
        out.append((f"host time to record one whole-model step ≤ {HOST_RECORD_S * 1e6:.0f} µs ({len(layout['tensors'])} tensors, {layout['dispatches']} dispatches, {layout['size']})", f"{median * 1e6:.1f} µs", verdict(median <= HOST_RECORD_S)))
    return out


def tail(path, lines):
    if not os.path.exists(path):
        return "(not run)"
    with open(path, errors="replace") as f:
        content = [l.rstrip("\n") for l in f if "XDG_RUNTIME_DIR" not in l]
    return "\n".join(content[-lines:])


def report(out_dir):
    fused = load(os.path.join(out_dir, "results.json"))
    if fused is None:
        sys.exit(f"report.py: no results.json in {out_dir}")
    torch = load(os.path.join(out_dir, "torch.json"))
    tune = tune_rows(os.path.join(out_dir, "tune")) if os.path.isdir(os.path.join(out_dir, "tune")) else []
    rows = side_by_side(fused, torch)
    checks = targets(fused, torch, rows)
    with open(os.path.join(out_dir, "sidebyside.json"), "w") as f:
        json.dump({"rows": rows, "targets": [dict(zip(("target", "measured", "verdict"), t)) for t in checks], "tune": tune}, f, indent=1)

    md = []
    w = md.append
    w(f"# fusedopt on {fused.get('gpu') or 'no GPU'}\n")
    w("Produced by `bash bench/gpu/run.sh` (the commands it ran are in `commands.txt`).\n")
    w("```text\n" + tail(os.path.join(out_dir, "machine.txt"), 40) + "\n```\n")
    launch = fused.get("launch") or {}
    w(f"- launch shape: {launch.get('workgroup_size')} threads per workgroup, {launch.get('elements_per_invocation')} elements per invocation"
      + (f", at most {launch['max_workgroups']} workgroups" if launch.get("max_workgroups") else "") + " (fastest Adam step in the sweep below)")
    w(f"- fusedopt copy kernel: {fused['roofline']['gpu_bytes_per_s'] / 1e9:.1f} GB/s over {fused['roofline']['size']} f32 (8 B per element)")
    if torch:
        w(f"- PyTorch {torch['torch']} (CUDA {torch['cuda']}) on {torch['device']}: `copy_` {torch['copy']['bytes_per_s'] / 1e9:.1f} GB/s over the same size")
    w("")
    w("## Targets\n")
    w("| target | measured | verdict |\n|---|---|---|")
    for t in checks:
        w("| " + " | ".join(t) + " |")
    w("")
    w("## fusedopt beside PyTorch\n")
    w("Median step times; `ratio` is fusedopt's time over PyTorch's (below 1: fusedopt is faster); "
      "`of copy` is the step's bytes per second (bytes per element as in the README) over the copy bandwidth of "
      "fusedopt's copy kernel and of PyTorch's `copy_`, measured in the same run. Both sides step the same number "
      "of parameter sets in turn at small sizes, so neither runs from cache.\n")
    w("| optimizer | size | B/elem | fusedopt ms | PyTorch ms | PyTorch impl | ratio | of fusedopt copy | of PyTorch copy | PyTorch of its copy |")
    w("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        w(f"| {label(r['optimizer'], r['variant'])} | {r['size']} | {r['bytes_per_element']} | {ms(r['fusedopt_s'])} | {ms(r['torch_s'])} | "
          f"{r['torch_implementation'] or '—'} | {ratio} | {pct(r['of_fusedopt_copy'])} | "
          f"{pct(r['of_torch_copy'])} | {pct(r['torch_of_torch_copy'])} |")
    w("")
    if tune:
        w(f"## Launch-shape sweep (Adam at {tune[0]['size']})\n")
        w("| shape | Adam ms | AMSGrad ms | Adam of copy | copy GB/s |\n|---|---:|---:|---:|---:|")
        for t in sorted(tune, key=lambda t: t["adam_median_s"]):
            w(f"| {t['shape']} | {ms(t['adam_median_s'])} | {ms(t['amsgrad_median_s'])} | {pct(t['adam_roofline_fraction'])} | {t['copy_bytes_per_s'] / 1e9:.1f} |")
        w("")
    w("## Validation and reference trajectories\n")
    w("```text\n" + tail(os.path.join(out_dir, "validate.txt"), 1) + "\n" + tail(os.path.join(out_dir, "validate-default-shape.txt"), 1)
      + "\n" + tail(os.path.join(out_dir, "check.txt"), 2) + "\n```\n")
    w("Full logs: `info.txt`, `validate.txt`, `check.txt`, `bench.txt`, `torch.txt`; fusedopt's own report with charts: "
      "`fusedopt-bench/report.md`.\n")
    skipped = fused.get("skipped", []) + (torch or {}).get("skipped", [])
    if skipped:
        w("## Skipped\n")
        for s in skipped:
            w(f"- {s}")
        w("")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md))
    for t in checks:
        print(f"{t[2]:>6}  {t[0]}: {t[1]}")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("pick-shape", "report"):
        sys.exit(__doc__)
    if sys.argv[1] == "pick-shape":
        print(" ".join(pick_shape(sys.argv[2])))
    else:
        report(sys.argv[2])


if __name__ == "__main__":
    main()
