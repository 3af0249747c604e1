# Two entry points for a fresh machine with Python >= 3.11 and pip:
#   make demo   create .venv, install, run `zoo compare gmm` on the bundled default data
#   make test   create .venv, install, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch first: on these machines it lies on disk (an unpinned torch would pull a
# multi-GB CUDA build); elsewhere pip takes this release from the index. Override with TORCH=...
TORCH ?= torch==2.13.0

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/zoo compare gmm --force

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
