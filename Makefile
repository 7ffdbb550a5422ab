# The two commands a newcomer types (as root, on Debian/Ubuntu):
#   make demo   - the ROME replay: a sandbox's reverse SSH tunnel and mining-pool
#                 connection refused in the kernel and reported
#   make test   - everything CI runs
PY := .venv/bin/python

.PHONY: bootstrap demo test check unit bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m enforcer.demo

test: bootstrap check
	$(PY) -m pytest --require-bpf tests

check: bootstrap
	.venv/bin/ruff check enforcer tests bench
	.venv/bin/mypy enforcer

unit: bootstrap
	$(PY) -m pytest tests/unit

bench: bootstrap
	$(PY) -m bench.run

clean:
	rm -rf .venv enforcer/v1/*_pb2*.py enforcer/v1/*_pb2*.pyi
