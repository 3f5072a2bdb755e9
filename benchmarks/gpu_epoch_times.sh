#!/usr/bin/env bash
# The GPU check of the CUDA-graph work, for a fresh GPU machine (7 minutes, start included): first the carried
# wheels are installed and imported (fails in seconds), then benchmarks/gpu_check.py runs the graph check (one
# process per method, pass/fail), MIMMO's compile check, the epoch times (MIMO and MIMMO first), the paper_tables
# estimate and, last, the concurrent runs; $OUT/gpu-epoch-times.json is rewritten after every part.
#
#   OUT=/tmp/out bash benchmarks/gpu_epoch_times.sh                 # on the GPU machine (wheels carried in .whl/)
#   OUT=/tmp/out DRY=1 SKIP_WHEELS=1 PYTHON=.venv/bin/python bash benchmarks/gpu_epoch_times.sh   # on a CPU
set -u
OUT=${OUT:-benchmarks/results/gpu-run}
DEADLINE=${DEADLINE:-380}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G ".whl/*.whl" > /dev/null; then
  # hydra-core, omegaconf, antlr4-python3-runtime (built from its sdist), safetensors
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 || { echo "wheel install failed (see $LOG)" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
timeout 60 "$PY" -c "
import hydra, omegaconf, antlr4, safetensors, torch, lightning, matplotlib, mimmo.cli, mimmo.training
print('imports ok: torch', torch.__version__, 'lightning', lightning.__version__, 'hydra', hydra.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "import check failed (see $LOG)" | tee -a "$LOG"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1 || true
"$PY" benchmarks/gpu_check.py --out "$OUT" --deadline $((DEADLINE - SECONDS)) ${DRY:+--dry} 2>&1 | tee -a "$LOG"
echo "done after ${SECONDS}s" | tee -a "$LOG"
