# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# openapi-python-client pins httpx below the project's, so it has a venv of its own.
CODEGEN_VENV := .venv-codegen
CODEGEN_STAMP := $(CODEGEN_VENV)/.installed
CODEGEN_REQUIREMENTS := tests/codegen-requirements.txt
CLIENT_DIR := build/client

.PHONY: run test lint openapi install codegen client clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CODEGEN_STAMP): $(CODEGEN_REQUIREMENTS)
	$(PYTHON) -m venv $(CODEGEN_VENV)
	$(CODEGEN_VENV)/bin/pip install --quiet -r $(CODEGEN_REQUIREMENTS)
	touch $(CODEGEN_STAMP)

install: $(STAMP)

codegen: $(CODEGEN_STAMP)

# A Python client generated from openapi.yaml, as the package
# build/client/verified_urls_client (needs the project's venv for ruff).
client: $(STAMP) $(CODEGEN_STAMP)
	rm -rf $(CLIENT_DIR) && mkdir -p $(CLIENT_DIR)
	PATH="$(abspath $(BIN)):$$PATH" $(CODEGEN_VENV)/bin/openapi-python-client generate \
	    --path openapi.yaml --meta none --fail-on-warning \
	    --output-path $(CLIENT_DIR)/verified_urls_client

# Migrates the embedded SQLite ledger and serves on 127.0.0.1:8000 with the
# embedded S3 store (moto's server on 127.0.0.1:9000, objects kept under ./data/).
run: $(STAMP)
	$(BIN)/verified-urls serve --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold warning Dockerfile

# Every test, on SQLite and on PostgreSQL (127.0.0.1:5432, user postgres).
test: $(STAMP) $(CODEGEN_STAMP) lint
	$(BIN)/pytest

openapi: $(STAMP)
	$(BIN)/verified-urls openapi > openapi.yaml

clean:
	rm -rf $(VENV) $(CODEGEN_VENV) $(CLIENT_DIR) data
