# Every target runs inside tools/env.sh (offline Pulumi, local backend, .toolchain/bin on PATH).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
WITH_ENV := tools/with-env
PY := .venv/bin/python
LAB_HOSTS ?= 2

.PHONY: venv deps toolchain docker lab-up lab-down demo smoke test unit lint bench clean

venv: .venv/.installed
.venv/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Debian packages the host-step scripts and their tests use (installs only what is missing).
deps:
	tests/scripts/install-deps.sh

toolchain:
	tools/build-toolchain.sh

docker:
	tools/ensure-docker.sh

lab-up: venv docker
	$(WITH_ENV) lab/lab up $(LAB_HOSTS)

lab-down:
	$(WITH_ENV) lab/lab down

# README main command: the lab, then `pulumi up --stack lab` to a working endpoint.
demo: venv deps toolchain lab-up
	$(WITH_ENV) tools/demo.sh

STACK ?= lab
smoke: venv
	STACK=$(STACK) SMOKE_IGNORE_STDIN=1 $(WITH_ENV) $(PY) tools/smoke.py

unit: venv
	$(WITH_ENV) $(PY) -m pytest -q tests/unit

# README test command: every layer (unit, scripts, lab, end-to-end through the real CLI), the
# real vLLM engine on the lab included (REAL_ENGINE=1: builds its 7 GB image, cached).
test: venv deps toolchain docker lint
	REAL_ENGINE=1 $(WITH_ENV) $(PY) -m pytest -q -rs --durations=15 tests

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench: venv deps toolchain docker
	$(WITH_ENV) bench/run

.PHONY: real-engine
# The real vLLM CPU engine deployed by the program on the lab (Pulumi.lab-cpu.yaml), end to
# end: tests/e2e/test_real_engine.py builds the image (lab/vllm-cpu/build.sh, cached) and runs
# `pulumi up` / chat / destroy on throwaway stacks.
real-engine: venv deps toolchain lab-up
	REAL_ENGINE=1 $(WITH_ENV) $(PY) -m pytest -q -rs --durations=10 tests/e2e/test_real_engine.py

clean: lab-down
	rm -rf .state
