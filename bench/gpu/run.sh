#!/usr/bin/env bash
# Evaluates fusedopt on one GPU machine in one go, with a release binary built elsewhere (the
# machine needs no Rust): adapter information, validation of every kernel against the CPU
# reference, the reference trajectories, a sweep of launch shapes, the benchmark of every
# optimizer variant from 2^20 to 2^28 parameters (2^30 where memory allows) and PyTorch's own
# optimizers and copy on the same GPU, merged into one report folder.
#
#   bash bench/gpu/run.sh [--out DIR] [--bin PATH] [--quick] [--device cuda|cpu] [--no-torch]
#
#   --out DIR     report folder (default bench/results/<date>-<gpu>)
#   --bin PATH    the fusedopt binary (default target/release/fusedopt)
#   --quick       small sizes and a short sweep: checks the script end to end on any adapter
#   --device      where PyTorch runs (default cuda; cpu for a machine without CUDA)
#   --no-torch    skip the PyTorch side
#
# Environment: WGPU_BACKEND / WGPU_ADAPTER_NAME choose the adapter as for every fusedopt
# command; PYTHON (default python3) must import torch unless --no-torch.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$root/target/release/fusedopt
out=
quick=0
device=cuda
torch=1
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --device) device=$2; shift 2 ;;
        --no-torch) torch=0; shift ;;
        *) echo "run.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "run.sh: no fusedopt binary at $bin (cargo build --release, or --bin)" >&2; exit 2; }
command -v "$python" >/dev/null || { echo "run.sh: no $python (Python 3 writes the report; PYTHON=...)" >&2; exit 2; }
# The adapter first: without one nothing below can run, and the reason should be on screen.
if ! "$bin" info > /tmp/fusedopt-info.$$ 2>&1; then
    cat /tmp/fusedopt-info.$$ >&2
    echo "run.sh: fusedopt info failed: no Vulkan adapter? (bench/gpu/README.md: loader and driver)" >&2
    exit 2
fi

if [ $quick = 1 ]; then
    sizes=(2^16 2^20)
    tune_size=2^18
    shapes=("256 1" "256 4" "128 2 64")
    validate_size=4099
else
    sizes=(2^20 2^22 2^24 2^26 2^28 2^30)
    tune_size=2^26
    # threads per workgroup, elements per invocation, [cap on workgroups: grid-stride]
    shapes=("64 1" "128 1" "256 1" "512 1" "1024 1"
            "128 2" "256 2" "512 2"
            "128 4" "256 4" "512 4" "1024 4"
            "256 8" "512 8"
            "256 4 1056" "256 4 4224" "512 4 2112" "256 8 2112")
    validate_size=100003
fi

gpu_name=$(sed -n 's/^adapter  *//p' /tmp/fusedopt-info.$$ | head -1)
slug=$(printf '%s' "${gpu_name:-gpu}" | tr 'A-Z' 'a-z' | sed 's/([^)]*)//g; s/[^a-z0-9]\+/-/g; s/^-//; s/-$//' | cut -c1-40)
out=${out:-$root/bench/results/$(date +%F)-$slug}
# A fresh folder, so that nothing of an earlier run is reported as this one's.
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
    echo "run.sh: $out is not empty; remove it or name another with --out" >&2
    exit 2
fi
mkdir -p "$out/tune"
mv /tmp/fusedopt-info.$$ "$out/info.txt"
# A heading, and each command as it can be pasted back into a shell.
note() { printf '\n== %s\n' "$*" | tee -a "$out/commands.txt"; }
log() { note "$(printf '%q ' "$@")"; }
: > "$out/commands.txt"
status=0

note machine
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm)"
    echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) ($(nproc) threads)"
    echo "fusedopt: $("$bin" --version)"
    echo "wgpu: $(sed -n '/^name = "wgpu"$/{n;s/version = //p}' "$root/Cargo.lock" | tr -d '"')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv || true
    fi
    if command -v vulkaninfo >/dev/null; then
        vulkaninfo --summary 2>/dev/null | sed -n '/Devices:/,$p' | head -20 || true
    fi
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

log "$bin" info
cat "$out/info.txt"

