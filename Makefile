PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cdp serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# On every core, at most four: each worker has its own PostgreSQL database and SQLite files.
test: install lint
	$(BIN)/pytest -n auto --maxprocesses 4

demo: install
	$(BIN)/cdp demo

bench: install
	$(BIN)/python -m bench
