#!/usr/bin/env bash
# Here, before a device call: the wheels the lent GPU machine needs to run senpath (issues 13, 18).
#
# That machine has its own python3 (3.12) with torch, numpy, scipy, scikit-image, pandas, pyarrow,
# OpenCV, tifffile, matplotlib, ONNX Runtime ... but not zarr, dask or the codecs, it cannot
# reach a package index, and the project's pins do not apply there. This writes into .whl/
# (git-ignored; carry it: the device tool's `carry` [".whl"]):
#   - senpath itself as a wheel (with the shipped weights as senpath.models, which a plain
#     PYTHONPATH=. checkout does not give);
#   - the run-time dependencies that image lacks, binary wheels for its Python, at the versions
#     of constraints.txt.
# benchmarks/gpu_env.sh (sourced by gpu_check.sh and models/gpu_train.sh there) installs them into
# a scratch folder, without touching the image's packages. About 40 MB; the working tree that
# travels is limited to 64 MiB (the repo's tracked files are ~16 MB), so carry .gpu_pack (25 MB,
# training) in another call.
# Usage: benchmarks/gpu_wheels.sh          (PYVER=3.12 PYTHON=.venv/bin/python by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PYVER=${PYVER:-3.12}
#: Distributions senpath imports at run time that the device image does not hold (see KINDS.md
#: in the device tool's folder), found by running analyze_slide and listing what it loaded.
MISSING="zarr numcodecs imagecodecs dask distributed donfig google-crc32c lazy-importer locket partd platformdirs tblib tornado zict"
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir .whl . 2>&1 | grep -v "^WARNING: Location" || true
# shellcheck disable=SC2086
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -c constraints.txt $MISSING 2>&1 | grep -v "^WARNING: Location" || true
for name in senpath $MISSING; do
    stem=$(echo "$name" | tr '-' '_')
    if ! ls .whl | grep -qi "^${stem}-"; then
        echo "gpu_wheels: no wheel for $name in .whl/: the device call would fail" >&2
        exit 1
    fi
done
ls -1 .whl
echo "gpu_wheels: $(du -sh .whl | cut -f1) in .whl/ for Python $PYVER: carry [\".whl\"]"
