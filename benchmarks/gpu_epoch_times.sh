#!/usr/bin/env bash
# The GPU checks of the CUDA-graph work in one script, for a session with a device (15 minutes, start included):
# 1. the graphed step against eager steps on the GPU (MIMMO, MixMo, MC Dropout; weights and metrics compared),
# 2. train.compile=true for MIMMO, MixMo and MC Dropout (the crash of issue 10) for one short epoch each,
# 3. benchmarks/epoch_time.py: every method graphed and eager, 4 concurrent runs, the paper_tables estimate.
# Everything lands in $OUT: log.txt, graph-check.json, gpu-epoch-times.json. Each part is cut at its limit and
# the whole at DEADLINE seconds.
#
#   OUT=/tmp/out bash benchmarks/gpu_epoch_times.sh            # on the GPU machine (wheels carried in .whl/)
#   OUT=/tmp/out DEADLINE=3000 TRAIN_SIZE=512 EXTRA="model.width=0.125" SKIP_WHEELS=1 \
#       PYTHON=.venv/bin/python bash benchmarks/gpu_epoch_times.sh   # its logic, tiny, on a CPU
set -u
OUT=${OUT:-benchmarks/results/gpu-run}
DEADLINE=${DEADLINE:-560}
TRAIN_SIZE=${TRAIN_SIZE:-9000}
EXTRA=${EXTRA:-}
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
part() {  # part NAME LIMIT_SECONDS COMMAND...: cut at min(LIMIT, time left)
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then echo "== $name skipped: no time left" | tee -a "$LOG"; return; fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout -k 5 "$limit" "$@" >> "$LOG" 2>&1
  echo "== $name rc=$? after $((SECONDS - start))s" | tee -a "$LOG"
}
# shellcheck disable=SC2086
part graph-check 120 "$PY" benchmarks/graph_check.py --out "$OUT/graph-check.json" --extra $EXTRA
# shellcheck disable=SC2086
part epoch-times 330 "$PY" benchmarks/epoch_time.py --methods all --epochs 4 --train-size "$TRAIN_SIZE" --eager \
  --aggregate 4 --out "$OUT/gpu-epoch-times.json" --extra $EXTRA
# shellcheck disable=SC2086
part compile 100 "$PY" benchmarks/graph_check.py --compile --methods mimmo,mixmo,mc_dropout \
  --out "$OUT/compile-check.json" --extra $EXTRA
echo "done after ${SECONDS}s" | tee -a "$LOG"
