"""`enforcer`: the operator's command line. Everything but `daemon` talks to a
running daemon over gRPC."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

# `enforcer run` forks its command (into the sandbox's cgroup) while a gRPC
# channel is open; gRPC's fork handlers, meant for children that keep using
# gRPC, can hang such a fork (grpc/grpc#13998). Before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from enforcer.settings import (
    DEFAULT_AUDIT_KEEP,
    DEFAULT_AUDIT_LOG,
    DEFAULT_AUDIT_MAX_BYTES,
    DEFAULT_POLICY_DIR,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    EXEC_MODE_AUTO,
    EXEC_MODES,
    MAX_MESSAGE_BYTES,
    SOCKET_ENV,
    socket_path,
)

# The per-kind counter fields of SandboxStats, in display order.
SYSCALL_REFUSALS = {
    "eperm": "fail with EPERM (BPF-LSM)",
    "kill": "caller killed at the call, which runs",
    "none": "not built by this kernel (ENOSYS, not reported)",
}


def _json(message: Any) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), sort_keys=True)


def _print_json(message: Any) -> None:
    print(_json(message), flush=True)


def _labels_text(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def format_denial(event: Any) -> str:
    from enforcer.kinds import BY_PROTO
    from enforcer.v1 import enforcer_pb2 as pb

    when = datetime.datetime.fromtimestamp(event.time_unix_ns / 1e9, tz=datetime.UTC)
    kind = pb.DenialKind.Name(event.kind).removeprefix("DENIAL_KIND_").lower()
    action = pb.Action.Name(event.action).removeprefix("ACTION_").lower()
    what = BY_PROTO[event.kind].text(event)
    labels = _labels_text(event.labels)
    return (
        f"{when:%Y-%m-%dT%H:%M:%S.%f}Z #{event.seq} {event.sandbox} {action} {kind} {what}"
        + (f" pid={event.process.pid} comm={event.process.comm}" if event.process.pid else "")  # dns: no process
        + (f" labels={labels}" if labels else "")
    )


def format_stats(stats: Any) -> str:
    from enforcer.kinds import COUNTED

    rows = [f"sandbox {stats.sandbox}"]
    for name in COUNTED:
        counters = getattr(stats, name)
        rows.append(f"  {name:8} refused {counters.refused:>8}  audited {counters.audited:>8}")
    rows.append(f"  events suppressed (rate limit) {stats.events_suppressed}, lost (ring buffer full) {stats.events_lost}")
    return "\n".join(rows)


def _summary(stats: Any) -> str:
    from enforcer.kinds import COUNTED

    refused = {n: getattr(stats, n).refused for n in COUNTED}
    audited = {n: getattr(stats, n).audited for n in COUNTED}
    detail = ", ".join(f"{n} {c}" for n, c in refused.items() if c)
    audit_detail = ", ".join(f"{n} {c}" for n, c in audited.items() if c)
    text = f"enforcer: sandbox {stats.sandbox}: {sum(refused.values())} refused"
    if detail:
        text += f" ({detail})"
    text += f", {sum(audited.values())} audited"
    if audit_detail:
        text += f" ({audit_detail})"
    return text


def cmd_daemon(args: argparse.Namespace) -> int:
    if args.print_bpf:
        from enforcer.kernel.loader import print_source

        print(print_source(None if args.exec_mode == EXEC_MODE_AUTO else args.exec_mode))
        return 0
    from enforcer.daemon.logs import configure
    from enforcer.daemon.server import DaemonConfig, StartupError, run_daemon, run_uninstall

    configure()
    config = DaemonConfig(
        socket_path=args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET,
        listen=args.listen,
        events_per_sec=args.events_per_sec,
        retention=args.retention,
        audit_log=args.audit_log,
        audit_max_bytes=args.audit_max_bytes,
        audit_keep=args.audit_keep,
        state_dir=args.state_dir,
        pin_dir=args.pin_dir,
        socket_group=args.socket_group,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_bytes=args.max_message_bytes,
        metrics=args.metrics,
        exec_mode=args.exec_mode,
    )
    try:
        if args.uninstall:
            for line in run_uninstall(config):
                print(f"removed {line}")
            print("enforcement ended: no sandbox is guarded until a daemon applies policies again")
            return 0
        return run_daemon(config)
    except StartupError as exc:
        print(f"enforcer daemon: {exc}", file=sys.stderr)
        return 1


def cmd_apply(args: argparse.Namespace, enf: Any) -> int:
    response = enf.apply(Path(args.file))
    if args.json:
        _print_json(response)
    else:
        applied = response.applied
        verb = "replaced" if response.replaced else "applied"
        print(f"{verb} policy for sandbox {applied.policy.sandbox} on {applied.cgroup_path} (generation {applied.generation})")
    return 0


def cmd_remove(args: argparse.Namespace, enf: Any) -> int:
    enf.remove(args.sandbox)
    print(f"removed policy for sandbox {args.sandbox}")
    return 0


def cmd_list(args: argparse.Namespace, enf: Any) -> int:
    policies = enf.list()
    if args.json:
        for applied in policies:
            _print_json(applied)
        return 0
    if not policies:
        print("no policies applied")
    for applied in policies:
        p = applied.policy
        state = " QUARANTINED" if applied.quarantined else ""
        state += " FROZEN" if applied.frozen else ""
        print(
            f"{p.sandbox:24} {applied.cgroup_path}  mode={'audit' if p.mode == 2 else 'enforce'}{state} "
            f"allow={len(p.network.allow)} deny={len(p.network.deny)}"
            + (f" exec(allow={len(p.exec.allow)} deny={len(p.exec.deny)})" if p.HasField("exec") else "")
            + (" dns" if p.network.HasField("dns") else "")
            + (f" containers={len(applied.containers)}" if applied.containers else "")
        )
    return 0


def cmd_get(args: argparse.Namespace, enf: Any) -> int:
    _print_json(enf.get(args.sandbox))
    return 0


def cmd_stats(args: argparse.Namespace, enf: Any) -> int:
    stats = enf.stats(args.sandbox, reset=args.reset)
    print(_json(stats) if args.json else format_stats(stats), flush=True)
    return 0


def cmd_labels(args: argparse.Namespace, enf: Any) -> int:
    applied = enf.set_labels(args.sandbox, _parse_labels(args.pairs), replace=args.replace)
    labels = _labels_text(applied.policy.labels)
    print(f"sandbox {args.sandbox}: labels {labels or '(none)'} for its next denials")
    return 0


def cmd_release(args: argparse.Namespace, enf: Any) -> int:
    enf.release(args.sandbox)
    print(f"released sandbox {args.sandbox}: no quarantine, not frozen, escalation re-armed")
    return 0


def cmd_status(args: argparse.Namespace, enf: Any) -> int:
    status = enf.status()
    if args.json:
        _print_json(status)
        return 0
    how = {
        "lsm": "BPF-LSM (exec and packet sockets refused with EPERM)",
        "tracepoint": "tracepoints (process killed before a refused program runs or a packet socket is made)",
    }
    print(f"exec enforcement: {how.get(status.exec_enforcement, status.exec_enforcement)}")
    print(f"gpu device majors: {', '.join(str(m) for m in status.gpu_majors)}")
    print(f"sandboxes: {status.sandboxes} ({status.dns_forwarders} DNS forwarders)")
    print(f"kernel: {status.kernel_release}")
    print(f"audit log: {status.audit_log} ({status.audit_records} records written, "
          f"{status.audit_write_failures} failed)")
    if status.processes_untracked:
        print(f"escapes: {status.processes_untracked} sandboxed processes not tracked (table full): "
              "their moves out of a sandbox are not seen")
    print(f"events: {status.events_lost} lost (ring buffer full), {status.events_unattributed} unattributed; "
          f"next seq {status.next_seq}")
    print(f"build {status.build}, maps {status.map_layout} pinned in {status.pin_dir}"
          f"{' (taken over from an earlier daemon)' if status.taken_over else ''}; state in {status.state_dir}")
    missing = 0
    for program in status.programs:
        ok = program.attached == program.expected
        missing += not ok
        where = f"{program.attached}/{program.expected} sandboxes" if program.hook == "cgroup" else "pinned link"
        print(f"  {program.name:<28} {program.hook:<15} {where}{'' if ok else '  MISSING'}")
    if status.syscalls:
        by_how: dict[str, list[str]] = {}
        for row in status.syscalls:
            by_how.setdefault(row.refused_by, []).append("every other syscall" if row.name == "*" else row.name)
        print("refused syscalls:")
        for how_refused, names in sorted(by_how.items()):
            print(f"  {SYSCALL_REFUSALS.get(how_refused, how_refused)}: {', '.join(names)}")
    return 1 if missing else 0


def _parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"enforcer: --label expects KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def cmd_denials(args: argparse.Namespace, enf: Any) -> int:
    try:
        for batch in enf.denials(sandboxes=args.sandbox or (), labels=_parse_labels(args.label), follow=args.follow,
                                 since=args.since):
            if batch.HasField("gap"):
                print(f"enforcer: {batch.gap.missed} denials (#{batch.gap.first_seq}-#{batch.gap.last_seq}) fell out "
                      "of the daemon's retention before they were read", file=sys.stderr, flush=True)
            for event in batch.denials:
                print(_json(event) if args.json else format_denial(event), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_run(args: argparse.Namespace, enf: Any) -> int:
    from enforcer.cgroupfs import cgroup2_mount, create_cgroup, remove_cgroup
    from enforcer.policy import Target, TargetKind, parse_policy, read_policy_document

    command = args.command[1:] if args.command[:1] == ["--"] else args.command  # the command's own "--" stay
    if not command:
        print("enforcer run: no command given (enforcer run --policy FILE -- CMD ARGS...)", file=sys.stderr)
        return 2
    try:
        user = run_as(args.user) if args.user else None
    except ValueError as exc:
        print(f"enforcer run: --user: {exc}", file=sys.stderr)
        return 2
    if user is None and os.geteuid() == 0:
        print(ROOT_WARNING, file=sys.stderr)
    doc = read_policy_document(args.policy)
    if isinstance(doc, dict):
        if "target" in doc:
            print("enforcer run: ignoring the policy's target; the command runs in a fresh cgroup", file=sys.stderr)
        doc["target"] = {"cgroup": "/"}  # replaced below by the fresh cgroup
        if args.sandbox:
            doc["sandbox"] = args.sandbox
    policy = parse_policy(doc)
    sandbox = policy.sandbox
    cgroup = create_cgroup(cgroup2_mount() / "enforcer-run" / f"{sandbox}-{os.getpid()}")
    policy = dataclasses.replace(policy, target=Target(TargetKind.CGROUP, str(cgroup.path)))
    applied = False
    try:
        enf.apply(policy)
        applied = True
        child = subprocess.Popen(command, preexec_fn=lambda: enter_sandbox(cgroup.path, user))
        forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            status = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        print(_summary(enf.stats(sandbox)), file=sys.stderr)
        return status if status >= 0 else 128 - status
    finally:
        if applied:
            enf.remove(sandbox)
        remove_cgroup(cgroup.path)
        with contextlib.suppress(OSError):  # the shared parent goes once the last run has ended
            cgroup.path.parent.rmdir()


ROOT_WARNING = (
    "enforcer run: warning: the command runs as root with the host's cgroup namespace. Root can still "
    "leave the sandbox's cgroup (reported and killed as an escape, but the move happens), load kernel "
    "modules, use raw devices and act through processes outside the sandbox (ptrace, unless the policy "
    "denies it). Use --user to run it unprivileged.")


def run_as(spec: str) -> tuple[int, int]:
    """USER[:GROUP] as (uid, gid); the user's primary group unless GROUP is given."""
    import grp
    import pwd

    name, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no user {name!r}") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no group {group!r}") from None
    return entry.pw_uid, gid


