# The two commands a newcomer types (as root, on Debian/Ubuntu):
#   make demo   - the ROME replay: a sandbox's reverse SSH tunnel, mining-pool
#                 connection, miner binary and GPU refused in the kernel and reported
#   make test   - everything CI runs: lint, types, the tests that do not depend
#                 on the kernel, then test-kernels
PY := .venv/bin/python

.PHONY: bootstrap demo demo-container test test-kernels check unit bench bench-containers bench-nft bench-syscalls soak clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m enforcer.demo

# The same replay with the agent in a real Podman container, guarded through the OCI hook.
demo-container:
	@scripts/bootstrap.sh --containers
	$(PY) -m enforcer.demo --container

# Each test has a time limit (pyproject.toml); the whole first run has one too,
# for a test stuck where no signal reaches it: ^C after 20 minutes prints where.
test: bootstrap check
	timeout --signal=INT --kill-after=60 20m $(PY) -m pytest --require-bpf -m "not kernel" tests \
	    || { s=$$?; [ $$s -ne 124 ] || echo "make test: the tests ran over 20 minutes and were stopped as hung"; exit $$s; }
	$(MAKE) test-kernels

# The tests whose outcome depends on the kernel (marked `kernel`), on this
# machine's kernel and on Debian's 6.1 with BPF-LSM under qemu, with a report
# per kernel (tests/kernels/matrix.py; about 20 minutes).
test-kernels: bootstrap
	$(PY) -m tests.kernels.matrix

check: bootstrap
	.venv/bin/ruff check enforcer tests bench examples
	.venv/bin/mypy enforcer

unit: bootstrap
	$(PY) -m pytest tests/unit

bench: bootstrap
	$(PY) -m bench.run

# What guarding adds to `docker run` / `podman run` (guarded parent, OCI hook).
bench-containers: bootstrap
	$(PY) -m bench.containers

# The same 10,000-destination allowlist as nftables rules (OpenSandbox's way) and as a policy.
bench-nft: bootstrap
	$(PY) -m bench.nft

# What syscall rules cost a syscall (getpid), outside and inside sandboxes.
bench-syscalls: bootstrap
	$(PY) -m bench.syscalls

# Not CI: 30 minutes of churn, floods and take-overs on this kernel; fails on
# a leak (programs, maps, links, pins, cgroups, fds), a growing daemon, a gap
# or a kernel lockup report (bench/soak.py; SOAK_MINUTES=M to change).
soak: bootstrap
	$(PY) -m bench.soak

clean:
	rm -rf .venv enforcer/v1/*_pb2*.py enforcer/v1/*_pb2*.pyi
