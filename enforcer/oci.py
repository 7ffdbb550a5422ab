"""Container runtimes: a container guarded before its first instruction, or not
started at all.

``enforcer oci-hook`` is an OCI hook. At ``createRuntime`` the runtime has made
the container's cgroup, put its init (still runtime code) in it and mounted its
root filesystem, and waits for the hook: the hook reads the container's state
on stdin, asks the daemon to apply the policy the container names to that
cgroup, with exec entries resolved in that root filesystem, and exits 0 only
once the daemon has it in the kernel. Any failure (no policy named, unknown
policy, daemon unreachable, a refused apply) exits non-zero and the runtime
does not start the container. At ``poststop`` it removes the sandbox.

Podman and CRI-O run hooks from ``hooks.d`` (see :func:`hooks_d_entry`). Docker
does not; ``enforcer oci-runtime`` stands in for runc (a ``runtimes`` entry in
daemon.json, ``docker run --runtime enforcer``): it adds the two hooks to the
bundle's config.json and hands over to runc.

A container that names no policy but is started inside a sandbox's cgroup (a
guarded parent: ``--cgroup-parent``) is added to that sandbox: its exec entries
are resolved in the container's root filesystem too (AddContainer), and it
leaves at poststop. One that names no policy and is in no sandbox's cgroup is
not started.

A container names its policy by the annotation ``enforcer.policy`` (Podman:
``--annotation``) or the environment variable ``ENFORCER_POLICY`` (Docker before
24 passes no annotations): a file path, or a name looked up as
``<policy dir>/<name>.yaml`` (``.yml``, ``.json``). The sandbox id is
``enforcer.sandbox`` (or ``ENFORCER_SANDBOX``) if given, else the container id;
labels are the policy's, ``container`` (the short id), and any
``enforcer.label.<name>`` annotations or ``ENFORCER_LABELS=k=v,k=v``.
Talks to the daemon over gRPC only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enforcer.policy import PolicyError, read_policy_document

POLICY_ANNOTATION = "enforcer.policy"
SANDBOX_ANNOTATION = "enforcer.sandbox"
LABEL_ANNOTATION_PREFIX = "enforcer.label."
POLICY_ENV = "ENFORCER_POLICY"
SANDBOX_ENV = "ENFORCER_SANDBOX"
LABELS_ENV = "ENFORCER_LABELS"
STAGE_CREATE = "createRuntime"
STAGE_POSTSTOP = "poststop"
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class HookError(RuntimeError):
    """Why the container must not start (the runtime shows the hook's stderr)."""


def read_state(text: str) -> dict[str, Any]:
    """The OCI state the runtime writes on the hook's stdin."""
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise HookError(f"the OCI state on stdin is not JSON: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("id"), str) or not state["id"]:
        raise HookError("the OCI state on stdin has no container id")
    return state


def bundle_config(state: dict[str, Any]) -> dict[str, Any]:
    bundle = state.get("bundle")
    if not isinstance(bundle, str) or not bundle:
        raise HookError("the OCI state names no bundle")
    try:
        config = json.loads((Path(bundle) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise HookError(f"cannot read {bundle}/config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise HookError(f"{bundle}/config.json is not an OCI runtime config")
    return config


def _annotations(state: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    found = {**(config.get("annotations") or {}), **(state.get("annotations") or {})}
    return {str(k): str(v) for k, v in found.items()}


def _environment(config: dict[str, Any]) -> dict[str, str]:
    pairs = (entry.split("=", 1) for entry in (config.get("process") or {}).get("env") or [] if "=" in entry)
    return dict(pairs)


def policy_reference(state: dict[str, Any], config: dict[str, Any]) -> str | None:
    return _annotations(state, config).get(POLICY_ANNOTATION) or _environment(config).get(POLICY_ENV) or None


def policy_file(reference: str, policy_dir: Path) -> Path:
    if reference.startswith("/"):
        return Path(reference)
    if not _POLICY_NAME.match(reference):
        raise HookError(f"policy name {reference!r} is neither an absolute path nor a name "
                        "(letters, digits, '.', '_', '-')")
    for suffix in (".yaml", ".yml", ".json"):
        candidate = policy_dir / f"{reference}{suffix}"
        if candidate.is_file():
            return candidate
    raise HookError(f"no policy {reference!r} in {policy_dir} ({reference}.yaml, .yml or .json)")


def sandbox_id(state: dict[str, Any], config: dict[str, Any]) -> str:
    """The orchestrator's name for the rollout (annotation enforcer.sandbox or
    ENFORCER_SANDBOX), else the container id."""
    chosen = _annotations(state, config).get(SANDBOX_ANNOTATION) or _environment(config).get(SANDBOX_ENV)
    return chosen or str(state["id"])


def extra_labels(state: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    labels = {k.removeprefix(LABEL_ANNOTATION_PREFIX): v for k, v in _annotations(state, config).items()
              if k.startswith(LABEL_ANNOTATION_PREFIX)}
    for pair in filter(None, _environment(config).get(LABELS_ENV, "").split(",")):
        name, _, value = pair.partition("=")
        labels.setdefault(name.strip(), value.strip())
    return labels


def init_cgroup(pid: int) -> str:
    """The init's cgroup2 path ("0::" line), relative to the cgroup2 mount."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as exc:
        raise HookError(f"cannot read the cgroup of the container's init (pid {pid}): {exc.strerror}") from exc
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None or path in ("", "/"):
        # runc and crun join the unified hierarchy on hybrid hosts, silently skipping it on error.
        raise HookError(f"the container's init (pid {pid}) is not in a cgroup2 cgroup of its own "
                        f"({path or 'no 0:: line'}): it cannot be guarded")
    return path.lstrip("/")


def root_filesystem(state: dict[str, Any], config: dict[str, Any]) -> str:
    root = (config.get("root") or {}).get("path")
    if not isinstance(root, str) or not root:
        raise HookError("config.json names no root filesystem (root.path)")
    return root if root.startswith("/") else str(Path(state["bundle"]) / root)


def init_pid(state: dict[str, Any]) -> int:
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise HookError("the OCI state has no init pid (is this hook registered for createRuntime?)")
    return pid


def container_policy(state: dict[str, Any], config: dict[str, Any], reference: str,
                     policy_dir: Path) -> dict[str, Any]:
    """The policy document the daemon is asked to apply for this container."""
    pid = init_pid(state)
    path = policy_file(reference, policy_dir)
    try:
        template = read_policy_document(path)
    except PolicyError as exc:
        raise HookError(str(exc)) from exc
    if not isinstance(template, dict):
        raise HookError(f"{path} is not a policy (a mapping of fields)")
    if "target" in template:
        raise HookError(f"{path}: target: must be left out: the hook targets the container")
    labels = {**(template.get("labels") or {}), **extra_labels(state, config), "container": state["id"][:12]}
    return {**template, "sandbox": sandbox_id(state, config), "labels": labels,
            "target": {"cgroup": init_cgroup(pid), "root": root_filesystem(state, config)}}


def run_hook(stage: str, stdin: str, enf: Any, policy_dir: Path) -> None:
    """One hook call; HookError (or the client's error) means: do not start."""
    from enforcer.client import EnforcerError

    state = read_state(stdin)
    if stage == STAGE_CREATE:
        config = bundle_config(state)
        reference = policy_reference(state, config)
        if reference:
            enf.apply(container_policy(state, config, reference, policy_dir))
            return
        cgroup = init_cgroup(init_pid(state))
        try:
            enf.add_container(state["id"], cgroup, root_filesystem(state, config))
        except EnforcerError as exc:
            if exc.code.name != "NOT_FOUND":
                raise
            raise HookError(f"the container names no policy (annotation {POLICY_ANNOTATION} or environment variable "
                            f"{POLICY_ENV}) and no sandbox guards its cgroup {cgroup}: refusing to start it "
                            "unguarded") from None
    elif stage == STAGE_POSTSTOP:
        try:
            config = bundle_config(state)
        except HookError:
            config = {}  # the bundle is gone: the sandbox is named after the container
        # Whichever way it was guarded (its own sandbox, or added to its parent's).
        for leave in (lambda: enf.remove(sandbox_id(state, config)), lambda: enf.remove_container(state["id"])):
            try:
                leave()
            except EnforcerError as exc:
                if exc.code.name != "NOT_FOUND":
                    raise
    else:
        raise HookError(f"unknown hook stage {stage!r} (expected {STAGE_CREATE} or {STAGE_POSTSTOP})")


def hook_command(socket: str, policy_dir: str | None = None) -> list[str]:
    """How a runtime calls ``enforcer oci-hook`` (the stage is appended), with
    this Python: the hook talks to the daemon at ``socket``."""
    return [sys.executable, "-m", "enforcer.cli", "--socket", socket, "oci-hook",
            *(["--policy-dir", policy_dir] if policy_dir else [])]


def _hook(hook_argv: Sequence[str], stage: str) -> dict[str, Any]:
    return {"path": hook_argv[0], "args": [*hook_argv, stage], "timeout": 60}


def hook_entries(hook_argv: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """config.json "hooks" entries that call ``hook_argv`` + the stage."""
    return {stage: [_hook(hook_argv, stage)] for stage in (STAGE_CREATE, STAGE_POSTSTOP)}


def hooks_d_entry(hook_argv: Sequence[str], stage: str, every_container: bool = False) -> dict[str, Any]:
    """A Podman/CRI-O hooks.d file (oci-hooks(5)): run for containers that name
    a policy, or (``every_container``) for all of them: a directory given to
    ``podman --hooks-dir`` for containers started in a guarded parent, which
    name no policy. Every container it runs for is guarded or not started."""
    when = {"always": True} if every_container else {"annotations": {f"^{re.escape(POLICY_ANNOTATION)}$": ".+"}}
    return {"version": "1.0.0", "hook": _hook(hook_argv, stage), "when": when, "stages": [stage]}


def write_hooks_d(directory: Path, hook_argv: Sequence[str], every_container: bool = False) -> None:
    """The two hooks.d files (createRuntime, poststop) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stage in (STAGE_CREATE, STAGE_POSTSTOP):
        entry = hooks_d_entry(hook_argv, stage, every_container)
        (directory / f"enforcer-{stage}.json").write_text(json.dumps(entry))


def add_hooks(config_path: Path, hook_argv: Sequence[str]) -> None:
    """Put our hooks first in a bundle's config.json (written to a new file, then renamed)."""
    config = json.loads(config_path.read_text())
    hooks = config.setdefault("hooks", {})
    for stage, entries in hook_entries(hook_argv).items():
        hooks[stage] = [*entries, *(hooks.get(stage) or [])]
    scratch = config_path.with_name(config_path.name + ".enforcer")
    scratch.write_text(json.dumps(config))
    os.replace(scratch, config_path)


def bundle_of(runtime_args: Sequence[str]) -> Path | None:
    """The bundle of a runc ``create``/``run`` call (its --bundle/-b, else the
    current directory); None for any other command."""
    args = list(runtime_args)
    command_at = next((i for i, a in enumerate(args) if a in ("create", "run")), None)
    if command_at is None:
        return None
    rest = args[command_at + 1:]
    for i, arg in enumerate(rest):
        if arg in ("--bundle", "-b") and i + 1 < len(rest):
            return Path(rest[i + 1])
        if arg.startswith("--bundle="):
            return Path(arg.split("=", 1)[1])
    return Path.cwd()


def exec_runtime(runtime: str, runtime_args: Sequence[str], hook_argv: Sequence[str]) -> None:
    """Add the hooks to the bundle a create names, then become the runtime."""
    bundle = bundle_of(runtime_args)
    if bundle is not None:
        try:
            add_hooks(bundle / "config.json", hook_argv)
        except (OSError, ValueError) as exc:
            print(f"enforcer oci-runtime: cannot add the hooks to {bundle}/config.json: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc
    os.execv(runtime, [runtime, *runtime_args])


def podman_command(root: Path, runroot: Path, hooks_dir: Path, mount: Path) -> list[str]:
    """A root Podman with its own storage, running hooks from ``hooks_dir``:
    cgroupfs and file events (no systemd here), and the runtime that works on
    this host (:func:`podman_oci_runtime`)."""
    return ["podman", "--root", str(root), "--runroot", str(runroot), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--runtime", podman_oci_runtime(mount)[0], "--hooks-dir", str(hooks_dir)]


def podman_oci_runtime(mount: Path) -> tuple[str, str]:
    """The OCI runtime Podman can use on this host, and why: crun, its default,
    unless the host is one crun 1.8 refuses, a hybrid layout whose cgroup2
    hierarchy (at ``mount``) still holds a controller ("cgroups in hybrid mode
    not supported"; these machines leave hugetlb there); runc runs there."""
    controllers = (mount / "cgroup.controllers").read_text().split()
    if mount != Path("/sys/fs/cgroup") and controllers:
        return "runc", (f"hybrid cgroups with {', '.join(controllers)} in the cgroup2 hierarchy at {mount}: "
                        "crun refuses that layout")
    return "crun", "the default"
