#!/usr/bin/env bash
# The GPU run of the throughput benchmark, for the offline GPU machine (Python 3.12, torch 2.11,
# no network). Run from anywhere; it works in the repository root. Needs the wheels in .whl/ (diffusers and
# its missing dependencies, see benchmarks/README.md) carried along with the working tree.
#
#   bash benchmarks/gpu_bench.sh [extra throughput.py options]      # writes $OUT/throughput.{json,log}
#
# Sized to finish in about 5 minutes on an H100/H200: every variant is built and warmed up (eager ones
# first, then two compilations: the training model, the sampling model; the compiled CUDA graph reuses the
# latter), then all of a phase are timed together, interleaved; --budget-s skips a compiled variant that
# would overrun. Environment: OUT (output folder, default ./bench_out), TRAIN_COMPILE=model|step (which
# compiled training variant, default model), BENCH_COMMIT (git commit to record; the device copy has no
# .git), PYTHON (default python3), SITE (wheel target, default /tmp/site), BENCH_TIMEOUT (hard limit in s,
# default 420).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench_out}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    && export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" || exit 1
else
  echo "note: no .whl/*.whl here; diffusers must already be importable" >&2
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"
"$PYTHON" -c "import diffusers, huggingface_hub; print('diffusers', diffusers.__version__, '| huggingface_hub', huggingface_hub.__version__)" \
  || echo "diffusers does not import: the benchmark will measure this project only"

case "${TRAIN_COMPILE:-model}" in
  model|step) ;;
  *) echo "TRAIN_COMPILE must be 'model' or 'step', got '${TRAIN_COMPILE}'" >&2; exit 2 ;;
esac
TRAIN="diffusers_bf16_eager,ours_fp32_eager,ours_bf16_eager,ours_bf16_cl,ours_bf16_cl_compile_${TRAIN_COMPILE:-model}"
SAMPLE="diffusers_bf16_eager,ours_bf16_cl_eager,ours_bf16_cl_graph,ours_bf16_cl_compiled,ours_bf16_cl_compiled_graph"

timeout -s INT "${BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/throughput.py --device cuda \
  --batch 128 --sample-batch 500 --repeats 9 --warmup 3 --inner 4 --sample-inner 3 --sampler-steps 20 \
  --budget-s 330 --train-variants "$TRAIN" --sample-variants "$SAMPLE" \
  --out "$OUT/throughput.json" "$@" 2>&1 | tee "$OUT/throughput.log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ] || [ "$rc" = 130 ]; then
  echo "the benchmark was stopped after ${BENCH_TIMEOUT:-420} s; what it measured:"
  [ -f "$OUT/throughput.json" ] && "$PYTHON" benchmarks/throughput.py --table "$OUT/throughput.json"
fi
exit "$rc"
