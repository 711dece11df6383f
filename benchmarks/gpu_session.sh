#!/usr/bin/env bash
# One GPU session's worth of checks for the Triton kernels, in the order that matters if time runs out:
# the machine and versions, the kernel tests on real hardware, then the benchmark.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [tests|bench|e2e|all] [extra visattn bench args...]
#
# Works without installing visattn (PYTHONPATH=repo root), so it runs on a machine that cannot reach a package
# index as long as torch, triton, transformers, accelerate and diffusers import there. Every step has its own
# time limit and writes its log to OUT_DIR, so a step that hangs or fails still leaves the others' results.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [tests|bench|e2e|all] [bench args...]}
what=${2:-all}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py - <<'EOF'
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
EOF
} 2>&1 | tee "$out/machine.txt"

if [[ $what == tests || $what == all ]]; then
  timeout "${TEST_LIMIT:-300}" $py -m pytest "$root/tests/test_triton_kernels.py" -q -x -p no:cacheprovider \
    -n "${TEST_WORKERS:-8}" 2>&1 | tee "$out/tests.txt" | tail -30
fi
if [[ $what == bench || $what == all ]]; then
  timeout "${BENCH_LIMIT:-400}" $py -m visattn.cli bench --out "$out" --quiet "$@" 2>&1 | tee "$out/bench.txt" | tail -60
fi
if [[ $what == e2e ]]; then
  timeout "${BENCH_LIMIT:-400}" $py -m visattn.cli bench --end-to-end --out "$out" --quiet "$@" 2>&1 \
    | tee "$out/bench.txt" | tail -60
fi
