# `make example` and `make test` do all set-up first (scripts/setup.sh: apt + .venv), then run.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup example test
setup:
	bash scripts/setup.sh

example: setup
	$(VENV)/bin/mirror_sfm reconstruct tests/fixtures/mary_rose/images outputs/example --pairs retrieval --num-matched 5
	@echo "pairs: outputs/example/pairs-retrieval.txt   model: outputs/example/sparse   stats: outputs/example/stats.json"

test: setup
	$(PY) -m pytest -q
