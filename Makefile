# Two commands on a fresh machine with Python 3.11+ and make:
#   make run   [PORT=7000]   create .venv, install, run the whole stack
#   make test                create .venv, install with test extras, run the tests
PYTHON ?= python3
VENV   := .venv
PORT   ?= 7000
BIN    := $(VENV)/bin

.PHONY: run test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/chat-stack --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check protocol gateway broker workers stack bench tests
	$(BIN)/mypy protocol gateway broker workers stack bench

bench: install
	$(BIN)/chat-bench --baseline

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
