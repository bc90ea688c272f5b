# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint openapi install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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
test: $(STAMP) lint
	$(BIN)/pytest

openapi: $(STAMP)
	$(BIN)/verified-urls openapi > openapi.yaml

clean:
	rm -rf $(VENV) data
