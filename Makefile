# Two commands on a fresh machine with Python 3.11+ and make:
#   make run   [PORT=7000]   create .venv, install, run the whole stack
#   make test                create .venv, install with test extras, run the tests
PYTHON ?= python3
VENV   := .venv
PORT   ?= 7000
BIN    := $(VENV)/bin

.PHONY: run test install clean

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
