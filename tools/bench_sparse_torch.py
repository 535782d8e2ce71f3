"""PyTorch's CPU sparse Adagrad and SparseAdam on the table `fusedopt bench --sparse` uses.

Times `torch.optim.Adagrad` and `torch.optim.SparseAdam` stepping an embedding table of
`rows x dim` with the sparse gradient of uniformly random lookups (1 %, 0.1 %, 0.01 % of the
rows), medians of repeated steps after warm-up, on the CPU, so the CPU reference's column of
`fusedopt bench --sparse` can be read against PyTorch on the same machine. Not needed by any
test; run it where PyTorch is installed:

    python3 tools/bench_sparse_torch.py --rows 131072 --dim 64
"""

import argparse
import statistics
import time

import torch


def median_step_us(make_optimizer, table, indices, values, repeats):
    grad = torch.sparse_coo_tensor(indices.unsqueeze(0), values, table.shape)
    optimizer = make_optimizer([table])
    times = []
    for k in range(repeats + 3):
        table.grad = grad.clone()
        start = time.perf_counter()
        optimizer.step()
        if k >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 17)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, table {args.rows} x {args.dim}")
    print("| optimizer | lookups | rows touched | step (median) |")
    print("|---|---:|---:|---:|")
    for name, make in [
        ("adagrad", lambda p: torch.optim.Adagrad(p, lr=1e-2)),
        ("sparse_adam", lambda p: torch.optim.SparseAdam(p, lr=1e-3)),
    ]:
        for fraction in (1e-2, 1e-3, 1e-4):
            lookups = max(1, round(args.rows * fraction))
            table = torch.nn.Parameter(torch.randn(args.rows, args.dim))
            indices = torch.randint(0, args.rows, (lookups,))
            values = torch.randn(lookups, args.dim)
            us = median_step_us(make, table, indices, values, args.repeats)
            print(f"| {name} | {lookups} | {fraction * 100:g}% | {us:.1f} µs |")


if __name__ == "__main__":
    main()
