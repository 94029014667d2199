#!/usr/bin/env bash
# Everything a GPU session should run, in stages that each fit one device call (10 min).
#   bash bench/gpu_session.sh tests|sanitize|ops|purifier-cifar|purifier-imagenet|plot
# Results and logs go to $OUT (the device tool's output folder) or bench/results.
# The GPU machine has torch, triton and cupy but no diffusers: only the GPU test files run here.
set -euo pipefail
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR" bench/results
export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
case "${1:?stage}" in
  tests)
    python -m pytest -q -p no:cacheprovider tests/test_triton_ops.py tests/test_graphs.py \
      tests/test_cuda_ops.py tests/test_gradients.py 2>&1 | tee "$OUT_DIR/gpu-tests.log" ;;
  sanitize)
    compute-sanitizer --tool memcheck --error-exitcode 1 python bench/sanitize_ops.py 2>&1 | tail -20 | tee "$OUT_DIR/memcheck.log"
    compute-sanitizer --tool racecheck --error-exitcode 1 python bench/sanitize_ops.py --backends cuda 2>&1 | tail -20 | tee "$OUT_DIR/racecheck.log" ;;
  ops)
    python bench/bench_ops.py 2>&1 | tee "$OUT_DIR/bench-ops.log" ;;
  purifier-cifar)
    python bench/bench_purifier.py --model ddpmpp --preset cifar10 --batch 1,8,64,256 2>&1 | tee "$OUT_DIR/bench-purifier-cifar.log" ;;
  purifier-imagenet)
    python bench/bench_purifier.py --model adm --preset imagenet --batch 8,64 --repeats 5 2>&1 | tee "$OUT_DIR/bench-purifier-imagenet.log" ;;
  plot)
    python bench/plot_throughput.py bench/results/purifier-*.json -o "$OUT_DIR/throughput.png" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
cp bench/results/*.json "$OUT_DIR/" 2>/dev/null || true
