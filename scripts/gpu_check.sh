#!/usr/bin/env bash
# One-command GPU check: everything this project cannot check on a CPU, in about 10 minutes on one
# H100/H200, with its findings written to one folder.
#
#   scripts/gpu_check.sh [FOLDER]      FOLDER: the argument, else $OUT, else ./gpu-check
#
# Parts, each under its own time budget (seconds; GPU_CHECK_T_<PART> overrides), so one that fails
# or hangs does not stop the others and the whole fits 10 minutes:
#   cuda tests      the `cuda`-marked tests (tests/test_cuda.py)            -> cuda-tests.xml (junitxml)
#   tiny matrix     the embedded model's matrix on CUDA against the shipped
#                   CPU baselines (baselines/tiny/), SSIM per stack          -> tiny-matrix.json
#   sd15 build      sd15-random's seeded random weights, built once (CPU) into the scratch folder
#   sd15 matrix     sd15-random's matrix at 512x512, 10 steps, SSIM against
#                   its own fp32 of this run, and each stack's promises
#                   (--sdopt-promises: speed and VRAM ratios to fp32,
#                   interleaved; compile left out: time)                     -> sd15-random-matrix.json
#   probe ...       scripts/gpu_probes.py: precision, sdpa, vae-tiling      -> probes.json
# and last summary.txt (also printed) and gpu-check.log (every part's output). Each matrix's images
# are packed as <matrix>-images.tar.gz beside its JSON (untar there and the JSON's paths resolve):
# the folder holds at most 8 files, so it comes back whole from a machine that returns only so many.
#
# Exit status: 0 every part passed; 1 a part failed or ran out of time (summary.txt says which);
# 2 bad arguments; 3 no CUDA GPU (torch.cuda.is_available() is False: nothing was run);
# 4 Python or a package is missing (nothing was run; the message names what).
# Python: $PYTHON, else this checkout's .venv/bin/python, else python3. This checkout's
# pytest_sdopt is put first on PYTHONPATH. Scratch (the 4.3 GB sd15-random model, the plugin's
# results folder): $GPU_CHECK_WORK if set (kept), else a temporary folder (removed at the end).
set -u -o pipefail

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac
if [ "$#" -gt 1 ]; then
  echo "gpu_check: one argument at most (the findings folder), got $#" >&2
  usage >&2
  exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
FINDINGS=${1:-${OUT:-./gpu-check}}
mkdir -p "$FINDINGS" || { echo "gpu_check: cannot create the findings folder $FINDINGS" >&2; exit 2; }
FINDINGS=$(cd "$FINDINGS" && pwd)
LOG=$FINDINGS/gpu-check.log
# What an earlier check left here must not pass for this one's findings.
rm -f "$FINDINGS"/{summary.txt,cuda-tests.xml,tiny-matrix.json,sd15-random-matrix.json,probes.json} \
  "$FINDINGS"/{tiny-matrix,sd15-random-matrix}-images.tar.gz
rm -rf "$FINDINGS"/{tiny-matrix,sd15-random-matrix}-images
: >"$LOG"

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then
  PY=$REPO/.venv/bin/python
else
  PY=python3
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check: no Python interpreter '$PY' (set PYTHON to one that has torch); nothing was run." \
    | tee "$FINDINGS/summary.txt" >&2
  exit 4
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$REPO" || exit 2

# The budgets: 560 s in all, which leaves the interpreter starts and kill grace inside 10 minutes.
T_PREFLIGHT=${GPU_CHECK_T_PREFLIGHT:-30}
T_CUDA_TESTS=${GPU_CHECK_T_CUDA_TESTS:-80}
T_TINY_MATRIX=${GPU_CHECK_T_TINY_MATRIX:-90}
T_SD15_BUILD=${GPU_CHECK_T_SD15_BUILD:-50}
T_SD15_MATRIX=${GPU_CHECK_T_SD15_MATRIX:-210}  # with the promises: 8+ interleaved pairs a stack
T_PRECISION=${GPU_CHECK_T_PRECISION:-50}
T_SDPA=${GPU_CHECK_T_SDPA:-25}
T_VAE_TILING=${GPU_CHECK_T_VAE_TILING:-25}

