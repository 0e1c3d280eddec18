# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
OUT ?= demo-out
# A CPU build of torch; on machines without the local wheel use e.g.
#   make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test vllm-env demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[all]'
	-$(BIN)/pip uninstall -q -y torchvision torchaudio 2>/dev/null
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	-$(BIN)/pip uninstall -q -y torchvision torchaudio 2>/dev/null
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# vLLM (CPU build) lives in its own venv: it pins its own torch/transformers.
vllm-env:
	bash tests/support/setup_vllm.sh $(VLLM_VENV)

# The pipeline on the bundled samples (recipes/demo.yaml), ending with OUT/report.html; run again, it says
# "nothing to do" (`$(BIN)/compass run recipes/demo.yaml --force train` redoes a step and the ones after it).
demo: install
	$(BIN)/compass run recipes/demo.yaml --out $(OUT)

test: install-test vllm-env
	$(BIN)/ruff check .
	COMPASS_VLLM_VENV=$(CURDIR)/$(VLLM_VENV) $(BIN)/pytest -q

test-fast: install-test
	$(BIN)/pytest -q -m "not slow and not vllm"

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OUT) *.duckdb
