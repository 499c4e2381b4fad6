# `make demo` and `make test` each set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench fuzz clean

$(STAMP): pyproject.toml sluice/process/_linecheck.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sluice demo

lint: $(STAMP)
	$(BIN)/ruff check sluice tests bench setup.py
	gcc -fsyntax-only -Wall -Wextra -Werror -I"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" sluice/process/_linecheck.c
	$(BIN)/cfn-lint template.yaml

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/parser.py

# The compiled line checker under AddressSanitizer and UBSan, fed mutated lines for two minutes.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_linecheck.py --seconds 120

clean:
	rm -rf $(VENV) sluice-data .mypy_cache .ruff_cache .pytest_cache