timeout -k 5 "$T_PREFLIGHT" "$PY" scripts/gpu_probes.py preflight 2>&1 | tee -a "$LOG"
preflight=${PIPESTATUS[0]}
if [ "$preflight" -ne 0 ]; then
  case "$preflight" in
    3|4) code=$preflight ;;
    124|137) echo "gpu_check: the preflight (import torch, CUDA start) took over ${T_PREFLIGHT} s; nothing was run." \
               | tee -a "$LOG"; code=1 ;;
    *) echo "gpu_check: the preflight failed (exit $preflight; see $LOG); nothing was run." | tee -a "$LOG"; code=4 ;;
  esac
  tail -n 1 "$LOG" >"$FINDINGS/summary.txt"
  echo "gpu_check: exit $code" | tee -a "$FINDINGS/summary.txt"
  exit "$code"
fi

if [ -n "${GPU_CHECK_WORK:-}" ]; then
  WORK=$GPU_CHECK_WORK
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
PARTS=$WORK/parts.tsv
: >"$PARTS"
RESULTS=$WORK/results  # the plugin's results folder: sd15-random's weights go to $RESULTS/models

# part NAME BUDGET NOTE-ON-PASS COMMAND...: run it under its budget (SIGINT first, so pytest still
# writes its JSON with the runs so far), log its output, and record its status.
part() {
  local name=$1 budget=$2 note=$3 started rc status seconds
  shift 3
  echo "=== gpu_check: $name (budget ${budget} s) ===" | tee -a "$LOG"
  started=$(date +%s)
  timeout -s INT -k 10 "$budget" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  seconds=$(( $(date +%s) - started ))
  case "$rc" in
    0) status=pass ;;
    124|137) status=TIMEOUT; note="stopped after its ${budget} s budget" ;;
    *) status=FAIL; note="exit $rc (see gpu-check.log)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$seconds" "$budget" "$note" >>"$PARTS"
}

part "cuda tests" "$T_CUDA_TESTS" "junitxml: cuda-tests.xml" \
  "$PY" -m pytest -p no:cacheprovider -q -rA -m cuda tests/test_cuda.py \
  --junitxml "$FINDINGS/cuda-tests.xml" -o junit_logging=system-out

part "tiny matrix" "$T_TINY_MATRIX" "SSIM gates against baselines/tiny passed" \
  "$PY" -m pytest -p pytest_sdopt -p no:cacheprovider -q -rs --sdopt-matrix --sdopt-device cuda \
  --sdopt-baseline-dir "$REPO/baselines" --sdopt-results-dir "$RESULTS" --sdopt-json "$FINDINGS/tiny-matrix.json"

part "sd15 build" "$T_SD15_BUILD" "sd15-random saved under the scratch folder" \
  "$PY" -c "import sys; from pathlib import Path; from pytest_sdopt.models.architectures import SD15; \
from pytest_sdopt.models.sources import materialize; print('sd15-random at', materialize(SD15, Path(sys.argv[1])))" \
  "$RESULTS/models"

SD15_STACKS=$("$PY" -c "from pytest_sdopt.stacks import REGISTRY; print(','.join(n for n in REGISTRY if n != 'compile'))")
part "sd15 matrix" "$T_SD15_MATRIX" "512x512, 10 steps; SSIM recorded, not gated; every promise kept" \
  "$PY" -m pytest -p pytest_sdopt -p no:cacheprovider -q -rs --sdopt-model sd15-random --sdopt-device cuda \
  "--sdopt-matrix=$SD15_STACKS" --sdopt-steps 10 --sdopt-repeats 1 --sdopt-warmup 1 --sdopt-min-ssim 0 \
  --sdopt-promises \
  --sdopt-baseline-dir "$WORK/sd15-baselines" --sdopt-update-baselines --sdopt-results-dir "$RESULTS" \
  --sdopt-json "$FINDINGS/sd15-random-matrix.json"

for probe in precision sdpa vae-tiling; do
  case "$probe" in
    precision) budget=$T_PRECISION ;;
    sdpa) budget=$T_SDPA ;;
    vae-tiling) budget=$T_VAE_TILING ;;
  esac
  part "probe $probe" "$budget" "probes.json: $probe" \
    "$PY" scripts/gpu_probes.py "$probe" --out "$FINDINGS" --work "$WORK"
done

for images in tiny-matrix-images sd15-random-matrix-images; do
  if [ -d "$FINDINGS/$images" ]; then
    tar -czf "$FINDINGS/$images.tar.gz" -C "$FINDINGS" "$images" && rm -rf "${FINDINGS:?}/$images"
  fi
done

"$PY" scripts/gpu_probes.py summary --out "$FINDINGS" --parts "$PARTS" 2>&1 | tee -a "$LOG"
if cut -f2 "$PARTS" | grep -qv '^pass$'; then
  exit 1
fi
exit 0
