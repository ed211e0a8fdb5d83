#!/usr/bin/env bash
# The GPU check of issue 18, one prepared script (< 8 min on one modern GPU):
#   CUDA network rows (fp32 / fp16 / bf16, batches of analysis tiles sized to the card),
#   GPU-vs-CPU parity (instances matched at IoU 0.5), analyze_slide end to end on the GPU,
#   then the gpu-marked tests.
# Usage: benchmarks/gpu_check.sh [--slide 8192] [--cpu-slide 2048]     (PYTHON=... to pick one)
# On the lent machine (the device tool): run benchmarks/gpu_wheels.sh here first and carry
# [".whl"] (senpath with its weights, zarr, dask, the codecs: that machine has none of them).
# Without a CUDA device it says so and exits 2, having measured nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch ($("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)' 2>&1 | tail -1)): nothing measured; run this on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 400 "$PYTHON" benchmarks/gpu_check.py "$@"
timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_segment_device.py
