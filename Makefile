# pvc: `make demo` runs a local cluster, `make test` runs the tests. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEBS := zookeeper libvirt-dev libvirt-clients pkg-config python3-venv iproute2 iputils-ping arping ipmitool fence-agents openssl
# The cluster-in-a-box tier: a libvirtd with QEMU per node namespace, tini as each node's init.
BOX_DEBS := libvirt-daemon-system qemu-system-x86 tini util-linux
# The dashboard's browser tests: Debian's Chromium and its WebDriver (selenium), and Firefox ESR (driven over
# WebDriver BiDi, which it speaks itself); nothing is downloaded.
BROWSER_DEBS := chromium chromium-driver firefox-esr fonts-dejavu-core

.PHONY: deps venv test soak bench bench-driver bench-peer bench-scale docs demo demo-stop demo-status clean

deps:
	@scripts/debs.sh $(DEBS)
	@scripts/debs.sh --no-install-recommends $(BOX_DEBS)
	@scripts/debs.sh --no-install-recommends $(BROWSER_DEBS)

$(VENV)/.installed: pyproject.toml | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

# The cluster-in-a-box fault scenarios, with and without real guests, each run SOAK times; the summary
# counts invariant violations and disk journals with two writers.
SOAK ?= 10
soak: venv
	PVC_SOAK=$(SOAK) $(PY) -m pytest -q tests/cluster/test_faults.py tests/cluster/test_guests.py

# Every figure once: placement and API, then the cluster in a box (real QEMU, IPMI, ZooKeeper ensemble),
# first with tiny VMs, then with real guests.
bench: venv
	@scripts/debs.sh wrk
	@$(PY) bench/placement.py
	@$(PY) bench/api.py
	@$(PY) bench/dashboard.py
	@$(PY) bench/box.py
	@$(PY) bench/guests.py

# pvc and Pacemaker + corosync side by side on the same box, guests, BMCs and faults (about 25 minutes).
bench-peer: venv
	@scripts/debs.sh pacemaker pacemaker-cli-utils corosync resource-agents fence-agents
	@$(PY) bench/peer_pacemaker.py

# N = 100, 300 and 1,000 node daemons (20 VMs each) on one 3-server ZooKeeper ensemble: what the cluster costs
# at rest, and failover and flush at that size (about 25 minutes; `bench/scale.py 300` for one size).
bench-scale: venv
	@$(PY) bench/scale.py

# The same flush, handover and failover figures on the lighter tiers (libvirt's test driver).
bench-driver: venv
	@$(PY) bench/flush.py
	@$(PY) bench/handover.py
	@$(PY) bench/failover.py

docs: venv
	$(PY) scripts/gendocs.py

demo: venv
	$(PY) scripts/demo.py up

demo-status: venv
	$(PY) scripts/demo.py status

demo-stop: venv
	$(PY) scripts/demo.py down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .demo
