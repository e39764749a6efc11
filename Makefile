# make setup: .venv with the pinned requirements (quick when already done); the rest run inside it.
PY := .venv/bin/python
STAMP := .venv/.requirements-installed

.PHONY: setup demo results paper paper-mini test gpu-check lint bench

# The main job: train, attack and plot ReLU vs k-WTA on Fashion-MNIST (about 20 min on 2 CPU cores with bf16 in hardware).
demo: setup
	$(PY) -m scripts.demo

# The results: the demo's networks trained to convergence on all of Fashion-MNIST, attacked at full strength
# (hours on a CPU; every step resumes). docs/results/fashion-mnist.md is its page.
results: setup
	$(PY) -m scripts.results

# The replication's whole grid on CIFAR-10 and SVHN: make paper DATA_DIR=/data GPUS=0,1,2,3
# `make paper --dry-run` (make -n) lists every step with its settings instead: a + line runs even under -n.
DATA_DIR ?= data
GPUS ?= 0
DRY_RUN = $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run)
paper: setup
	+$(PY) -m scripts.paper --data-dir $(DATA_DIR) --gpus $(GPUS) $(DRY_RUN)

# The same grid at toy sizes (Fashion-MNIST, synthetic data) on the CPU: every group and step kind, in minutes.
paper-mini: setup
	+$(PY) -m scripts.paper --mini --cpus 2 $(DRY_RUN)

# setup also installs Debian's dataset-fashion-mnist (real data that works offline) when root and it is missing.
setup: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
		apt-get update && apt-get install -y dataset-fashion-mnist; \
	fi

# The pinned set, then this checkout as an editable install (kwta, and kernels/ as kwta.kernels), then the
# oldest Triton the kernels support in a folder of its own: tests/test_aot.py compiles every kernel with it too.
TRITON_OLDEST := 3.6.0
$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip install --quiet --no-deps --upgrade --target .venv/triton-$(TRITON_OLDEST) triton==$(TRITON_OLDEST)
	touch $(STAMP)

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest tests

# On a machine with a CUDA GPU: the kernels against the reference, CUDA graphs, speed per shape beside the topk
# formula and kthvalue, a profile, a training step and torch.compile, in one report (results/gpu-check). Where
# setup cannot run (no network), python scripts/gpu_check.py needs only the torch and Triton already installed.
gpu-check: setup
	$(PY) -m scripts.gpu_check

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) -m bench
