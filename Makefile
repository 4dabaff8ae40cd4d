# picoclaw-fleet: `make demo` runs a throwaway local fleet end to end; `make test` runs the tests.
# Both bootstrap what they need on a fresh machine: a venv in .venv, and OpenSSH's
# server and iproute2 (apt-get) when missing. The tests start their own sshd on 127.0.0.1,
# inside a network namespace that has nothing but loopback (harness/in_loopback_netns).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test sshd venv
test: venv sshd
	harness/in_loopback_netns $(PY) -m pytest $(PYTEST_ARGS)

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

sshd:
	@test -x /usr/sbin/sshd && command -v ip >/dev/null || { \
	  echo "installing openssh-server and iproute2 (the tests run a real sshd on 127.0.0.1, in a loopback-only network namespace)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 >/dev/null; }

# --- the fleet verbs: `make status`, `make dispatch TASK="uptime?"`, `make batch FILE=tasks.txt`
# Optional everywhere: CONFIG=path HOSTS=pi-1,@lab ARGS="--json --parallel 8";
# dispatch also takes HOST=pi-2 (one host) where HOSTS broadcasts.
# TASK, FILE, HOSTS and CONFIG reach fab verbatim (quotes and $ included).
FAB        := $(VENV)/bin/fab
LINT_STAMP := $(VENV)/.lint-installed
quote       = '$(subst ','\'',$(value $(1)))'
FLEET       = $(if $(value CONFIG),--config $(call quote,CONFIG)) $(if $(value HOSTS),--hosts $(call quote,HOSTS))

.PHONY: status deploy dispatch batch teardown demo bench lint
status deploy teardown: venv
	$(FAB) $@ $(FLEET) $(ARGS)

dispatch: venv
	$(if $(value TASK),,$(error usage: make dispatch TASK="what to do" [HOSTS=...]))
	$(FAB) dispatch $(FLEET) $(if $(value HOST),--host $(call quote,HOST)) --task $(call quote,TASK) $(ARGS)

batch: venv
	$(if $(value FILE),,$(error usage: make batch FILE=tasks.txt [HOSTS=...]))
	$(FAB) batch $(FLEET) --tasks-file $(call quote,FILE) $(ARGS)

# A throwaway fleet on 127.0.0.1 (sshd, three users, a stand-in picoclaw), removed afterwards.
demo: venv sshd
	$(PY) demo/run_demo.py

# The benchmarks (see README, Performance). What they compare with -- parallel-ssh, pyinfra,
# Ansible, ClusterShell, asyncssh (and matplotlib for bench/fleet-sizes.png) -- goes into a directory of its
# own each under .venv/bench-peers, pdsh from Debian: never a dependency of ours, and only bench/
# starts them. A peer that cannot be installed is reported, and its column says so.
BENCH_PEERS  := $(VENV)/bench-peers
BENCH_EXTRAS := $(BENCH_PEERS)/parallel-ssh
PEER_VENVS   := pyinfra ansible clustershell asyncssh matplotlib
.PHONY: bench-peers bench-pdsh
bench: venv sshd bench-peers
	$(PY) bench/run.py $(BENCH_ARGS)
bench-peers: $(BENCH_EXTRAS)/.installed $(PEER_VENVS:%=$(BENCH_PEERS)/%/.installed) bench-pdsh
$(BENCH_EXTRAS)/.installed: bench/requirements.txt $(STAMP)
	@if $(PY) -m pip install -q --upgrade --target $(BENCH_EXTRAS) -r bench/requirements.txt; then touch $@; \
	  else echo "bench: parallel-ssh is not installed; its rows will say so" >&2; fi
$(BENCH_PEERS)/%/.installed: bench/requirements-%.txt
	@echo "installing bench peer $* into $(@D) (a venv of its own)"
	@if $(PYTHON) -m venv --clear $(@D) && $(@D)/bin/python -m pip install -q --upgrade pip \
	    && $(@D)/bin/python -m pip install -q -r $<; then touch $@; \
	  else echo "pip install -r $< failed" > $(@D)/.failed; echo "bench: $* is not installed; its column will say so" >&2; fi
bench-pdsh:
	@command -v pdsh >/dev/null || { echo "installing pdsh (Debian package), a bench peer"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pdsh >/dev/null; } \
	  || echo "bench: pdsh is not installed; its column will say so" >&2; }

lint: $(LINT_STAMP)
	$(PY) -m pyflakes fabfile harness skill tests tasks.py $(wildcard demo bench)
	$(VENV)/bin/lint-imports
$(LINT_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[lint]'
	touch $(LINT_STAMP)

# The OpenClaw skill as ClawHub gets it, built into dist/skill/picoclaw-fleet: SKILL.md, its
# runner and the program (never tests, bench or demo), checked against pyproject.toml, then
# the exact list of files `clawhub skill publish` would upload from it.
SKILL_OUT := dist/skill/picoclaw-fleet
.PHONY: skill
skill:
	$(PYTHON) skill/build.py --out $(SKILL_OUT)