# The launch shape: the sweep times Adam (28 B per element) and the copy kernel at one size with
# each shape, and the rest of the run uses the shape with the fastest Adam step.
note "launch-shape sweep at $tune_size (adam, gpu)"
for shape in "${shapes[@]}"; do
    set -- $shape
    flags=(--workgroup-size "$1" --elements-per-invocation "$2")
    if [ $# -ge 3 ]; then flags+=(--max-workgroups "$3"); fi
    name=wg$1-e$2${3:+-max$3}
    printf '%q ' "$bin" bench --optimizer adam --size "$tune_size" --implementation gpu --json "${flags[@]}" >> "$out/commands.txt"
    echo >> "$out/commands.txt"
    if "$bin" bench --optimizer adam --size "$tune_size" --implementation gpu --json "${flags[@]}" \
        > "$out/tune/$name.json" 2> "$out/tune/$name.err"; then
        echo "$name: done"
    else
        echo "$name: failed (see tune/$name.err)"
    fi
done
best=$("$python" "$here/report.py" pick-shape "$out/tune") || best="--workgroup-size 256 --elements-per-invocation 1"
echo "best launch shape: $best" | tee -a "$out/commands.txt"
read -r -a launch <<< "$best"

log "$bin" validate "${launch[@]}" --size "$validate_size"
"$bin" validate "${launch[@]}" --size "$validate_size" > "$out/validate.txt" 2>&1 || status=1
tail -3 "$out/validate.txt"
if [ "${launch[*]}" != "--workgroup-size 256 --elements-per-invocation 1" ]; then
    log "$bin" validate --size "$validate_size"
    "$bin" validate --size "$validate_size" > "$out/validate-default-shape.txt" 2>&1 || status=1
    tail -1 "$out/validate-default-shape.txt"
fi

log "$bin" check "${launch[@]}" "$root"/tests/golden/*.safetensors "$root"/tests/golden/mixed/*.safetensors "$root"/tests/golden/sparse/*.safetensors "$root"/tests/golden/sparse/*.safetensors
"$bin" check "${launch[@]}" "$root"/tests/golden/*.safetensors "$root"/tests/golden/mixed/*.safetensors "$root"/tests/golden/sparse/*.safetensors \
    > "$out/check.txt" 2>&1 || status=1
tail -3 "$out/check.txt"

size_flags=()
for s in "${sizes[@]}"; do size_flags+=(--size "$s"); done
log "$bin" bench --implementation gpu "${size_flags[@]}" "${launch[@]}" --out "$out/fusedopt-bench"
"$bin" bench --implementation gpu "${size_flags[@]}" "${launch[@]}" --out "$out/fusedopt-bench" \
    > "$out/bench.txt" 2>&1 || status=1
if [ -f "$out/fusedopt-bench/results.json" ]; then
    cp "$out/fusedopt-bench/results.json" "$out/results.json"
fi
tail -5 "$out/bench.txt"

# Every storage precision of Adam and SGD at 2^28 (2^20 quick), each also guarded (loss scaler
# and norm clip before the step), in a report of its own (the f32 results.json above stays
# what the PyTorch side-by-side reads).
precision_flags=()
for p in f32 bf16 f16 bf16-master f16-master bf16-sr; do precision_flags+=(--precision "$p"); done
last_size=2^28
[ $quick = 1 ] && last_size=2^20
log "$bin" bench --implementation gpu --optimizer adam --optimizer sgd "${precision_flags[@]}" --guard \
    --size "$last_size" "${launch[@]}" --out "$out/fusedopt-bench-precision"
"$bin" bench --implementation gpu --optimizer adam --optimizer sgd "${precision_flags[@]}" --guard \
    --size "$last_size" "${launch[@]}" --out "$out/fusedopt-bench-precision" \
    > "$out/bench-precision.txt" 2>&1 || status=1
tail -3 "$out/bench-precision.txt"

# Row-sparse steps of an embedding table against the dense step of the same table, at 1 %,
# 0.1 % and 0.01 % of rows (2^20 rows of 64; 2^14 quick).
sparse_rows=2^20
[ $quick = 1 ] && sparse_rows=2^14
log "$bin" bench --sparse --sparse-rows "$sparse_rows" "${launch[@]}" --out "$out/fusedopt-bench-sparse"
"$bin" bench --sparse --sparse-rows "$sparse_rows" "${launch[@]}" --out "$out/fusedopt-bench-sparse" \
    > "$out/bench-sparse.txt" 2>&1 || status=1
tail -12 "$out/bench-sparse.txt"

if [ $torch = 1 ] && [ -f "$out/results.json" ]; then
    log "$python" "$here/torch_bench.py" --fusedopt "$out/results.json" --out "$out/torch.json" --device "$device"
    PYTHONUNBUFFERED=1 "$python" "$here/torch_bench.py" --fusedopt "$out/results.json" \
        --out "$out/torch.json" --device "$device" > "$out/torch.txt" 2>&1 || status=1
    tail -3 "$out/torch.txt"
fi

log "$python" "$here/report.py" report "$out"
"$python" "$here/report.py" report "$out" || status=1
echo "report: $out/report.md (exit $status)"
exit $status
