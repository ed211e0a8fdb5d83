# senpath developer and user entry points. The README's quick start is `make demo` and `make test`.
#
# Everything installs into a local virtual environment (.venv) with the versions pinned in
# constraints.txt (torch==2.13.0 is the CPU wheel; an unpinned torch would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.senpath-installed
RESULTS ?= results

.PHONY: setup demo test test-fast lint sysdeps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Set up, then analyse the bundled sample slides (a mini-batch from sample_images/samples.csv):
# per-cell tables, per-patient table and QC pictures under $(RESULTS)/.
demo: setup
	$(VENV)/bin/senpath run sample_images/samples.csv --out $(RESULTS)
	$(VENV)/bin/senpath export $(RESULTS) --by patient --format csv,xlsx

# System packages the test suite needs (none yet beyond Python; the napari tests will add Xvfb + Mesa).
sysdeps:
	@true

# Set up, then run the whole test suite.
test: setup sysdeps
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check senpath tests benchmarks
	$(VENV)/bin/ruff format --check senpath tests benchmarks

clean:
	rm -rf $(VENV) $(RESULTS) .pytest_cache
