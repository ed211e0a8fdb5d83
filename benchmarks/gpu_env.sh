# Sourced on the lent GPU machine by benchmarks/gpu_check.sh and models/gpu_train.sh: senpath
# and the dependencies that machine's python3 lacks, from the carried .whl/ (written here by
# benchmarks/gpu_wheels.sh), installed into a scratch folder put first on PYTHONPATH; the image's
# own packages (torch, numpy, ...) are left as they are. Without .whl/ the checkout itself is
# put on PYTHONPATH: enough for training from a data pack, not for the shipped weights or a slide
# (no senpath.models, no zarr).
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    SENPATH_DEPS=${SENPATH_DEPS:-/tmp/senpath_deps}
    rm -rf "$SENPATH_DEPS"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SENPATH_DEPS" .whl/*.whl
    # the installed senpath, not the checkout's (which has no senpath.models): python -m and
    # pytest would put the working directory first on sys.path
    export PYTHONPATH="$SENPATH_DEPS${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    echo "gpu_env: senpath $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("senpath"))') and $(ls .whl | wc -l) wheels from .whl/ in $SENPATH_DEPS"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_env: no .whl/ carried: the checkout on PYTHONPATH (run benchmarks/gpu_wheels.sh here and carry .whl for the shipped weights and slides)" >&2
fi
export PYTHONUNBUFFERED=1
