# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench assets clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/system_packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/mmrank demo

test: setup
	$(BIN)/pytest -n 2 --dist loadfile

bench: setup
	$(BIN)/python benchmarks/index_bench.py
	$(BIN)/python benchmarks/text_indexing_bench.py
	$(BIN)/python benchmarks/superglobal_bench.py
	$(BIN)/python benchmarks/mllm_rerank_bench.py
	$(BIN)/python benchmarks/cir_bench.py
	$(BIN)/python benchmarks/eval_bench.py
	$(BIN)/python benchmarks/serve_bench.py

assets: setup
	$(BIN)/python scripts/make_assets.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
