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

$(STAMP): pyproject.toml constraints.txt plugins/napari/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev,napari]" -e "plugins/napari[testing]"
	touch $(STAMP)

setup: $(STAMP)

# Set up, then analyse the bundled sample slides (a mini-batch from sample_images/samples.csv):
# per-cell tables, per-patient table and QC pictures under $(RESULTS)/.
demo: setup
	$(VENV)/bin/senpath run sample_images/samples.csv --out $(RESULTS)
	$(VENV)/bin/senpath export $(RESULTS) --by patient --format csv,xlsx
	$(VENV)/bin/senpath report $(RESULTS)

# System packages the napari tests need: a virtual X display (Xvfb), software OpenGL (Mesa) and the
# X/xcb libraries of Qt 6. Installed with apt-get when missing (as root, or through sudo); nothing
# is done when they are all there.
SYSDEPS := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libfreetype6 \
	fonts-dejavu-core libdbus-1-3 libx11-xcb1 libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-render0 \
	libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-util1 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1
sysdeps:
	@missing=$$(for p in $(SYSDEPS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then echo "sysdeps: the display libraries are installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "sysdeps: install these system packages (Debian names): $$missing" >&2; exit 1; \
	else \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "sysdeps: installing" $$missing; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Set up, then run the whole test suite (the napari plugin's tests on a virtual display).
test: setup sysdeps
	SENPATH_REQUIRE_DISPLAY=1 xvfb-run -a -s "-screen 0 1920x1200x24" $(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check senpath tests benchmarks plugins/napari
	$(VENV)/bin/ruff format --check senpath tests benchmarks plugins/napari
	$(VENV)/bin/mypy senpath

clean:
	rm -rf $(VENV) $(RESULTS) .pytest_cache
