#!/usr/bin/env bash
# One-call GPU suite: build with CUDA, run the GPU tests, run the full-size benchmarks, and write
# OUT_DIR/{env.json, steps.tsv, bench-*.json, *.log, summary.json, summary.md}.
#
#   benchmarks/gpu_suite.sh OUT_DIR             # on a bare H100/H200 (budget: under 9 minutes)
#   benchmarks/gpu_suite.sh OUT_DIR --dry-run   # same steps on the CPU at tiny sizes (CI, ~2 min)
#   SPAR_FAST_SUITE_DRY_RUN=1 benchmarks/gpu_suite.sh OUT_DIR
#
# Wheels: when .whl/ exists (../shared/device/prepare-wheels.sh puts open_clip and its small
# dependencies there), they are installed into /tmp/site first. Every step runs under a timeout cut
# from the remaining budget, so a slow or failing step is recorded and the suite goes on. Exit
# code: 0 when every step passed, else 1 (the summary says which failed).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [--dry-run]" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "$0: cannot create $1" >&2; exit 2; }
dry=${SPAR_FAST_SUITE_DRY_RUN:-0}
[ "${2:-}" = "--dry-run" ] && dry=1
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
budget=$([ "$dry" = 1 ] && echo 170 || echo 510)  # seconds for all steps; the report needs ~2 s
start=$(date +%s)
: > "$out/steps.tsv"

# step NAME SECONDS CMD...: run CMD (output in OUT_DIR/NAME.log) under min(SECONDS, budget left)
step() {
  local name=$1 want=$2; shift 2
  local left=$(( budget - ($(date +%s) - start) ))
  local limit=$(( want < left ? want : left ))
  local t0=$(date +%s) rc=124
  echo "=== $name (limit ${limit}s)"
  if [ "$limit" -gt 5 ]; then
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
  else
    echo "no time left" > "$out/$name.log"
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$out/steps.tsv"
  tail -n 3 "$out/$name.log"
}

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  step wheels 120 python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

python3 - "$dry" > "$out/env.json" <<'PY'
import json, sys, torch
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": sys.argv[1] == "1",
       "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
try:
    import torchvision
    env["torchvision"] = torchvision.__version__
except ImportError:
    env["torchvision"] = None
try:
    import triton
    env["triton"] = triton.__version__
except ImportError:
    env["triton"] = None
print(json.dumps(env))
PY

benches=(teacher stitch varlen_attention train_step loader segment memory lab_affinity)
files=(); for name in "${benches[@]}"; do files+=("benchmarks/bench_$name.py"); done
if [ "$dry" = 1 ]; then
  export SPAR_FAST_BENCH_QUICK=1
  # the CI install already built the extension; build only when it is missing
  step build 120 bash -c 'python3 -c "import spar_fast._C" 2>/dev/null || python3 setup.py build_ext --inplace'
  step tests 60 python3 -m pytest tests/test_fp8.py -q -x -p no:cacheprovider -k "not store"
  # one pytest process (start-up dominates at tiny sizes), one variant or two of each benchmark
  step benchmarks 120 python3 -m pytest "${files[@]}" --benchmark-only -q -p no:cacheprovider \
    -k "(test_teacher and fast) or fp16 or cpp or (padded and fwd and not bwd) or (train_step and packed) \
        or (test_loader and reference) or worker-nvjpeg or (segment and fast) or (memory and train_step)" \
    --benchmark-json "$out/bench-dry-run.json"
else
  export SPAR_FAST_BENCH_QUICK=0 SPAR_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  step build 180 python3 setup.py build_ext --inplace
  step cuda_built 30 python3 -c "import spar_fast._C as C, sys; sys.exit(0 if C.has_cuda() else 'CUDA kernels not built')"
  step tests 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_stitch.py tests/test_varlen_attention.py \
    tests/test_seg_head.py tests/test_lab_affinity.py tests/test_packed_forward.py tests/test_loader.py tests/test_fp8.py \
    tests/test_trainer.py::test_step_makes_no_host_sync_on_cuda
  # one process per file, each capped (seconds), so a slow file cannot take the others' time
  declare -A cap=([teacher]=60 [stitch]=30 [varlen_attention]=40 [train_step]=60 [loader]=30 [segment]=45
                  [memory]=45 [lab_affinity]=90)
  for name in "${benches[@]}"; do
    step "bench_$name" "${cap[$name]}" python3 -m pytest "benchmarks/bench_$name.py" --benchmark-only -q \
      -p no:cacheprovider --benchmark-json "$out/bench-$name.json"
  done
fi

python3 benchmarks/suite_report.py "$out" > /dev/null
rc=$?
echo "suite: $(( $(date +%s) - start )) s, summary in $out/summary.md"
cat "$out/steps.tsv"
exit $rc
