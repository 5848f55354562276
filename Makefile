# flowprep: one entry point for setting up, testing and the demo.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flowprep-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
# pytest processes for make test (pytest-xdist; a test file stays in one process, so its fixtures run once).
TEST_WORKERS ?= 2

.PHONY: setup test demo bench clean

setup: $(STAMP)

# Re-installs only when the package metadata changes; a no-op otherwise.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m flowprep.demo --out $(DEMO_OUT)

# Extraction and loader benchmarks (see BENCHMARKS.md; they need Debian's opencv-doc sample videos).
bench: setup
	$(BIN)/python -m benchmarks.extract --out bench-out/extract.json
	$(BIN)/python -m benchmarks.loader --out bench-out/loader.json
	$(BIN)/python -m benchmarks.loader_device --workers 2 --batches 24 --reps 3 --out bench-out/loader_device-cpu2.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-out
