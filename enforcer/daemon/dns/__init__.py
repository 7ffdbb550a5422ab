"""The DNS forwarder of sandboxes that allow hosts by name (forwarder.py has the
whole story): wire parsing (wire.py), the upstream resolvers (upstreams.py),
the sockets in each network namespace (listeners.py), the learned addresses
mirrored into the kernel (learned.py), the report budget (budget.py)."""

from enforcer.daemon.dns.forwarder import DnsChange, DnsForwarder
from enforcer.daemon.dns.listeners import ForwarderError

__all__ = ["DnsChange", "DnsForwarder", "ForwarderError"]
