#!/usr/bin/env bash
# The GPU benchmark session in one script (benchmarks/README.md): installs what the machine lacks, then runs
# throughput.py in fp32, in bf16 + channels_last, and with MIMMO's fused exits,
# then profiles MIMO and MIMMO (torch.compile is left out: compiling takes longer than this session's minutes). Everything lands in $OUT (at most 8 files): one JSON per
# configuration, log.txt (every run's output) and profile.txt. Each run is cut at its time limit and the whole
# script at DEADLINE seconds; a JSON is rewritten after every method, so a run cut short keeps what it measured.
#
#   OUT=/tmp/out bash benchmarks/gpu_run.sh               # on the GPU machine
#   OUT=/tmp/out DEVICE=cpu STEPS=1 WARMUP=1 REPEATS=1 INFER_BATCHES=1 INFER_BATCH=8 DEADLINE=3000 \
#       SKIP_WHEELS=1 PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh   # its logic, tiny, on a CPU
set -u
OUT=${OUT:-benchmarks/results/gpu-run}
DEVICE=${DEVICE:-auto}
STEPS=${STEPS:-40}
WARMUP=${WARMUP:-5}
REPEATS=${REPEATS:-3}
INFER_BATCH=${INFER_BATCH:-500}
INFER_BATCHES=${INFER_BATCHES:-10}
DEADLINE=${DEADLINE:-380}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1 || true

COMMON=(--device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS" --infer-batch "$INFER_BATCH"
        --infer-batches "$INFER_BATCHES")
ORDER=mimo,mimmo,base,ensemble,mc_dropout,dun,early_exit,datamux,mixmo,mimmo_gamma
run() {  # run NAME LIMIT_SECONDS ARGS...: one throughput.py configuration, cut at min(LIMIT, time left)
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "== $name skipped: no time left" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout -k 5 "$limit" "$PY" benchmarks/throughput.py "${COMMON[@]}" --out "$OUT/$name.json" "$@" \
    > /dev/null 2>> "$LOG"
  echo "== $name rc=$? after $((SECONDS - start))s" | tee -a "$LOG"
}

run fp32 140 --methods "$ORDER"
run bf16-channels-last 120 --methods "$ORDER" --bf16 --channels-last
run fp32-fused-exits 45 --methods mimo,mimmo,dun --m4 mimmo,ensemble --exit-path fused
left=$((DEADLINE - SECONDS))
if ((left >= 10)); then
  echo "== profile (limit ${left}s)" | tee -a "$LOG"
  timeout -k 5 "$left" "$PY" benchmarks/profile_step.py --device "$DEVICE" --methods mimo,mimmo --infer-batch "$INFER_BATCH" \
    > "$OUT/profile.txt" 2>> "$LOG"
  echo "== profile rc=$?" | tee -a "$LOG"
fi
echo "done after ${SECONDS}s" | tee -a "$LOG"
