"""enforcer.daemon.dns.upstreams: the host's resolvers from resolv.conf."""

from __future__ import annotations

from pathlib import Path

from enforcer.daemon.dns import upstreams


def test_host_resolvers(tmp_path: Path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nsearch example\nnameserver bogus\n")
    assert [str(u) for u in upstreams.host_resolvers(conf)] == ["127.0.0.53", "fe80::1"]
    assert upstreams.host_resolvers(tmp_path / "missing") == ()
