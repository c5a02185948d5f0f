#!/usr/bin/env bash
# Run one figures profile on the offline GPU machine and pack its outputs (issue 7).
# Prepared here by scripts/prepare_gpu_carry.sh; on the GPU machine, from the repository root:
#   PROFILE=gpu bash scripts/gpu_figures.sh        # carry .whl and .gpu; writes $OUT/figures-<profile>.tar.gz
# The archive holds figures/<profile>/ (figures, tables, numbers.tex, provenance.json) and the executed
# notebooks with their HTML (build/notebooks/<profile>/). Unpack it in the repository root here.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-gpu}
OUT=${OUT:-gpu_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/site/bin:$PATH" || exit 1
fi
export DDPM_DATA_ROOT=${DDPM_DATA_ROOT:-$PWD/.gpu/data} PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
start=$(date +%s)
"$PYTHON" tools/make_figures.py --profile "$PROFILE" ${FIGURES_ARGS:-} 2>&1 | grep -v '^\[IPKernelApp\]' | tee "$OUT/make_figures.log"
rc=${PIPESTATUS[0]}
echo "make_figures exit $rc after $(( $(date +%s) - start )) s"
tar czf "$OUT/figures-$PROFILE.tar.gz" "figures/$PROFILE" "build/notebooks/$PROFILE" 2>/dev/null
ls -la "$OUT"
exit "$rc"
