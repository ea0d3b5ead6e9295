# Every target runs inside tools/env.sh (offline Pulumi, local backend, .toolchain/bin on PATH).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
WITH_ENV := tools/with-env
PY := .venv/bin/python
LAB_HOSTS ?= 2

.PHONY: venv deps toolchain docker lab-up lab-down bare-up demo bare-demo smoke test unit lint bench clean mutation mutation-table

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

# Two bare lab hosts (no Docker, a blank disk), the lab hub and the Docker .debs (README).
bare-up: venv docker
	$(WITH_ENV) lab/lab bare up 2

# The bare lab, then `pulumi up --refresh --stack bare` from nothing to a working endpoint.
bare-demo: venv deps toolchain bare-up
	STACK=bare $(WITH_ENV) tools/demo.sh

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

# Mutation testing of the pure core (settings, planner, renderers; [tool.mutmut] in
# pyproject.toml) against the fast tests (unit + scripts, root for the loop devices). Not in
# `make test`: it takes hours on 2 cores (README). MUTANTS narrows it to mutant name patterns
# ('components.plan.sizing.*'); MUTATION_JOBS is mutmut's --max-children. Results accumulate in
# mutants/ (rerun: only unchecked mutants; `rm -rf mutants` to start over). The table is
# per module: mutants, killed (timeouts count as killed), survived, no tests, not checked.
MUTATION_JOBS ?= 1
MUTANTS ?=
mutation: venv deps
	$(WITH_ENV) .venv/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(MAKE) --no-print-directory mutation-table

# The per-module table of the results so far (no run).
mutation-table:
	@.venv/bin/mutmut results --all true | awk -F': ' '\
	  { k = $$1; sub(/^ +/, "", k); m = k; sub(/\.x(_|ǁ).*$$/, "", m); s = $$2; \
	    if (!(m in n)) order[++mods] = m; n[m]++; \
	    if (s == "killed" || s == "timeout" || s == "caught by type check") kl[m]++; \
	    else if (s == "survived") sv[m]++; else if (s == "no tests") nt[m]++; \
	    else if (s == "not checked") nc[m]++; else ot[m]++ } \
	  END { printf "%-40s %8s %7s %9s %9s %8s %6s\n", "module", "mutants", "killed", \
	          "survived", "no tests", "unchecked", "rate"; \
	        for (i = 1; i <= mods; i++) { m = order[i]; done = n[m] - nc[m] - ot[m]; \
	          printf "%-40s %8d %7d %9d %9d %8d %5s%%\n", m, n[m], kl[m], sv[m], nt[m], nc[m], \
	            done ? sprintf("%.1f", 100 * kl[m] / done) : "-" } }'

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
