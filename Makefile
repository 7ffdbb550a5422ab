# The two commands a newcomer types (as root, on Debian/Ubuntu):
#   make demo   - the ROME replay: a sandbox's reverse SSH tunnel, mining-pool
#                 connection, miner binary and GPU refused in the kernel and reported
#   make test   - everything CI runs, including the exec/device tests again on a
#                 BPF-LSM kernel under qemu (test-lsm)
PY := .venv/bin/python

.PHONY: bootstrap demo test test-lsm check unit bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m enforcer.demo

test: bootstrap check
	$(PY) -m pytest --require-bpf tests
	$(MAKE) test-lsm

# This kernel cannot load BPF-LSM programs: boot Debian's 6.1 kernel, which can,
# and run the exec, device and layout tests there (about 2 minutes).
test-lsm: bootstrap
	scripts/lsm-vm.sh

check: bootstrap
	.venv/bin/ruff check enforcer tests bench examples
	.venv/bin/mypy enforcer

unit: bootstrap
	$(PY) -m pytest tests/unit

bench: bootstrap
	$(PY) -m bench.run

clean:
	rm -rf .venv enforcer/v1/*_pb2*.py enforcer/v1/*_pb2*.pyi
