"""What the end-to-end tests are built from, importable (tests/e2e/conftest.py
holds only fixtures): env (root, emulation, patience), cleanup (undo registry),
daemon (a real daemon process), network (the test namespace and its hosts),
probes (the socket probe and what a refused call returns), dns (an "internet"
namespace with a DNS server), agents (probes started before their policy),
waits (denials, conditions)."""
