#!/usr/bin/env bash
# One command for a GPU machine: the CUDA-only tests, training-step time and peak GPU memory at
# the published size (fp16 / bf16 / fp32, with and without model.grad_checkpointing, and with
# model.compile), evaluation queries/s (ITC-only and top-k re-ranking, fp32 and fp16 eval
# autocast), a 1-process NCCL torchrun of main.py; it ends with a markdown block for
# docs/benchmarks.md.
#
#     bash benchmarks/gpu_check.sh
#
# Without a CUDA device it prints one line and exits 1, before any set-up. Set-up (not
# counted in the budget): .venv when it matches requirements.txt, else a python3 that already
# imports every requirement (GPU images without network), else shell/venv.sh installs .venv.
# Then each part runs in its own process under its own timeout, capped by what is left of
# GPU_CHECK_BUDGET seconds (default 440: with set-up checks and the table, within 8 minutes),
# so a failing or hanging part costs itself alone.
# Logs go to GPU_CHECK_LOGS (default: a new folder under /tmp). Exit 0 when every part passed.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
BUDGET=${GPU_CHECK_BUDGET:-440}
REQUIRED="torch,torchvision,transformers,tokenizers,timm,sentencepiece,google.protobuf,yaml,numpy,PIL,tqdm,matplotlib,pytest"

no_cuda() {
  echo "gpu_check: no CUDA device ($1); run this on a GPU machine"
  exit 1
}

# Exit status of the interpreter $1: 0 it sees a GPU, 1 its torch sees none, 2 no torch (or no interpreter).
gpu_state() {
  command -v "$1" > /dev/null 2>&1 || return 2
  "$1" -c 'import sys
try:
    import torch
except Exception:
    sys.exit(2)
sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1
}

# 1. A CUDA device at all? nvidia-smi, or else any PyTorch here that sees one.
if ! nvidia-smi -L > /dev/null 2>&1; then
  seen=2
  for py in "$ROOT/.venv/bin/python" "${PYTHON:-python3}"; do
    gpu_state "$py"
    state=$?
    [ "$state" -lt "$seen" ] && seen=$state
  done
  [ "$seen" -eq 1 ] && no_cuda "torch.cuda.is_available() is False"
  [ "$seen" -eq 2 ] && no_cuda "no nvidia-smi and no PyTorch installed"
fi

# 2. Set-up: the interpreter PY, and how it was chosen.
t0=$(date +%s)
# shellcheck source=../shell/venv.sh
. "$ROOT/shell/venv.sh"
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON how="GPU_CHECK_PYTHON"
elif [ -x "$_venv_dir/bin/python" ] && [ -f "$_venv_stamp" ] && [ "$(cat "$_venv_stamp")" = "$(_venv_hash "$_venv_req")" ]; then
  PY=$_venv_dir/bin/python how=".venv, up to date with requirements.txt"
elif py=$(command -v "${PYTHON:-python3}") && "$py" -c "import $REQUIRED" > /dev/null 2>&1 && gpu_state "$py"; then
  PY=$py how="$py: imports every requirement already (its versions, not necessarily requirements.txt's)"
else
  ensure_venv || { echo "gpu_check: set-up failed: shell/venv.sh could not install requirements.txt"; exit 1; }
  PY=$_venv_dir/bin/python how=".venv, installed by shell/venv.sh"
fi
gpu_state "$PY" || no_cuda "torch.cuda.is_available() is False in $PY after set-up"
SETUP="$(( $(date +%s) - t0 )) s ($how)"
echo "gpu_check: set-up took $SETUP"

export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$LOGS"
RESULTS=$LOGS/results.jsonl
: > "$RESULTS"
START=$(date +%s)

# Seconds for a part: its own limit $1, or less when the budget has less left.
limit_for() {
  local rest=$(( BUDGET - ($(date +%s) - START) ))
  [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}

# record PART CASE STATUS: a result line written by this script (JSON without importing torch).
record() {
  "$PY" -c 'import json, sys; print(json.dumps({"part": sys.argv[1], "case": sys.argv[2], "status": sys.argv[3]}))' \
    "$@" >> "$RESULTS"
}

# part NAME CASE LIMIT CMD...: run CMD under its timeout; its '{"part"' lines go to RESULTS,
# or a record of how it died. Prints one progress line.
part() {
  local name=$1 case=$2 limit before rc t=$(date +%s) log
  limit=$(limit_for "$3")
  shift 3
  log="$LOGS/$(printf '%s_%s' "$name" "$case" | tr -c 'A-Za-z0-9=' '_')"
  before=$(wc -l < "$RESULTS")
  if [ "$limit" -lt 15 ]; then
    record "$name" "$case" "skipped: the $BUDGET s budget is spent"
  else
    timeout -k 10 "$limit" "$@" > "$log.out" 2> "$log.log"
    rc=$?
    if grep -q '^{"part"' "$log.out"; then
      grep '^{"part"' "$log.out" >> "$RESULTS"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      record "$name" "$case" "timeout after $limit s"
    else
      record "$name" "$case" "failed (exit $rc): $(tail -n 1 "$log.log" | cut -c 1-160)"
    fi
  fi
  tail -n +"$((before + 1))" "$RESULTS" | "$PY" -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("gpu_check:", r["part"], r["case"] + ":", r["status"], f"({sys.argv[1]} s)")' "$(( $(date +%s) - t ))"
}

# 3. The CUDA-only tests (a failure's details are printed: they belong in the paste).
limit=$(limit_for 90)
t=$(date +%s)
timeout -k 10 "$limit" "$PY" -m pytest -q -m cuda --tb=short > "$LOGS/tests.log" 2>&1
rc=$?
summary=$(grep -E '[0-9]+ (passed|failed|skipped|deselected|error)|no tests ran' "$LOGS/tests.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then summary="timeout after $limit s${summary:+ ($summary)}"; fi
[ "$rc" -eq 0 ] || summary="FAILED (exit $rc): ${summary:-see $LOGS/tests.log}"
record tests "pytest -m cuda" "$summary"
echo "gpu_check: tests: $summary ($(( $(date +%s) - t )) s)"
[ "$rc" -eq 0 ] || tail -n 40 "$LOGS/tests.log"

# 4. Training steps without compile, 5. evaluation, 6. NCCL, then the compile cases (slowest first-step).
for amp in fp16 bf16 fp32; do
  for ckpt in 0 1; do
    part step "$amp ckpt=$ckpt compile=0" 35 "$PY" -m benchmarks.gpu_check step --amp "$amp" --ckpt "$ckpt" --compile 0
  done
done
part eval "fp32, fp16" 60 "$PY" -m benchmarks.gpu_check eval
part nccl "torchrun 1 process, nccl" 60 "$PY" -m benchmarks.gpu_check nccl --timeout 50
for c in "fp16 0" "bf16 0" "fp16 1"; do
  read -r amp ckpt <<< "$c"
  part step "$amp ckpt=$ckpt compile=1" 120 "$PY" -m benchmarks.gpu_check step --amp "$amp" --ckpt "$ckpt" --compile 1
done

# 7. The markdown block.
echo
echo "gpu_check: for docs/benchmarks.md (logs: $LOGS):"
echo
"$PY" -m benchmarks.gpu_check table "$RESULTS" --setup "$SETUP" --parts-s "$(( $(date +%s) - START ))"