def enter_sandbox(cgroup: Any, user: tuple[int, int] | None) -> None:
    """In the child before exec: into the sandbox's cgroup, then drop to the user."""
    from enforcer.cgroupfs import move_pid

    move_pid(0, cgroup)
    if user is not None:
        uid, gid = user
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def cmd_export(args: argparse.Namespace) -> int:
    from enforcer import export

    # Written to a temporary file beside --output and renamed: a failed export
    # (a torn record) never leaves a file that looks complete.
    target = Path(args.output) if args.output else None
    partial = target.with_name(f".{target.name}.partial") if target else None
    try:
        selection = export.RecordFilter(
            since=export.parse_time(args.since, "--since") if args.since else None,
            until=export.parse_time(args.until, "--until") if args.until else None,
            sandboxes=set(args.sandbox), kinds=set(args.kind))
        files = export.log_files(Path(args.audit_log))
        with (open(partial, "w", encoding="utf-8") if partial else contextlib.nullcontext(sys.stdout)) as out:
            summary = export.export(export.read_records(files), selection, args.format, out)
        if target and partial:
            partial.replace(target)
    except (export.ExportError, OSError) as exc:
        if partial:
            partial.unlink(missing_ok=True)
        if isinstance(exc, export.ExportError):
            print(f"enforcer: {exc}", file=sys.stderr)
            return 2
        print(f"enforcer: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    note = f"; {summary.not_mappable} policy records have no OCSF class and were left out" if summary.not_mappable else ""
    print(f"enforcer: exported {summary.written} records from {len(files)} files{note}", file=sys.stderr)
    return 0


def cmd_oci_hook(args: argparse.Namespace, enf: Any) -> int:
    from enforcer.oci import HookError, run_hook

    try:
        run_hook(args.stage, sys.stdin.read(), enf, Path(args.policy_dir))
    except HookError as exc:
        print(f"enforcer oci-hook: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_oci_runtime(args: argparse.Namespace) -> int:
    from enforcer.oci import exec_runtime, hook_command

    runtime_args = args.runtime_args[1:] if args.runtime_args[:1] == ["--"] else args.runtime_args
    exec_runtime(args.runtime, runtime_args, hook_command(socket_path(args.socket), args.policy_dir))
    return 1  # not reached: exec_runtime becomes the runtime


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enforcer", description="eBPF network, exec, device and syscall policy enforcer for AI-agent sandboxes"
    )
    socket_help = f"daemon socket or host:port (default ${SOCKET_ENV} or {DEFAULT_SOCKET})"
    parser.add_argument("--socket", help=socket_help)
    parser.add_argument("--tls-ca", help="for a host:port daemon: the CA of its certificate (or $ENFORCER_TLS_CA)")
    parser.add_argument("--tls-cert", dest="tls_client_cert", help="client certificate, for a daemon requiring one")
    parser.add_argument("--tls-key", dest="tls_client_key", help="client key")
    # --socket is also accepted after the subcommand (enforcer daemon --socket X).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help=socket_help)
    sub = parser.add_subparsers(dest="command_name", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, parents=[common])

    daemon = command("daemon", "run the daemon (root)")
    daemon.add_argument("--listen", help="also serve gRPC on this host:port, with TLS only (--tls-cert, --tls-key)")
    daemon.add_argument("--tls-cert", help="PEM certificate (chain) for --listen")
    daemon.add_argument("--tls-key", help="PEM private key for --listen")
    daemon.add_argument("--tls-client-ca", help="PEM CA: clients on --listen must present a certificate it signed")
    daemon.add_argument("--socket-group", help="make the Unix socket 0660 for this group (default: 0600, root only)")
    daemon.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES,
                        help=f"largest gRPC message accepted or sent (default {MAX_MESSAGE_BYTES})")
    daemon.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP here (opt-in; e.g. 127.0.0.1:9464)")
    daemon.add_argument("--events-per-sec", type=int, default=2000,
                        help="denial events reported per sandbox per CPU per second (counters stay exact; 0: no limit)")
    daemon.add_argument("--retention", type=int, default=65536,
                        help="denials kept for subscribers that connect or resume later (default 65536)")
    daemon.add_argument("--audit-log", default=DEFAULT_AUDIT_LOG,
                        help=f"JSON-lines audit log of denials, escalations and policy changes (default {DEFAULT_AUDIT_LOG})")
    daemon.add_argument("--audit-max-bytes", type=int, default=DEFAULT_AUDIT_MAX_BYTES,
                        help="rotate the audit log when it would grow past this (default 100 MiB)")
    daemon.add_argument("--audit-keep", type=int, default=DEFAULT_AUDIT_KEEP,
                        help=f"rotated audit logs kept (default {DEFAULT_AUDIT_KEEP})")
    daemon.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help=f"applied policies, kept across restarts (default {DEFAULT_STATE_DIR})")
    daemon.add_argument("--pin-dir", help="bpffs directory of the pinned programs and maps (default <bpffs>/enforcer)")
    daemon.add_argument("--uninstall", action="store_true",
                        help="end enforcement: detach and unpin everything daemons left, forget saved policies")
    daemon.add_argument("--exec-mode", choices=EXEC_MODES, default=EXEC_MODE_AUTO,
                        help="how a refused exec is stopped: lsm (EPERM from bprm_check_security; the kernel must "
                             "enable BPF-LSM), tracepoint (SIGKILL before the program's first instruction), or auto: "
                             "lsm where it loads, else tracepoint (default)")
    daemon.add_argument("--print-bpf", action="store_true", help="print the BPF C that would be loaded, and exit")

    apply = command("apply", "apply (create or replace) a policy from a YAML/JSON file")
    apply.add_argument("file")
    apply.add_argument("--json", action="store_true")

    remove = command("remove", "remove a sandbox's policy")
    remove.add_argument("sandbox")

    lst = command("list", "list applied policies")
    lst.add_argument("--json", action="store_true")

    get = command("get", "show one applied policy (JSON)")
    get.add_argument("sandbox")

    stats = command("stats", "a sandbox's denial counters, from the kernel")
    stats.add_argument("sandbox")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--reset", action="store_true", help="count from zero after this read (an episode boundary)")

    labels = command("labels", "set the labels of a sandbox's next denials (no re-apply)")
    labels.add_argument("sandbox")
    labels.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    labels.add_argument("--replace", action="store_true", help="these are all the labels (default: merge)")

    release = command("release", "lift an escalation: end a quarantine, thaw, re-arm")
    release.add_argument("sandbox")

    status = command("status", "how the daemon enforces: exec mode, programs as the kernel has them attached, lost events")
    status.add_argument("--json", action="store_true")

    denials = command("denials", "show retained denials; --follow to keep streaming")
    denials.add_argument("--sandbox", action="append", help="only this sandbox (repeatable)")
    denials.add_argument("--label", action="append", default=[], help="only denials with KEY=VALUE (repeatable)")
    denials.add_argument("--follow", "-f", action="store_true")
    denials.add_argument("--since", type=int, default=0, metavar="SEQ", help="start at this sequence number")
    denials.add_argument("--json", action="store_true")

    export = command("export", "audit log records (rotated and .gz files too) as jsonl, OCSF or CSV; reads files only")
    export.add_argument("--audit-log", default=DEFAULT_AUDIT_LOG, help=f"the audit log (default {DEFAULT_AUDIT_LOG})")
    export.add_argument("--since", help="from this time: ISO 8601 (UTC unless given) or a duration ago (15m, 2h, 7d)")
    export.add_argument("--until", help="up to this time, same forms")
    export.add_argument("--sandbox", action="append", default=[], help="only this sandbox (repeatable)")
    export.add_argument("--kind", action="append", default=[],
                        help="only connect|sendmsg|socket|exec|device|escalation|dns|syscall|escape|policy (repeatable)")
    export.add_argument("--format", default="jsonl", choices=("jsonl", "ocsf", "csv"))
    export.add_argument("--output", "-o", help="write here instead of stdout")

    hook = command("oci-hook", "OCI hook (createRuntime, poststop): guard the container on stdin, or refuse it")
    hook.add_argument("stage", choices=("createRuntime", "poststop"))
    hook.add_argument("--policy-dir", default=DEFAULT_POLICY_DIR,
                      help=f"where policy names are looked up (default {DEFAULT_POLICY_DIR})")
    runtime = command("oci-runtime", "stand in for runc (Docker's --runtime): add the hooks, then run runc")
    runtime.add_argument("--runtime", default="/usr/sbin/runc", help="the OCI runtime to hand over to")
    runtime.add_argument("--policy-dir", default=DEFAULT_POLICY_DIR,
                         help=f"where policy names are looked up (default {DEFAULT_POLICY_DIR})")
    runtime.add_argument("runtime_args", nargs=argparse.REMAINDER, help="-- then the runtime's arguments")

    run = command("run", "run a command in a fresh cgroup under a policy")
    run.add_argument("--policy", required=True)
    run.add_argument("--sandbox", help="sandbox id (default: the policy's)")
    run.add_argument("--user", help="run the command as USER[:GROUP] (name or number), not as the caller")
    run.add_argument("command", nargs=argparse.REMAINDER)
    return parser


