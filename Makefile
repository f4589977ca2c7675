# On a fresh clone:
#   make demo         the embedded demo: a synthetic world, a tiny model trained on it on the CPU, held-out
#                     accuracy per task, three answers (17–43 min on 2 cores, by the machine; a second run reuses runs/demo)
#   make test         run the default test suite
#   make quickstart   build the untrained tiny model and answer a question about an image (seconds)
# Both create .venv and install everything on first use. torch: the CPU build where no NVIDIA GPU
# is visible (TORCH_CPU_SPEC; add TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>" on machines
# whose default index serves CUDA builds), the default build where one is.

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo quickstart test test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install --quiet --no-compile torch; \
	else \
		$(PIP) install --quiet --no-compile $(TORCH_PIP_ARGS) "$(TORCH_CPU_SPEC)"; \
	fi
	$(PIP) install --quiet --no-compile -e ".[train,dev]"
	# pip compiles the bytecode on one core, compileall on all of them (on 2 cores ~15 s less). Like pip,
	# it passes over files this Python cannot compile (torch ships a few for Python 3.12 only).
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llava-vid demo --out runs/demo

quickstart: $(STAMP)
	$(VENV)/bin/llava-vid init --config configs/model/tiny.yaml --out runs/tiny
	$(VENV)/bin/llava-vid generate --model runs/tiny --image examples/shapes.png --max-new-tokens 24 \
		"What shapes are in this picture?"

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache .hypothesis
