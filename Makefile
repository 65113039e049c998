# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. GPU users: install their CUDA/ROCm build into $(VENV) first (see README);
# an importable torch is kept as it is.
TORCH_VERSION ?= 2.13.0

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/p2pfl sim run

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