COMMANDS = {
    "apply": cmd_apply,
    "remove": cmd_remove,
    "list": cmd_list,
    "get": cmd_get,
    "stats": cmd_stats,
    "status": cmd_status,
    "labels": cmd_labels,
    "release": cmd_release,
    "denials": cmd_denials,
    "run": cmd_run,
    "oci-hook": cmd_oci_hook,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command_name == "daemon":
        return cmd_daemon(args)
    if args.command_name == "export":
        return cmd_export(args)
    if args.command_name == "oci-runtime":
        return cmd_oci_runtime(args)
    from enforcer.client import Enforcer, EnforcerError, TlsFiles
    from enforcer.policy import PolicyError

    enf = Enforcer(args.socket, tls=TlsFiles(args.tls_ca, args.tls_client_cert, args.tls_client_key) if args.tls_ca else None)
    try:
        with enf:
            return COMMANDS[args.command_name](args, enf)
    except PolicyError as exc:
        print(f"enforcer: invalid policy: {exc}", file=sys.stderr)
        return 2
    except EnforcerError as exc:
        if exc.code.name == "UNAVAILABLE":
            print(f"enforcer: cannot reach the daemon at {enf.address} (is `enforcer daemon` running there?)",
                  file=sys.stderr)
        else:
            print(f"enforcer: {exc.details or exc.code.name} ({exc.code.name})", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. `run` without the rights to create a cgroup
        print(f"enforcer: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
