"""Enforcer: eBPF syscall and network policy enforcer for AI-agent sandboxes."""

__version__ = "0.1.0"
