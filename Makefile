# Two commands on a fresh machine with Python 3.11+ and make:
#   make run   [PORT=7000]   create .venv, install, run the whole stack
#   make test                create .venv, install with test extras, run the tests
PYTHON ?= python3
VENV   := .venv
PORT   ?= 7000
BIN    := $(VENV)/bin

.PHONY: run test lint bench bench-deps install system-deps clean

# Debian packages the tests drive for real (installed when missing and we are root)
APT_PACKAGES := haproxy iproute2 redis-server chromium irssi tmux

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# $(call apt-install,PACKAGES,what happens without them): apt-get install what is missing, as root;
# policy-rc.d keeps apt from starting the packages' services (the tests start their own)
define apt-install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing:$$missing"; \
	  policy=/usr/sbin/policy-rc.d; own=0; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod +x $$policy; own=1; fi; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  [ $$own = 0 ] || rm -f $$policy; \
	else echo "cannot install$$missing (not root or no apt-get): $(2)"; fi
endef

system-deps:
	$(call apt-install,$(APT_PACKAGES),the tests that need them are skipped)

run: install
	$(BIN)/chat-stack --port $(PORT)

test: install system-deps
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m pip install --quiet ruff mypy
	$(BIN)/ruff check protocol gateway broker workers stack bench tests
	$(BIN)/mypy protocol gateway broker workers stack bench

# the C IRC servers chat-bench compares against (--peers): installed like system-deps
BENCH_PACKAGES := ngircd inspircd openssl

bench-deps:
	$(call apt-install,$(BENCH_PACKAGES),chat-bench skips those peers)

bench: install bench-deps
	$(BIN)/chat-bench --baseline --peers ngircd,inspircd

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
