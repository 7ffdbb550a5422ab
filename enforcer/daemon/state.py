"""The policy store on disk, so that a restarted daemon knows what the pinned
maps it adopts stand for.

One JSON file per sandbox, replaced atomically (written beside, renamed over):
a daemon killed at any point leaves the old file or the new one, never half of
either. Not fsync-ed, on purpose: what the state describes (pinned programs in
bpffs, cgroups) does not survive a reboot either, and a file written before a
daemon crash is in the page cache for the next one. The state of an earlier boot
(another boot_id) is discarded at start-up, so a file a power loss left half
written is never read. (fsync-ing each save cost 8 ms per apply here.) The
policy is kept as its wire encoding, and read back through the same validation
as any request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import structlog

from enforcer.cgroupfs import Cgroup
from enforcer.daemon.store import ContainerRoot, SandboxRecord
from enforcer.kernel.maps import CounterTotals
from enforcer.policy import PolicyError
from enforcer.v1 import enforcer_pb2 as pb
from enforcer.wire import policy_from_proto, policy_to_proto

FORMAT = 1
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

log = structlog.get_logger("enforcer.state")


class StateError(RuntimeError):
    pass


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sandboxes = path / "sandboxes"
        try:
            self.sandboxes.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {path}: {exc.strerror}") from exc

    def _file(self, sandbox: str) -> Path:
        return self.sandboxes / f"{hashlib.sha256(sandbox.encode()).hexdigest()[:32]}.json"

    def save(self, record: SandboxRecord) -> None:
        _write_atomically(self._file(record.policy.sandbox), json.dumps(_to_json(record)).encode())

    def delete(self, sandbox: str) -> None:
        self._file(sandbox).unlink(missing_ok=True)

    def load(self) -> list[SandboxRecord]:
        """Every saved sandbox of this boot. A file that cannot be read back is
        an error naming it: starting without it would silently drop a sandbox's guard."""
        boot = BOOT_ID.read_text().strip()
        marker = self.path / "boot_id"
        previous = marker.read_text().strip() if marker.exists() else boot
        if previous != boot:
            stale = list(self.sandboxes.glob("*.json"))
            for path in stale:
                path.unlink()
            log.warning("state_of_an_earlier_boot_discarded", sandboxes=len(stale), boot_id=previous)
        _write_atomically(marker, boot.encode())
        saved = []
        for path in sorted(self.sandboxes.glob("*.json")):
            try:
                saved.append(_from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError, PolicyError) as exc:
                raise StateError(f"{path} cannot be read back ({exc}); move it away to start without that sandbox") \
                    from exc
        for leftover in self.sandboxes.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write cut short: its rename never happened
        return saved

    def cgroup_paths(self) -> list[Path]:
        """The cgroup of every saved file that names one, without validating the
        rest: what `--uninstall` detaches from, even when a file is damaged."""
        paths = []
        for path in self.sandboxes.glob("*.json"):
            try:
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("cgroup_path"), str):
                paths.append(Path(doc["cgroup_path"]))
        return paths

    def forget_all(self) -> None:
        for path in self.sandboxes.glob("*.json"):
            path.unlink()


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _totals_json(totals: CounterTotals | None) -> dict[str, Any] | None:
    if totals is None:
        return None
    return {"refused": totals.refused, "audited": totals.audited, "suppressed": totals.suppressed,
            "lost": totals.lost}


def _to_json(record: SandboxRecord) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "sandbox": record.policy.sandbox,
        "policy": base64.b64encode(record.policy_wire or policy_to_proto(record.policy).SerializeToString()).decode(),
        **_cgroup_json(record.cgroup),
        "generation": record.generation,
        "slot": record.slot,
        "tag": record.tag,
        "applied_unix_ns": record.applied_unix_ns,
        "policy_sha256": record.policy_sha256,
        "quarantined": record.quarantined,
        "frozen": record.frozen,
        "counter_base": _totals_json(record.counter_base),
        "counters_since_ns": record.counters_since_ns,
        "escalation_handled": record.escalation_handled,
        "containers": [_cgroup_json(c.cgroup) | {"container": c.container, "root": c.root}
                       for c in record.containers.values()],
    }


def _cgroup_json(cgroup: Cgroup) -> dict[str, Any]:
    return {"cgroup_path": str(cgroup.path), "cgroup_id": cgroup.id, "cgroup_level": cgroup.level}


def _cgroup(doc: dict[str, Any]) -> Cgroup:
    return Cgroup(Path(doc["cgroup_path"]), int(doc["cgroup_id"]), int(doc["cgroup_level"]))


def _from_json(doc: dict[str, Any]) -> SandboxRecord:
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown format {doc.get('format')!r}")
    wire = base64.b64decode(doc["policy"], validate=True)
    message = pb.Policy()
    message.ParseFromString(wire)
    policy = policy_from_proto(message)
    if policy.sandbox != doc["sandbox"]:
        raise ValueError("the policy names another sandbox")
    base = doc["counter_base"]
    record = SandboxRecord(
        policy=policy,
        cgroup=_cgroup(doc),
        generation=int(doc["generation"]),
        slot=int(doc["slot"]),
        tag=int(doc["tag"]),
        applied_unix_ns=int(doc["applied_unix_ns"]),
        policy_sha256=str(doc["policy_sha256"]),
        policy_wire=wire,
        quarantined=bool(doc["quarantined"]),
        frozen=bool(doc["frozen"]),
        counter_base=None if base is None else CounterTotals(list(base["refused"]), list(base["audited"]),
                                                              int(base["suppressed"]), int(base["lost"])),
        counters_since_ns=int(doc["counters_since_ns"]),
        escalation_handled=int(doc["escalation_handled"]),
        containers={str(c["container"]): ContainerRoot(str(c["container"]), _cgroup(c), str(c["root"]))
                    for c in doc.get("containers", [])},  # absent in files of earlier builds
    )
    return record
