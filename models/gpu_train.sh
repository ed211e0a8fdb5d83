#!/usr/bin/env bash
# Train the nucleus U-Net on a lent GPU, as one prepared command (issue 13; the `device` tool).
#
# Here, once per change of the training data (about 20 MB; .gpu_pack/ is git-ignored; the GPU
# machine cannot see ../shared):
#     .venv/bin/python -m senpath.segment.datapack --out .gpu_pack/pack.npz
# Then one device call with carry [".gpu_pack"] and timeout_s 590, e.g. v5 fine-tuned:
#     MINUTES=7 bash models/gpu_train.sh --init models --lr 3.5e-4 --batch-size 64 ...
# or a new network from scratch (--widths ..., --stem 8, --pool maxblur). Every argument goes on to
# `python -m senpath.segment.train`; this script adds the pack, --device cuda (bf16 autocast),
# the machine's cores drawing the batches (--loader-workers), no validation (stardist is not
# installed there; evaluate here) and a checkpoint every 2 minutes. A run cut by the time limit
# stops cleanly at its last step. $OUT receives log.jsonl, run.json and model.pt (the final
# weights in float16 with their net_config, step and arguments, without the optimizer state, so
# under the 16 MB a returned file may have); here:
#     python -m senpath.segment.export --checkpoint model.pt --out DIR --thresholds-from models
# DEVICE=cpu runs the same on a CPU (a smoke test of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7}
OUT=${OUT:-/tmp/senpath_gpu_out}
RUN=${RUN:-/tmp/senpath_gpu_run}
# senpath and what the machine's python3 lacks, from the carried .whl/ (benchmarks/gpu_wheels.sh)
# shellcheck source=benchmarks/gpu_env.sh
source benchmarks/gpu_env.sh
if [ ! -f .gpu_pack/pack.npz ]; then
    echo "gpu_train: .gpu_pack/pack.npz is missing: write it here with python -m senpath.segment.datapack --out .gpu_pack/pack.npz and carry .gpu_pack" >&2
    exit 2
fi
if [ "$DEVICE" = cuda ]; then
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_train: no CUDA device visible to torch: nothing trained" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
mkdir -p "$OUT"
status=0
timeout --signal=TERM --kill-after=60 "$(( ${MINUTES%.*} * 60 + 120 ))" \
    "$PYTHON" -m senpath.segment.train --out "$RUN" --data-pack .gpu_pack/pack.npz \
    --device "$DEVICE" --loader-workers "$WORKERS" --threads 1 --minutes "$MINUTES" \
    --checkpoint-minutes 2 --validate-minutes 0 "$@" > "$OUT/train_stdout.txt" 2>&1 || status=$?
tail -n 5 "$OUT/train_stdout.txt"
"$PYTHON" - "$RUN" "$OUT" <<'PY'
import shutil, sys
from pathlib import Path

import torch

run, out = Path(sys.argv[1]), Path(sys.argv[2])
ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
ckpt.pop("optimizer", None)
# float16, as export writes them anyway: a 5.5 M-parameter network is 11 MB, not 22
ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
torch.save(ckpt, out / "model.pt")
for name in ("log.jsonl", "run.json"):
    if (run / name).exists():
        shutil.copy(run / name, out / name)
print(f"gpu_train: step {ckpt['step']} of {ckpt['total_steps']} -> {out / 'model.pt'}")
PY
exit "$status"
