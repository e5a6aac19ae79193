#!/usr/bin/env bash
# The one command for a GPU machine (run in the repository root; build .gpu/ first with scripts/gpu_bundle.sh
# and carry it along). Runs the device-path tests on the GPU, then benchmarks/bench_gpu.py, then the video
# smoother's speed (benchmarks/bench_temporal.py); everything is tee'd into $OUT (pytest.txt, bench.txt,
# bench.json, bench_temporal.txt/.json). A failing test does not stop the benchmarks.
#
#   bash scripts/gpu_run.sh                                         # on the GPU machine
#   OUT=/tmp/o DDCOLOR_BENCH_DEVICE=cpu DDCOLOR_BENCH_QUICK=1 bash scripts/gpu_run.sh   # dry run on the CPU
#
# Environment: PYTHON (default python3, or .venv/bin/python when present), DDCOLOR_BENCH_DEVICE (default cuda),
# DDCOLOR_BENCH_QUICK=1 (small sizes), OUT (default /tmp/ddcolor-gpu-out), DDCOLOR_GPU_STEPS (default
# "tests bench temporal"; e.g. DDCOLOR_GPU_STEPS=temporal runs only the video smoother's benchmark, ~1-2 min).
# The step timeouts (DDCOLOR_TEST_TIMEOUT 120, DDCOLOR_BENCH_TIMEOUT 280, DDCOLOR_TEMPORAL_TIMEOUT 170 s) add up to
# 570 s, so the whole run fits one device call of 600 s; the last measured run needed about 30 + 215 s before the
# temporal step.
set -u
export PYTHONUNBUFFERED=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/ddcolor-gpu-out}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DEVICE="${DDCOLOR_BENCH_DEVICE:-cuda}"
export DDCOLOR_TEST_DEVICE="$DEVICE"
export COMFYUI_DIR="${COMFYUI_DIR:-$ROOT/.gpu/ComfyUI}"
export PYTHONPATH="$ROOT:$ROOT/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"
export DDCOLOR_TEST_WEIGHTS="${DDCOLOR_TEST_WEIGHTS:-/tmp/ddcolor-weights}"
[ -d "$COMFYUI_DIR" ] || echo "gpu_run: no ComfyUI at $COMFYUI_DIR (run scripts/gpu_bundle.sh); node tests will fail"

{
  echo "# gpu_run $(date -u +%FT%TZ) device=$DEVICE quick=${DDCOLOR_BENCH_QUICK:-0}"
  git log -1 --oneline 2>/dev/null || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} 2>&1 | tee "$OUT/env.txt"

# weights first (a few seconds), so the tests and the benchmark share them
"$PYTHON" -c 'from tests.synthetic_weights import cached_weights; [print(cached_weights(v)) for v in ("tiny", "large")]' \
  2>&1 | tee "$OUT/weights.txt"

STEPS=" ${DDCOLOR_GPU_STEPS:-tests bench temporal} "
step() { [[ "$STEPS" == *" $1 "* ]]; }

if step tests; then
timeout "${DDCOLOR_TEST_TIMEOUT:-120}" "$PYTHON" -m pytest -p no:cacheprovider -q -rs \
  -k "not large_photo" tests/test_devicepath.py tests/nodes/test_device_nodes.py \
  tests/test_flow.py::test_the_same_flow_on_the_test_device \
  tests/test_temporal.py::test_what_the_node_does_on_the_test_device 2>&1 | tee "$OUT/pytest.txt"
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/pytest.txt"
fi

if step bench; then
quick=()
[ -n "${DDCOLOR_BENCH_QUICK:-}" ] && quick=(--quick)
timeout "${DDCOLOR_BENCH_TIMEOUT:-280}" "$PYTHON" benchmarks/bench_gpu.py --device "$DEVICE" "${quick[@]}" \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench.txt"
fi

# video: Temporal Smooth with both optical flows (OpenCV DIS on the CPU, the torch flow on the device; the node
# uses the torch one on a GPU) against the network's own frames/s, and their effect on the synthetic clip
if step temporal; then
tquick=()
[ -n "${DDCOLOR_BENCH_QUICK:-}" ] && tquick=(--sizes 512 --variants tiny --frames 6 --repeats 1 --net-repeats 1)
timeout "${DDCOLOR_TEMPORAL_TIMEOUT:-170}" "$PYTHON" benchmarks/bench_temporal.py --device "$DEVICE" \
  --only speed --only effect --frames 16 "${tquick[@]}" --json "$OUT/bench_temporal.json" 2>&1 \
  | tee "$OUT/bench_temporal.txt"
echo "bench_temporal exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_temporal.txt"
fi
