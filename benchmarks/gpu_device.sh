#!/usr/bin/env bash
# On the device machine (one GPU): install the carried wheels (benchmarks/gpu_wheels.sh), then run bench_gpu.py;
# GPU_RESULTS.md and the log land in $OUT. Extra arguments go to bench_gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-/tmp/bench_gpu}"
mkdir -p "$out"
python3 -c "import torch, transformers, trl; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name(), transformers.__version__, trl.__version__)"
python3 benchmarks/bench_gpu.py --out "$out/GPU_RESULTS.md" "$@" 2>&1 | tee "$out/bench_gpu.log"
