#!/usr/bin/env bash
# One GPU session in one command: everything only a GPU can show, in the order that matters if time runs out,
# every artifact under one folder.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [STEP ...] [--dry-run] [-- extra visattn bench args...]
#
# Steps (default: all, in this order):
#   machine   GPU, driver, torch/triton/diffusers versions            -> machine.txt
#   tests     kernel correctness on the real GPU: Triton kernels,      -> tests.txt, tests-junit.xml
#             backend choice, block masks, SDPA on zero-stride views,
#             UltraViCo in-kernel
#   auto      what backend="auto" measures and picks on this GPU      -> auto.txt, autotune.json, info.json
#             for the benchmark's layouts (VISATTN_AUTOTUNE_CACHE)
#   edits     Prompt-to-Prompt's joint edit at SD3/Flux 1024 px:      -> edits.txt, edits.json
#             the text-block form vs materialized vs stock SDPA
#             (time, peak memory, distance from an fp32 oracle)
#   bench     the kernel benchmark (visattn bench)                    -> bench.json/.md/.png, bench.txt
#   dispatch  visattn's per-call overhead on the tiny denoisers       -> dispatch-*.json/.md, dispatch.txt
#   e2e       end-to-end denoiser benchmark (visattn bench --end-to-end)  -> e2e/, e2e.txt
#
# Works without installing visattn (PYTHONPATH=repo root), so it runs on a machine that cannot reach a package
# index as long as torch, triton, transformers, accelerate and diffusers import there. Every step has its own
# time limit (STEP_LIMIT seconds, default 300; BENCH_LIMIT for bench and e2e, default 400) and writes its log to
# OUT_DIR, so a step that hangs or fails still leaves the others' results; the exit status is the number of
# failed steps. --dry-run prints each step's command and runs nothing (CI checks the plan this way).
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [STEP ...] [--dry-run] [-- bench args...]}
shift
all_steps=(machine tests auto edits bench dispatch e2e)
steps=()
dry=0
bench_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry=1 ;;
    --) shift; bench_args=("$@"); break ;;
    all) steps+=("${all_steps[@]}") ;;
    machine|tests|auto|edits|bench|dispatch|e2e) steps+=("$1") ;;
    *) echo "gpu_session.sh: unknown step '$1' (steps: ${all_steps[*]}, all)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#steps[@]} -gt 0 ]] || steps=("${all_steps[@]}")

root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export VISATTN_AUTOTUNE_CACHE="$out/autotune.json"
py=${PYTHON:-python3}
mkdir -p "$out"

# pytest-xdist spreads the kernel tests over the CPU cores when it is there; without it they run in one process.
# pyproject's addopts (the suite's xdist options) are dropped: a machine without xdist would refuse them.
workers=(-o "addopts=")
if [[ $dry == 0 ]] && $py -c "import xdist" 2>/dev/null; then workers+=(-n "${TEST_WORKERS:-8}"); fi

command_for() {
  case $1 in
    machine) echo "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; $py -m visattn.cli info" ;;
    tests) echo "$py -m pytest $root/tests/kernels/test_triton.py $root/tests/kernels/test_autotune.py $root/tests/kernels/test_block_masks.py $root/tests/kernels/test_sdpa_views.py $root/tests/core/test_device_syncs.py $root/tests/effects/test_prompt_to_prompt_gpu.py $root/tests/fidelity/test_fidelity_extrapolation.py -q -p no:cacheprovider ${workers[*]} --junitxml=$out/tests-junit.xml" ;;
    auto) echo "$py $root/benchmarks/auto_choice.py --out $out" ;;
    edits) echo "$py $root/benchmarks/joint_edits.py --out $out" ;;
    bench) echo "$py -m visattn.cli bench --out $out --quiet ${bench_args[*]}" ;;
    dispatch) echo "$py -m visattn.cli bench --dispatch --out $out --quiet" ;;
    e2e) echo "$py -m visattn.cli bench --end-to-end --out $out/e2e --quiet ${bench_args[*]}" ;;
  esac
}

limit_for() {
  case $1 in bench|e2e) echo "${BENCH_LIMIT:-400}" ;; *) echo "${STEP_LIMIT:-300}" ;; esac
}

failed=0
for step in "${steps[@]}"; do
  cmd=$(command_for "$step")
  if [[ $dry == 1 ]]; then
    echo "step $step (limit $(limit_for "$step") s): $cmd"
    continue
  fi
  echo "== $step ($(date -u +%FT%TZ))"
  if ! timeout "$(limit_for "$step")" bash -c "$cmd" > "$out/$step.txt" 2>&1; then
    echo "step $step failed or ran past its limit: see $out/$step.txt" >&2
    failed=$((failed + 1))
  fi
  tail -20 "$out/$step.txt"
done
exit "$failed"
