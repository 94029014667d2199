#!/usr/bin/env bash
# Everything a GPU session should run, in stages that each fit one device call (10 min).
#   bash bench/gpu_session.sh quick|report|aot|tests|sanitize|ops|tune|tune-cuda|purifier-cifar|purifier-imagenet|plot
# With little device time (one call), run `quick`: the acceptance measurements in priority order,
# each under its own timeout, so that one slow step cannot take the rest down with it.
# Run `aot` first: it builds the ahead-of-time CUDA library (root CMakeLists.txt) into build/aot,
# and every later stage then exercises the cuda backend through it as well as through the JIT.
# Results and logs go to $OUT (the device tool's output folder) or bench/results.
# The GPU machine has torch, triton and cupy but no diffusers: only the GPU test files run here,
# except `report`, which installs a carried diffusers wheel (docs/results/README.md says how).
# The tree arrives without .git: pass MANIPURE_COMMIT=<hash> so that results name their commit.
set -euo pipefail
OUT_DIR="${OUT:-bench/results}"
PY="$(command -v python3 || command -v python)"  # the device has python3 (with torch)
mkdir -p "$OUT_DIR" bench/results
export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
AOT_LIBRARY="$(ls build/aot/_cuda_ops*.so 2>/dev/null | head -1 || true)"
[ -n "$AOT_LIBRARY" ] && export MANIPURE_CUDA_LIBRARY="$PWD/$AOT_LIBRARY"
# The GPU test files compile about 200 Triton specialisations, one per plane size and option set
# (313 s of compiling on the 2-core CI machine; bench/compile_sm90.py --from-tests), so pytest
# spreads them over the CPUs with pytest-xdist, which the device image has. Triton's and CuPy's
# disk caches are shared between the workers.
PARALLEL=()
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n "$(( $(nproc) > 12 ? 12 : $(nproc) ))")
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
case "${1:?stage}" in
  quick)
    # 1. T1-T3: both ops at CIFAR B=512 and ImageNet B=64, every provider (rows are kept per shape).
    timeout 150 "$PY" bench/bench_ops.py 2>&1 | tee "$OUT_DIR/bench-ops.log" || true
    # 2. T6 at CIFAR B=64 against the reference-structure baseline (rows are kept per batch).
    timeout 150 "$PY" bench/bench_purifier.py --model ddpmpp --preset cifar10 --batch 64 \
      --repeats 5 --baseline-repeats 1 2>&1 | tee "$OUT_DIR/bench-purifier-cifar.log" || true
    # 3. Correctness on the device: the fused ops, the graphs and issue #4's device matrix, stopping
    #    at the first failure.
    timeout 180 "$PY" -m pytest -x -q -p no:cacheprovider "${PARALLEL[@]}" --durations 15 tests/test_triton_ops.py \
      tests/test_cuda_ops.py tests/test_graphs.py tests/test_triton_device_matrix.py 2>&1 \
      | tee "$OUT_DIR/gpu-tests.log" || true
    # 4. memcheck over both backends' forward and backward.
    timeout 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" bench/sanitize_ops.py 2>&1 \
      | tail -20 | tee "$OUT_DIR/memcheck.log" || true ;;
  report)
    # Issue #3's full-strength robustness report on the bundled models: PGD-EOT (100 steps, EOT 10)
    # and the low-frequency attack, on 512 images, 10 votes. The defenses run on the reference
    # backend: the report measures the defenses, so it does not depend on kernels under test.
    ls .whl/diffusers-*.whl >/dev/null || { echo "carry .whl with the diffusers wheel" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH" MANIPURE_BACKEND=reference PYTHONUNBUFFERED=1
    for attack in pgd lowfreq; do
      timeout 270 "$PY" -m manipure_fast.cli eval --attack $attack --steps 100 --eot 10 --votes 10 \
        --n-images 512 --batch-size 256 --out "$OUT_DIR/$attack-linf-fashion-512-full" 2>&1 \
        | tee "$OUT_DIR/report-$attack.log" || true
    done ;;
  aot)
    cmake -S . -B build/aot -G Ninja -DPython_EXECUTABLE="$PY" \
      -DMANIPURE_CUDA_ARCHITECTURES=90 2>&1 | tee "$OUT_DIR/aot-build.log"
    cmake --build build/aot 2>&1 | tee -a "$OUT_DIR/aot-build.log"
    MANIPURE_CUDA_LIBRARY="$PWD/$(ls build/aot/_cuda_ops*.so | head -1)" \
      "$PY" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests/test_cuda_ops.py 2>&1 | tee "$OUT_DIR/aot-tests.log" ;;
  tests)
    "$PY" -m pytest -q -p no:cacheprovider "${PARALLEL[@]}" tests/test_triton_ops.py tests/test_triton_device_matrix.py \
      tests/test_graphs.py tests/test_cuda_ops.py tests/test_gradients.py 2>&1 | tee "$OUT_DIR/gpu-tests.log" ;;
  sanitize)
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" bench/sanitize_ops.py 2>&1 | tail -20 | tee "$OUT_DIR/memcheck.log"
    for loader in jit ${MANIPURE_CUDA_LIBRARY:+aot}; do
      for tool in racecheck memcheck; do
        MANIPURE_CUDA_LOADER=$loader compute-sanitizer --tool $tool --error-exitcode 1 \
          "$PY" bench/sanitize_ops.py --backends cuda 2>&1 | tail -20 | tee "$OUT_DIR/$tool-cuda-$loader.log"
      done
    done ;;
  ops)
    "$PY" bench/bench_ops.py --sweep --backward 2>&1 | tee "$OUT_DIR/bench-ops.log"
    "$PY" bench/dispatch_table.py "$(ls -t bench/results/ops-*.json | head -1)" 2>&1 | tee -a "$OUT_DIR/bench-ops.log"
    cp manipure_fast/ops/dispatch_table.json "$OUT_DIR/"
    # The host time around the kernels (no kernel runs): what eager callers pay per call.
    "$PY" bench/bench_host_overhead.py 2>&1 | tee -a "$OUT_DIR/bench-ops.log" ;;
  tune)
    # The Triton kernels' tiles, warps and stages, one choice at a time against the shipped ones.
    "$PY" bench/tune_triton.py 2>&1 | tee "$OUT_DIR/tune.log" ;;
  tune-cuda)
    # The CUDA kernels' compile-time choices through the JIT: the tensor-core path against the FMA
    # loops, and the exchange's inverse rows per thread.
    "$PY" bench/tune_cuda.py 2>&1 | tee "$OUT_DIR/tune-cuda.log" ;;
  purifier-cifar)
    "$PY" bench/bench_purifier.py --model ddpmpp --preset cifar10 --batch 1,8,64,256 2>&1 | tee "$OUT_DIR/bench-purifier-cifar.log" ;;
  purifier-imagenet)
    "$PY" bench/bench_purifier.py --model adm --preset imagenet --batch 8,64 --repeats 5 2>&1 | tee "$OUT_DIR/bench-purifier-imagenet.log" ;;
  plot)
    "$PY" bench/plot_throughput.py bench/results/purifier-*.json -o "$OUT_DIR/throughput.png" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
cp bench/results/*.json "$OUT_DIR/" 2>/dev/null || true
